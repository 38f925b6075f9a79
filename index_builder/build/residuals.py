"""Residual codes: what a vector's cell centroid misses, in a few bytes per vector.

A stored vector x in cell c is approximated as centroid[c] + r, where r is the residual
x - centroid[c] encoded by a product quantizer (PQ): the d dimensions are cut into
`subspaces` slices of d / subspaces, and each slice of r is stored as the index (4 bits)
of the nearest of 16 codewords trained for that slice, two slices to a byte (FAISS's
4-bit PQ layout, the one its fast-scan indexes use: slice 2j in the low half of byte j).
A query vector q then scores x as q . centroid[c] plus, per slice, q's slice times the
codeword, read from a small table per query (search/residuals.py).

The codes are opt-in (`chan index build --residual-codes`): on the synthetic benchmark,
whose residuals are isotropic noise, 32 bytes keep only about 21% of the residual and
did not let the exact rerank take fewer candidates at 100,000 images (README, Search
figures); embeddings with structure compress far better (PLAID's premise).

Why 4-bit codes in 64 slices rather than 8-bit codes in 32 (both 32 bytes at d = 1024):
on the synthetic 10,000-image index both reached recall@10 1.000 at C = 150 (0.950 and
0.952 at C = 100), but a slice is encoded against 16 codewords instead of 256: 16,384
vectors took 0.16-0.21 s instead of 1.28 s on one core. A query reads one table entry
per byte either way (a pair of 4-bit slices is looked up in one 16 x 16 table).

The codewords are trained by FAISS's ProductQuantizer (its k-means per slice); the codes
of every stored vector are computed here in torch, one batched product per block of
vectors, and equal FAISS's own codes up to float ties (tested)."""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

RESIDUAL_SUBSPACES = 64  # PQ slices; two per stored byte (see the module docstring)
CODEWORD_BITS = 4
CODEWORDS = 1 << CODEWORD_BITS  # per slice
RESIDUAL_TRAIN_POINTS = 16_384  # residuals the codewords are trained on
RESIDUAL_ITERATIONS = 12  # k-means passes per slice
ENCODE_BATCH = 4096  # vectors encoded per batched product


def subspaces_for(dim: int, wanted: int = RESIDUAL_SUBSPACES) -> int:
    """The most slices up to `wanted` that divide d evenly (d = 1024: 64)."""
    for count in range(min(wanted, dim), 0, -1):
        if dim % count == 0:
            return count
    return 1


def train_codebook(residuals: np.ndarray, subspaces: int, seed: int = 0) -> np.ndarray:
    """(n, d) float32 residuals -> (subspaces, 16, d / subspaces) float32 codewords.
    With fewer than 16 residuals (tiny sides) the missing codewords repeat points."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build loaded
    import faiss

    residuals = np.ascontiguousarray(residuals, np.float32)
    n, dim = residuals.shape
    if n < CODEWORDS:  # k-means needs at least one point per codeword
        repeat = np.random.default_rng(seed).choice(n, CODEWORDS - n)
        residuals = np.concatenate([residuals, residuals[repeat]])
    quantizer = faiss.ProductQuantizer(dim, subspaces, CODEWORD_BITS)
    quantizer.cp.niter = RESIDUAL_ITERATIONS
    quantizer.cp.seed = seed
    quantizer.cp.max_points_per_centroid = RESIDUAL_TRAIN_POINTS // CODEWORDS
    quantizer.cp.min_points_per_centroid = 1  # small sides train on what they have
    quantizer.verbose = False
    quantizer.train(residuals)
    codewords = faiss.vector_to_array(quantizer.centroids)
    return codewords.reshape(subspaces, CODEWORDS, dim // subspaces).astype(np.float32)


def encode_residuals(
    vectors: torch.Tensor, centroids: torch.Tensor, cells: torch.Tensor, codebook: torch.Tensor
) -> np.ndarray:
    """(n, d) vectors in the given cells -> (n, code_bytes) uint8 codes of their
    residuals: per slice the codeword nearest in L2 (the largest r . w - |w|^2 / 2),
    two slices to a byte."""
    subspaces, _, width = codebook.shape
    half_norms = 0.5 * (codebook * codebook).sum(dim=2)  # (subspaces, 16)
    slices = np.empty((len(vectors), subspaces), np.uint8)
    for start in range(0, len(vectors), ENCODE_BATCH):
        stop = min(len(vectors), start + ENCODE_BATCH)
        residual = vectors[start:stop] - centroids[cells[start:stop]]
        parts = residual.view(stop - start, subspaces, width).transpose(0, 1)  # (S, B, w)
        scores = torch.baddbmm(-half_norms[:, None, :], parts, codebook.transpose(1, 2))
        slices[start:stop] = scores.argmax(dim=2).T.to(torch.uint8).numpy()
    return pack(slices)


def pack(slices: np.ndarray) -> np.ndarray:
    """(n, S) 4-bit codes -> (n, code_bytes(S)) bytes: slice 2j low, 2j + 1 high."""
    if slices.shape[1] % 2:
        slices = np.concatenate([slices, np.zeros((len(slices), 1), np.uint8)], axis=1)
    return (slices[:, 0::2] | (slices[:, 1::2] << CODEWORD_BITS)).astype(np.uint8)


def unpack(codes: np.ndarray, subspaces: int) -> np.ndarray:
    """The inverse of pack: (n, code_bytes) bytes -> (n, subspaces) 4-bit codes."""
    slices = np.empty((len(codes), 2 * codes.shape[1]), np.uint8)
    slices[:, 0::2] = codes & (CODEWORDS - 1)
    slices[:, 1::2] = codes >> CODEWORD_BITS
    return slices[:, :subspaces]


def decode_residuals(codes: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """(n, code_bytes) codes -> (n, d) float32 residuals (for checks and tests)."""
    slices = unpack(np.asarray(codes), codebook.shape[0])
    return np.concatenate([codebook[s][slices[:, s]] for s in range(codebook.shape[0])], axis=1)

"""Approximate similarities from residual codes (see build/residuals.py for the codes).

A stored vector is its cell centroid plus a product-quantized residual; its similarity
to a query vector q is q . centroid plus, per slice of the d dimensions, the product of
q's slice with the slice's codeword. For one query the products of every slice with its
16 codewords are computed once; a pair of slices (one stored byte) then has 16 x 16
sums, a table of 256 entries per byte, and a stored vector's residual term is the sum
of one table entry per byte: code_bytes row gathers per vector, no decoding, no product
over d."""

from __future__ import annotations

import numpy as np
import torch


class ResidualCodes:
    """One side's codebook (subspaces, 16, d / subspaces) and every stored vector's
    (n, code_bytes) uint8 codes, in the side's global vector order."""

    def __init__(self, codebook: np.ndarray, codes: np.ndarray) -> None:
        self.codebook = torch.from_numpy(np.array(codebook, np.float32))  # a copy: small
        self.codes = codes
        self.subspaces = self.codebook.shape[0]

    def similarities(self, queries: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """(q, d) query vectors and vector positions -> (len(positions), q) float32: each
        stored vector's residual term against each query vector."""
        queries = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
        slices = queries.view(len(queries), self.subspaces, -1)
        table = torch.einsum("skw,qsw->skq", self.codebook, slices)  # (S, 16, q)
        if self.subspaces % 2:  # the last byte's high half codes nothing
            table = torch.cat([table, torch.zeros_like(table[:1])])
        # byte j = slice 2j (low half) + 16 x slice 2j + 1 (high half)
        pairs = table[1::2, :, None, :] + table[0::2, None, :, :]  # (S/2, high, low, q)
        pairs = pairs.reshape(len(pairs), -1, len(queries)).contiguous()  # (S/2, 256, q)
        codes = torch.from_numpy(np.ascontiguousarray(self.codes[positions].T)).long()
        out = torch.zeros(len(positions), len(queries))
        for byte in range(len(pairs)):
            out += pairs[byte].index_select(0, codes[byte])
        return out.numpy()

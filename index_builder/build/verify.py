"""`chan index verify`: every check an index can be put through, each one naming what
it compared. Problems raise IndexFormatError with the file and the fix."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from index_builder.build.residuals import encode_residuals, unpack
from index_builder.format import layout as fmt
from index_builder.format.reader import GalleryIndex

logger = logging.getLogger(__name__)


def verify_index(path: Path, checkpoint: Path | None = None) -> list[str]:
    """Run all checks; returns a description of each one that passed."""
    digest = None
    if checkpoint is not None:
        from model.checkpoint import checkpoint_hash

        digest = checkpoint_hash(checkpoint)
    index = GalleryIndex(path, digest, checksums=True)
    try:
        done = [f"format {fmt.FORMAT} v{fmt.FORMAT_VERSION}",
                f"{len(index.manifest['files'])} files: sizes and sha256"]  # fmt: skip
        if digest:
            done.append(f"built by checkpoint {digest[:12]}")
        done += _check_arrays(index)
        done += _check_cells(index)
        done += _check_metadata(index)
        return done
    finally:
        index.close()


def _fail(path: Path, message: str) -> None:
    raise fmt.IndexFormatError(f"{path}: {message}; rebuild the index")


def _check_arrays(index: GalleryIndex) -> list[str]:
    counts = index.manifest["counts"]
    if index.num_images != counts["images"] or index.num_captions != counts["captions"]:
        _fail(index.path, "segment row counts disagree with the manifest")
    if (
        len(index.region_owner) != counts["region_vectors"]
        or index.counts.sum() != counts["region_vectors"]
    ):
        _fail(index.path, "region vectors disagree with the region counts")
    if np.any(np.diff(index.region_owner) < 0) or index.region_owner.max() >= index.num_images:
        _fail(index.path, "region_owner is not a sorted list of image rows")
    if index.word_offsets[-1] != counts["word_vectors"] or np.any(np.diff(index.word_offsets) < 1):
        _fail(index.path, "word offsets disagree with the word vectors")
    for seg in index.segments:
        if seg.regions.shape[1:] != (index.num_regions, index.dim):
            _fail(index.path, f"regions have shape {seg.regions.shape}")
        if seg.words.shape[1] != index.dim or len(seg.words) != seg.offsets[-1]:
            _fail(index.path, f"words have shape {seg.words.shape}")
    return [
        f"{index.num_images:,} images, {len(index.region_owner):,} region vectors, owners sorted",
        f"{index.num_captions:,} captions, {int(index.word_offsets[-1]):,} word vectors",
    ]


CODE_SAMPLE = 2048  # vectors per side whose stored cell is checked against the centroids
# A stored cell may lose to the best centroid by this much similarity: cells assigned in
# bf16 (native on some CPUs) can pick a near-tie that fp32 ranks second.
CODE_TOLERANCE = 0.02


def _check_cells(index: GalleryIndex) -> list[str]:
    """Each side's centroids and codes: shapes and ranges as the open checked them, and
    for a sample of stored vectors (every segment) that the stored cell is the nearest
    centroid, i.e. that the inverted lists built from the codes hold the stored rows."""
    counts, done = index.manifest["counts"], []
    rng = np.random.default_rng(0)
    for side, codes, centroids, vectors in (
        ("regions", index.region_codes, index.region_centroids, counts["region_vectors"]),
        ("words", index.word_codes, index.word_centroids, counts["word_vectors"]),
    ):
        if codes is None:
            done.append(f"{side}: no cells ({vectors:,} vectors are scanned exactly)")
            continue
        positions = np.sort(rng.choice(vectors, min(vectors, CODE_SAMPLE), replace=False))
        sample = _stored_vectors(index, side, positions)
        sims = sample @ np.asarray(centroids, np.float32).T
        stored = sims[np.arange(len(positions)), codes[positions]]
        worse = np.flatnonzero(stored < sims.max(axis=1) - CODE_TOLERANCE)
        if len(worse):
            _fail(index.path, f"{side} vector {int(positions[worse[0]])} is stored in cell "
                  f"{int(codes[positions[worse[0]]])}, not its nearest one; "
                  f"{len(worse)} of {len(positions)} sampled vectors are misfiled")  # fmt: skip
        used = len(np.unique(codes))
        done.append(f"{side}: {len(centroids):,} cells of d={centroids.shape[1]}, "
                    f"{vectors:,} vectors coded, {used:,} cells in use, "
                    f"{len(positions):,} sampled vectors in their nearest cell")  # fmt: skip
        residuals = index.region_residuals if side == "regions" else index.word_residuals
        if residuals is not None:
            done.append(_check_residuals(index, side, residuals, sample, centroids,
                                         codes[positions], positions))  # fmt: skip
    return done


# Sampled residual codes that may differ from a fresh encoding: a near-tie between two
# codewords can go either way in another float order; a damaged file differs wholesale.
RESIDUAL_MISMATCH_SHARE = 0.01


def _check_residuals(
    index: GalleryIndex,
    side: str,
    residuals: tuple[np.ndarray, np.ndarray],
    sample: np.ndarray,
    centroids: np.ndarray,
    cells: np.ndarray,
    positions: np.ndarray,
) -> str:
    """The stored residual codes of the sampled vectors are their codes against the
    codebook: encoded again, at most RESIDUAL_MISMATCH_SHARE of the slices differ."""
    codebook, stored = residuals
    fresh = encode_residuals(
        torch.from_numpy(np.array(sample, np.float32)),
        torch.from_numpy(np.array(centroids, np.float32)),
        torch.from_numpy(cells.astype(np.int64)),
        torch.from_numpy(np.array(codebook, np.float32)),
    )
    slices = codebook.shape[0]
    differ = float(np.mean(unpack(fresh, slices) != unpack(stored[positions], slices)))
    if differ > RESIDUAL_MISMATCH_SHARE:
        _fail(index.path, f"{side} residual codes of the sampled vectors differ from their "
              f"encoding in {differ:.1%} of the slices")  # fmt: skip
    return (
        f"{side}: residual codes of {stored.shape[1]} bytes per vector, "
        f"{len(positions):,} sampled vectors encode to them ({differ:.2%} of slices differ)"
    )


def _stored_vectors(index: GalleryIndex, side: str, positions: np.ndarray) -> np.ndarray:
    """Stored vectors of one side at global flat positions -> (n, d) float32."""
    if side == "words":
        return index.word_vectors(positions)
    rows = index.region_owner[positions]
    slots = positions - index.region_starts[rows]
    unique, inverse = np.unique(rows, return_inverse=True)
    block, _ = index.images(unique)
    return block.numpy()[inverse, slots]


def _check_metadata(index: GalleryIndex) -> list[str]:
    counts = index.metadata.counts()
    if counts["images"] != index.num_images or counts["captions"] != index.num_captions:
        _fail(
            index.path / fmt.METADATA,
            f"has {counts['images']} images and {counts['captions']} captions, the arrays "
            f"{index.num_images} and {index.num_captions}",
        )
    return [
        f"metadata: {counts['live_images']:,} live images, {counts['live_captions']:,} live "
        f"captions ({counts['images'] - counts['live_images']} + "
        f"{counts['captions'] - counts['live_captions']} deleted)"
    ]

"""IndexWriter: encoded embeddings in, a verified index directory out.

The writer knows nothing about models: it takes region embeddings (with counts and
boxes) and word embeddings (flat, with caption lengths) batch by batch, writes them into
preallocated segment files, then trains the k-means cells of each side from what it wrote
(see cells.py), measures the shortlist's recall, checksums every file and renames the directory into
place. Everything happens in `OUT.partial/`; a state file records the rows written so an
interrupted build continues where it stopped."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index_builder.build.cells import (
    CELL_ITERATIONS,
    Assigner,
    Fetch,
    cell_count,
    train_centroids,
    write_codes,
)
from index_builder.build.residuals import (
    RESIDUAL_TRAIN_POINTS,
    decode_residuals,
    encode_residuals,
    subspaces_for,
    train_codebook,
)
from index_builder.format import durable
from index_builder.format import layout as fmt
from index_builder.format.manifest import (
    CENTROID_FILES,
    CODE_FILES,
    CODEBOOK_FILES,
    RESIDUAL_FILES,
    segment_files,
)
from index_builder.format.metadata import CaptionRecord, ImageRecord, MetadataStore
from index_builder.format.quant import dequantize, quantize_int8
from model.io import RowWriter, load_state, preallocate_npy, save_state

logger = logging.getLogger(__name__)

CELL_TRAIN_POINTS = 32  # k-means sample per cell
# `chan index compact` retrains a side's cells when the quantisation error (1 - mean
# similarity of a vector to its cell) of the vectors added since training exceeds the
# error at training by this factor; the factor is recorded in the manifest.
RETRAIN_DRIFT = 1.15


@dataclass(frozen=True)
class KeptCells:
    """One side's cells carried through a rewrite (a compaction that needs no retraining)."""

    centroids: np.ndarray  # (cells, d)
    codes: np.ndarray  # (n,) the kept rows' cells
    codebook: np.ndarray | None  # (S, 16, d / S) residual codewords, when the side has them
    residuals: np.ndarray | None  # (n, S / 2) the kept rows' residual codes
    entry: dict[str, Any]  # the side's manifest entry


@dataclass(frozen=True)
class WriterSpec:
    """What the index is made of and how its cells are sized."""

    num_regions: int  # K slots per image
    dim: int  # d of the joint space
    matching: dict[str, Any]  # coding, pooling, pooling_temperature of the model
    checkpoint: dict[str, Any]  # {"sha256", "path", "config"}: who encoded the gallery
    extractor: dict[str, Any] | None = None  # how raw images become regions
    storage: str = "float16"  # float16 | int8 (per-vector scale)
    word_cells: int | None = None  # k-means cells over words; None = by size (0 = none)
    region_cells: int | None = None  # k-means cells over regions; None = by size (0 = none)
    residual_codes: bool = False  # also PQ codes of each vector's residual (residuals.py)
    build: dict[str, Any] = field(default_factory=dict)  # parameters recorded in the manifest

    def __post_init__(self) -> None:
        if self.storage not in fmt.STORAGE_DTYPES:
            raise ValueError(f"storage must be one of {fmt.STORAGE_DTYPES}, got {self.storage!r}")


class SegmentWriter:
    """The rows of one segment: preallocated files in `directory`, filled batch by batch
    (images in order, captions in order). Its region vectors belong to global image rows
    first_image.. (`region_owner.npy`)."""

    def __init__(
        self,
        directory: Path,
        spec: WriterSpec,
        region_counts: np.ndarray,
        caption_lengths: np.ndarray,
        first_image: int = 0,
    ) -> None:
        self.seg, self.spec, self.first_image = Path(directory), spec, first_image
        self.counts = np.asarray(region_counts, dtype=np.int32)
        self.lengths = np.asarray(caption_lengths, dtype=np.int64)
        if self.counts.ndim != 1 or self.lengths.ndim != 1:
            raise ValueError("region_counts and caption_lengths must be 1-d")
        if len(self.counts) and (self.counts.min() < 1 or self.counts.max() > spec.num_regions):
            raise ValueError(f"region counts must lie in [1, {spec.num_regions}]")
        if len(self.lengths) and self.lengths.min() < 1:
            raise ValueError("every caption needs at least one word")
        self.word_offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.state = {"images_done": 0, "captions_done": 0}

    def preallocate(self) -> None:
        n, k, d = len(self.counts), self.spec.num_regions, self.spec.dim
        n_words = int(self.lengths.sum())
        store = np.int8 if self.spec.storage == "int8" else np.float16
        arrays = {
            "regions.npy": ((n, k, d), store),
            "region_boxes.npy": ((n, k, 4), np.float32),
            "words.npy": ((n_words, d), store),
        }
        if self.spec.storage == "int8":
            arrays |= {
                "region_scales.npy": ((n, k), np.float32),
                "word_scales.npy": ((n_words,), np.float32),
            }
        self.seg.mkdir(parents=True, exist_ok=True)
        for name, (shape, dtype) in arrays.items():
            preallocate_npy(self.seg / name, shape, dtype)
        np.save(self.seg / "region_counts.npy", self.counts)
        np.save(self.seg / "word_offsets.npy", self.word_offsets)
        owner = np.repeat(np.arange(n, dtype=np.int64) + self.first_image, self.counts)
        np.save(self.seg / "region_owner.npy", owner)

    def _save_state(self, state: dict[str, Any]) -> None:
        """Called after every batch; a resumable writer records the rows written."""

    @property
    def images_done(self) -> int:
        return self.state["images_done"]

    @property
    def captions_done(self) -> int:
        return self.state["captions_done"]

    @property
    def complete(self) -> bool:
        return self.images_done == len(self.counts) and self.captions_done == len(self.lengths)

    # ------------------------------------------------------------------ rows

    def write_images(self, start: int, embeddings: np.ndarray, boxes: np.ndarray) -> None:
        """Rows start.. of (B, K, d) float embeddings (padded slots zero) and (B, K, 4)
        boxes. Batches must come in order; each one is durable when this returns."""
        if start != self.images_done:
            raise ValueError(f"images must be written in order: expected row {self.images_done}")
        embeddings = np.asarray(embeddings, dtype=np.float32)
        self._write_rows("regions.npy", "region_scales.npy", start, embeddings)
        with RowWriter(self.seg / "region_boxes.npy") as writer:
            writer.write(start, np.asarray(boxes, dtype=np.float32))
        self.state["images_done"] = start + len(embeddings)
        self._save_state(self.state)

    def write_captions(self, start: int, words: np.ndarray) -> None:
        """Captions start.. given as their valid word vectors back to back (w, d)."""
        if start != self.captions_done:
            raise ValueError(f"captions must be written in order: expected {self.captions_done}")
        lengths = self.lengths[start:]
        stop = start + int(np.searchsorted(np.cumsum(lengths), len(words), side="right"))
        if self.word_offsets[stop] - self.word_offsets[start] != len(words):
            raise ValueError("word vectors do not end on a caption boundary")
        words = np.asarray(words, dtype=np.float32)
        self._write_rows("words.npy", "word_scales.npy", int(self.word_offsets[start]), words)
        self.state["captions_done"] = stop
        self._save_state(self.state)

    def _write_rows(self, name: str, scale_name: str, start: int, rows: np.ndarray) -> None:
        if self.spec.storage == "int8":
            codes, scales = quantize_int8(rows)
            with RowWriter(self.seg / scale_name) as writer:
                writer.write(start, scales)
            rows = codes
        with RowWriter(self.seg / name) as writer:
            writer.write(start, rows)

    def assign_cells(
        self,
        side: str,
        centroids: np.ndarray,
        codebook: np.ndarray | None,
        progress: bool | None = None,
    ) -> float:
        """Write the cell of every vector of one side against given centroids, and its
        residual codes against `codebook` (None: the side has none); returns the
        vectors' mean similarity to their cell (1 - it is the quantisation error)."""
        seg = fmt.open_segment(self.seg, self.spec.storage)
        count, fetch = side_vectors(seg, side)
        residuals = None if codebook is None else (codebook, self.seg / RESIDUAL_FILES[side])
        return write_codes(centroids, count, fetch, self.seg / CODE_FILES[side], progress,
                           residuals)  # fmt: skip

    def files(self) -> list[str]:
        """The segment's files, relative to the segment directory."""
        names = [*CODE_FILES.values(), *RESIDUAL_FILES.values()]
        return segment_files(self.spec.storage) + [n for n in names if (self.seg / n).exists()]


class IndexWriter(SegmentWriter):
    """Writes one index directory; see the module docstring for the life cycle."""

    def __init__(
        self,
        out: Path,
        spec: WriterSpec,
        region_counts: np.ndarray,
        caption_lengths: np.ndarray,
        overwrite: bool = False,
    ) -> None:
        self.out = Path(out)
        self.work = self.out.with_name(self.out.name + ".partial")
        super().__init__(self.work / fmt.segment_name(0), spec, region_counts, caption_lengths)
        if len(self.counts) == 0:
            raise ValueError("an index needs at least one image")
        if self.out.exists() and not overwrite:
            raise ValueError(f"{self.out} exists; pass --overwrite to replace it")
        self.state = self._open_state()

    # ------------------------------------------------------------------ setup

    def _signature(self) -> str:
        import hashlib

        digest = hashlib.sha256(json.dumps(asdict(self.spec), sort_keys=True).encode())
        digest.update(self.counts.tobytes())
        digest.update(self.lengths.tobytes())
        return digest.hexdigest()

    def _open_state(self) -> dict[str, Any]:
        """The rows written by an interrupted build of the same inputs, else a fresh start."""
        self.signature = self._signature()
        state = load_state(self.work / durable.BUILD_STATE, self.signature)
        if state is not None:
            logger.info("resuming the build in %s (%d images, %d captions written)",
                        self.work, state["images_done"], state["captions_done"])  # fmt: skip
            return state
        shutil.rmtree(self.work, ignore_errors=True)
        self.preallocate()
        state = {"images_done": 0, "captions_done": 0}
        self._save_state(state)
        return state

    def _save_state(self, state: dict[str, Any]) -> None:
        save_state(self.work / durable.BUILD_STATE, self.signature, state)

    # ------------------------------------------------------------------ finish

    def finish(
        self,
        images: list[ImageRecord],
        captions: list[CaptionRecord],
        measure_recall: Callable[[Path], dict[str, Any]] | None = None,
        progress: bool | None = None,
        kept_cells: dict[str, KeptCells] | None = None,
        generation: int = 1,
    ) -> Path:
        """Cells, metadata, recall, checksums, manifest; then rename into place.
        kept_cells: sides whose centroids and codes carry over (a compaction that needs
        no retraining) instead of being trained here."""
        if not self.complete:
            raise ValueError(
                f"not every row was written ({self.images_done}/{len(self.counts)} images, "
                f"{self.captions_done}/{len(self.lengths)} captions)"
            )
        cells = self._build_cells(progress, kept_cells or {})
        self._write_metadata(images, captions)
        manifest = self._manifest(cells, generation)
        segment = fmt.segment_name(0)
        names = [fmt.METADATA, *(CENTROID_FILES[side] for side in cells)]
        names += [CODEBOOK_FILES[side] for side, entry in cells.items() if "residual" in entry]
        names += [f"{segment}/{f}" for f in self.files()]
        manifest["files"] = fmt.file_entries(self.work, names)
        fmt.write_manifest(self.work, manifest)  # complete: the recall run opens it
        if measure_recall is not None:
            manifest["recall"] = measure_recall(self.work)
            fmt.write_manifest(self.work, manifest)
        (self.work / durable.BUILD_STATE).unlink()
        durable.commit_dir(self.work, self.out)  # one atomic step; see durable.py
        logger.info("index written to %s", self.out)
        return self.out

    def _build_cells(
        self, progress: bool | None, kept: dict[str, KeptCells]
    ) -> dict[str, dict[str, Any]]:
        """PLAID-style cells for each side that is large enough: k-means centroids of its
        vectors (`region_centroids.npy` / `word_centroids.npy`) and each vector's cell (the
        segment's codes), see cells.py. The stored fp16 / int8 vectors are the exact
        contents of the cells. A side with few vectors needs none: scanning it is cheap."""
        seg = fmt.open_segment(self.seg, self.spec.storage)
        wanted = {"regions": self.spec.region_cells, "words": self.spec.word_cells}
        built = {}
        for side, cells in wanted.items():
            count, fetch = side_vectors(seg, side)
            if side in kept:
                side_kept = kept[side]
                np.save(self.work / CENTROID_FILES[side], side_kept.centroids.astype(np.float32))
                np.save(self.seg / CODE_FILES[side], np.asarray(side_kept.codes, np.int32))
                if side_kept.codebook is not None:
                    np.save(self.work / CODEBOOK_FILES[side], side_kept.codebook)
                    np.save(self.seg / RESIDUAL_FILES[side], side_kept.residuals)
                built[side] = side_kept.entry
                continue
            cells = cell_count(count) if cells is None else cells
            if not cells:
                logger.info("%s: %d vectors, searched exactly (no cells needed)", side, count)
                continue
            if cells > count:
                raise ValueError(f"{cells} {side} cells need at least as many vectors ({count})")
            sample = min(count, CELL_TRAIN_POINTS * cells)
            positions = np.sort(np.random.default_rng(0).choice(count, sample, replace=False))
            logger.info("%s: %d cells trained on %d of %d vectors", side, cells, sample, count)
            started = time.perf_counter()
            train = fetch(positions)
            centroids = train_centroids(train, cells, CELL_ITERATIONS, seed=1)
            np.save(self.work / CENTROID_FILES[side], centroids.astype(np.float32))
            residuals, entry = None, {}
            if self.spec.residual_codes:
                codebook, entry["residual"] = train_residuals(train, centroids)
                np.save(self.work / CODEBOOK_FILES[side], codebook)
                residuals = (codebook, self.seg / RESIDUAL_FILES[side])
            similarity = write_codes(centroids, count, fetch, self.seg / CODE_FILES[side],
                                     progress, residuals)  # fmt: skip
            seconds = time.perf_counter() - started
            logger.info("%s cells: %.1f s", side, seconds)
            built[side] = {"cells": cells, "train_vectors": sample,
                           "iterations": CELL_ITERATIONS, "seconds": round(seconds, 2),
                           "similarity": round(similarity, 6),
                           "retrain_drift": RETRAIN_DRIFT} | entry  # fmt: skip
        return built

    def _write_metadata(self, images: list[ImageRecord], captions: list[CaptionRecord]) -> None:
        if len(images) != len(self.counts) or len(captions) != len(self.lengths):
            raise ValueError("one metadata record per image and per caption is needed")
        path = self.work / fmt.METADATA
        path.unlink(missing_ok=True)
        with MetadataStore.create(path) as store:
            store.add_images(images)
            store.add_captions(captions)

    def _manifest(self, cells: dict[str, dict[str, Any]], generation: int) -> dict[str, Any]:
        from model.checkpoint import code_versions

        spec = self.spec
        return {
            "format": fmt.FORMAT,
            "format_version": fmt.FORMAT_VERSION,
            "generation": generation,
            "checkpoint": spec.checkpoint,
            "extractor": spec.extractor,
            "matching": spec.matching,
            "counts": {
                "images": len(self.counts),
                "captions": len(self.lengths),
                "region_vectors": int(self.counts.sum()),
                "word_vectors": int(self.lengths.sum()),
            },
            "num_regions": spec.num_regions,
            "dim": spec.dim,
            "storage": spec.storage,
            "segments": [
                {
                    "name": fmt.segment_name(0),
                    "images": len(self.counts),
                    "captions": len(self.lengths),
                }
            ],
            "cells": cells,
            "build": spec.build,
            "versions": code_versions(),
        }


def train_residuals(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, dict]:
    """PQ codewords for the residuals of (a sample of) one side's vectors from their
    cells, and the manifest entry that describes them (see build/residuals.py)."""
    started = time.perf_counter()
    rng = np.random.default_rng(2)
    take = rng.choice(len(vectors), min(len(vectors), RESIDUAL_TRAIN_POINTS), replace=False)
    points = torch.from_numpy(np.ascontiguousarray(vectors[np.sort(take)], np.float32))
    assign = Assigner(centroids)
    cells, _ = assign(points)
    residuals = (points - assign.centroids[cells]).numpy()
    subspaces = subspaces_for(points.shape[1])
    codebook = train_codebook(residuals, subspaces)
    codes = encode_residuals(points, assign.centroids, cells, torch.from_numpy(codebook))
    left = float(((residuals - decode_residuals(codes, codebook)) ** 2).sum(axis=1).mean())
    before = float((residuals**2).sum(axis=1).mean())
    entry = {"subspaces": subspaces, "codewords": codebook.shape[1],
             "train_vectors": len(points), "seconds": round(time.perf_counter() - started, 2),
             "error": round(left / before if before else 0.0, 6)}  # fmt: skip
    logger.info("residual codes: %d 4-bit slices per vector, error %.3f of the bare cell's",
                subspaces, entry["error"])  # fmt: skip
    return codebook, entry


def region_vectors(seg: fmt.Segment, positions: np.ndarray) -> np.ndarray:
    """Valid region vectors at flat positions (sorted) of a segment -> (len, d) float32."""
    starts = np.concatenate([[0], np.cumsum(seg.counts)])
    rows = np.searchsorted(starts, positions, side="right") - 1
    slots = positions - starts[rows]
    scales = None if seg.region_scales is None else seg.region_scales[rows, slots]
    return dequantize(seg.regions[rows, slots], scales)  # only the valid slots are read


def side_vectors(seg: fmt.Segment, side: str) -> tuple[int, Fetch]:
    """How many vectors one side ("regions" or "words") of a segment holds, and a
    function from sorted positions to those vectors as float32."""
    if side == "regions":
        return len(seg.owner), lambda positions: region_vectors(seg, positions)
    return len(seg.words), lambda positions: word_vectors(seg, positions)


def word_vectors(seg: fmt.Segment, positions: np.ndarray) -> np.ndarray:
    scales = None if seg.word_scales is None else seg.word_scales[positions]
    return dequantize(seg.words[positions], scales)

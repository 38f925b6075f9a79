"""IndexWriter: encoded embeddings in, a verified index directory out.

The writer knows nothing about models: it takes region embeddings (with counts and
boxes) and word embeddings (flat, with caption lengths) batch by batch, writes them into
preallocated segment files, then trains and fills the FAISS indexes from what it wrote,
measures the shortlist's recall, checksums every file and renames the directory into
place. Everything happens in `OUT.partial/`; a state file records the rows written so an
interrupted build continues where it stopped."""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from index_builder.build.cells import train_centroids, write_codes
from index_builder.format import durable
from index_builder.format import layout as fmt
from index_builder.format.manifest import segment_files
from index_builder.format.metadata import CaptionRecord, ImageRecord, MetadataStore
from index_builder.format.quant import quantize_int8
from index_builder.policy import (
    FLAT_MAX_VECTORS,
    MAX_TRAIN_VECTORS,
    IndexChoice,
    choose_index_key,
    ivf_list_count,
    make_index,
)
from model.features.extract import RowWriter, preallocate_npy
from model.vocab import atomic_write_text

logger = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes all FAISS indexes together may take in RAM
ADD_BATCH_VECTORS = 65_536  # vectors per faiss.add call (bounds the float32 copy)
# More cells sharpen approximate scores but cost assignment time (vectors x cells x d):
# 4,096 cells keep 100,000 images x 36 regions x d=1024 at about two minutes.
MAX_CELLS = 4096
CELL_ITERATIONS = 10  # k-means passes; cells only need to be roughly right
CELL_TRAIN_POINTS = 32  # k-means sample per cell


@dataclass(frozen=True)
class WriterSpec:
    """What the index is made of and how its FAISS side is chosen."""

    num_regions: int  # K slots per image
    dim: int  # d of the joint space
    matching: dict[str, Any]  # coding, pooling, pooling_temperature of the model
    checkpoint: dict[str, Any]  # {"sha256", "path", "config"}: who encoded the gallery
    extractor: dict[str, Any] | None = None  # how raw images become regions
    storage: str = "float16"  # float16 | int8 (per-vector scale)
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    factories: dict[str, str] = field(default_factory=dict)  # overrides: regions, words, ...
    pooled: bool = True  # also build one-vector-per-item indexes
    word_cells: int | None = None  # k-means cells over words; None = by size (0 = none)
    region_cells: int | None = None  # k-means cells over regions; None = by size (0 = none)
    build: dict[str, Any] = field(default_factory=dict)  # parameters recorded in the manifest

    def __post_init__(self) -> None:
        if self.storage not in fmt.STORAGE_DTYPES:
            raise ValueError(f"storage must be one of {fmt.STORAGE_DTYPES}, got {self.storage!r}")


class IndexWriter:
    """Writes one index directory; see the module docstring for the life cycle."""

    def __init__(
        self,
        out: Path,
        spec: WriterSpec,
        region_counts: np.ndarray,
        caption_lengths: np.ndarray,
        overwrite: bool = False,
    ) -> None:
        self.out, self.spec = Path(out), spec
        self.work = self.out.with_name(self.out.name + ".partial")
        self.seg = self.work / fmt.segment_name(0)
        self.counts = np.asarray(region_counts, dtype=np.int32)
        self.lengths = np.asarray(caption_lengths, dtype=np.int64)
        self._check_inputs(overwrite)
        self.word_offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.state = self._open_state()

    # ------------------------------------------------------------------ setup

    def _check_inputs(self, overwrite: bool) -> None:
        if self.counts.ndim != 1 or self.lengths.ndim != 1:
            raise ValueError("region_counts and caption_lengths must be 1-d")
        if len(self.counts) == 0:
            raise ValueError("an index needs at least one image")
        if self.counts.min() < 1 or self.counts.max() > self.spec.num_regions:
            raise ValueError(f"region counts must lie in [1, {self.spec.num_regions}]")
        if len(self.lengths) and self.lengths.min() < 1:
            raise ValueError("every caption needs at least one word")
        if self.out.exists() and not overwrite:
            raise ValueError(f"{self.out} exists; pass --overwrite to replace it")

    def _signature(self) -> str:
        import hashlib

        digest = hashlib.sha256(json.dumps(asdict(self.spec), sort_keys=True).encode())
        digest.update(self.counts.tobytes())
        digest.update(self.lengths.tobytes())
        return digest.hexdigest()

    def _open_state(self) -> dict[str, Any]:
        state_path = self.work / "state.json"
        signature = self._signature()
        if state_path.exists():
            state = json.loads(state_path.read_text())
            if state.get("signature") == signature:
                logger.info(
                    "resuming the build in %s (%d images, %d captions written)",
                    self.work,
                    state["images_done"],
                    state["captions_done"],
                )
                return state
            logger.warning("%s holds a build of other inputs; starting over", self.work)
        shutil.rmtree(self.work, ignore_errors=True)
        self.seg.mkdir(parents=True)
        self._preallocate()
        state = {"signature": signature, "images_done": 0, "captions_done": 0}
        self._save_state(state)
        return state

    def _preallocate(self) -> None:
        n, k, d = len(self.counts), self.spec.num_regions, self.spec.dim
        n_words, m = int(self.lengths.sum()), len(self.lengths)
        store = np.int8 if self.spec.storage == "int8" else np.float16
        arrays = {
            "regions.npy": ((n, k, d), store),
            "region_boxes.npy": ((n, k, 4), np.float32),
            "image_pooled.npy": ((n, d), np.float16),
            "words.npy": ((n_words, d), store),
            "caption_pooled.npy": ((m, d), np.float16),
        }
        if self.spec.storage == "int8":
            arrays |= {
                "region_scales.npy": ((n, k), np.float32),
                "word_scales.npy": ((n_words,), np.float32),
            }
        for name, (shape, dtype) in arrays.items():
            preallocate_npy(self.seg / name, shape, dtype)
        np.save(self.seg / "region_counts.npy", self.counts)
        np.save(self.seg / "word_offsets.npy", self.word_offsets)
        np.save(self.seg / "region_owner.npy", np.repeat(np.arange(n, dtype=np.int64), self.counts))

    def _save_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.work / "state.json", json.dumps(state))

    @property
    def images_done(self) -> int:
        return self.state["images_done"]

    @property
    def captions_done(self) -> int:
        return self.state["captions_done"]

    # ------------------------------------------------------------------ rows

    def write_images(self, start: int, embeddings: np.ndarray, boxes: np.ndarray) -> None:
        """Rows start.. of (B, K, d) float embeddings (padded slots zero) and (B, K, 4)
        boxes. Batches must come in order; each one is durable when this returns."""
        if start != self.images_done:
            raise ValueError(f"images must be written in order: expected row {self.images_done}")
        embeddings = np.asarray(embeddings, dtype=np.float32)
        stop = start + len(embeddings)
        counts = self.counts[start:stop]
        self._write_rows("regions.npy", "region_scales.npy", start, embeddings)
        with RowWriter(self.seg / "region_boxes.npy") as writer:
            writer.write(start, np.asarray(boxes, dtype=np.float32))
        pooled = embeddings.sum(axis=1) / counts[:, None]
        with RowWriter(self.seg / "image_pooled.npy") as writer:
            writer.write(start, _normalise(pooled))
        self.state["images_done"] = stop
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
        owner = np.repeat(np.arange(stop - start), self.lengths[start:stop])
        sums = np.zeros((stop - start, words.shape[1]), np.float32)
        np.add.at(sums, owner, words)
        with RowWriter(self.seg / "caption_pooled.npy") as writer:
            writer.write(start, _normalise(sums / self.lengths[start:stop, None]))
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

    # ------------------------------------------------------------------ finish

    def finish(
        self,
        images: list[ImageRecord],
        captions: list[CaptionRecord],
        measure_recall: Callable[[Path], dict[str, Any]] | None = None,
        progress: bool | None = None,
    ) -> Path:
        """FAISS indexes, metadata, recall, checksums, manifest; then rename into place."""
        if self.images_done != len(self.counts) or self.captions_done != len(self.lengths):
            raise ValueError(
                f"not every row was written ({self.images_done}/{len(self.counts)} images, "
                f"{self.captions_done}/{len(self.lengths)} captions)"
            )
        started = time.perf_counter()
        choices = self._build_faiss(progress)
        self._write_metadata(images, captions)
        manifest = self._manifest(choices, time.perf_counter() - started)
        names = [fmt.METADATA, *(f"{c}" for c in manifest["faiss"])]
        names += [f"{fmt.segment_name(0)}/{f}" for f in segment_files(self.spec.storage)]
        for codes in (fmt.REGION_CODES, fmt.WORD_CODES):
            if (self.seg / codes).exists():
                names.append(f"{fmt.segment_name(0)}/{codes}")
        manifest["files"] = fmt.file_entries(self.work, names)
        fmt.write_manifest(self.work, manifest)  # complete: the recall run opens it
        if measure_recall is not None:
            manifest["recall"] = measure_recall(self.work)
            fmt.write_manifest(self.work, manifest)
        (self.work / "state.json").unlink()
        durable.commit_dir(self.work, self.out)  # one atomic step; see durable.py
        logger.info("index written to %s", self.out)
        return self.out

    def _build_faiss(self, progress: bool | None) -> dict[str, IndexChoice]:
        import faiss

        seg = fmt.open_segment(self.seg, self.spec.storage)
        sources = {}
        if self.spec.pooled:
            pooled_images = np.load(self.seg / "image_pooled.npy", mmap_mode="r")
            pooled_caps = np.load(self.seg / "caption_pooled.npy", mmap_mode="r")
            sources[fmt.IMAGE_POOLED_INDEX] = (len(pooled_images), _rows_of(pooled_images))
            sources[fmt.CAPTION_POOLED_INDEX] = (len(pooled_caps), _rows_of(pooled_caps))
        budget = self.spec.memory_budget_bytes // max(1, len(sources))
        choices = {}
        for name, kind, count, fetch, cells in (
            (fmt.REGION_INDEX, "region", len(seg.owner), lambda pos: region_vectors(seg, pos),
             self.spec.region_cells),
            (fmt.WORD_INDEX, "word", len(seg.words), lambda pos: word_vectors(seg, pos),
             self.spec.word_cells),
        ):  # fmt: skip
            choice = self._build_cells(kind, count, fetch, cells)
            if choice is not None:
                choices[name] = choice
        for name, (count, fetch) in sources.items():
            if count == 0:
                continue
            choice = self._choose(name, count, budget)
            index = make_index(choice, self.spec.dim)
            fill_index(index, choice, count, fetch, desc=name, progress=progress)
            faiss.write_index(index, str(self.work / name))
            choices[name] = choice
        return choices

    def _build_cells(self, kind: str, count: int, fetch, cells: int | None) -> IndexChoice | None:
        """PLAID-style cells for one side ("region" or "word"): k-means centroids of its
        vectors (`{kind}s.faiss`) and each vector's cell (`{kind}_codes.npy`), see
        cells.py. The stored fp16 / int8 vectors are the exact contents of the cells. A
        side with few vectors needs no cells at all (scanning it exactly is cheap)."""
        import faiss

        if cells is None and count > FLAT_MAX_VECTORS:
            cells = min(ivf_list_count(count), MAX_CELLS)
        if not cells:
            logger.info("%ss: %d vectors, searched exactly (no cells needed)", kind, count)
            return None
        if cells > count:
            raise ValueError(f"{cells} {kind} cells need at least as many vectors ({count})")
        sample = min(count, CELL_TRAIN_POINTS * cells, MAX_TRAIN_VECTORS)
        positions = np.sort(np.random.default_rng(0).choice(count, sample, replace=False))
        logger.info("%ss: %d cells trained on %d of %d vectors", kind, cells, sample, count)
        started = time.perf_counter()
        centroids = train_centroids(fetch(positions), cells, CELL_ITERATIONS, seed=1)
        index = faiss.IndexFlatIP(self.spec.dim)
        index.add(centroids)
        faiss.write_index(index, str(self.work / f"{kind}s.faiss"))
        write_codes(centroids, count, fetch, self.seg / f"{kind}_codes.npy")
        logger.info("%s cells: %.1f s", kind, time.perf_counter() - started)
        return IndexChoice(
            factory=f"Flat({cells} {kind} cells)", metric="ip", train_vectors=sample,
            nprobe=None, ef_search=None, bytes_estimate=cells * self.spec.dim * 4 + count * 4,
            reason=f"{count:,} {kind} vectors: k-means cells + codes for centroid scoring",
        )  # fmt: skip

    def _choose(self, name: str, count: int, budget: int) -> IndexChoice:
        key = name.removesuffix(".faiss")
        choice = choose_index_key(count, self.spec.dim, budget)
        if key in self.spec.factories:
            choice = override_choice(choice, self.spec.factories[key], count)
        logger.info("%s: %s for %d vectors (%s)", name, choice.factory, count, choice.reason)
        return choice

    def _write_metadata(self, images: list[ImageRecord], captions: list[CaptionRecord]) -> None:
        if len(images) != len(self.counts) or len(captions) != len(self.lengths):
            raise ValueError("one metadata record per image and per caption is needed")
        path = self.work / fmt.METADATA
        path.unlink(missing_ok=True)
        with MetadataStore.create(path) as store:
            store.add_images(images)
            store.add_captions(captions)

    def _manifest(self, choices: dict[str, IndexChoice], faiss_seconds: float) -> dict[str, Any]:
        from model.checkpoint import code_versions

        spec = self.spec
        return {
            "format": fmt.FORMAT,
            "format_version": fmt.FORMAT_VERSION,
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
            "faiss": {
                name: {**asdict(c), "metric": "inner_product"} for name, c in choices.items()
            },
            "build": {
                **spec.build,
                "memory_budget_bytes": spec.memory_budget_bytes,
                "faiss_seconds": round(faiss_seconds, 2),
            },
            "versions": code_versions(),
        }


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _rows_of(array: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda positions: np.asarray(array[positions], dtype=np.float32)


def dequantize(codes: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """Stored rows -> float32 (fp16 is widened; int8 is multiplied by its scales).
    torch converts (vectorised half -> float), several times faster than numpy's cast."""
    import torch

    block = read_only_tensor(np.ascontiguousarray(codes)).to(torch.float32)
    if scales is not None:
        block *= torch.from_numpy(np.asarray(scales, dtype=np.float32))[..., None]
    return block.numpy()


def read_only_tensor(array: np.ndarray):
    """A tensor over an array that may be read-only (a memory-map slice) and is only
    ever read: torch's warning about non-writable arrays does not apply."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def region_vectors(seg: fmt.Segment, positions: np.ndarray) -> np.ndarray:
    """Valid region vectors at flat positions (sorted) of a segment -> (len, d) float32."""
    starts = np.concatenate([[0], np.cumsum(seg.counts)])
    rows = np.searchsorted(starts, positions, side="right") - 1
    slots = positions - starts[rows]
    unique_rows, inverse = np.unique(rows, return_inverse=True)
    scales = None if seg.region_scales is None else seg.region_scales[unique_rows]
    block = dequantize(seg.regions[unique_rows], scales)
    return block[inverse, slots]


def word_vectors(seg: fmt.Segment, positions: np.ndarray) -> np.ndarray:
    scales = None if seg.word_scales is None else seg.word_scales[positions]
    return dequantize(seg.words[positions], scales)


def fill_index(
    index: Any,
    choice: IndexChoice,
    count: int,
    fetch: Callable[[np.ndarray], np.ndarray],
    desc: str,
    progress: bool | None = None,
    seed: int = 0,
) -> None:
    """Train `index` on a random sample (when it needs training), then add all `count`
    vectors in order, so FAISS ids are positions."""
    if not index.is_trained:
        sample = min(count, max(choice.train_vectors, 1))
        positions = np.sort(np.random.default_rng(seed).choice(count, sample, replace=False))
        logger.info("%s: training on %d vectors", desc, sample)
        index.train(np.ascontiguousarray(fetch(positions)))
    for start in tqdm(
        range(0, count, ADD_BATCH_VECTORS),
        desc=f"add {desc}",
        unit="batch",
        disable=progress is False,
    ):
        stop = min(count, start + ADD_BATCH_VECTORS)
        index.add(np.ascontiguousarray(fetch(np.arange(start, stop))))


def override_choice(choice: IndexChoice, factory: str, count: int) -> IndexChoice:
    """A user-given factory string replaces the policy's; training size and search
    parameters are kept when they still apply."""
    from dataclasses import replace

    ivf, hnsw = "IVF" in factory, "HNSW" in factory
    return replace(
        choice,
        factory=factory,
        train_vectors=min(count, max(choice.train_vectors, 10_000))
        if ivf or "PQ" in factory
        else 0,
        nprobe=(choice.nprobe or 32) if ivf else None,
        ef_search=(choice.ef_search or 128) if hnsw else None,
        reason=f"given by the user (policy suggested {choice.factory})",
    )

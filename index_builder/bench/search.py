"""`chan bench search`: build an index of synthetic clustered embeddings and measure the
search path against exhaustive exact scoring, in one run.

Embeddings are generated here, not by a model: `concepts` random unit centroids;
every region of an image is a noisy copy of one of the image's concepts; a caption's
words are noisy copies of its image's concepts plus shared "function words" (as "a",
"the" are in real captions). Queries are fresh captions of random gallery images (text
-> image) and stored images (image -> caption)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from index_builder.build.cells import torch_threads
from index_builder.build.writer import IndexWriter, WriterSpec
from index_builder.format.manifest import RESIDUAL_FILES, code_bytes
from index_builder.format.metadata import CaptionRecord, ImageRecord
from index_builder.format.reader import GalleryIndex
from index_builder.search.vectors import SearchParams, VectorSearcher

logger = logging.getLogger(__name__)
# the "checkpoint" of synthetic embeddings: no model encoded them
SYNTHETIC_CHECKPOINT = hashlib.sha256(b"synthetic embeddings").hexdigest()

NOISE = 0.6  # noise norm relative to the unit centroid: cos(copy, centroid) ~ 0.86
FUNCTION_WORDS = 16  # shared words every caption draws from
FUNCTION_SHARE = 0.3  # share of a caption's words that are function words
BENCH_KEYS = ("images", "regions", "dim", "captions_per_image", "words", "concepts", "seed",
              "residual_codes")  # fmt: skip
MATCHING = {"coding": "hard", "pooling": "lse", "pooling_temperature": 0.1,
            "soft_temperature": 9.0}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SearchBenchOptions:
    """What `run_search_bench` builds and measures (`chan bench search --help`)."""

    images: int = 10_000  # gallery size
    regions: int = 36  # K
    dim: int = 1024  # d
    captions_per_image: int = 5
    words: int = 12  # words per caption
    concepts: int = 2048  # concept centroids
    queries: int = 50  # queries per direction
    storage: tuple[str, ...] = ("float16", "int8")
    threads: int = 1  # torch threads per query, as the service runs
    workdir: Path | None = None  # where to build (None: a temp dir)
    keep: bool = False  # keep the indexes in workdir, reuse them when the parameters match
    candidates: int | None = None  # SearchParams knobs; None: SearchParams' defaults
    caption_candidates: int | None = None
    probes: int | None = None
    caption_probes: int | None = None
    residual_codes: bool = False  # build with residual codes (chan index build --residual-codes)
    seed: int = 0
    index: Path | None = None  # measure this built index instead of a synthetic one
    checkpoint: Path | None = None  # the checkpoint that built `index`


class World:
    """Deterministic synthetic embeddings (see the module docstring)."""

    def __init__(self, args: SearchBenchOptions) -> None:
        self.args = args
        rng = np.random.default_rng(args.seed)
        self.centroids = _unit(rng.normal(size=(args.concepts, args.dim)))
        self.function = _unit(rng.normal(size=(FUNCTION_WORDS, args.dim)))
        # an image shows a few objects; each object is seen by several regions
        self.objects = rng.integers(0, args.concepts, size=(args.images, 6))
        self.counts = rng.integers(args.regions * 2 // 3, args.regions + 1, size=args.images)

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.args.seed, *key])

    def images(self, start: int, stop: int) -> np.ndarray:
        k, d = self.args.regions, self.args.dim
        out = np.zeros((stop - start, k, d), np.float32)
        for i in range(start, stop):
            rng = self._rng(1, i)
            concepts = self.objects[i, rng.integers(0, 6, size=self.counts[i])]
            out[i - start, : self.counts[i]] = _noisy(self.centroids[concepts], rng)
        return out

    def caption(self, image: int, number: int) -> np.ndarray:
        rng = self._rng(2, image, number)
        n = self.args.words
        n_function = round(n * FUNCTION_SHARE)
        content = self.centroids[self.objects[image, rng.integers(0, 6, size=n - n_function)]]
        function = self.function[rng.integers(0, FUNCTION_WORDS, size=n_function)]
        return _noisy(np.concatenate([content, function]), rng, scale=0.5)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _noisy(vectors: np.ndarray, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    noise = rng.normal(size=vectors.shape) * (NOISE * scale / np.sqrt(vectors.shape[-1]))
    return _unit(vectors + noise)


def build(world: World, out: Path, storage: str, count: int | None = None) -> dict[str, Any]:
    """An index of the world's first `count` images (default: all) and their captions."""
    args = world.args
    images = count or args.images
    n_caps = images * args.captions_per_image
    spec = WriterSpec(
        num_regions=args.regions, dim=args.dim, matching=MATCHING, storage=storage,
        residual_codes=args.residual_codes,
        checkpoint={"sha256": SYNTHETIC_CHECKPOINT, "path": None, "config": None},
        build={"synthetic": {k: v for k, v in vars(args).items() if k in BENCH_KEYS}},
    )  # fmt: skip
    lengths = np.full(n_caps, args.words, np.int64)
    threads = build_threads()
    with torch_threads(threads):  # a build uses every core; a search --threads
        figures = _write(world, out, spec, images, lengths)
    return figures | {"build_threads": threads}


def build_threads() -> int:
    """The cores this process may run on: the torch threads of a build."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _write(world: World, out: Path, spec: WriterSpec, images: int, lengths: np.ndarray):
    args = world.args
    n_caps = len(lengths)
    synthesis = 0.0  # generating the embeddings is the bench's work, not the build's

    def made(make, *key):
        nonlocal synthesis
        began = time.perf_counter()
        result = make(*key)
        synthesis += time.perf_counter() - began
        return result

    started = time.perf_counter()
    writer = IndexWriter(out, spec, world.counts[:images], lengths, overwrite=True)
    step = 256
    for start in tqdm(range(0, images, step), desc=f"write images ({spec.storage})", disable=None):
        stop = min(images, start + step)
        regions = made(world.images, start, stop)
        writer.write_images(start, regions, np.zeros((stop - start, args.regions, 4)))
    per = args.captions_per_image
    for start in tqdm(range(0, images, step), desc="write captions", disable=None):
        stop = min(images, start + step)
        words = [made(world.caption, i, j) for i in range(start, stop) for j in range(per)]
        writer.write_captions(start * per, np.concatenate(words))
    write_s = time.perf_counter() - started - synthesis
    records = [ImageRecord(f"img{i}") for i in range(images)]
    captions = [CaptionRecord(f"cap{i}", "synthetic", f"img{i // per}") for i in range(n_caps)]
    writer.finish(records, captions, None)
    build_s = time.perf_counter() - started - synthesis
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    cells = json.loads((out / "manifest.json").read_text()).get("cells", {})
    return {"write_s": round(write_s, 2), "build_s": round(build_s, 2),
            "synthesis_s": round(synthesis, 2), "images_per_s": round(images / build_s, 1),
            "cells_s": {side: c.get("seconds") for side, c in cells.items()},
            "disk_bytes_per_image": round(size / images)}  # fmt: skip


def search_params(args: SearchBenchOptions) -> SearchParams:
    """SearchParams defaults, with the knobs given on the command line."""
    given = {name: getattr(args, name, None) for name in
             ("candidates", "caption_candidates", "probes", "caption_probes")}  # fmt: skip
    return SearchParams(**{name: value for name, value in given.items() if value is not None})


def _build_key(args: SearchBenchOptions) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in BENCH_KEYS}


def _reused(out: Path, args: SearchBenchOptions) -> dict[str, Any] | None:
    """Build figures of a kept index built with the same parameters, else None."""
    record = out.with_suffix(".build.json")
    if not (out / "manifest.json").exists() or not record.exists():
        return None
    saved = json.loads(record.read_text())
    if saved.get("key") != _build_key(args):
        return None
    logger.info("reusing %s (built with the same parameters)", out)
    return saved["figures"] | {"reused": True}


def _save_build(out: Path, args: SearchBenchOptions, figures: dict[str, Any]) -> None:
    record = {"key": _build_key(args), "figures": figures}
    out.with_suffix(".build.json").write_text(json.dumps(record))


def measure(world: World, out: Path, params: SearchParams | None = None) -> dict[str, Any]:
    """Synthetic queries: fresh captions of random gallery images, and stored images."""
    args = world.args
    rss_before = _rss_bytes()
    index = GalleryIndex(out, checksums=False)
    searcher = VectorSearcher(index, params)  # its inverted lists count, as when served
    # grown at open: cell codes, lists, offsets; the residual codes are memory-mapped
    # and touched at random by every query, so they count in full
    residual_files = [p for name in RESIDUAL_FILES.values() for p in out.glob(f"seg*/{name}")]
    rss_index = _rss_bytes() - rss_before + sum(p.stat().st_size for p in residual_files)
    rng = np.random.default_rng(args.seed + 7)
    images = rng.integers(0, args.images, args.queries)
    text_queries = [torch.from_numpy(world.caption(int(i), 99)) for i in images]
    try:
        images = _stored_images(index, args.queries, rng)
        result = measure_queries(searcher, text_queries, images)
    finally:
        index.close()
    return {"ram_bytes_per_image": round(rss_index / args.images)} | result


def _stored_images(index: GalleryIndex, count: int, rng: np.random.Generator) -> list:
    rows = rng.integers(0, index.num_images, count)
    regions, counts = index.images(rows)
    return [regions[i, : int(counts[i])] for i in range(len(rows))]


CANDIDATE_SWEEP = (50, 100, 150, 200, 300, 400)  # C values whose recall@10 the report lists


def measure_queries(searcher: VectorSearcher, text_queries: list, image_queries: list) -> dict:
    """Per direction: recall@10 and latency of the search path against exhaustive exact
    search, recall@10 for each C of CANDIDATE_SWEEP, and for an index with residual
    codes the same figures with the second stage on the bare centroids, side by side."""
    index, params = searcher.index, searcher.params
    coded = {side: code_bytes(c["residual"]["subspaces"])
             for side, c in index.manifest["cells"].items() if c.get("residual")}  # fmt: skip
    centroid = None
    if coded:  # the same C with the bare centroids in stage 2
        centroid = VectorSearcher(index, dataclasses.replace(params, residuals=False))
    result: dict[str, Any] = {
        "cells": {side: c["cells"] for side, c in index.manifest["cells"].items()},
        "residual_bytes": coded,
        "search": dataclasses.asdict(params),
    }
    for name, queries, method, default in (
        ("text_to_image", text_queries, "images_for_words", params.candidates),
        ("image_to_text", image_queries, "captions_for_regions", params.caption_candidates),
    ):
        run = getattr(searcher, method)
        # every fast query first, then the exhaustive ones: a full scan of a gallery
        # larger than the page cache would otherwise evict what the next query reads
        timed = {"default": _timed(run, queries)}
        if centroid is not None:
            timed["centroid_path"] = _timed(getattr(centroid, method), queries)
        sweep = {str(c): _timed(run, queries, c)[0] for c in CANDIDATE_SWEEP}
        exact, truths = [], []
        for query in queries:
            started = time.perf_counter()
            truths.append(run(query, 10, exhaustive=True).rows)
            exact.append(time.perf_counter() - started)
        figures = _figures(*timed.pop("default"), truths) | {"candidates": default}
        figures |= {path: _figures(*found, truths) for path, found in timed.items()}
        figures["recall_by_candidates"] = {c: _recall(rows, truths) for c, rows in sweep.items()}
        figures |= {"exhaustive_p50_ms": _pct(exact, 50), "exhaustive_p99_ms": _pct(exact, 99)}
        result[name] = figures
    return result


def _timed(run, queries: list, candidates: int | None = None) -> tuple[list, list]:
    """The top-10 rows `run` finds for every query and its time per query, each query
    timed on its second run: the first pages in the rows it reads, so that paths measured
    one after another (which read much the same candidates) all meet a warm page cache."""
    for query in queries:
        run(query, 10, candidates)
    found, times = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(run(query, 10, candidates).rows)
        times.append(time.perf_counter() - started)
    return found, times


def _recall(found: list, truths: list) -> float:
    pairs = zip(found, truths, strict=True)
    hits = [len(np.intersect1d(rows, truth)) / 10 for rows, truth in pairs]
    return round(float(np.mean(hits)), 4)


def _figures(found: list, times: list, truths: list) -> dict[str, float]:
    return {"recall_at_10": _recall(found, truths),
            "p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99)}  # fmt: skip


def measure_existing(args: SearchBenchOptions) -> dict[str, Any]:
    """A built index and its checkpoint: caption texts of the index as text queries
    (encoded by the model), stored images as image queries."""
    from index_builder.search.searcher import Searcher

    searcher = Searcher.open(args.index, args.checkpoint, checksums=False)
    index = searcher.index
    rng = np.random.default_rng(args.seed + 7)
    rows = rng.integers(0, index.num_captions, args.queries).tolist()
    texts = [record.text for record in index.metadata.captions(rows)]
    text_queries = [searcher.encoder.text(text)[0] for text in texts]
    encode = []
    for text in texts[:20]:
        started = time.perf_counter()
        searcher.encoder.text(text)
        encode.append(time.perf_counter() - started)
    images = _stored_images(index, args.queries, rng)
    result = measure_queries(VectorSearcher(index, search_params(args)), text_queries, images)
    result["text_encode_p50_ms"] = _pct(encode, 50)
    m = index.manifest
    return {"index": str(args.index), "images": index.num_images, "regions": index.num_regions,
            "dim": index.dim, "captions": index.num_captions, "threads": args.threads,
            "storage": {m["storage"]: result}}  # fmt: skip


def _pct(values: list[float], q: int) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_search_bench(args: SearchBenchOptions) -> dict[str, Any]:
    """Build and measure the synthetic indexes, or measure `args.index`; the report."""
    torch.set_num_threads(args.threads)
    if args.index is not None:
        if args.checkpoint is None:
            raise ValueError("--index needs --checkpoint (the model that built it)")
        return measure_existing(args)
    world = World(args)
    report: dict[str, Any] = {"images": args.images, "regions": args.regions, "dim": args.dim,
                              "captions": args.images * args.captions_per_image,
                              "threads": args.threads, "storage": {}}  # fmt: skip
    with bench_workdir(args.workdir, "chan-bench-") as workdir:
        for storage in args.storage:
            out = workdir / f"index-{storage}"
            figures = _reused(out, args) if args.keep else None
            if figures is None:
                figures = build(world, out, storage)
                if args.keep:
                    _save_build(out, args, figures)
            figures |= measure(world, out, search_params(args))
            report["storage"][storage] = figures
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    return report | peak_rss()


@contextlib.contextmanager
def bench_workdir(path: Path | None, prefix: str) -> Iterator[Path]:
    """A benchmark's working folder: `path` (kept), or a temporary one removed after."""
    workdir = path or Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        if path is None:
            shutil.rmtree(workdir, ignore_errors=True)


def peak_rss() -> dict[str, int]:
    """The process's peak resident memory so far, for a report."""
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"search benchmark: {report['images']:,} images x K={report['regions']} "
        f"d={report['dim']}, {report['captions']:,} captions, {report['threads']} threads"
    ]
    for storage, f in report["storage"].items():
        if "build_s" in f:
            lines.append(f"[{storage}] build {f['build_s']} s ({f['images_per_s']} images/s; "
                         f"+{f['synthesis_s']} s generating the embeddings), "
                         f"disk {f['disk_bytes_per_image']:,} B/image, "
                         f"RAM {f['ram_bytes_per_image']:,} B/image; "
                         f"cells {f['cells']}")  # fmt: skip
        else:
            lines.append(f"[{storage}] cells {f['cells']}, text encoding p50 "
                         f"{f['text_encode_p50_ms']} ms")  # fmt: skip
        for name in ("text_to_image", "image_to_text"):
            d = f[name]
            lines.append(
                f"  {name}: recall@10 {d['recall_at_10']:.3f}, p50 {d['p50_ms']} ms, "
                f"p99 {d['p99_ms']} ms at C={d['candidates']}; exhaustive p50 "
                f"{d['exhaustive_p50_ms']} ms "
                f"(x{d['exhaustive_p50_ms'] / max(d['p50_ms'], 1e-9):.1f})"
            )
            if "centroid_path" in d:
                old = d["centroid_path"]
                lines.append(
                    f"    bare centroids in stage 2 instead: recall@10 "
                    f"{old['recall_at_10']:.3f}, p50 {old['p50_ms']} ms, p99 {old['p99_ms']} ms "
                    f"(x{old['p50_ms'] / max(d['p50_ms'], 1e-9):.2f} the time)"
                )
            sweep = ", ".join(f"C={c} {r:.3f}" for c, r in d["recall_by_candidates"].items())
            lines.append(f"    recall@10 by C: {sweep}")
    return "\n".join(lines)

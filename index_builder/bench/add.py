"""`chan bench add`: grow a synthetic index by segments while it is searched, in one run.

A base index of `images` synthetic images (the clustered embeddings of `chan bench
search`) is built, or reused with --keep. A hard-linked copy of it (changes never write
into a committed file, so the copy costs nothing) then receives `add` more images and
their captions in `segments` adds, while `clients` threads search it without pause
through a searcher that follows the index's generation (index_builder/search/live.py),
as `chan serve` does. Reported: the time of each add, how long after the last add a
query first returned the new images, failed searches (must be 0), recall@10 against
exhaustive search of one query set about the base images before and after the adds (and
after, of queries about the added images), and with `compact`, the time to merge the segments and
how many queries' top 10 equal those of a fresh build of the whole gallery."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index_builder.bench.search import SearchBenchOptions, World, bench_workdir, build, peak_rss
from index_builder.build.edit import append_segment, compact_index
from index_builder.format import durable
from index_builder.format.metadata import CaptionRecord, ImageRecord
from index_builder.format.reader import GalleryIndex
from index_builder.search.live import GenerationWatch
from index_builder.search.searcher import Searcher
from index_builder.search.vectors import SearchParams, VectorSearcher

logger = logging.getLogger(__name__)

WATCH_SECONDS = 0.5  # how often the searching side looks for a new generation
PICKUP_LIMIT_S = 60.0  # give up waiting for the new images after this long


@dataclasses.dataclass(frozen=True)
class AddBenchOptions:
    """What `run_add_bench` builds, adds and measures (`chan bench add --help`)."""

    images: int = 10_000  # base gallery
    add: int = 1_000  # images added (with captions_per_image captions each)
    segments: int = 1  # the added images arrive in this many adds
    storage: str = "int8"
    regions: int = 36
    dim: int = 1024
    captions_per_image: int = 5
    words: int = 12
    concepts: int = 2048
    queries: int = 50  # queries per direction for recall
    clients: int = 2  # threads searching during the adds
    threads: int = 1  # torch threads per query
    compact: bool = False  # then compact and compare with a fresh build
    workdir: Path | None = None
    keep: bool = False  # keep the base (and fresh) builds and reuse them
    seed: int = 0


def run_add_bench(args: AddBenchOptions) -> dict[str, Any]:
    if args.add < args.segments or args.segments < 1:
        raise ValueError(f"--add ({args.add}) must be at least --segments ({args.segments}) >= 1")
    torch.set_num_threads(args.threads)
    total = args.images + args.add
    world = World(_world_options(args, total))
    report: dict[str, Any] = {"images": args.images, "add": args.add, "segments": args.segments,
                              "storage": args.storage, "clients": args.clients,
                              "threads": args.threads}  # fmt: skip
    with bench_workdir(args.workdir, "chan-bench-add-") as workdir:
        base = workdir / f"base-{args.storage}-{args.images}"
        report["base_build_s"] = _built(world, base, args, args.images)
        grown = workdir / "grown"
        shutil.rmtree(grown, ignore_errors=True)
        durable.link_tree(base, grown, skip=set())
        rng = np.random.default_rng(args.seed + 11)
        base_queries = _queries(world, 0, args.images, args.queries, rng)
        report["before"] = _recall(grown, base_queries)
        report |= _add_under_load(world, grown, args)
        report["after"] = _recall(grown, base_queries)
        report["after_added"] = _recall(grown, _queries(world, args.images, total,
                                                        args.queries, rng))  # fmt: skip
        if args.compact:
            report["compact"] = _compact_against_fresh(world, grown, workdir, args, total)
        if not args.keep:
            shutil.rmtree(grown, ignore_errors=True)
    return report | peak_rss()


def _world_options(args: AddBenchOptions, images: int) -> SearchBenchOptions:
    return SearchBenchOptions(images=images, regions=args.regions, dim=args.dim,
                              captions_per_image=args.captions_per_image, words=args.words,
                              concepts=args.concepts, seed=args.seed)  # fmt: skip


def _built(world: World, out: Path, args: AddBenchOptions, count: int) -> float | str:
    """Build the first `count` images of the world at `out` (or reuse a kept build of
    the same parameters); the build seconds, or "reused"."""
    key = {**dataclasses.asdict(world.args), "workdir": None, "storage": args.storage,
           "count": count}  # fmt: skip
    record = out.with_suffix(".build.json")
    saved = record.read_text() if args.keep and record.exists() else None
    if saved and (out / "manifest.json").exists() and json.loads(saved) == _jsonable(key):
        logger.info("reusing %s", out)
        return "reused"
    figures = build(world, out, args.storage, count=count)
    record.write_text(json.dumps(key, default=str))
    return figures["build_s"]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _add_under_load(world: World, index: Path, args: AddBenchOptions) -> dict[str, Any]:
    # the product's searcher, over query vectors only: synthetic vectors have no model
    opened = GalleryIndex(index, checksums=False)
    holder = {"searcher": Searcher([opened], None, SearchParams(), index)}
    watch = GenerationWatch(lambda: holder["searcher"], lambda new: holder.update(searcher=new),
                            WATCH_SECONDS, checksums=False).start()  # fmt: skip
    stop, failures, searches = threading.Event(), [], [0]
    probe_image = args.images  # the first added image
    query = torch.from_numpy(world.caption(probe_image, 99))

    def client() -> None:
        torch.set_num_threads(args.threads)
        while not stop.is_set():
            try:
                holder["searcher"].shards[0].vectors.images_for_words(query, 10)
                searches[0] += 1
            except Exception as exc:  # counted: the bench reports failed searches
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    add_seconds = []
    try:
        bounds = np.linspace(args.images, args.images + args.add, args.segments + 1).astype(int)
        for start, stop_row in itertools.pairwise(bounds):
            added = _append(world, index, int(start), int(stop_row))
            add_seconds.append(added["seconds"])
        finished = time.monotonic()
        pickup = None
        while time.monotonic() - finished < PICKUP_LIMIT_S:
            rows = holder["searcher"].shards[0].vectors.images_for_words(query, 10).rows
            if probe_image in rows.tolist():
                pickup = round(time.monotonic() - finished, 2)
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        watch.stop()
    return {"add_s": add_seconds, "add_total_s": round(sum(add_seconds), 2),
            "pickup_s": pickup, "searches_during": searches[0],
            "failed_searches": len(failures), "failures": failures[:3],
            "drift": added["drift"]}  # fmt: skip


def _append(world: World, index: Path, start: int, stop: int) -> dict[str, Any]:
    """Images start..stop of the world and their captions as one new segment."""
    per, step = world.args.captions_per_image, 256
    counts = world.counts[start:stop].astype(np.int32)
    lengths = np.full((stop - start) * per, world.args.words, np.int64)

    def fill(writer) -> None:
        for lo in range(start, stop, step):
            hi = min(stop, lo + step)
            boxes = np.zeros((hi - lo, world.args.regions, 4), np.float32)
            writer.write_images(lo - start, world.images(lo, hi), boxes)
        for lo in range(start, stop, step):
            hi = min(stop, lo + step)
            words = [world.caption(i, j) for i in range(lo, hi) for j in range(per)]
            writer.write_captions((lo - start) * per, np.concatenate(words))

    images = [ImageRecord(f"img{i}") for i in range(start, stop)]
    captions = [CaptionRecord(f"cap{i * per + j}", "synthetic", f"img{i}")
                for i in range(start, stop) for j in range(per)]  # fmt: skip
    return append_segment(index, counts, lengths, fill, images, captions, progress=False)


def _queries(world: World, start: int, stop: int, count: int, rng) -> tuple[list, list]:
    """`count` text queries (a new caption of an image) and `count` image queries (an
    image's regions) about images drawn from [start, stop)."""
    texts = [torch.from_numpy(world.caption(int(i), 98)) for i in rng.integers(start, stop, count)]
    pictures = []
    for i in rng.integers(start, stop, count):
        regions = world.images(int(i), int(i) + 1)[0, : int(world.counts[i])]
        pictures.append(torch.from_numpy(regions))
    return texts, pictures


def _recall(path: Path, queries: tuple[list, list]) -> dict[str, float]:
    """recall@10 of the default search against exhaustive search, both directions; the
    same queries before and after an add isolate what the add changed."""
    index = GalleryIndex(path, checksums=False)
    try:
        searcher = VectorSearcher(index, SearchParams())
        out = {}
        runs = (("text_to_image", queries[0], searcher.images_for_words),
                ("image_to_text", queries[1], searcher.captions_for_regions))  # fmt: skip
        for name, batch, run in runs:
            hits = [len(np.intersect1d(run(q, 10).rows, run(q, 10, exhaustive=True).rows)) / 10
                    for q in batch]  # fmt: skip
            out[name] = round(float(np.mean(hits)), 4)
        return out
    finally:
        index.close()


def _compact_against_fresh(world: World, grown: Path, workdir: Path, args: AddBenchOptions,
                           total: int) -> dict[str, Any]:  # fmt: skip
    started = time.perf_counter()
    compact_index(grown, recall_queries=0)
    seconds = round(time.perf_counter() - started, 2)
    fresh = workdir / f"fresh-{args.storage}-{total}"
    _built(world, fresh, args, total)
    a, b = GalleryIndex(grown, checksums=False), GalleryIndex(fresh, checksums=False)
    try:
        x, y = VectorSearcher(a), VectorSearcher(b)
        rng = np.random.default_rng(args.seed + 13)
        same = []
        for i in rng.integers(0, total, args.queries):
            query = torch.from_numpy(world.caption(int(i), 97))
            same.append(np.array_equal(x.images_for_words(query, 10).rows,
                                       y.images_for_words(query, 10).rows))  # fmt: skip
        regions, counts = a.images(rng.integers(0, total, args.queries))
        for i in range(args.queries):
            query = regions[i, : int(counts[i])]
            same.append(np.array_equal(x.captions_for_regions(query, 10).rows,
                                       y.captions_for_regions(query, 10).rows))  # fmt: skip
    finally:
        a.close()
        b.close()
    return {"seconds": seconds, "same_top10": round(float(np.mean(same)), 4),
            "queries": len(same)}  # fmt: skip


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"add benchmark: {report['images']:,} images + {report['add']:,} in "
        f"{report['segments']} segment(s), {report['storage']}, {report['clients']} clients "
        f"searching, {report['threads']} torch thread(s)",
        f"base build: {report['base_build_s']}"
        + ("" if report["base_build_s"] == "reused" else " s"),
        f"add: {report['add_total_s']} s ({', '.join(str(s) for s in report['add_s'])}); "
        f"new images served {report['pickup_s']} s after the last add; "
        f"{report['searches_during']} searches during, {report['failed_searches']} failed; "
        f"cell drift {report['drift']}",
    ]
    for name in ("text_to_image", "image_to_text"):
        before, after = report["before"][name], report["after"][name]
        added = report["after_added"][name]
        lines.append(f"  {name}: recall@10 {before:.3f} before, {after:.3f} after "
                     f"({after - before:+.3f}) on the same queries; {added:.3f} on "
                     "queries about the added images")  # fmt: skip
    if "compact" in report:
        c = report["compact"]
        lines.append(f"compact: {c['seconds']} s; same top-10 as a fresh build for "
                     f"{c['same_top10']:.1%} of {c['queries']} queries")  # fmt: skip
    return "\n".join(lines)

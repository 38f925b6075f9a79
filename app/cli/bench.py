"""`chan bench score | extract | search | add | cells`: flags -> parameters, then
the report printed.

Flags default to None ("not given") so the benchmarks' own defaults are the only ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXTRACTORS = "grid,detr,demo"  # model.features.bench.EXTRACTORS (a test checks)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks that print side-by-side ratios")
    sub = parser.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    _add_score(sub)
    _add_extract(sub)
    _add_search(sub)
    _add_add(sub)
    _add_cells(sub)


def given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The named flags that were given, lists as tuples."""
    values = {name: getattr(args, name) for name in names}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if v is not None}


def check_positive(values: object, *names: str) -> None:
    """A ValueError naming the first of the given flags (attributes of `values`) below 1."""
    for name in names:
        if getattr(values, name) is not None and getattr(values, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")


def run_options(args: argparse.Namespace, options_type: type, run, report_text) -> int:
    """The given flags as the benchmark's frozen options dataclass (its defaults for the
    rest), the benchmark run, its report printed."""
    names = [field.name for field in dataclasses.fields(options_type)]
    report = run(options_type(**given(args, *names)))
    return print_report(report_text(report), report, args.json)


def add_world_flags(add, captions: bool = True) -> None:
    """The synthetic embeddings' flags (index_builder.bench.search.World)."""
    add("--regions", type=int, help="K (36)")
    add("--dim", type=int, help="d (1024)")
    if captions:
        add("--captions-per-image", type=int, help="(5)")
        add("--words", type=int, help="words per caption (12)")
    add("--concepts", type=int, help="concept centroids (2048)")


def print_report(text: str, report: dict[str, Any], as_json: bool) -> int:
    print(text)
    if as_json:
        print(json.dumps(report))
    return 0


def _add_score(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "score", help="throughput and memory of hard vs soft assignment vs a plain matrix product"
    )
    add = parser.add_argument
    add("--images", type=int, help="number of images")
    add("--captions", type=int, help="number of captions")
    add("--regions", type=int, help="K, regions per image")
    add("--dim", type=int, help="d, embedding size")
    add("--min-len", type=int, help="shortest caption (words)")
    add("--max-len", type=int, help="longest caption (words)")
    add("--chunk-mb", type=int, help="memory bound of one block")
    add("--groups", type=int, help="interleaved hard/matmul rounds")
    add("--soft-images", type=int, help="images for the soft baseline")
    add("--reference-images", type=int, help="images for the reference-style port")
    add("--seed", type=int)
    add("--threads", type=int, help="torch threads")
    add("--no-memory", dest="memory", action="store_false", default=None,
        help="skip the peak-memory runs (each in a fresh process)")  # fmt: skip
    add("--json", action="store_true", help="print one JSON object as the last line")
    parser.set_defaults(func=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from model.bench import ScoreBenchOptions, format_report, run_score_bench

    options = ScoreBenchOptions(**given(args, *(f.name for f in fields(ScoreBenchOptions))))
    if options.min_len < 1 or options.max_len < options.min_len:
        raise ValueError("need 1 <= --min-len <= --max-len")
    check_positive(options, "images", "captions", "regions", "dim", "chunk_mb", "groups")
    report = run_score_bench(options)
    return print_report(format_report(report), report, args.json)


def _add_extract(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("extract", help="images/s and peak memory of the region extractors")
    add = parser.add_argument
    add("--extractors", help=f"comma-separated subset of {EXTRACTORS}")
    add("--images", type=int, help="timed images per extractor")
    add("--batch-size", type=int, help="images per extract call")
    add("--image-size", type=int, help="side of the synthetic images")
    add("--grid-size", type=int, help="grid (ResNet-50) input side")
    add("--detr-size", type=int, help="detr (DETR-R50) canvas side")
    add("--threads", type=int, help="torch threads (default: all)")
    add("--seed", type=int)
    add("--json", action="store_true", help="print one JSON object as the last line")
    parser.set_defaults(func=_run_extract)


def _run_extract(args: argparse.Namespace) -> int:
    from model.features.bench import format_report, parse_extractors, run_extract_bench

    names = None if args.extractors is None else parse_extractors(args.extractors)
    sizes = ("images", "batch_size", "image_size", "grid_size", "detr_size")
    check_positive(args, *sizes)
    options = given(args, *sizes, "threads", "seed") | ({"names": names} if names else {})
    if "images" in options:
        options["num_images"] = options.pop("images")
    report = run_extract_bench(**options)
    return print_report(format_report(report), report, args.json)


def _add_search(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "search",
        help="shortlist + rerank vs exhaustive: recall, latency, build speed, bytes per image",
    )
    add = parser.add_argument
    add("--images", type=int, help="gallery size (10000)")
    add_world_flags(add)
    add("--queries", type=int, help="queries per direction (50)")
    add("--storage", nargs="+", choices=["float16", "int8"])
    add("--threads", type=int, help="torch threads per query (1, as the service runs)")
    add("--workdir", type=Path, help="where to build (default: a temp dir)")
    add("--keep", action="store_true", default=None,
        help="keep the indexes in --workdir and reuse them when the parameters match "
        "(measure other search settings without a rebuild)")  # fmt: skip
    add("--candidates", type=int, help="C, text -> image")
    add("--caption-candidates", type=int, help="C, image -> caption")
    add("--probes", type=int, help="region cells probed per query word")
    add("--caption-probes", type=int, help="word cells probed per image")
    add("--residual-codes", action="store_true", default=None,
        help="build with residual codes and measure the bare-centroid second stage beside "
        "them")  # fmt: skip
    add("--seed", type=int)
    add("--json", action="store_true", help="JSON of every figure, last line")
    add("--index", type=Path, help="measure this built index instead")
    add("--checkpoint", type=Path, help="the checkpoint of --index")
    parser.set_defaults(func=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from index_builder.bench.search import SearchBenchOptions, format_report, run_search_bench

    return run_options(args, SearchBenchOptions, run_search_bench, format_report)


def _add_add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "add",
        help="grow an index by segments while it is searched: add time, pick-up, recall",
        description="Builds (or with --keep reuses) a synthetic base index, adds images "
        "and their captions as new segments while client threads search it through a "
        "searcher that follows the index's generation, and reports the add time, how soon "
        "the new images are served, failed searches, and recall@10 before and after; with "
        "--compact, also the merge time and the share of queries whose top 10 equals a "
        "fresh build's.",
    )
    add = parser.add_argument
    add("--images", type=int, help="base gallery size (10000)")
    add("--add", type=int, help="images added, with their captions (1000)")
    add("--segments", type=int, help="the added images arrive in this many adds (1)")
    add("--storage", choices=["float16", "int8"], help="(int8)")
    add_world_flags(add)
    add("--queries", type=int, help="queries per direction for recall (50)")
    add("--clients", type=int, help="threads searching during the adds (2)")
    add("--threads", type=int, help="torch threads per query (1)")
    add("--compact", action="store_true", default=None,
        help="then compact and compare with a fresh build of the whole gallery")  # fmt: skip
    add("--workdir", type=Path, help="where to build (default: a temp dir)")
    add("--keep", action="store_true", default=None,
        help="keep the base and fresh builds in --workdir and reuse them")  # fmt: skip
    add("--seed", type=int)
    add("--json", action="store_true", help="JSON of every figure, last line")
    parser.set_defaults(func=_run_add)


def _run_add(args: argparse.Namespace) -> int:
    from index_builder.bench.add import AddBenchOptions, format_report, run_add_bench

    check_positive(args, "images", "add", "segments", "queries", "clients", "threads")
    return run_options(args, AddBenchOptions, run_add_bench, format_report)


def _add_cells(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "cells",
        help="k-means training and cell assignment: exact vs two-level, side by side",
    )
    add = parser.add_argument
    add("--images", type=int, help="synthetic images whose regions are the vectors (9000)")
    add("--cells", type=int, help="(4096)")
    add_world_flags(add, captions=False)
    add("--iterations", type=int, help="k-means passes (10)")
    add("--threads", type=int, help="torch threads (2)")
    add("--seed", type=int)
    add("--json", action="store_true", help="JSON of every figure, last line")
    parser.set_defaults(func=_run_cells)


def _run_cells(args: argparse.Namespace) -> int:
    from index_builder.bench.cells import CellsBenchOptions, format_report, run_cells_bench

    check_positive(args, "images", "cells", "dim", "regions", "concepts", "iterations", "threads")
    return run_options(args, CellsBenchOptions, run_cells_bench, format_report)

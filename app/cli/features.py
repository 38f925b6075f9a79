"""`chan extract`: images -> region features in the precomp layout."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    _add_extract(subparsers)


def _add_extract(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="image region features in the precomp layout",
        description="Extract K region vectors and boxes per image into OUT/{split}_ims.npy "
        "(+ _counts.npy, _boxes.npy, _ids.txt, _extract.json). Unreadable images keep their "
        "row with count 0 and are listed in the report. Interrupted runs resume.",
    )
    parser.add_argument(
        "--images",
        type=Path,
        required=True,
        help="image folder, or a list file (one path a line, or id<TAB>path)",
    )
    parser.add_argument(
        "--extractor",
        required=True,
        help="demo | grid:<model dir> | detr:<model dir> | vit:<model dir>",
    )
    parser.add_argument("--weights", type=Path, help="local model directory (instead of :<dir>)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--split",
        help="split name of the output files (default: X for an X_images.txt list, else 'gallery')",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extractor option, e.g. num_regions=36 (repeatable; values parsed as JSON)",
    )
    parser.add_argument("--max-pixels", type=int, default=50_000_000, help="refuse larger images")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished extraction")
    parser.add_argument("--restart", action="store_true", help="discard an interrupted extraction")
    parser.set_defaults(func=_run_extract)


def _run_extract(args: argparse.Namespace) -> int:
    from model.features.extract import extract_split
    from model.features.extractors.base import create_extractor
    from model.features.images import list_images

    entries = list_images(args.images)
    extractor = create_extractor(args.extractor, args.weights, **parse_options(args.option))
    split = args.split or default_split(args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    result = extract_split(
        entries,
        extractor,
        args.out,
        split,
        batch_size=args.batch_size,
        dtype=args.dtype,
        max_pixels=args.max_pixels,
        overwrite=args.overwrite,
        restart=args.restart,
    )
    if result.reused:
        print(f"{args.out}/{split}_ims.npy is up to date ({result.num_images} images)")
    else:
        print(
            f"extracted {result.processed} images in {result.seconds:.1f} s "
            f"({result.images_per_s:.1f} images/s) -> {args.out}/{split}_ims.npy"
        )
    if result.failed:
        print(
            f"{len(result.failed)} images skipped (count 0); reasons in "
            f"{args.out}/{split}_extract.json, first: {result.failed[0]['path']}: "
            f"{result.failed[0]['reason']}"
        )
    return 0


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """['num_regions=36', 'pool=7'] -> {'num_regions': 36, 'pool': 7}; strings stay strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--option {pair!r}: write KEY=VALUE, e.g. num_regions=36")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def default_split(images: Path) -> str:
    match = re.fullmatch(r"(\w+)_images\.txt", images.name)
    return match.group(1) if match and images.is_file() else "gallery"

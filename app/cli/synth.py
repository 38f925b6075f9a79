"""`chan synth`: the synthetic captioned image world (demo and tests)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    _add_synth(subparsers)


def _add_synth(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate the synthetic captioned image world (demo and tests)",
        description="Render N captioned images with Pillow, deterministically from a seed, "
        "split into train / dev / test. A second run with the same options reuses the world.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--images", type=int, default=7000, help="number of images (7000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--size", type=int, default=160, help="image side in pixels (160)")
    parser.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from model.synth.world import generate_world

    summary = generate_world(args.out, args.images, seed=args.seed, image_size=args.size)
    counts = ", ".join(f"{split} {n}" for split, n in summary.counts.items())
    verb = "reused" if summary.reused else "wrote"
    print(
        f"{verb} {summary.num_images} images ({counts}; {summary.num_twins} binding twins) "
        f"in {args.out}"
    )
    return 0

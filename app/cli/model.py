"""`chan import-official` and `chan score`: subcommands that need only the model package."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register `chan import-official` and `chan score`."""
    _add_import_official(subparsers)
    _add_score(subparsers)


def _add_import_official(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-official",
        help="convert a checkpoint of the reference CHAN code into the own format",
        description="Convert an official CHAN checkpoint (model_best.pth) into a checkpoint "
        "directory. BiGRU models need --vocab, BERT models --bert-dir.",
    )
    parser.add_argument("checkpoint", type=Path, help="official .pth file")
    text = parser.add_mutually_exclusive_group()
    text.add_argument(
        "--vocab", type=Path, help="vocab json of a BiGRU model (f30k/coco_precomp_vocab.json)"
    )
    text.add_argument("--bert-dir", type=Path, help="local BERT directory (config + tokenizer)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.set_defaults(func=_run_import_official)


def _run_import_official(args: argparse.Namespace) -> int:
    from model.official import import_official

    out = import_official(args.checkpoint, args.out, vocab_path=args.vocab, bert_dir=args.bert_dir)
    print(f"imported {args.checkpoint} -> {out}")
    return 0


def _add_score(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="exact score matrix of region features against raw captions",
        description="Write the [n_images, n_captions] CHAN score matrix as float32 .npy.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory")
    parser.add_argument(
        "--regions", type=Path, required=True, help="[N, K, D] region features .npy"
    )
    parser.add_argument(
        "--region-lens", type=Path, help="[N] valid region counts .npy (default: all K)"
    )
    parser.add_argument(
        "--captions", type=Path, required=True, help="text file, one caption a line"
    )
    parser.add_argument("--out", type=Path, required=True, help="output .npy")
    parser.add_argument("--batch-size", type=int, default=128, help="encoder batch size")
    parser.add_argument(
        "--bf16", action="store_true", help="bfloat16 matrix products (faster, ~1e-3 error)"
    )
    parser.set_defaults(func=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from model.checkpoint import load_checkpoint
    from model.inference import encode_captions, encode_regions, read_captions, read_regions

    loaded = load_checkpoint(args.checkpoint)
    regions, lens = read_regions(args.regions, args.region_lens, loaded.config.img_dim)
    captions = read_captions(args.captions)
    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    with torch.inference_mode():
        img_emb, img_lens = encode_regions(loaded.model, regions, lens, args.batch_size)
        words = encode_captions(loaded, captions, args.batch_size)
        scores = loaded.model.score(
            img_emb, img_lens, words, compute_dtype=torch.bfloat16 if args.bf16 else None
        )
    _save_npy(args.out, scores.numpy().astype(np.float32))
    print(f"wrote {args.out}: scores of {scores.shape[0]} images x {scores.shape[1]} captions")
    return 0


def _save_npy(path: Path, array: np.ndarray) -> None:
    from model.io import atomic_save_npy

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(path, array)

"""`chan train` and `chan eval`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    _add_train(subparsers)
    _add_eval(subparsers)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    from model.training.train import TrainConfig

    d = TrainConfig("", "")  # defaults, shown in --help
    parser = subparsers.add_parser(
        "train",
        help="train a CHAN model on precomp region features and captions",
        description="Train on DATA/{train,dev}_ims.npy + _caps.txt. Writes RUN/best and "
        "RUN/last checkpoints, RUN/metrics.jsonl and RUN/curves.png. Under torchrun the "
        "batch is split over the ranks and the loss sees the negatives of all of them.",
    )
    parser.add_argument("--data", type=Path, required=True, help="precomp data folder")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--model", default=d.model, help=f"named model config ({d.model})")
    parser.add_argument(
        "--coding",
        choices=["hard", "soft", "global"],
        help="hard (CHAN), soft (SCAN baseline) or global (VSE baseline)",
    )
    parser.add_argument("--pooling", choices=["lse", "mean", "max", "sum"])
    parser.add_argument("--img-dim", type=int, help="region feature size (default: the model's)")
    parser.add_argument("--embed-size", type=int, help="joint space size")
    parser.add_argument("--bert-dir", type=Path, help="local BERT directory (BERT models)")
    parser.add_argument("--vocab", type=Path, help="existing vocab json (default: build one)")
    parser.add_argument(
        "--vocab-threshold",
        type=int,
        default=d.vocab_threshold,
        help="min count of a train-caption word to enter a built vocab",
    )
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument(
        "--lr-decay-epochs",
        type=int,
        nargs="*",
        default=list(d.lr_decay_epochs),
        help="epochs at which lr is multiplied by --lr-decay",
    )
    parser.add_argument("--lr-decay", type=float, default=d.lr_decay)
    parser.add_argument("--weight-decay", type=float, help="AdamW decay (0.01 BiGRU, 1e-4 BERT)")
    parser.add_argument("--margin", type=float, default=d.margin)
    parser.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    parser.add_argument("--grad-clip", type=float, default=d.grad_clip)
    parser.add_argument("--region-drop", type=float, default=d.region_drop)
    parser.add_argument("--token-prob", type=float, default=d.token_prob)
    parser.add_argument("--val-images", type=int, default=d.val_images, help="0 = all")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    parser.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps")
    parser.add_argument(
        "--time-budget-min", type=float, help="stop, validate and save after this many minutes"
    )
    parser.add_argument("--resume", action="store_true", help="continue RUN from its last epoch")
    parser.set_defaults(func=_run_train)


def train_config_from_args(args: argparse.Namespace):
    from model.training.train import TrainConfig

    overrides = {
        key: value
        for key, value in {
            "coding": args.coding,
            "pooling": args.pooling,
            "img_dim": args.img_dim,
            "embed_size": args.embed_size,
            "bert_dir": str(args.bert_dir) if args.bert_dir else None,
        }.items()
        if value is not None
    }
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    return TrainConfig(
        data=str(args.data),
        out=str(args.out),
        model=args.model,
        model_overrides=overrides,
        val_images=args.val_images or None,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_decay_epochs=tuple(args.lr_decay_epochs),
        lr_decay=args.lr_decay,
        weight_decay=args.weight_decay,
        margin=args.margin,
        warmup_epochs=args.warmup_epochs,
        grad_clip=args.grad_clip,
        region_drop=args.region_drop,
        token_prob=args.token_prob,
        vocab=str(args.vocab) if args.vocab else None,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        max_steps=args.max_steps,
        resume=args.resume,
        time_budget_s=None if args.time_budget_min is None else args.time_budget_min * 60,
    )


def _run_train(args: argparse.Namespace) -> int:
    from model.training.train import train

    result = train(train_config_from_args(args))
    if result.best_metrics:
        m = result.best_metrics
        print(
            f"trained {result.epochs_run} epochs ({result.steps} steps) in {result.seconds:.0f} s; "
            f"best val rsum {m['rsum']:.1f}, t2i R@1 {m['t2i_r1']:.1f}, i2t R@1 {m['i2t_r1']:.1f}"
            f" -> {result.out}/best"
        )
    return 0


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="recall of a checkpoint on a precomp split",
        description="R@1/5/10, median and mean rank in both directions and rsum. --fold5 "
        "averages five 1K blocks (COCO 1K); without it the whole split (COCO 5K).",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--data", type=Path, required=True, help="precomp data folder")
    parser.add_argument("--split", default="test", help="split name (test)")
    parser.add_argument("--fold5", action="store_true", help="COCO 1K protocol: 5 folds")
    parser.add_argument("--max-images", type=int, help="only the first N images")
    parser.add_argument("--out", type=Path, help="JSON result file")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import torch

    from model.checkpoint import load_checkpoint
    from model.training.data import load_split
    from model.training.evaluate import evaluate

    loaded = load_checkpoint(args.checkpoint)
    split = load_split(args.data, args.split, loaded.config.img_dim)
    with torch.inference_mode():
        metrics = evaluate(
            loaded.model,
            loaded.tokenizer,
            split,
            folds=5 if args.fold5 else 1,
            max_images=args.max_images,
            batch_size=args.batch_size,
        )
    metrics |= {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "split": args.split,
        "protocol": "5-fold 1K" if args.fold5 else "full",
    }
    text = json.dumps(metrics, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(format_metrics(metrics))
    return 0


def format_metrics(m: dict) -> str:
    return (
        f"{m['split']} ({m['protocol']}, {m['num_images']} images, {m['num_captions']} captions)\n"
        f"  image->text  R@1 {m['i2t_r1']:5.1f}  R@5 {m['i2t_r5']:5.1f}  R@10 {m['i2t_r10']:5.1f}"
        f"  medr {m['i2t_medr']:.0f}  meanr {m['i2t_meanr']:.1f}\n"
        f"  text->image  R@1 {m['t2i_r1']:5.1f}  R@5 {m['t2i_r5']:5.1f}  R@10 {m['t2i_r10']:5.1f}"
        f"  medr {m['t2i_medr']:.0f}  meanr {m['t2i_meanr']:.1f}\n"
        f"  rsum {m['rsum']:.1f}"
    )

"""`chan train` and `chan eval`. The train flags are generated from TrainConfig's fields."""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.config import CODINGS, POOLINGS  # plain data: no torch

if TYPE_CHECKING:
    from model.training.train import TrainConfig

logger = logging.getLogger(__name__)

CONFIG_MODULE, CONFIG_CLASS = "model.training.train", "TrainConfig"
REQUIRED = object()  # a field without a default
NOT_LITERAL = object()  # a default that is not a literal, e.g. field(default_factory=dict)
PLAIN_TYPES = {"str": str, "int": int, "float": float}  # annotation, `| None` stripped


@dataclass(frozen=True)
class Special:
    """How a TrainConfig field that is not a plain `--field-name VALUE` flag is given."""

    flag: dict[str, Any]  # add_argument keywords
    to_field: Callable[[Any], Any] = lambda value: value  # parsed value -> field value
    name: str | None = None  # the flag, when it is not --field-name
    help: str | None = None  # when the flag's meaning differs from the field's comment


SPECIAL = {
    "data": Special({"type": Path, "required": True}, str),
    "out": Special({"type": Path, "required": True}, str),
    "vocab": Special({"type": Path}, str),
    "lr_decay_epochs": Special({"type": int, "nargs": "*"}, tuple),
    "val_images": Special({"type": int}, lambda n: n or None,
                          help="validate on the first N dev images (0: all)"),
    "time_budget_s": Special({"type": float}, lambda minutes: minutes * 60,
                             name="--time-budget-min",
                             help="stop, validate and save after this many minutes"),
}  # fmt: skip
# TrainConfig.model_overrides: these flags, when given, override the named model config
MODEL_OVERRIDES = {
    "--coding": {"choices": CODINGS,
                 "help": "hard (CHAN), soft (SCAN baseline) or global (VSE baseline)"},
    "--pooling": {"choices": POOLINGS},
    "--img-dim": {"type": int, "help": "region feature size (default: the model's)"},
    "--embed-size": {"type": int, "help": "joint space size"},
    "--bert-dir": {"type": Path, "help": "local BERT directory (BERT models)"},
}  # fmt: skip
EXCEPTIONS = {"progress": "tqdm bars are shown when attached to a terminal"}


@dataclass(frozen=True)
class DeclaredField:
    """One dataclass field as its source declares it."""

    name: str
    annotation: str
    default: Any  # the literal default, REQUIRED or NOT_LITERAL
    comment: str  # the trailing comment, "" without one


@functools.cache
def declared_fields(
    module: str = CONFIG_MODULE, name: str = CONFIG_CLASS
) -> tuple[DeclaredField, ...]:
    """The fields of dataclass `name`, read from the source of `module` without importing
    it (TrainConfig's module imports torch, and `chan --help` must stay fast)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    source = Path(spec.origin).read_bytes()
    lines = source.splitlines()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == name)
    fields = []
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            # offsets are in bytes; what follows the statement on its line is the comment
            tail = lines[item.end_lineno - 1][item.end_col_offset :].decode().strip()
            comment = tail[1:].strip() if tail.startswith("#") else ""
            annotation = ast.unparse(item.annotation)
            fields.append(DeclaredField(item.target.id, annotation, _literal(item.value), comment))
    return tuple(fields)


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return REQUIRED
    try:
        return ast.literal_eval(node)
    except ValueError:
        return NOT_LITERAL


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    _add_train(subparsers)
    _add_eval(subparsers)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a CHAN model on precomp region features and captions",
        description="Train on DATA/{train,dev}_ims.npy + _caps.txt. Writes RUN/best and "
        "RUN/last checkpoints, RUN/metrics.jsonl and RUN/curves.png. Under torchrun the "
        "batch is split over the ranks and the loss sees the negatives of all of them.",
    )
    for field in declared_fields():
        if field.name == "model_overrides":
            for flag, options in MODEL_OVERRIDES.items():
                parser.add_argument(flag, **options)
        elif field.name not in EXCEPTIONS:
            name, options = train_flag(field)
            parser.add_argument(name, dest=field.name, default=None, **options)
    parser.set_defaults(func=_run_train)


def train_flag(field: DeclaredField) -> tuple[str, dict[str, Any]]:
    """The flag and add_argument keywords of one TrainConfig field. Every flag defaults
    to None, "not given", so TrainConfig's own defaults are the only ones."""
    special = SPECIAL.get(field.name)
    name = f"--{field.name.replace('_', '-')}"
    text = help_text(field, special.help if special and special.help else field.comment)
    if special:
        flag = special.name or name
        return flag, {"metavar": flag[2:].replace("-", "_").upper(), "help": text, **special.flag}
    if field.annotation == "bool" and field.default is False:
        return name, {"action": "store_true", "help": text}
    if field.annotation == "bool" and field.default is True:
        return f"--no-{name[2:]}", {"action": "store_false", "help": f"turn off: {text}"}
    kind = PLAIN_TYPES.get(field.annotation.removesuffix(" | None"))
    if kind is None or field.default is NOT_LITERAL:
        raise TypeError(f"{CONFIG_CLASS}.{field.name}: {field.annotation} is no plain flag; "
                        f"give it an entry in SPECIAL or EXCEPTIONS of {__name__}")  # fmt: skip
    return name, {"type": kind, "required": field.default is REQUIRED, "help": text}


def help_text(field: DeclaredField, text: str) -> str:
    """The field's comment with its default; a comment's "None: X" reads "default: X"."""
    text = text.replace("%", "%%")  # argparse formats help with %
    if field.default is None and text.startswith("None: "):
        return "default: " + text.removeprefix("None: ")
    if field.default in (REQUIRED, None) or isinstance(field.default, bool):
        return text
    value = field.default
    value = " ".join(map(str, value)) if isinstance(value, tuple) else value
    return f"{text} (default: {value})" if text else f"default: {value}"


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the given flags; TrainConfig's defaults for the others."""
    from model.training.train import TrainConfig

    for name in ("epochs", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    values: dict[str, Any] = {}
    for field in declared_fields():
        value = getattr(args, field.name, None)
        if value is not None:
            special = SPECIAL.get(field.name)
            values[field.name] = special.to_field(value) if special else value
    keys = [flag[2:].replace("-", "_") for flag in MODEL_OVERRIDES]
    given = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    values["model_overrides"] = {k: str(v) if isinstance(v, Path) else v for k, v in given.items()}
    return TrainConfig(**values)


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

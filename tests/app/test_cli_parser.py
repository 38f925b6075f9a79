"""The `chan` parser: cheap to build, `chan train` flags generated from TrainConfig, the
benchmarks' flags mapped onto their parameters."""

import argparse
import dataclasses
import subprocess
import sys

import pytest

from app.cli import bench as bench_cli
from app.cli import build_parser, main
from app.cli import training as training_cli
from model.training.train import TrainConfig

# `chan train` flags before they were generated: each keeps its name and meaning
OLD_TRAIN_FLAGS = (
    "--data --out --model --coding --pooling --img-dim --embed-size --bert-dir --vocab "
    "--vocab-threshold --epochs --batch-size --lr --lr-decay-epochs --lr-decay --weight-decay "
    "--margin --warmup-epochs --grad-clip --region-drop --token-prob --val-images --seed "
    "--device --no-amp --max-steps --time-budget-min --resume"
).split()


def subparser(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_building_the_parser_imports_no_heavy_module():
    code = (
        "import sys; from app.cli import build_parser; build_parser(); print(sorted(m for m in "
        "('torch','faiss','nltk','model.training.train') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_the_source_read_fields_are_the_dataclass_fields():
    declared = training_cli.declared_fields()
    fields = dataclasses.fields(TrainConfig)
    assert [d.name for d in declared] == [f.name for f in fields]
    for d, f in zip(declared, fields, strict=True):
        if f.default is not dataclasses.MISSING:
            assert d.default == f.default, f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert d.default is training_cli.NOT_LITERAL, f.name
        else:
            assert d.default is training_cli.REQUIRED, f.name
    assert {d.name: d.comment for d in declared}["batch_size"].startswith("global batch")


def test_every_train_config_field_is_a_flag_listed_in_help():
    train = subparser("train")
    dests = {action.dest for action in train._actions}
    help_text = train.format_help()
    for field in dataclasses.fields(TrainConfig):
        if field.name in training_cli.EXCEPTIONS:
            assert field.name not in dests
        elif field.name == "model_overrides":
            assert all(flag in help_text for flag in training_cli.MODEL_OVERRIDES)
        else:
            assert field.name in dests, f"TrainConfig.{field.name} has no flag"
            flag, _ = training_cli.train_flag(
                next(d for d in training_cli.declared_fields() if d.name == field.name)
            )
            assert f"{flag} " in help_text, flag
    for flag in OLD_TRAIN_FLAGS:
        assert f"{flag} " in help_text, flag


def test_train_flags_map_onto_train_config(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    base = ["train", "--data", str(data), "--out", str(out)]
    plain = training_cli.train_config_from_args(parse(*base))
    assert plain == TrainConfig(str(data), str(out))  # not given: TrainConfig's defaults
    given = training_cli.train_config_from_args(parse(
        *base, "--model", "tiny", "--coding", "soft", "--img-dim", "8", "--bert-dir", "b",
        "--val-images", "0", "--lr-decay-epochs", "3", "5", "--weight-decay", "0.5",
        "--vocab", "v.json", "--no-amp", "--time-budget-min", "1.5", "--resume",
        "--max-steps", "7", "--train-split", "tr", "--bert-lr-factor", "0.5",
    ))  # fmt: skip
    assert given.model_overrides == {"coding": "soft", "img_dim": 8, "bert_dir": "b"}
    assert (given.model, given.val_images, given.lr_decay_epochs) == ("tiny", None, (3, 5))
    assert (given.weight_decay, given.vocab, given.amp) == (0.5, "v.json", False)
    assert (given.time_budget_s, given.resume, given.max_steps) == (90.0, True, 7)
    assert (given.train_split, given.bert_lr_factor) == ("tr", 0.5)
    no_decay = training_cli.train_config_from_args(parse(*base, "--lr-decay-epochs"))
    assert no_decay.lr_decay_epochs == ()


def test_train_rejects_non_positive_epochs(tmp_path, capsys):
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--epochs", "0"]
    assert main(argv) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err


def test_a_field_that_is_no_plain_flag_needs_an_entry():
    field = training_cli.DeclaredField("sizes", "list[int]", training_cli.NOT_LITERAL, "")
    with pytest.raises(TypeError, match="SPECIAL or EXCEPTIONS"):
        training_cli.train_flag(field)
    flag, options = training_cli.train_flag(training_cli.DeclaredField("x", "int", 3, "50% off"))
    assert (flag, options["type"], options["help"]) == ("--x", int, "50%% off (default: 3)")


def test_bench_flags_not_given_leave_the_benchmarks_defaults():
    from model.bench import ScoreBenchOptions
    from model.features.bench import EXTRACTORS

    names = [f.name for f in dataclasses.fields(ScoreBenchOptions)]
    assert bench_cli.given(parse("bench", "score"), *names) == {}
    assert bench_cli.given(parse("bench", "score", "--no-memory"), *names) == {"memory": False}
    assert bench_cli.given(parse("bench", "search", "--storage", "int8"), "storage") == {
        "storage": ("int8",)
    }
    assert ",".join(EXTRACTORS) == bench_cli.EXTRACTORS


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "score", "--min-len", "9", "--max-len", "8"], "need 1 <= --min-len"),
        (["bench", "score", "--groups", "0"], "--groups must be >= 1"),
        (["bench", "extract", "--images", "0"], "--images must be >= 1"),
        (["bench", "extract", "--extractors", "grid,yolo"], "--extractors takes names"),
    ],
)
def test_bench_flags_are_checked_before_anything_runs(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


BUILD = ["index", "build", "--checkpoint", "c", "--captions", "c.jsonl", "--out", "o"]


@pytest.mark.parametrize(
    "argv",
    [
        [*BUILD, "--factory", "images_pooled=Flat"],
        [*BUILD, "--no-pooled"],
        [*BUILD, "--memory-budget-gb", "1"],
        ["bench", "search", "--memory-budget-gb", "1"],
    ],
)
def test_the_pooled_index_flags_are_gone(argv, capsys):
    parse(*BUILD)
    with pytest.raises(SystemExit):
        parse(*argv)
    assert "unrecognized arguments" in capsys.readouterr().err

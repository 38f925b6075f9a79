"""`chan train` / `chan eval` on a tiny precomp world built in the test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from app.cli import main
from model.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[3]
COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square", "star", "cross"]


def write_precomp(folder: Path, seed: int = 0, sizes=(("train", 60), ("dev", 10), ("test", 10))):
    """Images of 2-3 objects; a region is its colour's vector plus its shape's vector
    (+ noise); captions name the objects. Learnable by the tiny model in a few steps."""
    rng = np.random.default_rng(seed)
    colour_vec = rng.normal(size=(len(COLOURS), 16))
    shape_vec = rng.normal(size=(len(SHAPES), 16))
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes:
        feats = np.zeros((n, 4, 16), np.float32)
        counts = np.zeros(n, np.int32)
        captions = []
        for i in range(n):
            k = int(rng.integers(2, 4))
            objs = [(int(rng.integers(4)), int(rng.integers(4))) for _ in range(k)]
            for r, (c, s) in enumerate(objs):
                feats[i, r] = colour_vec[c] + shape_vec[s] + 0.1 * rng.normal(size=16)
            counts[i] = k
            for _ in range(5):
                order = rng.permutation(k)
                named = [f"a {COLOURS[objs[o][0]]} {SHAPES[objs[o][1]]}" for o in order]
                captions.append(" and ".join(named))
        np.save(folder / f"{split}_ims.npy", feats)
        np.save(folder / f"{split}_counts.npy", counts)
        (folder / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
    return folder


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--out", str(out), "--model", "tiny",
        "--batch-size", "16", "--vocab-threshold", "1", *extra,
    ]  # fmt: skip


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_precomp(tmp_path_factory.mktemp("precomp"))


def test_training_lowers_the_loss_and_writes_a_loadable_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    # sum of violations throughout, so every epoch's loss is the same objective
    assert main(tiny_args(data, run, "--epochs", "6", "--warmup-epochs", "6", "--lr", "3e-3")) == 0
    epochs = [r for r in records(run) if "epoch" in r and "loss" in r]
    assert len(epochs) == 6 and epochs[-1]["loss"] < 0.5 * epochs[0]["loss"]
    assert epochs[-1]["val_rsum"] > epochs[0]["val_rsum"]
    loaded = load_checkpoint(run / "best")
    assert loaded.metadata["val"]["rsum"] == max(r["val_rsum"] for r in epochs)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "best"), "--data", str(data),
                 "--out", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["num_images"] == 10 and result["num_captions"] == 50
    assert main(["eval", "--checkpoint", str(run / "best"), "--data", str(data), "--fold5",
                 "--out", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["protocol"] == "5-fold 1K"


def test_resume_continues_from_the_saved_step(data, tmp_path):
    run = tmp_path / "run"
    assert main(tiny_args(data, run, "--epochs", "2")) == 0
    first = records(run)
    steps_per_epoch = first[0]["step"]
    assert main(tiny_args(data, run, "--epochs", "3", "--resume")) == 0
    epochs = [r for r in records(run) if "loss" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[-1]["step"] == 3 * steps_per_epoch
    assert load_checkpoint(run / "last").metadata["epoch"] == 3
    assert main(tiny_args(data, run, "--epochs", "3")) == 2  # not empty, no --resume


@pytest.mark.parametrize("coding", ["soft", "global"])
def test_baselines_train(data, tmp_path, coding):
    run = tmp_path / coding
    assert main(tiny_args(data, run, "--epochs", "1", "--coding", coding)) == 0
    assert load_checkpoint(run / "last").config.coding == coding


def test_max_steps_and_time_budget_stop_early(data, tmp_path):
    assert main(tiny_args(data, tmp_path / "a", "--epochs", "5", "--max-steps", "2")) == 0
    assert records(tmp_path / "a")[0]["step"] == 2
    assert main(tiny_args(data, tmp_path / "b", "--epochs", "50", "--time-budget-min", "0")) == 0
    assert [r["step"] for r in records(tmp_path / "b") if "loss" in r] == [1]


def free_port() -> int:
    """A port nobody listens on now (a fixed rendezvous port can still be held by the
    previous run's socket)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_torchrun(data: Path, out: Path, nproc: int, batch: int) -> subprocess.CompletedProcess:
    args = tiny_args(data, out, "--epochs", "2", "--region-drop", "0", "--token-prob", "0")
    args[args.index("--batch-size") + 1] = str(batch)
    code = "import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))"
    script = out.parent / f"entry_{nproc}.py"
    script.write_text(code)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
               f"--nproc_per_node={nproc}", str(script), *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_two_ranks_equal_one_process_with_the_global_batch(data, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) trains exactly like one process whose batch
    is the two ranks' batches together: so the loss saw the negatives of both ranks."""
    two = run_torchrun(data, tmp_path / "two", nproc=2, batch=16)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_torchrun(data, tmp_path / "one", nproc=1, batch=16)
    assert one.returncode == 0, one.stderr[-3000:]
    end = records(tmp_path / "two")[-1]
    assert end["event"] == "end" and len(set(end["rank_weight_digests"])) == 1
    assert len(end["rank_weight_digests"]) == 2
    # only rank 0 writes: one line per epoch plus the end line, nothing from rank 1
    assert len(records(tmp_path / "two")) == 3
    w2 = load_file(str(tmp_path / "two" / "last" / "model.safetensors"))
    w1 = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    for name in w1:
        a, b = w2[name].numpy(), w1[name].numpy()
        if name.endswith("attn.in_proj_bias"):
            # softmax ignores the key bias, so its gradient is pure rounding noise that
            # Adam's normalisation turns into lr-sized steps: compare queries and values only
            third = a.shape[0] // 3
            a, b = np.delete(a, np.s_[third : 2 * third]), np.delete(b, np.s_[third : 2 * third])
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=name)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: (d / "train_caps.txt").unlink(), "train_caps.txt not found"),
        (lambda d: (d / "dev_ims.npy").unlink(), "dev_ims.npy not found"),
        (
            lambda d: (d / "train_caps.txt").write_text(
                "\n".join((d / "train_caps.txt").read_text().splitlines()[:-1]) + "\n"
            ),
            "299 captions for 60 images",
        ),
        (lambda d: np.save(d / "train_ims.npy", np.zeros((60, 4, 8), np.float32)), "--img-dim 8"),
        (
            lambda d: (d / "train_caps.txt").write_text("\n" + (d / "train_caps.txt").read_text()),
            "train_caps.txt:1: empty caption",
        ),
    ],
)
def test_bad_data_is_a_one_line_error(tmp_path, capsys, mutate, message):
    data = write_precomp(tmp_path / "d")
    mutate(data)
    assert main(tiny_args(data, tmp_path / "run", "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err

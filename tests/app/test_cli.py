"""The `chan` command line: score, import-official, bench score, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from app.cli import main
from model.chan import create_model
from model.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import CAPTIONS


@pytest.fixture
def score_inputs(tmp_path, vocab):
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        create_model("tiny", vocab_size=len(vocab)), tmp_path / "ckpt", vocab=vocab
    )
    rng = np.random.default_rng(0)
    np.save(tmp_path / "regions.npy", rng.standard_normal((7, 5, 16)).astype(np.float32))
    np.save(tmp_path / "lens.npy", np.array([5, 1, 3, 5, 2, 4, 5]))
    (tmp_path / "caps.txt").write_text("\n".join(CAPTIONS) + "\n")
    return tmp_path, ckpt


def run(tmp_path, ckpt, *extra):
    return main(
        [
            "score",
            "--checkpoint",
            str(ckpt),
            "--regions",
            str(tmp_path / "regions.npy"),
            "--region-lens",
            str(tmp_path / "lens.npy"),
            "--captions",
            str(tmp_path / "caps.txt"),
            "--out",
            str(tmp_path / "out.npy"),
            *extra,
        ]
    )


def test_score_writes_the_exact_matrix(score_inputs):
    tmp_path, ckpt = score_inputs
    assert run(tmp_path, ckpt, "--batch-size", "3") == 0
    got = np.load(tmp_path / "out.npy")
    loaded = load_checkpoint(ckpt)
    regions = torch.from_numpy(np.load(tmp_path / "regions.npy"))
    lens = torch.from_numpy(np.load(tmp_path / "lens.npy"))
    with torch.no_grad():
        expected = loaded.model.score(
            loaded.model.encode_images(regions, lens), lens, *loaded.encode_captions(CAPTIONS)
        )
    assert got.shape == (7, len(CAPTIONS)) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5)
    assert run(tmp_path, ckpt, "--bf16") == 0
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected.numpy(), atol=5e-2)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (
            lambda p: np.save(p / "regions.npy", np.zeros((7, 5, 9), np.float32)),
            "expects [N, K, 16]",
        ),
        (lambda p: np.save(p / "lens.npy", np.array([5, 1])), "one count per image"),
        (lambda p: np.save(p / "lens.npy", np.array([6, 1, 1, 1, 1, 1, 1])), "must lie in [1, 5]"),
        (
            lambda p: (p / "caps.txt").write_text("a red circle\n\ntwo stars\n"),
            "caps.txt:2: empty caption",
        ),
        (lambda p: (p / "regions.npy").unlink(), "not found"),
    ],
)
def test_score_bad_input_is_one_line_and_non_zero(score_inputs, capsys, breakage, message):
    tmp_path, ckpt = score_inputs
    breakage(tmp_path)
    assert run(tmp_path, ckpt) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("chan score: error:") and message in err[0]
    assert not (tmp_path / "out.npy").exists()


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert (
        main(
            [
                "score",
                "--checkpoint",
                str(tmp_path),
                "--regions",
                "r.npy",
                "--captions",
                "c.txt",
                "--out",
                "o.npy",
            ]
        )
        == 2
    )
    assert "config.json is missing" in capsys.readouterr().err


def test_import_official_cli_reports_a_bad_key(tmp_path, capsys):
    from tests.model.conftest import official_bigru_parts, options, write_official, write_vocab

    parts = official_bigru_parts(17)
    parts[0].pop("fc.bias")
    ckpt = write_official(tmp_path / "m.pth", parts, options())
    vocab = write_vocab(tmp_path / "v.json")
    assert (
        main(["import-official", str(ckpt), "--vocab", str(vocab), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "missing key img_enc.fc.bias" in capsys.readouterr().err


def test_bench_score_json_last_line():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "bench",
            "score",
            "--images",
            "16",
            "--captions",
            "40",
            "--regions",
            "6",
            "--dim",
            "32",
            "--groups",
            "2",
            "--soft-images",
            "4",
            "--reference-images",
            "4",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["methods"]) == {
        "hard_fp32",
        "matmul_fp32",
        "hard_bf16",
        "reference_style_fp32",
        "soft_fp32",
        "soft_reference_style_fp32",
    }
    assert result["methods"]["hard_fp32"]["pairs_per_s"] > 0
    # the reference-style ports compute the same scores as the fast paths
    assert result["methods"]["reference_style_fp32"]["max_abs_diff_vs_hard"] < 1e-4
    assert result["methods"]["soft_reference_style_fp32"]["max_abs_diff_vs_soft"] < 1e-4
    assert result["methods"]["hard_fp32"]["peak_extra_mb"] >= 0
    assert 0 <= result["bf16_agreement"]["t2i_top10_overlap"] <= 1

"""model.io: atomic files, row files, directory replacement and resume state."""

import json
import logging
import os

import numpy as np
import pytest
import torch

from model import io as model_io
from model.io import (
    RowWriter,
    atomic_save_npy,
    atomic_write_text,
    atomic_writer,
    load_state,
    preallocate_npy,
    replace_dir,
    save_state,
    staged_dir,
)

# ----------------------------------------------------------------------------- files


def test_atomic_writer_replaces_only_when_the_block_completes(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="half way"), atomic_writer(path) as handle:
        handle.write(b"new, but")
        raise RuntimeError("half way")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary left
    with atomic_writer(path, sync=True) as handle:
        handle.write(b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_writes_of_text_arrays_and_tensors(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    atomic_save_npy(tmp_path / "a.npy", array)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    with atomic_writer(tmp_path / "a.pt") as handle:
        torch.save({"x": torch.ones(2)}, handle)
    assert torch.load(tmp_path / "a.pt", weights_only=True)["x"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="mode"), atomic_writer(tmp_path / "b", "a"):
        pass


def test_atomic_files_get_the_usual_permissions(tmp_path):
    """0o666 less the umask, like any new file (not mkstemp's private 0o600)."""
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- row files


def test_row_writer_fills_a_preallocated_file_in_any_order(tmp_path):
    path = tmp_path / "rows.npy"
    preallocate_npy(path, (5, 2, 3), np.float16)
    rows = np.arange(30, dtype=np.float64).reshape(5, 2, 3)
    with RowWriter(path) as writer:
        writer.write(3, rows[3:])
        writer.write(0, rows[:3])
        writer.sync()
    back = np.load(path)
    assert back.dtype == np.float16 and back.shape == (5, 2, 3)
    np.testing.assert_array_equal(back, rows.astype(np.float16))


# ----------------------------------------------------------------------------- directories


def _folder(path, text):
    path.mkdir()
    (path / "f").write_text(text)
    return path


def test_replace_dir_creates_and_exchanges(tmp_path):
    target = tmp_path / "out"
    replace_dir(_folder(tmp_path / ".out.tmp-1", "first"), target)
    assert (target / "f").read_text() == "first"
    replace_dir(_folder(tmp_path / ".out.tmp-2", "second"), target)
    assert (target / "f").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("aside", [None, ".out.moved"])
def test_replace_dir_without_exchange_renames_twice(tmp_path, monkeypatch, aside):
    target = _folder(tmp_path / "out", "old")
    monkeypatch.setattr(model_io, "exchange", lambda a, b: False)
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(os.path.basename(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    staged = _folder(tmp_path / ".out.tmp", "new")
    replace_dir(staged, target, aside=None if aside is None else tmp_path / aside)
    assert (target / "f").read_text() == "new"
    assert seen == [aside or f".out.old-{os.getpid()}", "out"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_dir_replaces_the_target_or_leaves_nothing(tmp_path):
    target = _folder(tmp_path / "out", "old")
    with pytest.raises(RuntimeError, match="broken"), staged_dir(target) as staging:
        (staging / "f").write_text("half")
        raise RuntimeError("broken")
    assert (target / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    previous = os.umask(0o022)
    try:
        with staged_dir(tmp_path / "new" / "out") as staging:  # parents are made
            (staging / "f").write_text("new")
    finally:
        os.umask(previous)
    made = tmp_path / "new" / "out"
    assert (made / "f").read_text() == "new"
    assert made.stat().st_mode & 0o777 == 0o755  # not mkdtemp's private 0o700
    assert sorted(p.name for p in made.parent.iterdir()) == ["out"]


def test_exchange_swaps_two_entries(tmp_path):
    a, b = _folder(tmp_path / "a", "A"), _folder(tmp_path / "b", "B")
    assert model_io.exchange(a, b)  # this machine's file system supports it
    assert (a / "f").read_text() == "B" and (b / "f").read_text() == "A"


# ----------------------------------------------------------------------------- resume state


def test_state_round_trip_and_file_layout(tmp_path):
    path = tmp_path / "state.json"
    assert load_state(path, "abc") is None  # missing: quietly nothing
    save_state(path, "abc", {"done": 6, "failed": [{"index": 2}]})
    assert load_state(path, "abc") == {"done": 6, "failed": [{"index": 2}]}
    # the fields sit at the top level, beside the signature
    assert json.loads(path.read_text()) == {"signature": "abc", "done": 6, "failed": [{"index": 2}]}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_state_of_other_inputs_or_unreadable_is_not_resumed(tmp_path, caplog):
    path = tmp_path / "state.json"
    save_state(path, "abc", {"done": 1})
    with caplog.at_level(logging.WARNING, logger="model.io"):
        assert load_state(path, "xyz") is None
    assert "other inputs" in caplog.text
    caplog.clear()
    path.write_text('{"signature": "abc", "do')  # torn by a crash of an older writer
    with caplog.at_level(logging.WARNING, logger="model.io"):
        assert load_state(path, "abc") is None
    assert "unreadable" in caplog.text
    path.write_text("[1, 2]")
    assert load_state(path, "abc") is None


def test_a_state_may_not_carry_its_own_signature(tmp_path):
    with pytest.raises(ValueError, match="signature"):
        save_state(tmp_path / "state.json", "abc", {"signature": "other"})
    assert not (tmp_path / "state.json").exists()

"""Fault injection: every write command (build --overwrite, delete, add, compact) is
killed with SIGKILL just before each of its file-system mutations of the index's entry
or its top-level files, one run per mutation. After every kill the index must exist,
verify, and hold the old state or the new one; `recover` then removes what was left.

The kill needs no hook in the product: the runner wraps os.replace / os.rename /
os.unlink / os.remove / os.link / shutil.rmtree / shutil.copyfile (and model.io's atomic
exchange) and counts only calls that touch the index directory itself (its name, its
siblings `NAME.*` / `.NAME.*`) or a file directly inside it.
"""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from index_builder.build.verify import verify_index
from index_builder.format import durable
from index_builder.format import layout as fmt
from index_builder.format.metadata import MetadataStore
from model import io as model_io
from tests.index_builder.conftest import build

ROOT = Path(__file__).resolve().parents[3]
MAX_RUNS = 40  # a command with more mutations than this fails the test (bounds the time)

RUNNER = r"""
import os, shutil, signal, sys
from pathlib import Path

target, kill_at, argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
seen = 0


def touches(arg):
    if not isinstance(arg, (str, bytes, os.PathLike)):
        return False
    path = Path(os.fsdecode(arg))
    if path.parent == target:
        return True
    name = path.name
    return path.parent == target.parent and (
        name == target.name or name.startswith((target.name + ".", "." + target.name + ".")))


def wrap(owner, name):
    real = getattr(owner, name)

    def wrapped(*args, **kwargs):
        global seen
        if any(touches(a) for a in args[:2]):
            seen += 1
            if seen == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, name, wrapped)


for name in ("replace", "rename", "unlink", "remove", "link"):
    wrap(os, name)
for name in ("rmtree", "copyfile"):
    wrap(shutil, name)
from model import io as model_io

wrap(model_io, "exchange")

from app.cli import main

code = main(argv)
print(f"MUTATIONS {seen}")
sys.exit(code)
"""


def _run(target: Path, kill_at: int, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(target), str(kill_at), *argv],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip


def _state(index: Path) -> dict:
    """What distinguishes old from new: counts, storage and live rows."""
    manifest = fmt.read_manifest(index)
    with MetadataStore.open(index / fmt.METADATA) as store:
        counts = store.counts()
    return {"storage": manifest["storage"], "images": manifest["counts"]["images"],
            "captions": manifest["counts"]["captions"], "live_images": counts["live_images"],
            "live_captions": counts["live_captions"]}  # fmt: skip


@pytest.fixture(scope="module")
def pristine(world):
    """A built index, and a copy of it with two images deleted (for compact)."""
    index = build(world, world / "crash-base")
    with_deletes = world / "crash-deleted"
    shutil.copytree(index, with_deletes)
    with MetadataStore.open(index / fmt.METADATA) as store:
        first = [r.image_id for r in store.images([0, 1])]
    from index_builder.build.edit import delete_items

    delete_items(with_deletes, first, [])
    captions = world / "crash-new-captions.jsonl"
    captions.write_text("".join(json.dumps({"id": f"new{n}", "text": f"a red circle {n}"})
                                + "\n" for n in range(3)))  # fmt: skip
    return {"index": index, "deleted": with_deletes, "captions": captions, "first": first}


def _commands(world, pristine):
    """name -> (index to start from, argv given the target path)."""
    synth = world / "synth"
    return {
        "build --overwrite": (pristine["index"], lambda t: [
            "index", "build", "--checkpoint", str(world / "ckpt"), "--features", str(synth),
            "--split", "test", "--images", str(synth / "test_images.txt"), "--captions",
            str(synth / "captions.jsonl"), "--caption-split", "test", "--out", str(t),
            "--storage", "int8", "--recall-queries", "5", "--overwrite"]),
        "delete": (pristine["index"], lambda t: [
            "index", "delete", str(t), "--image", pristine["first"][0]]),
        "add": (pristine["index"], lambda t: [
            "index", "add", str(t), "--checkpoint", str(world / "ckpt"),
            "--captions", str(pristine["captions"])]),
        "compact": (pristine["deleted"], lambda t: ["index", "compact", str(t)]),
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("command", ["build --overwrite", "delete", "add", "compact"])
def test_a_kill_at_any_mutation_leaves_the_old_or_the_new_index(world, pristine, command,
                                                                tmp_path):  # fmt: skip
    start, argv = _commands(world, pristine)[command]
    old = _state(start)
    new = None
    outcomes = []
    for kill_at in range(1, MAX_RUNS + 1):
        target = tmp_path / f"run{kill_at}" / "idx"
        target.parent.mkdir()
        shutil.copytree(start, target)
        result = _run(target, kill_at, argv(target))
        if result.returncode != -signal.SIGKILL:
            assert result.returncode == 0, result.stderr[-2000:]
            mutations = int(result.stdout.rsplit("MUTATIONS ", 1)[1].split()[0])
            assert mutations == kill_at - 1
            new = _state(target)
            verify_index(target)
            break
        assert target.is_dir(), f"killed before mutation {kill_at}: no index at {target}"
        try:
            verify_index(target)
        except fmt.IndexFormatError as exc:
            pytest.fail(f"killed before mutation {kill_at}: the index does not verify: {exc}")
        outcomes.append((kill_at, _state(target)))
        durable.recover(target)
        assert durable.leftovers(target) == []
        verify_index(target)
    else:
        pytest.fail(f"{command}: still killed after {MAX_RUNS} mutations")
    assert new != old  # the command changed something
    for kill_at, state in outcomes:
        assert state in (old, new), f"killed before mutation {kill_at}: {state}"


def test_recover_puts_back_an_index_left_aside(tmp_path):
    """The fallback where the file system cannot exchange entries: killed between its two
    renames, the index sits at `.NAME.old-PID`; the next command restores it."""
    target = tmp_path / "idx"
    (target / "seg000").mkdir(parents=True)
    (target / "manifest.json").write_text("{}")
    aside = durable.staged_path(target, "old")
    target.rename(aside)
    staged = durable.staged_path(target, "edit")
    staged.mkdir()
    assert set(durable.leftovers(target)) == {aside, staged}
    done = durable.recover(target)
    assert (target / "manifest.json").read_text() == "{}"
    assert not aside.exists() and not staged.exists()
    assert any("restored" in line for line in done)


def test_commit_without_exchange_falls_back_to_two_renames(tmp_path, monkeypatch):
    target, staged = tmp_path / "idx", tmp_path / ".idx.edit-1"
    target.mkdir()
    (target / "f").write_text("old")
    staged.mkdir()
    (staged / "f").write_text("new")
    monkeypatch.setattr(model_io, "exchange", lambda a, b: False)
    durable.commit_dir(staged, target)
    assert (target / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_commit_exchanges_in_one_step(tmp_path):
    target, staged = tmp_path / "idx", tmp_path / ".idx.edit-1"
    for folder, text in ((target, "old"), (staged, "new")):
        folder.mkdir()
        (folder / "f").write_text(text)
    assert model_io.exchange(staged, target)  # this machine's file system supports it
    assert (target / "f").read_text() == "new" and (staged / "f").read_text() == "old"


def test_a_resumable_build_is_not_a_leftover(tmp_path):
    target = tmp_path / "idx"
    partial = target.with_name("idx.partial")
    partial.mkdir()
    (partial / durable.BUILD_STATE).write_text("{}")
    assert durable.leftovers(target) == []
    (partial / durable.BUILD_STATE).unlink()
    assert durable.leftovers(target) == [partial]


# ---------------------------------------------------------------------- full disk


def _tiny_disk(tmp_path: Path, size_kb: int) -> Path:
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs",
                             str(mount)], capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()}): needs root")
    return mount


def _size_kb(path: Path) -> int:
    """Room the tree takes on tmpfs: whole 4 KiB pages per file and per folder."""
    pages = sum(-(-p.stat().st_size // 4096) if p.is_file() else 1 for p in path.rglob("*"))
    return 4 * (pages + 1)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["build --overwrite", "add", "compact", "delete"])
def test_a_full_disk_is_one_line_and_leaves_the_index(world, pristine, command, tmp_path):
    start, argv = _commands(world, pristine)[command]
    # room for the index and a little more: a rewrite (which stages a whole new copy)
    # runs out; a delete stages hard links and a metadata copy, so it gets less room
    room = _size_kb(start) + (16 if command == "delete" else _size_kb(start) // 2)
    disk = _tiny_disk(tmp_path, room)
    try:
        target = disk / "idx"
        shutil.copytree(start, target)
        if command == "delete":  # fill what is left, so the metadata copy cannot fit
            (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - 4096))
        before = _state(target)
        result = _run(target, 0, argv(target))
        assert result.returncode == 2, result.stderr[-3000:]
        err = result.stderr.strip().splitlines()[-1]
        assert err.startswith("chan index") and "no space left on the device" in err, err
        assert "Traceback" not in result.stderr and f"{target} is unchanged" in err
        verify_index(target)
        assert _state(target) == before
        durable.recover(target)
        (disk / "filler").unlink(missing_ok=True)
        partial = target.with_name("idx.partial")
        shutil.rmtree(partial, ignore_errors=True)
        assert sorted(p.name for p in disk.iterdir()) == ["idx"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_verify_puts_back_an_index_an_interrupted_update_left_aside(pristine, tmp_path, capsys):
    from app.cli import main

    target = tmp_path / "idx"
    shutil.copytree(pristine["index"], target)
    target.rename(durable.staged_path(target, "old"))
    with pytest.raises(FileNotFoundError, match="interrupted update"):
        fmt.read_manifest(target)
    assert main(["index", "verify", str(target)]) == 0
    assert "recovered: restored" in capsys.readouterr().out
    verify_index(target)


def test_a_change_under_way_in_another_process_is_not_a_leftover(tmp_path):
    target = tmp_path / "idx"
    target.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as other:
        busy = tmp_path / f".idx.edit-{other.pid}"
        busy.mkdir()
        assert durable.leftovers(target) == []
        other.kill()
    assert durable.leftovers(target) == [busy]

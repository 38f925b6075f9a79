"""How every change reaches an index directory: one atomic step, nothing half-visible.

Every write path (a build, `--overwrite`, delete, add, compact) stages the complete new
directory beside the index, syncs it to disk, and then makes it the index in a single
`renameat2(RENAME_EXCHANGE)`: the two directory entries swap at once, so a reader, or a
process killed at any instruction, sees the old index or the new one, complete and
verifying, never neither. The old directory, now at the staged name, is removed last.
Unchanged files reach the staged directory as hard links (a delete does not copy
gigabytes of vectors); only the files that change are written anew.

Where the file system cannot exchange two entries, the old index is first renamed aside
(`.NAME.old-PID`) and the staged one renamed into place; a crash between the two leaves
the old index aside, and `recover()`, which every write command runs first, puts it
back. `recover()` also removes what a killed command left: staged directories and old
directories after an exchange (`.NAME.edit-PID`, `NAME.partial` without build state).

The sync-and-exchange mechanism itself is model.io.replace_dir, shared with every other
directory writer; this module keeps what is the index's own: its staged and aside names,
recover() and leftovers(), link_tree() and the full-disk error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from model.io import fsync_dir, replace_dir

logger = logging.getLogger(__name__)

BUILD_STATE = "state.json"  # a resumable build keeps its NAME.partial/ while it has one
LOCK_ATTEMPTS = 5  # tries to lock an index directory that an exchange keeps replacing


class Busy(ValueError):
    """Another command is changing the same index right now."""


@contextlib.contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold the index's write lock (an flock on its directory) for one change: two
    changes staged from the same generation would otherwise both commit, and the later
    would drop what the earlier added. A second command is refused at once, never
    queued. The directory is exchanged on commit, so after locking, the name must still
    lead to the locked directory (else the lock is taken again on the new one)."""
    for _ in range(LOCK_ATTEMPTS):
        try:
            fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"index {target} does not exist; build it with `chan index build`"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(f"another command is changing {target} right now: run this one "
                       "when it has finished") from None  # fmt: skip
        if os.fstat(fd).st_ino == os.stat(target).st_ino:
            break
        os.close(fd)  # an exchange happened between the open and the lock
    else:
        raise Busy(f"{target} kept changing while this command tried to lock it: run it again")
    try:
        yield
    finally:
        os.close(fd)


def staged_path(target: Path, purpose: str = "edit") -> Path:
    """Where a change of `target` is staged: a hidden sibling (same file system)."""
    return target.with_name(f".{target.name}.{purpose}-{os.getpid()}")


def commit_dir(staged: Path, target: Path) -> None:
    """Make the complete directory `staged` the directory `target` in one atomic step
    (model.io.replace_dir); without an exchange the old index waits at the aside name
    that recover() restores from."""
    replace_dir(staged, target, aside=staged_path(target, "old"))


def link_tree(source: Path, staged: Path, skip: set[str]) -> None:
    """Recreate source's folders under staged, every file a hard link (a copy where the
    file system has no hard links), except the top-level names in `skip`."""
    for folder, dirs, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        (staged / relative).mkdir(parents=True, exist_ok=True)
        if relative == Path("."):
            dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            if relative == Path(".") and name in skip:
                continue
            src, dst = Path(folder) / name, staged / relative / name
            try:
                os.link(src, dst)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copy2(src, dst)


def leftovers(target: Path) -> list[Path]:
    """What interrupted commands left beside `target`, newest first."""
    parent = target.parent
    if not parent.is_dir():
        return []
    found = [p for p in parent.glob(f".{target.name}.old-*") if p.is_dir()]
    found += [p for p in parent.glob(f".{target.name}.edit-*") if p.is_dir()]
    found = [p for p in found if not _running_elsewhere(p)]
    partial = target.with_name(target.name + ".partial")
    if partial.is_dir() and not (partial / BUILD_STATE).exists():
        found.append(partial)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _running_elsewhere(path: Path) -> bool:
    """True when the PID in the name is another live process: its change is under way."""
    pid = path.name.rsplit("-", 1)[-1]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(target: Path) -> list[str]:
    """Undo what an interrupted change left: an index renamed aside while the target is
    missing comes back; staged and superseded directories go. Returns what was done."""
    done = []
    for path in leftovers(target):
        if path.name.startswith(f".{target.name}.old-") and not target.exists():
            os.replace(path, target)
            fsync_dir(target.parent)
            done.append(f"restored {target} from {path.name}")
            continue
        shutil.rmtree(path)
        done.append(f"removed {path.name}")
    for line in done:
        logger.warning("%s: %s (left by an interrupted command)", target, line)
    return done


class DiskFull(OSError):
    """The disk filled while an index was being changed; the index itself is unchanged
    (every change becomes visible only in its last, atomic step)."""


@contextlib.contextmanager
def disk_full_reported(target: Path) -> Iterator[None]:
    """Turn the several forms a full disk takes (OSError ENOSPC or EDQUOT, SQLite's
    "database or disk is full") into one DiskFull that says where."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if not _is_disk_full(exc):
            raise
        raise DiskFull(errno.ENOSPC, _full_message(target, exc)) from exc


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def _full_message(target: Path, exc: BaseException) -> str:
    filename = getattr(exc, "filename", None)
    writing = f" (writing {filename})" if filename else ""
    partial = target.with_name(target.name + ".partial")
    kept = ""
    if (partial / BUILD_STATE).exists():
        kept = f"; the rows written so far stay in {partial} and the next run resumes there"
    return (f"no space left on the device of {target.parent}{writing}: free space there and "
            f"run the command again ({target} is unchanged{kept})")  # fmt: skip

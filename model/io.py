"""File-system primitives every writer shares: atomic files, preallocated row files, atomic
directory replacement and resume state files.

Whatever is written goes to a temporary name beside its target (same folder, so the same
file system) and is renamed into place when complete: a reader, or a process killed at
any instruction, sees the old file or directory or the new one, never a part of one.

A directory is replaced in one step with `renameat2(RENAME_EXCHANGE)`: the two directory
entries swap at once, and the old directory, now under the staged name, is removed
last. Where the file system cannot exchange entries, the old directory is first renamed
aside and the staged one renamed into place; a crash between the two renames leaves the
old one aside (a caller that must undo that, like the index's recover(), names it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

logger = logging.getLogger(__name__)

RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}

# ----------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "wb", sync: bool = False) -> Iterator[IO]:
    """A handle on a temporary sibling of `path` that replaces `path` when the block ends
    (and is removed when the block raises). mode: "wb", or "w" for UTF-8 text. sync: flush
    the data to disk before the rename (a file a power cut must not leave empty)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    # 0o666 less the umask, as for any new file (mkstemp would make it private)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None) as handle:
            yield handle
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, sync: bool = False) -> None:
    """Write `text` (UTF-8) to `path` through a temporary sibling."""
    with atomic_writer(path, "w", sync=sync) as handle:
        handle.write(text)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """np.save `array` to `path` through a temporary sibling."""
    with atomic_writer(path) as handle:
        np.save(handle, array)


# ----------------------------------------------------------------------------- row files


def preallocate_npy(path: Path, shape: tuple[int, ...], dtype: Any) -> None:
    """A .npy file of `shape` whose rows RowWriter fills (sparse until written)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    del array


class RowWriter:
    """Positioned writes of whole rows into a preallocated .npy file (no mapping, so
    written pages do not accumulate in this process)."""

    def __init__(self, path: Path) -> None:
        array = np.load(path, mmap_mode="r")
        self.offset, self.dtype = array.offset, array.dtype
        self.row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
        del array
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, start: int, rows: np.ndarray) -> None:
        """Rows start, start + 1, ... of the file become `rows` (converted to its dtype)."""
        data = np.ascontiguousarray(rows, dtype=self.dtype).tobytes()
        os.pwrite(self.fd, data, self.offset + start * self.row_bytes)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- directories


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under root to disk (a SIGKILL cannot lose written
    pages, but a power cut can: a rename must not outrun the data it publishes)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically; False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def replace_dir(staged: Path, target: Path, aside: Path | None = None) -> None:
    """Make the complete directory `staged` (a sibling of `target`) the directory
    `target` in one atomic step, synced to disk first; the previous target, if any, is
    removed afterwards. aside: where the previous target waits when the file system
    cannot exchange entries (default `.NAME.old-PID`)."""
    parent = target.parent
    fsync_tree(staged)
    if not target.exists():
        os.replace(staged, target)
        fsync_dir(parent)
        return
    if exchange(staged, target):
        fsync_dir(parent)
        shutil.rmtree(staged)  # the old directory, now under the staged name
        return
    aside = aside or target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, aside)
    fsync_dir(parent)
    os.replace(staged, target)
    fsync_dir(parent)
    shutil.rmtree(aside)


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A new, empty sibling folder to build `target` in: when the block completes it
    replaces `target` (replace_dir); when the block raises it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    staging.mkdir()  # 0o777 less the umask, like any new folder (mkdtemp's is private)
    try:
        yield staging
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- resume state


def load_state(path: Path, signature: str) -> dict | None:
    """The state saved at `path` when it was written for `signature` (a digest of the
    inputs); None when it is missing, unreadable, or was written for other inputs (the
    last two logged at warning)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("%s: unreadable resume state (%s); not resuming from it", path, exc)
        return None
    if not isinstance(document, dict) or document.get("signature") != signature:
        logger.warning("%s: resume state written for other inputs; not resuming from it", path)
        return None
    return {key: value for key, value in document.items() if key != "signature"}


def save_state(path: Path, signature: str, state: dict) -> None:
    """Write `state` (JSON-able, with no "signature" key) for `signature`, atomically and
    synced: after a crash the file holds the last saved state, whole."""
    if "signature" in state:
        raise ValueError("a resume state must not hold a 'signature' key: save_state adds it")
    atomic_write_text(Path(path), json.dumps({"signature": signature, **state}), sync=True)

"""The service's state: the loaded searcher, a bounded executor for inference, and the
swap to a newly built index. No web framework here."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from app.settings import Settings
from index_builder.format.layout import shard_dirs
from index_builder.search.live import GenerationWatch
from index_builder.search.searcher import Searcher

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Overloaded(RuntimeError):
    """Every inference slot and queue place is taken: the client should retry later."""


class NotReady(RuntimeError):
    """The model or the index is not loaded (yet)."""


class BoundedExecutor:
    """A thread pool that refuses work instead of queueing without limit: at most
    `threads` jobs run and `queue_size` wait; one more raises Overloaded at once."""

    def __init__(self, threads: int, queue_size: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="chan-search")
        self._slots = threading.BoundedSemaphore(threads + queue_size)
        self._pending = 0
        self._lock = threading.Lock()
        self.closed = False

    @property
    def pending(self) -> int:
        """Jobs running or waiting."""
        return self._pending

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self._slots.acquire(blocking=False):
            raise Overloaded("the search queue is full")
        with self._lock:
            self._pending += 1
        try:
            future = self._pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._release()
            raise
        # the slot frees when the job ends, even if the client went away first
        future.add_done_callback(lambda _: self._release())
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1
        self._slots.release()

    def shutdown(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Loaded:
    """One loaded index + model pair; requests hold on to the one they started with."""

    searcher: Searcher  # one index directory, or a folder of shards
    index_path: Path
    checkpoint_path: Path
    loaded_at: float
    load_seconds: float


class SearchService:
    """Owns the current Loaded pair. `reload` builds a new pair off to the side and swaps
    it in; requests in flight finish on the pair they started with."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.executor = BoundedExecutor(settings.inference_threads, settings.queue_size)
        self._current: Loaded | None = None
        self._reload_lock = threading.Lock()
        self.error: str | None = None  # why the last load failed, for /readyz
        self._watch: GenerationWatch | None = None

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> Loaded:
        if self._current is None:
            raise NotReady(self.error or "the index is still loading")
        return self._current

    def load(self, index: Path | None = None, checkpoint: Path | None = None) -> Loaded:
        """Open an index (default: the configured one) with its checkpoint and make it
        current. Raises on any problem and leaves the previous pair serving."""
        index = index or self.settings.index
        with self._reload_lock:
            started = time.perf_counter()
            checkpoint = checkpoint or self._checkpoint_for(index)
            try:
                searcher = Searcher.open(index, checkpoint, self.settings.checksums)
            except Exception as exc:
                self.error = f"loading {index} failed: {exc}"
                raise
            loaded = Loaded(searcher, Path(index), Path(checkpoint), time.time(),
                            round(time.perf_counter() - started, 3))  # fmt: skip
            self._current, self.error = loaded, None
            summary = searcher.summary()
            logger.info("serving %s (%d images, %d captions, %d shard(s)) with %s, loaded in "
                        "%.1f s", index, summary["images"], summary["captions"],
                        len(searcher.shards), checkpoint, loaded.load_seconds)  # fmt: skip
            return loaded

    def _searcher(self) -> Searcher | None:
        return None if self._current is None else self._current.searcher

    def _swap(self, searcher: Searcher) -> None:
        """Serve a new generation of the same index (from the generation watch)."""
        with self._reload_lock:
            old = self._current
            if old is None or searcher.root != old.searcher.root:
                return  # a reload to another index happened meanwhile: it wins
            self._current = Loaded(searcher, old.index_path, old.checkpoint_path, time.time(),
                                   old.load_seconds)  # fmt: skip

    def _checkpoint_for(self, index: Path) -> Path:
        if self.settings.checkpoint is not None:
            return self.settings.checkpoint
        from index_builder.format import layout as fmt

        recorded = fmt.read_manifest(shard_dirs(Path(index))[0])["checkpoint"].get("path")
        if not recorded:
            raise ValueError(f"{index} names no checkpoint path: set CHAN_CHECKPOINT")
        return Path(recorded)

    def start(self) -> None:
        """(Re)open the executor: an app may run its lifespan more than once (tests)."""
        if self.executor.closed:
            settings = self.settings
            self.executor = BoundedExecutor(settings.inference_threads, settings.queue_size)
        if self.settings.watch_seconds and self._watch is None:
            self._watch = GenerationWatch(self._searcher, self._swap, self.settings.watch_seconds,
                                          self.settings.checksums).start()  # fmt: skip

    def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        self.executor.shutdown()

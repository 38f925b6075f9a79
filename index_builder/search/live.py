"""Following an index as it changes: a thread that looks at the served directory's
manifest generation every few seconds and, when `chan index add`, `delete`, `compact` or
a rebuild has committed a new one, opens it beside the current searcher and hands it
over. Only what changed is read again (see Searcher.refreshed); searches in flight keep
the searcher they started with. A generation that fails to open is logged once and the
current one keeps serving."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from index_builder.search.searcher import Searcher
from model.errors import first_line

logger = logging.getLogger(__name__)


class GenerationWatch:
    """Polls `current()` (the searcher being served, or None while there is none) every
    `interval` seconds and calls `swap(new_searcher)` when its directory has moved on."""

    def __init__(
        self,
        current: Callable[[], Searcher | None],
        swap: Callable[[Searcher], None],
        interval: float,
        checksums: bool = True,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"the watch interval must be > 0 seconds, got {interval}")
        self.current, self.swap = current, swap
        self.interval, self.checksums = interval, checksums
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: dict | None = None  # generations on disk that failed to open

    def start(self) -> GenerationWatch:
        self._thread = threading.Thread(target=self._run, name="chan-index-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def check(self) -> bool:
        """One look; True when a new generation was swapped in."""
        searcher = self.current()
        on_disk = None if searcher is None else searcher.generations_on_disk()
        if on_disk is None or on_disk in (searcher.generations, self._failed):
            return False
        try:
            fresh = searcher.refreshed(self.checksums)
        except (OSError, ValueError) as exc:
            logger.warning("a new generation of %s does not open, still serving the "
                           "previous one: %s", searcher.root, first_line(exc))  # fmt: skip
            self._failed = on_disk  # not tried again until the directory changes
            return False
        self._failed = None
        self.swap(fresh)
        logger.info("now serving %s at generation %s", searcher.root,
                    ", ".join(str(g) for g in fresh.generations.values()))  # fmt: skip
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the watch must outlive any one bad look
                logger.exception("watching %s failed; trying again", self.current())

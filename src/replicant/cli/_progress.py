"""Progress as log lines, for when stderr is not a terminal (CI, ``nohup``, a log collector),
where progress bars would print nothing until the end.

One line per stream and destination every ``interval`` seconds while rows move, one when a
stream's read ends, and a last one per destination × stream when the run ends::

    INFO replicant.progress: read public.film: 1,000 rows (12,345 rows/s)
    INFO replicant.progress: read public.film: done, 1,000 rows in 0.1 s
    INFO replicant.progress: wrote warehouse/public.film: 1,000 rows (9,876 rows/s)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from replicant.results import Observer

__all__ = ["DEFAULT_INTERVAL", "ProgressLines"]

log = logging.getLogger("replicant.progress")

#: Seconds between two progress lines of one stream.
DEFAULT_INTERVAL = 10.0


class _Count:
    def __init__(self, now: float) -> None:
        self.rows = 0
        self.started = now
        self.reported_at = now
        self.reported_rows = 0


class ProgressLines(Observer):
    """Logs progress at INFO on ``replicant.progress``.

    Args:
        interval: seconds between two lines of one stream (0: a line per batch).
        clock: monotonic seconds (injected by tests).
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._counts: dict[tuple[str, str], _Count] = {}
        self._lock = threading.Lock()

    def _count(self, key: tuple[str, str]) -> _Count:
        c = self._counts.get(key)
        if c is None:
            c = self._counts[key] = _Count(self.clock())
        return c

    def _add(self, key: tuple[str, str], rows: int, label: str) -> None:
        with self._lock:
            c = self._count(key)
            c.rows += rows
            now = self.clock()
            if now - c.reported_at < self.interval:
                return
            self._report(c, label, now)

    def _report(self, c: _Count, label: str, now: float) -> None:
        elapsed = now - c.started
        rate = f" ({c.rows / elapsed:,.0f} rows/s)" if elapsed > 0 else ""
        log.info("%s: %s rows%s", label, f"{c.rows:,}", rate)
        c.reported_at, c.reported_rows = now, c.rows

    def stream_started(self, stream: str, estimate: int | None) -> None:
        with self._lock:
            self._count(("read", stream))
        log.info("read %s: started%s", stream, f" (about {estimate:,} rows)" if estimate else "")

    def rows_read(self, stream: str, rows: int) -> None:
        self._add(("read", stream), rows, f"read {stream}")

    def stream_finished(self, stream: str, error: str | None) -> None:
        with self._lock:
            c = self._count(("read", stream))
            c.reported_at, c.reported_rows = self.clock(), c.rows
            seconds = c.reported_at - c.started
        if error:
            log.info("read %s: failed after %s rows: %s", stream, f"{c.rows:,}", error)
        else:
            log.info("read %s: done, %s rows in %.1f s", stream, f"{c.rows:,}", seconds)

    def rows_written(self, destination: str, stream: str, rows: int) -> None:
        self._add((destination, stream), rows, f"wrote {destination}/{stream}")

    def run_finished(self, result: Any, status: str) -> None:
        with self._lock:
            now = self.clock()
            for (kind, stream), c in self._counts.items():
                if kind != "read" and c.rows != c.reported_rows:
                    self._report(c, f"wrote {kind}/{stream}", now)


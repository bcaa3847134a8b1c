"""Lag over time for the dashboard's chart: ``serve`` samples every pipeline's lag per
destination and tenant (its ``status``, as ``/metrics`` does) every ``every`` seconds in a
thread of its own, keeping the last ``keep`` samples in memory (an hour by default; a restart
starts over). A tenant-scoped caller gets the sums over its tenants only."""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from replicant.errors import ReplicantError
from replicant.model import utcnow

__all__ = ["LagHistory"]

log = logging.getLogger(__name__)


class LagHistory:
    def __init__(self, service: Any, *, every: float = 15.0, keep: int = 240) -> None:
        self.service = service
        self.every = every
        self._samples: dict[str, deque[tuple[str, dict[tuple[str, str], int]]]] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def sample(self) -> None:
        """One sample of every pipeline (errors of one pipeline do not stop the others)."""
        at = utcnow().isoformat()  # the real time, even under a test's scheduler clock
        for name, entry in list(self.service.catalog.pipelines.items()):
            if entry.config is None:
                continue
            try:
                status = self.service.status(entry.config)
            except (ReplicantError, OSError) as e:
                log.debug("lag sample of %s: %s", name, e)
                continue
            lag: dict[tuple[str, str], int] = {}
            for d in status["destinations"]:
                key = (d["destination"], d["tenant"] or "")
                lag[key] = lag.get(key, 0) + max(0, int(d["lag"]))
            with self._lock:
                self._samples.setdefault(name, deque(maxlen=self._keep)).append((at, lag))

    def for_pipeline(self, name: str, tenants: tuple[str, ...] | None) -> dict[str, list[tuple[str, int]]]:
        """Destination → ``[(time, lag)]``, summed over ``tenants`` (``None``: all)."""
        with self._lock:
            samples = list(self._samples.get(name, ()))
        out: dict[str, list[tuple[str, int]]] = {}
        for at, lag in samples:
            sums: dict[str, int] = {}
            for (dest, tenant), n in lag.items():
                if tenants is None or tenant in tenants:
                    sums[dest] = sums.get(dest, 0) + n
            for dest, n in sums.items():
                out.setdefault(dest, []).append((at, n))
        return out

    def run(self, stop: threading.Event) -> None:
        """Samples until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.sample()
            except Exception as e:  # noqa: BLE001 - a sampler thread must not die; the chart just misses a point
                log.warning("lag sampling: %s", e)
            stop.wait(self.every)

"""Per-stream snapshot progress of ``replicant serve``: recorded by the worker, read by the API.

A worker runs the engine with a :class:`ProgressRecorder`, an
:class:`~replicant.results.Observer` that keeps, per stream read with a row estimate (a
``full`` read or a first read: :func:`replicant.tasks.read_stream`), the rows read so far and
writes them to the state store (:mod:`replicant.state.progress`) at the read's start, at most
once every ``every`` seconds while it reads, and at its end: a batch only adds to a counter.
Reads without an estimate (an incremental read, a change feed) are not recorded: their bar
stays indeterminate. When another worker takes a run over (the first one was killed, or lost
its lease), the resumed snapshot counts on from the rows the first one recorded.

The API turns a row into ``{rows, estimate, percent, eta_seconds, started_at, finished}`` with
:func:`describe`: ``percent`` is capped at 99 until the read finished (an estimate from table
statistics is approximate), 100 once it did; ``eta_seconds`` is the rows still expected at the
rate so far (``None`` while unknown: no estimate, no row yet, or more rows than estimated).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from replicant.errors import ReplicantError
from replicant.model import utcnow
from replicant.results import Observer, StreamState

__all__ = ["ProgressRecorder", "describe", "run_progress", "visible_progress", "with_progress"]

log = logging.getLogger(__name__)


def describe(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A progress row of the state store as the API shows it, at time ``now``."""
    rows, estimate = int(row["rows"]), row["estimate"]
    finished = row["finished_at"] is not None
    percent: int | None = None
    eta: float | None = None
    if finished:
        percent, eta = 100, 0.0
    elif estimate is not None:
        percent = min(99, 100 * rows // estimate) if estimate > 0 else 0
        elapsed = (now - row["started_at"]).total_seconds()
        if 0 < rows < estimate and elapsed > 0:
            eta = round((estimate - rows) / (rows / elapsed), 1)
    return {"rows": rows, "estimate": estimate, "percent": percent, "eta_seconds": eta,
            "started_at": row["started_at"], "finished": finished}


def visible_progress(rows: list[dict[str, Any]], running: set[int], now: datetime) -> dict[tuple[str | None, str], dict[str, Any]]:
    """(tenant, stream) → :func:`describe` of the rows worth showing beside a stream's status:
    the reads of a ``running`` queue entry, or, while none of the pipeline's entries runs, the
    last read's completion (100 %). A read left unfinished by a run that ended (stopped, failed,
    its worker killed) shows nothing."""
    shown = {}
    for row in rows:
        live = row["entry"] in running
        if live or (not running and row["finished_at"] is not None):
            shown[(row["tenant"], row["stream"])] = describe(row, now)
    return shown


def with_progress(store: Any, pipeline: str, status: dict[str, Any], tenants: tuple[str, ...] | None, *,
                  now: datetime | None = None) -> dict[str, Any]:
    """A copy of ``status`` (``replicant status --json``, already narrowed to ``tenants``) whose
    streams each have ``progress`` (:func:`visible_progress`, or ``None``); a stream being read
    with no checkpoint yet (its first batch is not durable) is added with its progress."""
    running = {e["id"] for e in store.queue_entries(pipeline=pipeline, status="running")}
    shown = visible_progress(store.progress(pipeline), running, now or utcnow())
    streams = [{**s, "progress": shown.pop((s.get("tenant"), s["name"]), None)} for s in status.get("streams", [])]
    streams += [{"name": stream, "tenant": tenant, "rows": 0, "log_end_offset": 0, "position": None, "updated_at": None,
                 "dead_letters": 0, "progress": p} for (tenant, stream), p in shown.items()
                if not p["finished"] and (tenants is None or tenant in tenants)]
    return {**status, "streams": streams}


def run_progress(store: Any, entry: dict[str, Any], tenants: tuple[str, ...] | None, *,
                 now: datetime | None = None) -> list[dict[str, Any]]:
    """The snapshot progress of queue entry ``entry``'s streams (those it read last), narrowed
    to ``tenants``: ``tenant``, ``stream`` and :func:`describe`'s keys. A read the run left
    unfinished has no ETA."""
    out = []
    for row in store.progress(entry["pipeline"], entry=entry["id"]):
        if tenants is not None and row["tenant"] not in tenants:
            continue
        shown = {"tenant": row["tenant"], "stream": row["stream"], **describe(row, now or utcnow())}
        if entry["status"] != "running":
            shown["eta_seconds"] = 0.0 if shown["finished"] else None
        out.append(shown)
    return out


@dataclass
class _Read:
    estimate: int
    started_at: datetime
    rows: int = 0
    written_at: float = 0.0  # monotonic time of the last write
    state: StreamState | None = None


class ProgressRecorder(Observer):
    """Records the snapshot progress of one run's streams in ``store`` (the worker's fenced
    store: a worker that lost its lease writes nothing).

    Args:
        store: has ``save_progress`` (:class:`~replicant.state.progress.ProgressMixin`).
        pipeline: the pipeline's name.
        entry: the queue entry (run) id written with each row.
        tenant: the run's tenant (a single feed), or ``None``.
        tenants: the pipeline has tenants and runs through a
            :class:`~replicant.tenants.runner.TenantRunner`, whose events name streams
            ``tenant/stream``.
        every: seconds between two writes of one stream while it reads.
        clock: wall clock of ``started_at``; ``monotonic``: the throttle's (both injectable).

    Never raises (an observer must not): a failed write is logged, and the next one tries again.
    """

    def __init__(self, store: Any, pipeline: str, *, entry: int | None, tenant: str | None = None, tenants: bool = False,
                 every: float = 1.0, clock: Callable[[], datetime] = utcnow,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.pipeline = pipeline
        self.entry = entry
        self.tenant = tenant
        self.tenants = tenants
        self.every = every
        self._clock = clock
        self._monotonic = monotonic
        self._reads: dict[str, _Read] = {}
        self._resumed: dict[tuple[str | None, str], dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def stream_started(self, stream: str, estimate: int | None) -> None:
        if estimate is None:
            with self._lock:
                self._reads.pop(stream, None)
            return
        read = _Read(estimate=int(estimate), started_at=self._clock())
        with self._lock:
            earlier = self._earlier().pop(self._key(stream), None)
            if earlier is not None:  # a takeover resumes the snapshot from its checkpoint: count on
                read.rows, read.started_at = int(earlier["rows"]), earlier["started_at"]
            self._reads[stream] = read
        self._write(stream, read, finished=False)

    def _earlier(self) -> dict[tuple[str | None, str], dict[str, Any]]:
        """The unfinished reads an earlier attempt of this run recorded (its worker was killed,
        or lost its lease), read once (under the lock)."""
        if self._resumed is None:
            try:
                rows = self.store.progress(self.pipeline, entry=self.entry) if self.entry is not None else []
            except (ReplicantError, OSError) as e:
                log.warning("earlier progress of run %s not read: %s", self.entry, e)
                rows = []
            self._resumed = {(r["tenant"], r["stream"]): r for r in rows if r["finished_at"] is None}
        return self._resumed

    def _key(self, name: str) -> tuple[str | None, str]:
        """(tenant, stream) of an event's stream name."""
        if self.tenants and "/" in name:  # a tenant id has no "/": the first one ends it
            tenant, stream = name.split("/", 1)
            return tenant, stream
        return self.tenant, name

    def stream_state(self, stream: str, state: StreamState) -> None:
        with self._lock:
            if stream in self._reads:
                self._reads[stream].state = state

    def rows_read(self, stream: str, rows: int) -> None:
        with self._lock:
            read = self._reads.get(stream)
            if read is None:
                return
            read.rows += rows
            due = self._monotonic() - read.written_at >= self.every
        if due:
            self._write(stream, read, finished=False)

    def stream_finished(self, stream: str, error: str | None) -> None:
        with self._lock:
            read = self._reads.pop(stream, None)
        if read is not None:  # caught up: complete; stopped (drain, cancel) or failed: left as it stands
            self._write(stream, read, finished=error is None and read.state == "caught_up")

    def _write(self, name: str, read: _Read, *, finished: bool) -> None:
        tenant, stream = self._key(name)
        read.written_at = self._monotonic()
        try:
            self.store.save_progress(self.pipeline, stream, tenant=tenant, entry=self.entry, estimate=read.estimate,
                                     rows=read.rows, started_at=read.started_at, finished=finished)
        except (ReplicantError, OSError) as e:  # FencedError included: the run itself stops on its next write
            log.warning("progress of %s not recorded: %s", name, e)

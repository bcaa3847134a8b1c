"""Runs one pipeline: read → staging log → write, with checkpoints.

Threads and queues::

    reader thread ──bounded queue──▶ appender (caller's thread) ──▶ staging log
      source.read()                    log.append (fsync) then          │
                                       state checkpoint                 ▼
                                                         one writer thread per destination
                                                         tails the log from the offset the
                                                         destination itself says it applied

Memory is bounded by the batch size: the queue holds at most ``_QUEUE_DEPTH`` batches, and
writers read the log back (memory-mapped) one flush at a time.

Exactly-once rules:

* The log is the checkpoint of record: every append carries the source position after its
  rows and is durable when ``append`` returns. A restart resumes the source from the log's
  last position, so a re-read never reaches the log twice. The state store mirrors it for
  ``status``.
* A destination records the last log offset it applied in the same transaction as the rows,
  and a restart re-delivers from the offset after it.
* ``full`` reads are bracketed by ``snapshot_start`` / ``snapshot_end`` markers. A snapshot
  that cannot resume where it stopped (a table without a key) gets a ``snapshot_abort``
  marker and starts over; ``replace`` destinations build a pending table per snapshot and
  swap it in at ``snapshot_end``.

The engine keeps its own keys in the positions it appends (``_snapshot``, ``_resumable``)
and strips them before handing a position back to the source.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from replicant.config import PipelineConfig
from replicant.errors import ConfigError, FatalError
from replicant.log.base import MARKER_SNAPSHOT_ABORT, MARKER_SNAPSHOT_END, MARKER_SNAPSHOT_START, Log
from replicant.model import Position, Stream
from replicant.sources.base import ReadBatch, Source

__all__ = ["Engine", "RunResult", "Observer"]

log = logging.getLogger(__name__)

_QUEUE_DEPTH = 2
_DONE = object()


class Observer:
    """Progress hooks; the CLI draws bars from them. Every method may be called from any thread."""

    def stream_started(self, stream: str, estimate: int | None) -> None: ...
    def rows_read(self, stream: str, rows: int) -> None: ...
    def stream_finished(self, stream: str, error: str | None) -> None: ...
    def rows_written(self, destination: str, stream: str, rows: int) -> None: ...


@dataclass
class RunResult:
    """What one run did. ``ok`` is False if any stream or destination failed."""

    pipeline: str
    rows_read: dict[str, int] = field(default_factory=dict)
    rows_written: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


def _engine_keys(pos: Position | None) -> dict[str, Any]:
    return {k: v for k, v in (pos or {}).items() if k.startswith("_")}


def _source_position(pos: Position | None) -> Position | None:
    src = {k: v for k, v in (pos or {}).items() if not k.startswith("_")}
    return src or None


class _StreamFeed:
    """Tells writers how far reading of one stream has got."""

    def __init__(self) -> None:
        self.done = threading.Event()


class Engine:
    """Runs a pipeline once to catch-up (``run``), or until stopped (``follow``).

    Args:
        config: the validated pipeline.
        observer: progress hooks.
        source_factory, destinations_factory, state, log: injected parts (tests, the Python
            API); by default they are built from ``config`` (see :mod:`replicant.runtime`).
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        observer: Observer | None = None,
        source_factory: Callable[[], Source] | None = None,
        destinations_factory: Callable[[], list] | None = None,
        state: Any = None,
        log: Log | None = None,
    ) -> None:
        from replicant import runtime

        self.config = config
        self.observer = observer or Observer()
        self._source_factory = source_factory or (lambda: runtime.build_source(config))
        self._destinations_factory = destinations_factory or (lambda: runtime.build_destinations(config))
        self._state = state
        self._log = log
        self.stop_event = threading.Event()

    # ------------------------------------------------------------------ wiring

    def _open_parts(self) -> tuple[Any, Log]:
        from replicant import runtime

        state = self._state if self._state is not None else runtime.open_state(self.config)
        lg = self._log if self._log is not None else runtime.open_pipeline_log(self.config)
        return state, lg

    def streams(self, source: Source) -> list[Stream]:
        """Discovers the source and applies the pipeline's stream settings."""
        from replicant.sources.select import resolve_streams

        streams = resolve_streams(self.config.source, source.discover())
        problems = []
        for i, d in enumerate(self.config.destinations):
            if d.write == "replace":
                bad = [s.name for s in streams if s.mode != "full"]
                if bad:
                    problems.append((f"destinations[{i}].write", f"replace needs mode full; streams {', '.join(bad)} are not"))
        if problems:
            raise ConfigError("invalid pipeline file", problems)
        return streams

    # ------------------------------------------------------------------ run

    def run(self) -> RunResult:
        """Syncs every stream until caught up, then returns (it never raises for a stream's or
        destination's failure: those are in ``RunResult.errors``; config and connection errors
        at start-up raise)."""
        started = time.monotonic()
        result = RunResult(self.config.pipeline)
        state, lg = self._open_parts()
        source = self._source_factory()
        destinations: list = []
        run_id = state.start_run(self.config.pipeline, command="run")
        status = "failed"
        try:
            streams = self.streams(source)
            destinations = self._destinations_factory()
            for d in destinations:
                d.open()
                for s in streams:
                    d.prepare(s)
            feeds = {s.name: _StreamFeed() for s in streams}
            writers = [
                threading.Thread(
                    target=self._write_all, args=(d, streams, feeds, lg, state, result), name=f"writer-{d.name}", daemon=True
                )
                for d in destinations
            ]
            for w in writers:
                w.start()
            try:
                for s in streams:
                    if self.stop_event.is_set():
                        feeds[s.name].done.set()
                        continue
                    self._read_stream(source, s, lg, state, result, feeds[s.name])
            finally:
                for f in feeds.values():
                    f.done.set()
                for w in writers:
                    w.join()
            self._apply_retention(lg, streams)
            status = "succeeded" if result.ok else "failed"
            if self.stop_event.is_set() and result.ok:
                status = "interrupted"
            return result
        except BaseException as e:
            result.errors.append(str(e))
            raise
        finally:
            result.seconds = time.monotonic() - started
            state.finish_run(
                run_id,
                status,
                error="\n".join(result.errors) or None,
                rows=sum(result.rows_read.values()),
            )
            for d in destinations:
                _close_quietly(d)
            _close_quietly(source)
            if self._log is None:
                lg.close()
            if self._state is None:
                state.close()

    def _apply_retention(self, lg: Log, streams: list[Stream]) -> None:
        r = self.config.retention
        if r is None or (r.max_age is None and r.max_bytes is None):
            return
        from replicant.log.base import Retention

        for s in streams:
            lg.apply_retention(s.name, Retention(max_age_seconds=r.max_age, max_bytes=r.max_bytes))

    # ------------------------------------------------------------------ reading

    def _read_stream(self, source: Source, s: Stream, lg: Log, state: Any, result: RunResult, feed: _StreamFeed) -> None:
        pipeline = self.config.pipeline
        cp = state.checkpoint(pipeline, s.name)
        rows_total = cp.rows_total if cp else 0
        last = lg.last_position(s.name)
        resume = _source_position(last)
        full = s.mode == "full"
        if full:
            snap = _engine_keys(last).get("_snapshot")
            if snap in (None, "closed", "aborted"):
                resume = None
                lg.append(s.name, None, position={"_snapshot": "open"}, marker={"kind": MARKER_SNAPSHOT_START, "id": uuid.uuid4().hex})
            elif _engine_keys(last).get("_resumable") is False:
                resume = None
                lg.append(s.name, None, position={"_snapshot": "aborted"}, marker={"kind": MARKER_SNAPSHOT_ABORT})
                lg.append(s.name, None, position={"_snapshot": "open"}, marker={"kind": MARKER_SNAPSHOT_START, "id": uuid.uuid4().hex})
        self.observer.stream_started(s.name, source.estimate_rows(s) if full else None)
        rows = 0
        q: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
        stop_reader = threading.Event()

        def produce() -> None:
            try:
                for rb in source.read(s, resume):
                    while not stop_reader.is_set():
                        try:
                            q.put(rb, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop_reader.is_set() or self.stop_event.is_set():
                        break
                q.put(_DONE)
            except BaseException as e:  # handed to the appender, which raises it
                q.put(e)

        reader = threading.Thread(target=produce, name=f"reader-{s.name}", daemon=True)
        reader.start()
        error: str | None = None
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                rb: ReadBatch = item
                pos = dict(rb.position)
                if full:
                    pos["_snapshot"] = "open"
                    if not rb.resumable:
                        pos["_resumable"] = False
                if rb.data.num_rows or not rb.final:
                    lg.append(s.name, rb.data, position=pos)
                if rb.final and full:
                    lg.append(s.name, None, position={**rb.position, "_snapshot": "closed"}, marker={"kind": MARKER_SNAPSHOT_END})
                rows += rb.data.num_rows
                state.save_checkpoint(pipeline, s.name, rb.position, rows_total=rows_total + rows, log_offset=lg.end_offset(s.name))
                self.observer.rows_read(s.name, rb.data.num_rows)
        except FatalError as e:
            error = f"stream {s.name}: {e}"
            result.errors.append(error)
        finally:
            stop_reader.set()
            reader.join(timeout=5)
            result.rows_read[s.name] = rows
            feed.done.set()
            self.observer.stream_finished(s.name, error)

    # ------------------------------------------------------------------ writing

    def _write_all(self, dest: Any, streams: list[Stream], feeds: dict[str, _StreamFeed], lg: Log, state: Any, result: RunResult) -> None:
        written = result.rows_written.setdefault(dest.name, {})
        for s in streams:
            try:
                written[s.name] = _StreamWriter(self, dest, s, lg, state).run(feeds[s.name])
            except Exception as e:  # noqa: BLE001 - a failing destination must not stop the others
                msg = f"destination {dest.name}, stream {s.name}: {e}"
                log.debug("writer failed", exc_info=True)
                result.errors.append(msg)
                return


def _close_quietly(obj: Any) -> None:
    try:
        obj.close()
    except Exception:  # noqa: BLE001 - closing after a failure must not hide the failure
        log.debug("close failed", exc_info=True)


class _StreamWriter:
    """Delivers one stream's log records to one destination, from its applied offset on."""

    def __init__(self, engine: Engine, dest: Any, stream: Stream, lg: Log, state: Any) -> None:
        self.engine = engine
        self.dest = dest
        self.stream = stream
        self.log = lg
        self.state = state
        self.mode = dest.config.write
        self.batch_rows = dest.config.batch_size or 200_000
        self.in_snapshot = False
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.last: int | None = None
        self.rows = 0

    def run(self, feed: _StreamFeed) -> int:
        s, lg = self.stream, self.log
        applied = self.dest.applied_offset(s)
        end = lg.end_offset(s.name)
        if applied >= end:
            raise FatalError(
                f"it has applied log offset {applied} but the log of {s.name!r} ends at {end}: the staging log was "
                f"reset or replaced. Replay into it with `replicant replay --destination {self.dest.name} --from-start`."
            )
        offset = applied + 1
        while True:
            done = feed.done.is_set()
            end = lg.end_offset(s.name)
            if offset < end:
                for rec in lg.read(s.name, offset):
                    self._take(rec)
                    offset = rec.next_offset
                self._flush()
            elif done:
                return self.rows
            else:
                lg.wait(s.name, offset, 0.5)

    def _take(self, rec: Any) -> None:
        if rec.marker is not None:
            kind = rec.marker.get("kind")
            if self.mode != "replace":
                self.last = rec.offset
                return
            self._flush()
            if kind == MARKER_SNAPSHOT_START:
                self.dest.begin_replace(self.stream)
                self.in_snapshot = True
            elif kind == MARKER_SNAPSHOT_END and self.in_snapshot:
                self.dest.commit_replace(self.stream, last_offset=rec.offset)
                self._mirror(rec.offset)
                self.in_snapshot = False
            elif kind == MARKER_SNAPSHOT_ABORT:
                self.in_snapshot = False
            return
        if self.mode == "replace" and not self.in_snapshot:
            return  # rows of a snapshot whose start this delivery did not see (replay from an offset)
        if self.pending and rec.batch.schema != self.pending[0].schema:
            self._flush()
        self.pending.append(rec.batch)
        self.pending_rows += rec.batch.num_rows
        self.last = rec.next_offset - 1
        if self.pending_rows >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self.last is None and not self.pending:
            return
        if self.pending:
            table = pa.Table.from_batches(self.pending)
        else:
            table = self.stream.change_schema.empty_table()
        if self.mode == "replace":
            if table.num_rows:
                self.dest.write(self.stream, table, last_offset=self.last)
        else:
            self.dest.write(self.stream, table, last_offset=self.last)
            self._mirror(self.last)
        n = table.num_rows
        self.rows += n
        if n:
            self.engine.observer.rows_written(self.dest.name, self.stream.name, n)
        self.pending, self.pending_rows, self.last = [], 0, None

    def _mirror(self, offset: int) -> None:
        try:
            self.state.save_offset(self.engine.config.pipeline, self.dest.name, self.stream.name, offset, rows_total=self.rows)
        except Exception:  # noqa: BLE001 - the mirror is for `status`; the destination holds the truth
            log.debug("could not mirror offset", exc_info=True)

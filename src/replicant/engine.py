"""Runs one pipeline: read → staging log → write, with checkpoints.

Threads and queues::

    reader thread ──bounded queue──▶ appender (caller's thread) ──▶ staging log
      source.read()                    log.append (fsync), then           │
                                       source.acknowledge + checkpoint    ▼
    capture thread (``mode: log``)                          one delivery thread per destination
      source.capture() ──▶ log.append per stream,           (:mod:`replicant.delivery`) tails
                           then acknowledge_capture         the log from the offset the
                                                            destination itself says it applied

Memory is bounded by the batch size: the queue holds at most ``_QUEUE_DEPTH`` batches, and
deliveries read the log back (memory-mapped) one flush at a time.

Exactly-once rules:

* The log is the checkpoint of record: every append carries the source position after its
  rows and is durable when ``append`` returns. A restart resumes the source from the log's
  last position, so a re-read never reaches the log twice. The state store mirrors it for
  ``status``. Only then is the source told (``acknowledge``: trigger shadow rows purged,
  a replication slot confirmed).
* ``mode: log`` streams share one change feed: each change set (whole transactions) is
  appended to every stream it touches, then acknowledged, and its position saved as the
  ``(capture)`` checkpoint; a restart re-reads from there and the source skips, per stream,
  what that stream's log already holds.
* A destination records the last log offset it applied in the same transaction as the rows,
  and a restart re-delivers from the offset after it (see :mod:`replicant.delivery` for the
  non-transactional ones).
* ``full`` reads are bracketed by ``snapshot_start`` / ``snapshot_end`` markers. A snapshot
  that cannot resume where it stopped (a table without a key) gets a ``snapshot_abort``
  marker and starts over; ``replace`` destinations build a pending table per snapshot and
  swap it in at ``snapshot_end``.

``run(follow=True)`` keeps going until :attr:`Engine.stop_event` is set: ``log`` streams
stream continuously, ``cursor``/``snapshot_diff``/``trigger`` streams are polled every
``source.poll_interval``, ``full`` streams are read once.

The engine keeps its own keys in the positions it appends (``_snapshot``, ``_resumable``)
and strips them before handing a position back to the source.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from replicant.config import PipelineConfig, suggest
from replicant.delivery import Delivery, StreamWriter
from replicant.errors import ConfigError, ConnectionError, FatalError, RetriableError
from replicant.log.base import MARKER_SNAPSHOT_ABORT, MARKER_SNAPSHOT_END, MARKER_SNAPSHOT_START, MARKER_TRUNCATE, Log
from replicant.model import ConnectorContext, Position, Stream, data_schema
from replicant.registry import destination_class
from replicant.sources.base import ReadBatch, Source

__all__ = ["Engine", "RunResult", "Observer"]

log = logging.getLogger(__name__)

_QUEUE_DEPTH = 1
_DONE = object()
#: The state-store checkpoint name of the ``log`` streams' shared change feed.
CAPTURE_CHECKPOINT = "(capture)"


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
    dead_letters: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


def _engine_keys(pos: Position | None) -> dict[str, Any]:
    return {k: v for k, v in (pos or {}).items() if k.startswith("_")}


def _source_position(pos: Position | None) -> Position | None:
    src = {k: v for k, v in (pos or {}).items() if not k.startswith("_")}
    return src or None


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
        self._destinations_factory = destinations_factory or (lambda: runtime.build_destinations(config, self._destination_context))
        self._destination_context: Callable[[Any], ConnectorContext] | None = None
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

        streams = [_keyed(s) for s in resolve_streams(self.config.source, source.discover())]
        problems = []
        modes = source.capabilities.modes
        for s in streams:
            if s.mode not in modes:
                problems.append((f"source.streams ({s.name})", f"a {self.config.source.type} source cannot read mode {s.mode!r}; it reads {', '.join(sorted(modes))}"))
        for i, d in enumerate(self.config.destinations):
            if d.write == "replace":
                bad = [s.name for s in streams if s.mode != "full" and (not d.streams or s.name in d.streams)]
                if bad:
                    problems.append((f"destinations[{i}].write", f"replace needs mode full; streams {', '.join(bad)} are not"))
        names = {s.name for s in streams}
        for i, d in enumerate(self.config.destinations):
            for n in d.streams or ():
                if n not in names:
                    problems.append((f"destinations[{i}].streams", f"no stream named {n!r}{suggest(n, sorted(names))}"))
        if problems:
            raise ConfigError("invalid pipeline file", problems)
        return streams

    # ------------------------------------------------------------------ run

    def run(self, *, follow: bool = False) -> RunResult:
        """Syncs every stream until caught up, then returns; with ``follow``, keeps capturing
        until :attr:`stop_event` is set. It never raises for a stream's or destination's
        failure (those are in ``RunResult.errors``); config and connection errors at start-up
        raise."""
        started = time.monotonic()
        result = RunResult(self.config.pipeline)
        state, lg = self._open_parts()
        source = self._source_factory()
        destinations: list = []
        capture_source: Source | None = None
        run_id = state.start_run(self.config.pipeline, command="follow" if follow else "run")
        status = "failed"
        try:
            streams = self.streams(source)
            self._bind_source(source)
            self._destination_context = lambda dcfg: ConnectorContext(
                self.config.pipeline, dead_letter=self._dead_letter_sink(state, dcfg.name, result)
            )
            destinations = self._destinations_factory()  # each opens in its delivery thread
            done = {s.name: threading.Event() for s in streams}
            deliveries = [
                Delivery(
                    d, _chosen(d, streams), lg, state, self.config.pipeline, done=done, stop=self.stop_event,
                    follow=follow, errors=result.errors, on_rows=self.observer.rows_written,
                )
                for d in destinations
            ]
            threads = [threading.Thread(target=x.run, name=f"delivery-{x.dest.name}", daemon=True) for x in deliveries]
            for t in threads:
                t.start()
            logged = [s for s in streams if s.mode == "log"]
            polled = [s for s in streams if s.mode != "log"]
            capture = None
            try:
                if logged:
                    capture_source = self._source_factory()
                    self._bind_source(capture_source)
                    capture = threading.Thread(
                        target=self._capture, args=(capture_source, logged, lg, state, result, done, follow),
                        name="capture", daemon=True,
                    )
                    capture.start()
                self._poll(source, polled, lg, state, result, follow)
            finally:
                for s in polled:
                    done[s.name].set()
                if capture is not None:
                    if not follow:
                        capture.join()
                    else:
                        while capture.is_alive():
                            capture.join(0.2)
                for t in threads:
                    t.join()
                for x in deliveries:
                    for name, n in x.written.items():
                        result.rows_written.setdefault(x.dest.name, {})[name] = n
            self._apply_retention(lg, streams)
            status = "succeeded" if result.ok else "failed"
            if self.stop_event.is_set() and result.ok:
                status = "interrupted" if not follow else "succeeded"
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
            if capture_source is not None:
                _close_quietly(capture_source)
            if self._log is None:
                lg.close()
            if self._state is None:
                state.close()

    def _bind_source(self, source: Source) -> None:
        from replicant import runtime

        source.pipeline = self.config.pipeline  # type: ignore[attr-defined]
        workdir = runtime.home(self.config) / "source"
        workdir.mkdir(parents=True, exist_ok=True)
        source.workdir = workdir

    def _dead_letter_sink(self, state: Any, dest: str, result: RunResult) -> Callable[[Stream, list], None]:
        lock = threading.Lock()

        def sink(stream: Stream, records: list) -> None:
            records = [r if r.destination is not None else dataclasses.replace(r, destination=dest) for r in records]
            state.add_dead_letters(self.config.pipeline, stream.name, records)
            with lock:
                per = result.dead_letters.setdefault(dest, {})
                per[stream.name] = per.get(stream.name, 0) + len(records)

        return sink

    def _poll(self, source: Source, streams: list[Stream], lg: Log, state: Any, result: RunResult, follow: bool) -> None:
        """Reads the non-``log`` streams: once, or (``follow``) again every poll interval."""
        failed: set[str] = set()
        first = True
        while True:
            for s in streams:
                if self.stop_event.is_set():
                    return
                if s.name in failed or (not first and s.mode == "full"):
                    continue
                if not self._read_stream(source, s, lg, state, result):
                    failed.add(s.name)
            first = False
            if not follow or self.stop_event.wait(self.config.source.poll_interval):
                return

    def replay(self, destination: str, *, start: str, offset: int | None = None, since: Any = None) -> RunResult:
        """Re-delivers every stream of the log to ``destination`` from the start, an offset or
        a time, without touching the source. Merge destinations end as they were."""
        from replicant import runtime

        started = time.monotonic()
        result = RunResult(self.config.pipeline)
        self.config.destination(destination)  # a ConfigError naming the known ones
        state, lg = self._open_parts()
        index = [d.name for d in self.config.destinations].index(destination)
        dcfg = runtime.resolve_destination_config(self.config, self.config.destinations[index], index)
        dest = destination_class(dcfg.type, index)(
            dcfg, ConnectorContext(self.config.pipeline, dead_letter=self._dead_letter_sink(state, dcfg.name, result))
        )
        run_id = state.start_run(self.config.pipeline, command=f"replay {destination}")
        status = "failed"
        try:
            dest.open()
            names = [n for n in lg.streams() if not dcfg.streams or n in dcfg.streams]  # the streams it takes
            for name in names:
                schemas = lg.schemas(name)
                if not schemas:
                    continue
                stream = self._log_stream(name, data_schema(schemas[-1]))
                dest.prepare(stream)
                if start == "start":
                    first = lg.start_offset(name)
                elif start == "offset":
                    first = int(offset or 0)
                else:
                    first = lg.offset_at(name, since)
                end = lg.end_offset(name)
                if first < lg.start_offset(name):
                    next(iter(lg.read(name, first, end=first + 1)), None)  # raises, naming what the log holds
                if not dest.capabilities.transactional and first < end:
                    first = _record_start(lg, name, first)  # requests and files are cut from whole records
                w = StreamWriter(dest, stream, lg, state, self.config.pipeline, self.observer.rows_written, start=first)
                w.step(end)
                w.flush_mirror()
                result.rows_written.setdefault(destination, {})[name] = w.rows
            status = "succeeded"
            return result
        except BaseException as e:
            result.errors.append(str(e))
            raise
        finally:
            result.seconds = time.monotonic() - started
            state.finish_run(run_id, status, error="\n".join(result.errors) or None, rows=sum(result.rows_written.get(destination, {}).values()))
            _close_quietly(dest)
            if self._log is None:
                lg.close()
            if self._state is None:
                state.close()

    def _log_stream(self, name: str, schema: pa.Schema) -> Stream:
        """The stream as the pipeline file and the log describe it (for a replay: no source)."""
        cfg_streams = self.config.source.streams if isinstance(self.config.source.streams, list) else []
        for sc in cfg_streams:
            if sc.table == name:
                return Stream(name=name, table=tuple(name.split(".")), schema=schema,
                              primary_key=tuple(sc.primary_key or _log_key(schema)), cursor=sc.cursor, mode=sc.mode)
        return Stream(name=name, table=tuple(name.split(".")), schema=schema, primary_key=tuple(_log_key(schema)))

    def _apply_retention(self, lg: Log, streams: list[Stream]) -> None:
        r = self.config.retention
        if r is None or (r.max_age is None and r.max_bytes is None):
            return
        from replicant.log.base import Retention

        for s in streams:
            lg.apply_retention(s.name, Retention(max_age_seconds=r.max_age, max_bytes=r.max_bytes))

    # ------------------------------------------------------------------ reading

    def _capture(
        self, source: Source, streams: list[Stream], lg: Log, state: Any, result: RunResult,
        done: dict[str, threading.Event], follow: bool,
    ) -> None:
        """Runs the ``log`` streams' change feed: append each change set, then acknowledge it."""
        pipeline = self.config.pipeline
        by_name = {s.name: s for s in streams}
        totals = {s.name: (c.rows_total if (c := state.checkpoint(pipeline, s.name)) else 0) for s in streams}
        rows = dict.fromkeys(totals, 0)
        for s in streams:
            self.observer.stream_started(s.name, None)
        error: str | None = None
        failures = 0
        try:
            while True:
                try:
                    self._capture_once(source, streams, by_name, lg, state, rows, totals, follow)
                    return
                except (RetriableError, ConnectionError) as e:
                    if not follow or self.stop_event.is_set():
                        raise
                    failures += 1  # a lost connection: start the feed again from what is durable
                    delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                    log.warning("capture failed (%s); retrying in %.1f s", e, delay)
                    _close_quietly(source)
                    if self.stop_event.wait(delay):
                        return
        except Exception as e:  # noqa: BLE001 - reported; the deliveries still drain what is logged
            error = f"capture of {', '.join(s.name for s in streams)}: {e}"
            log.debug("capture failed", exc_info=True)
            result.errors.append(error)
            if follow:
                self.stop_event.set()  # nothing more will come: end the run with the error
        finally:
            for s in streams:
                result.rows_read[s.name] = rows[s.name]
                done[s.name].set()
                self.observer.stream_finished(s.name, error)

    def _capture_once(
        self, source: Source, streams: list[Stream], by_name: dict[str, Stream], lg: Log, state: Any,
        rows: dict[str, int], totals: dict[str, int], follow: bool,
    ) -> None:
        pipeline = self.config.pipeline
        positions = {s.name: _source_position(lg.last_position(s.name)) for s in streams}
        cp = state.checkpoint(pipeline, CAPTURE_CHECKPOINT)
        feed = source.capture(streams, positions, resume=cp.position if cp else None, follow=follow, stop=self.stop_event)
        for cs in feed:
            for name in cs.truncated:
                lg.append(name, None, position=cs.position_of(name), marker={"kind": MARKER_TRUNCATE})
            for name, batch in cs.batches.items():
                lg.append(name, _tagged(batch, by_name[name]), position=cs.position_of(name))
                rows[name] += batch.num_rows
            touched = set(cs.batches) | set(cs.truncated)
            state.save_checkpoints(pipeline, [
                (CAPTURE_CHECKPOINT, cs.position, sum(rows.values()), 0),
                *((name, cs.position_of(name), totals[name] + rows[name], lg.end_offset(name)) for name in sorted(touched)),
            ])
            # only now may the source forget it (confirm a slot): a heartbeat's position is
            # durable nowhere but in the checkpoint just saved
            source.acknowledge_capture(cs.position)
            for name in touched:
                if name in cs.batches:
                    self.observer.rows_read(name, cs.batches[name].num_rows)

    def _read_stream(self, source: Source, s: Stream, lg: Log, state: Any, result: RunResult) -> bool:
        """Reads one stream until caught up; False if it failed (the error is in ``result``)."""
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
                if rb.data.num_rows or not rb.final or not full:
                    lg.append(s.name, _tagged(rb.data, s), position=pos)
                if rb.final and full:
                    lg.append(s.name, None, position={**rb.position, "_snapshot": "closed"}, marker={"kind": MARKER_SNAPSHOT_END})
                rows += rb.data.num_rows
                state.save_checkpoint(pipeline, s.name, rb.position, rows_total=rows_total + rows, log_offset=lg.end_offset(s.name))
                source.acknowledge(s, rb.position)
                self.observer.rows_read(s.name, rb.data.num_rows)
        except FatalError as e:
            error = f"stream {s.name}: {e}"
            result.errors.append(error)
        finally:
            stop_reader.set()
            reader.join(timeout=5)
            result.rows_read[s.name] = result.rows_read.get(s.name, 0) + rows
            self.observer.stream_finished(s.name, error)
        return error is None

_KEY_METADATA = b"replicant.primary_key"


def _chosen(dest: Any, streams: list[Stream]) -> list[Stream]:
    """The streams a destination receives (its ``streams:`` setting, default all)."""
    only = dest.config.streams
    return streams if not only else [s for s in streams if s.name in only]


def _keyed(stream: Stream) -> Stream:
    """The stream with its key columns in the schema metadata, so the log (and a replay
    without the source) knows them."""
    md = dict(stream.schema.metadata or {})
    md[_KEY_METADATA] = ",".join(stream.primary_key).encode()
    return dataclasses.replace(stream, schema=stream.schema.with_metadata(md))


def _tagged(batch: pa.RecordBatch, stream: Stream) -> pa.RecordBatch:
    """``batch`` with the stream's schema metadata (zero-copy)."""
    md = stream.schema.metadata
    return batch if batch.schema.metadata == md else batch.replace_schema_metadata(md)


def _log_key(schema: pa.Schema) -> list[str]:
    """Key columns recorded in the schema metadata by the engine, if any."""
    raw = (schema.metadata or {}).get(_KEY_METADATA)
    return [k for k in raw.decode().split(",") if k] if raw else []


def _record_start(lg: Log, stream: str, offset: int) -> int:
    """The first offset of the log record holding ``offset``. A non-transactional destination
    names its requests and files by whole records; a replay from inside one sends it whole
    again (same batch ids, same file names) instead of a new range overlapping the first."""
    low, step = lg.start_offset(stream), 1024
    while True:
        probe = start = max(offset - step, low)
        for rec in lg.read(stream, probe, end=offset + 1):
            start = rec.offset  # the last one holds ``offset``; only the first can be a slice
        if start > probe or probe == low:
            return start
        step *= 4


def _close_quietly(obj: Any) -> None:
    try:
        obj.close()
    except Exception:  # noqa: BLE001 - closing after a failure must not hide the failure
        log.debug("close failed", exc_info=True)

"""Delivery: from the staging log into one destination, at that destination's own pace.

Each destination gets one :class:`Delivery` (one thread) that serves all streams round-robin
(a destination that takes concurrent writers, a server database, gets up to ``parallelism``,
each serving its share of the streams with a connection of its own):
it reads whatever the log holds after the destination's applied offset, writes it, and waits
for more until reading is finished (``run``) or the pipeline stops (``--follow``). A slow or
failing destination therefore never holds up reading or the other destinations, and loses
nothing: its offset only moves with what it committed.

Where the applied offset lives:

* transactional destinations (databases) keep it in their own ``_replicant_offsets`` table,
  committed with the rows; the state store gets a mirror for ``status``;
* non-transactional ones (HTTP, files, NATS) cannot, so the state store holds it, saved
  after ``write`` returns. Their writes are cut at fixed places — one call per log record
  chunk of at most ``batch_size`` rows, counted from the record's first offset — so a
  re-delivery after a crash, or a replay, repeats exactly the same offset ranges (the same
  idempotency keys, the same file names).

Snapshots: at a ``snapshot_start`` marker (outside ``replace``) pending rows are written first
and the destination is told (``destination.begin_snapshot``), so one write never holds two
snapshots' rows and a "fresh table" shortcut ends where a second snapshot of the same keys
begins (a delivery that failed once finds both in the log). At a ``snapshot_end`` marker the
rows and the marker's offset are written and the destination is told
(``destination.end_snapshot``: PostgreSQL builds a primary key it put off for the load).

Write sizes: a transactional destination's writes are cut at exactly ``batch_rows`` rows,
inside a log record if need be. A destination whose short writes cost more than waiting
(``capabilities.full_writes``: DuckDB) also gets full writes during a bulk read: a delivery
that catches up with a stream still being read holds the snapshot rows (``_op`` read) it has
taken until they make a full write, for at most :data:`HOLD_SECONDS`, instead of writing
whatever the log held at that instant. A delivery faster than its reader otherwise writes
many small transactions: 1M wide rows into DuckDB went in 14 writes of ~71k rows instead of
8 full row groups, and DuckDB sends a transaction's rows smaller than a row group to its WAL
and compresses them again at the checkpoint. Changes (insert/update/delete) are never held,
nor is anything once the stream's reading is finished or the pipeline stops; and a delivery
holds one stream's rows at a time, so what it holds stays one write's worth however many
streams are read at once (12 tables at ``parallelism`` 2 into DuckDB peaked at 336 MB RSS
when every stream being read held its own).

Schema versions: when a record's schema differs from the stream's current one, pending
rows are flushed and ``destination.evolve(new, old)`` runs first. A drift the destination
cannot absorb pauses that stream (with the destination's message) while others go on.

Poison records and streams: a record the destination rejects for its values goes to the dead
letters inside ``destination.write`` and the rest is written (transactional destinations get
each row's log offset, ``offsets=``, for the dead letter's origin); a stream whose table the
destination refuses at ``prepare`` pauses alone, like a drift, and the others are delivered.

Fencing: a transactional destination refuses a write when its offset moved under this
delivery (:class:`~replicant.errors.DestinationFencedError`: another writer — the worker that
took this run over, a second run — delivered the stream meanwhile). That stream stops in
this run with the error, without a pause recorded for ``status``: the other writer is
delivering it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from replicant.errors import ConfigError, FatalError, FencedError, RecordError, SchemaDriftError, redact, retry_delay
from replicant.log.base import MARKER_SNAPSHOT_ABORT, MARKER_SNAPSHOT_END, MARKER_SNAPSHOT_START, MARKER_TRUNCATE, Log
from replicant.model import OP_READ, Stream, data_schema
from replicant.results import RunError

__all__ = ["Delivery", "StreamWriter"]

log = logging.getLogger(__name__)

_IDLE_SECONDS = 0.01
_MIRROR_SECONDS = 0.5
#: the longest a delivery holds snapshot rows for a fuller write (see the module docstring)
HOLD_SECONDS = 1.0


class StreamWriter:
    """Delivers one stream's log records to one destination.

    Args:
        start: deliver from this offset (a replay); by default from the offset after the one
            the destination says it applied.
        clock: monotonic seconds, for how long rows have been held (tests inject one).
    """

    def __init__(
        self,
        dest: Any,
        stream: Stream,
        lg: Log,
        state: Any,
        pipeline: str,
        on_rows: Callable[[str, str, int], None],
        *,
        start: int | None = None,
        share: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dest = dest
        self.clock = clock
        self.stream = stream
        self.log = lg
        self.state = state
        self.pipeline = pipeline
        self.on_rows = on_rows
        self.mode = dest.write_mode(stream)
        self.transactional = dest.capabilities.transactional
        self.full_writes = dest.capabilities.full_writes
        # ``share``: writers delivering this destination at once split its default between
        # them, so the rows pending in the process stay what one writer would hold
        self.batch_rows = (dest.config.batch_size or max(
            (getattr(dest, "default_batch_rows", None) or (200_000 if self.transactional else 1_000)) // share, 1))
        self.in_snapshot = False
        self.pending: list[pa.RecordBatch] = []
        self.pending_offsets: list[np.ndarray] = []  # the log offset of each pending row (dead letters' origin)
        self.pending_rows = 0
        self.pending_since = 0.0  # clock() when the first pending row was taken
        self.pending_reads = True  # every pending row is a snapshot read (may be held)
        self.last: int | None = None
        self.rows = 0
        self.caught_up_at = 0  # self.rows when the destination last heard it holds all of the log
        self.unmirrored: int | None = None
        self.mirrored_at = 0.0
        self.resumed = False
        self.offset = self._first_offset() if start is None else start
        if start is None:
            self.stream = self._applied_version(stream)
        self.version = self._version_of(self.stream)

    def _first_offset(self) -> int:
        s = self.stream
        if self.transactional:
            applied = self.dest.applied_offset(s)
        else:
            off = self.state.offsets(self.pipeline, tenant=s.tenant).get((self.dest.name, s.name))
            applied = off.offset if off else -1
        end = self.log.end_offset(s.log_name)
        if applied >= end:
            raise FatalError(
                f"it has applied log offset {applied} but the log of {s.name!r} ends at {end}: the staging log was "
                f"reset or replaced. Replay into it with `replicant replay --destination {self.dest.name} --from-start`."
            )
        return applied + 1

    def _applied_version(self, stream: Stream) -> Stream:
        """The stream in the schema of the last record the destination applied: records still
        to deliver may be older than the stream as discovered now (a restart after the source
        changed), and each must evolve the table from where it is."""
        last = self.offset - 1
        if last < max(self.log.start_offset(stream.log_name), 0):
            return stream
        for rec in self.log.read(stream.log_name, last, end=last + 1):
            if rec.batch is not None:
                schema = data_schema(rec.batch.schema)
            else:
                versions = self.log.schemas(stream.log_name)
                if not 0 <= rec.schema_version < len(versions):
                    return stream
                schema = data_schema(versions[rec.schema_version])
            if not schema.equals(stream.schema, check_metadata=True):
                return dataclasses.replace(stream, schema=schema)
        return stream

    def _version_of(self, stream: Stream) -> int | None:
        """The newest log schema version equal to ``stream.schema``, or None."""
        versions = self.log.schemas(stream.log_name)
        for i in range(len(versions) - 1, -1, -1):
            if data_schema(versions[i]).equals(stream.schema, check_metadata=True):
                return i
        return None

    def step(self, end: int | None = None, *, hold: bool = False) -> bool:
        """Delivers every record after the current offset (up to ``end``); True if there was
        any, or if rows held by an earlier step were written now.

        ``hold``: the stream is still being read, so snapshot rows short of a full write may
        wait for more (:meth:`_holding`) rather than be written now, where the destination
        asks for full writes.
        """
        stop_at = self.log.end_offset(self.stream.log_name) if end is None else end
        if self.offset >= stop_at:
            if self.pending_rows:  # held by an earlier step
                if hold and self._holding():
                    return False
                self._flush()
                return True
            self._caught_up()
            return False
        log.debug("%s/%s: delivering log offsets %d..%d", self.dest.name, self.stream.name, self.offset, stop_at - 1)
        for rec in self.log.read(self.stream.log_name, self.offset, end=stop_at):
            self._take(rec)
            self.offset = rec.next_offset
        if not (hold and self._holding()):
            self._flush()
        return True

    def _holding(self) -> bool:
        """Whether the pending rows wait for a fuller write: the destination asks for full
        writes, and all are snapshot reads, fewer than a write's ``batch_rows``, taken less
        than :data:`HOLD_SECONDS` ago."""
        return (self.full_writes and 0 < self.pending_rows < self.batch_rows and self.pending_reads
                and self.clock() - self.pending_since < HOLD_SECONDS)

    def _caught_up(self) -> None:
        """Everything the log holds of a stream whose reads carry no snapshot markers (``log``,
        ``snapshot_diff``, ``cursor``, ``trigger``: their first read is a snapshot as well) is
        written: the destination hears its load is over for now (``end_snapshot``), so a key
        PostgreSQL put off for the bulk load is built while a pipeline follows, not only at the
        first change or the run's end. ``full`` streams have their ``snapshot_end`` marker."""
        if self.stream.mode == "full" or self.mode == "replace" or self.rows == self.caught_up_at:
            return
        self.caught_up_at = self.rows
        self.dest.end_snapshot(self.stream)

    # ------------------------------------------------------------------ records

    def _take(self, rec: Any) -> None:
        if rec.marker is not None:
            self._marker(rec)
            return
        if self.mode == "replace" and not self.in_snapshot:
            return  # rows of a snapshot whose start this delivery did not see (replay from an offset)
        batch = rec.batch
        schema = data_schema(batch.schema)
        if not schema.equals(self.stream.schema, check_metadata=True):
            if self.version is not None and rec.schema_version < self.version:
                batch = _conform(batch, self.stream)  # an older version into the newer table: no drift
            else:
                self._flush()
                new = dataclasses.replace(self.stream, schema=schema)
                self.dest.evolve(new, self.stream)
                self.stream, self.version = new, rec.schema_version
        if not self.transactional:
            self._write_record(rec, batch)
            return
        if not self.pending:
            self.pending_since = self.clock()
        if self.full_writes and self.pending_reads and batch.num_rows:  # only a holder needs to know
            ops = batch.column("_op")
            self.pending_reads = ops.null_count == 0 and pc.all(pc.equal(ops, OP_READ)).as_py() is True
        self.pending.append(batch)
        self.pending_offsets.append(np.arange(rec.offset, rec.offset + batch.num_rows, dtype=np.int64))
        self.pending_rows += rec.batch.num_rows
        self.last = rec.next_offset - 1
        while self.pending_rows >= self.batch_rows:
            self._flush(self.batch_rows)  # writes of exactly batch_rows: DuckDB's row groups stay whole

    def _marker(self, rec: Any) -> None:
        kind = rec.marker.get("kind")
        if kind == MARKER_SNAPSHOT_START and self.mode != "replace":
            self._flush()  # a write never holds rows of two snapshots, and the destination hears of each
            self.dest.begin_snapshot(self.stream, str(rec.marker.get("id", rec.offset)))
        if not self.transactional:
            if kind == MARKER_TRUNCATE and self.dest.capabilities.truncate:
                self.dest.truncate(self.stream, last_offset=rec.offset)  # e.g. an HTTP record saying so
            self._save(rec.offset)  # snapshot markers: files and events carry no table state
            return
        if kind == MARKER_TRUNCATE:
            self._flush()
            self.dest.truncate(self.stream, last_offset=rec.offset)
            self._mirror(rec.offset)
            return
        if self.mode != "replace":
            self.last = rec.offset
            if kind == MARKER_SNAPSHOT_END:
                self._flush()  # the snapshot's rows and its end are written: the destination may finish its load
                self.dest.end_snapshot(self.stream)
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

    def _write_record(self, rec: Any, batch: pa.RecordBatch) -> None:
        """Non-transactional: one write per log record, so every delivery of it (a retry, a
        restart, a replay) covers the same offsets; the destination cuts requests or files
        from the record's first offset."""
        if batch.num_rows == 0:
            self._save(rec.offset)
            return
        last = rec.offset + batch.num_rows - 1
        n = _rows_written(self.dest.write(self.stream, pa.Table.from_batches([batch]), last_offset=last), batch.num_rows)
        self._save(last)
        self._resume()
        self.rows += n
        self.on_rows(self.dest.name, self.stream.name, n)

    def _flush(self, limit: int | None = None) -> None:
        """Writes the pending rows, or only the first ``limit`` of them (the rest stay pending)."""
        if self.last is None and not self.pending:
            return
        table = pa.Table.from_batches(self.pending) if self.pending else self.stream.change_schema.empty_table()
        offsets = np.concatenate(self.pending_offsets) if self.pending_offsets else np.zeros(0, np.int64)
        last, rest, rest_offsets = self.last, None, offsets[:0]
        if limit is not None and table.num_rows > limit:
            table, rest = table.slice(0, limit), table.slice(limit)
            offsets, rest_offsets = offsets[:limit], offsets[limit:]
            last = int(offsets[-1])
        n = table.num_rows
        if self.mode == "replace":
            if table.num_rows:
                n = _rows_written(self.dest.write(self.stream, table, last_offset=last, offsets=pa.array(offsets)), n)
        else:
            n = _rows_written(self.dest.write(self.stream, table, last_offset=last, offsets=pa.array(offsets)), n)
            self._mirror(last)
        self.rows += n
        if n:
            self.on_rows(self.dest.name, self.stream.name, n)
            self._resume()
        if rest is not None:  # the rows after the cut; self.last still ends them. pending_since stays: none
            # of them was taken before it, so none waits longer than HOLD_SECONDS
            self.pending, self.pending_offsets, self.pending_rows = rest.to_batches(), [rest_offsets], rest.num_rows
            return
        self.pending, self.pending_offsets, self.pending_rows, self.last = [], [], 0, None
        self.pending_reads = True

    def _resume(self) -> None:
        """A delivery succeeded: a pause of this stream recorded for ``status`` is over."""
        if not self.resumed:
            self.state.resume_stream(self.pipeline, self.dest.name, self.stream.name, tenant=self.stream.tenant)
            self.resumed = True

    def _save(self, offset: int) -> None:
        """Non-transactional: the state store holds the truth."""
        self.state.save_offset(self.pipeline, self.dest.name, self.stream.name, offset, rows_total=self.rows,
                               tenant=self.stream.tenant)

    def _mirror(self, offset: int | None, *, now: bool = False) -> None:
        """Copies the applied offset to the state store for ``status``, at most every
        ``_MIRROR_SECONDS`` (the destination holds the truth); ``flush_mirror`` writes the last."""
        self.unmirrored = offset
        if now or time.monotonic() - self.mirrored_at >= _MIRROR_SECONDS:
            self.flush_mirror()

    def flush_mirror(self) -> None:
        if self.unmirrored is None:
            return
        try:
            self.state.save_offset(self.pipeline, self.dest.name, self.stream.name, self.unmirrored, rows_total=self.rows,
                                   tenant=self.stream.tenant)
            self.unmirrored, self.mirrored_at = None, time.monotonic()
        except Exception:  # the mirror is for `status`; the destination holds the truth
            log.debug("could not mirror offset", exc_info=True)


def _rows_written(returned: Any, given: int) -> int:
    """The rows a write wrote: what it returned when it says (a destination behind transforms
    that filter), else the rows it was given."""
    return returned if isinstance(returned, int) and not isinstance(returned, bool) else given


def _conform(batch: pa.RecordBatch, stream: Stream) -> pa.RecordBatch:
    """A batch of an older schema version in the stream's current schema: columns added
    since are null, widened ones cast (columns dropped since are left out)."""
    target = stream.change_schema
    columns = []
    for f in target:
        i = batch.schema.get_field_index(f.name)
        if i < 0:
            columns.append(pa.nulls(batch.num_rows, f.type))
            continue
        col = batch.column(i)
        try:
            columns.append(col if col.type == f.type else col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SchemaDriftError(
                f"an older record of {stream.name!r} has column {f.name!r} as {col.type}, which does not fit the "
                f"current {f.type}: {e}"
            ) from None
    return pa.RecordBatch.from_arrays(columns, schema=target)


class Delivery:
    """Serves its streams of one destination, round-robin, in its own thread (every stream,
    or, where the destination takes concurrent writers, the engine's share of them).

    Args:
        done: per stream, an event set when reading of that stream is finished (no more
            appends this run); delivery ends when every stream is done and delivered.
        stop: set on shutdown; delivery finishes what the log holds, then returns.
        follow: retry a failing destination with back-off instead of giving up on it.
        on_error: receives each failure (:class:`~replicant.results.RunError`).
        share: how many deliveries write this destination at once (they split its default
            rows per write).
        clock: monotonic seconds for the writers' hold (tests inject one).
    """

    def __init__(
        self,
        dest: Any,
        streams: list[Stream],
        lg: Log,
        state: Any,
        pipeline: str,
        *,
        done: dict[str, threading.Event],
        stop: threading.Event,
        follow: bool,
        on_error: Callable[[RunError], None],
        on_rows: Callable[[str, str, int], None],
        share: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dest = dest
        self.share = share
        self.clock = clock
        self.streams = streams
        self.log = lg
        self.state = state
        self.pipeline = pipeline
        self.done = done
        self.stop = stop
        self.follow = follow
        self.on_error = on_error
        self.on_rows = on_rows
        self.written: dict[str, int] = {s.name: 0 for s in streams}

    def _fail(self, stream: Stream | None, e: BaseException) -> None:
        log.debug("delivery failed", exc_info=e)
        self.on_error(RunError("delivery", str(e), stream=stream.name if stream else None, destination=self.dest.name,
                               tenant=stream.tenant if stream else None))

    def _pause(self, stream: Stream, e: BaseException) -> None:
        """``stream`` waits for the user at this destination (the others go on): say so now, in
        the log and in the state store, where ``replicant status`` shows it from any process."""
        reason = redact(str(e))
        log.warning(
            "destination %s paused stream %s%s: %s. The other streams go on; this one stays paused (shown by "
            "`replicant status`) until it is delivered again: fix the cause, then run or replay as the reason says.",
            self.dest.name, stream.name, "" if stream.tenant is None else f" of tenant {stream.tenant}", reason,
        )
        try:
            self.state.pause_stream(self.pipeline, self.dest.name, stream.name, reason, tenant=stream.tenant)
        except Exception:  # the pause is reported through on_error as well
            log.warning("could not record the pause of %s in the state store", stream.name, exc_info=True)
        self._fail(stream, e)

    def _open(self, paused: set[str]) -> None:
        """Connects and prepares every stream. A stream whose table the destination refuses
        (a content or configuration reason: names it cannot hold, columns colliding when
        folded) pauses alone; the others are delivered. A connection failure raises."""
        self.dest.close()  # after a failure: a fresh connection
        log.debug("opening destination %s (%s)", self.dest.name, type(self.dest).__name__)
        self.dest.open()
        for s in self.streams:
            if s.name in paused:
                continue
            try:
                self.dest.prepare(s)
            except (SchemaDriftError, FatalError, ConfigError, RecordError) as e:
                paused.add(s.name)
                self._pause(s, e)

    def run(self) -> None:
        writers: dict[str, StreamWriter] = {}
        paused: set[str] = set()
        failures = 0
        opened = False
        holder: str | None = None  # the one stream whose rows may wait for a full write
        s = self.streams[0] if self.streams else None
        while True:
            finished = all(self.done[s.name].is_set() for s in self.streams)
            progressed = False
            try:
                if not opened:
                    self._open(paused)
                    opened = True
                for s in self.streams:
                    if s.name in paused:
                        continue
                    w = writers.get(s.name)
                    if w is None:
                        w = writers[s.name] = StreamWriter(self.dest, s, self.log, self.state, self.pipeline, self.on_rows,
                                                               share=self.share, clock=self.clock)
                    try:
                        before = w.rows
                        # rows of a stream still being read may wait for a full write, one stream at a
                        # time: what a delivery holds stays one write's worth whatever the streams read at once
                        hold = holder in (None, s.name) and not (self.done[s.name].is_set() or self.stop.is_set())
                        progressed |= w.step(hold=hold)
                        self.written[s.name] += w.rows - before
                    except FencedError as e:  # another writer delivers this stream now: it stops here, unpaused
                        paused.add(s.name)
                        log.warning("destination %s stops delivering stream %s in this run: %s", self.dest.name, s.name,
                                    redact(str(e)))
                        self._fail(s, e)
                    except (SchemaDriftError, FatalError, ConfigError, RecordError) as e:
                        paused.add(s.name)  # this stream waits for the user; the others go on
                        self._pause(s, e)
                    if w.pending_rows and s.name not in paused:
                        holder = s.name
                    elif holder == s.name:
                        holder = None
                failures = 0
            except Exception as e:  # noqa: BLE001 - a failing destination must not stop the others
                if not self.follow:
                    self._fail(s if opened else None, e)
                    return
                failures += 1
                delay = retry_delay(failures)
                log.warning("destination %s failed (%s); retrying in %.1f s", self.dest.name, e, delay)
                writers.clear()  # resume from what the destination committed
                holder = None
                opened = False
                if self.stop.wait(delay):
                    return
                continue
            if not progressed:
                for w in writers.values():
                    w.flush_mirror()
            if finished and not progressed:
                return
            if not progressed:
                time.sleep(_IDLE_SECONDS)

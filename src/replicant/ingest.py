"""The one ingest path: tag → transforms → staging log → checkpoint → acknowledge.

Every batch of every read strategy reaches the log through :meth:`Ingest.append`, so there is
exactly one place where rows are tagged with their stream's schema metadata, where transforms
before the log run (a masked column is never stored in clear), and where they become durable. The exactly-once rules, in order:

1. :meth:`Ingest.append` returns only once the batch is durable in the log, together with the
   source position *after* its rows. The log is the checkpoint of record: a restart resumes
   each stream from ``log.last_position`` (:meth:`Ingest.resume`), so a re-read never reaches
   the log twice.
2. Then the state store's checkpoint mirror is saved (rows and offsets for ``status``), in one
   transaction per batch or change set.
3. Only then is the source told (``acknowledge``: trigger shadow rows purged, a snapshot_diff
   snapshot promoted, a replication slot confirmed). An acknowledgement may be lost in a crash;
   sources make it idempotent.

``mode: log`` streams share one change feed per source: each change set (whole transactions)
is appended to every stream it touches, then the feed's position is saved as the ``(capture)``
checkpoint, then acknowledged. A heartbeat's position is durable nowhere but in that
checkpoint, which is why it is saved before the source may forget it.

Where resume positions come from, both read here and nowhere else: a stream's from its log
(the append that made the rows durable carried it, so it can never lag behind them), the
feed's from the state store (a heartbeat moves it without any row to append; appending a
record per change set to carry it would cost an fsync per transaction).

``full`` reads are bracketed by ``snapshot_start`` / ``snapshot_end`` markers. A snapshot that
cannot resume where it stopped (a table without a key) gets a ``snapshot_abort`` marker and
starts over. The engine keeps its own keys in the positions it appends (``_snapshot``,
``_resumable``) and strips them before a position is handed back to a source.
"""

from __future__ import annotations

import errno
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from replicant.errors import DiskFullError
from replicant.log.base import MARKER_SNAPSHOT_ABORT, MARKER_SNAPSHOT_END, MARKER_SNAPSHOT_START, MARKER_TRUNCATE, Log
from replicant.model import ChangeSet, Position, ReadBatch, Stream

__all__ = ["CAPTURE_CHECKPOINT", "Ingest"]

#: The state-store checkpoint name of a source's change feed (``mode: log`` streams).
CAPTURE_CHECKPOINT = "(capture)"


class Ingest:
    """Appends a pipeline's (or one tenant's) batches to its staging log and checkpoints them.

    Safe to use from several threads at once for different streams (each stream is read by
    one task at a time).

    Args:
        pipeline: the pipeline's name (state-store key).
        lg: the staging log.
        state: the state store (:class:`replicant.state.StateStore`).
        tenant: the tenant whose source feeds this ingest, if the pipeline has tenants.
        transforms: the transforms before the log, or None.
    """

    def __init__(self, pipeline: str, lg: Log, state: Any, *, tenant: str | None = None, transforms: Any = None) -> None:
        self.pipeline = pipeline
        self.transforms = transforms
        self.log = lg
        self.state = state
        self.tenant = tenant
        self._totals: dict[str, int] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the one append

    def append(self, stream: Stream, batch: pa.RecordBatch | None, position: Position, *, marker: dict[str, Any] | None = None) -> None:
        """Makes ``batch`` (or ``marker``) durable in ``stream``'s log with the source
        ``position`` after it. The batch is tagged with the stream's schema metadata (its
        key columns) without copying data, then goes through the transforms before the log
        (``transforms``: a :class:`~replicant.transforms.chain.TransformChain`), so the log
        holds only their output."""
        if batch is not None:
            batch = _tagged(batch, stream)
            if self.transforms:
                batch = self.transforms.apply(stream.name, batch)
        try:
            self.log.append(stream.log_name, batch, position=position, marker=marker)
        except OSError as e:
            if e.errno not in _DISK_FULL:
                raise
            where = getattr(self.log, "root", None) or getattr(self.log, "location", None) or "the staging log"
            raise DiskFullError(f"disk full at {where} ({e.strerror}) appending to {stream.name!r}") from None

    # ------------------------------------------------------------------ per-stream reads

    def resume(self, stream: Stream) -> Position | None:
        """Where to read ``stream`` from: the source position after the last batch durable in
        the log (None: from the start). For a ``full`` stream, opens a new snapshot (a
        ``snapshot_start`` marker) unless one is open and resumable, and aborts one that cannot
        resume."""
        last = self.log.last_position(stream.log_name)
        resume = _source_position(last)
        if stream.mode != "full":
            return resume
        engine_keys = _engine_keys(last)
        snap = engine_keys.get("_snapshot")
        if snap in (None, "closed", "aborted"):
            self._open_snapshot(stream)
            return None
        if engine_keys.get("_resumable") is False:
            self.append(stream, None, {"_snapshot": "aborted"}, marker={"kind": MARKER_SNAPSHOT_ABORT})
            self._open_snapshot(stream)
            return None
        return resume

    def _open_snapshot(self, stream: Stream) -> None:
        self.append(stream, None, {"_snapshot": "open"}, marker={"kind": MARKER_SNAPSHOT_START, "id": uuid.uuid4().hex})

    def add_read(self, source: Any, stream: Stream, rb: ReadBatch, *, acknowledge: bool = True) -> int:
        """Appends one batch of :meth:`~replicant.sources.base.Source.read`, saves the
        checkpoint and (``acknowledge``) acknowledges it to ``source``; returns its row count.
        A caller whose read is still open on the source's connection acknowledges later."""
        full = stream.mode == "full"
        pos = dict(rb.position)
        if full:
            pos["_snapshot"] = "open"
            if not rb.resumable:
                pos["_resumable"] = False
        if rb.data.num_rows or not rb.final or not full:
            self.append(stream, rb.data, pos)
        if rb.final and full:
            self.append(stream, None, {**rb.position, "_snapshot": "closed"}, marker={"kind": MARKER_SNAPSHOT_END})
        n = rb.data.num_rows
        total = self._add_total(stream.name, n)
        with _state_disk_full():
            self.state.save_checkpoint(self.pipeline, stream.name, rb.position, rows_total=total,
                                       log_offset=self.log.end_offset(stream.log_name), tenant=self.tenant)
        if acknowledge:
            source.acknowledge(stream, rb.position)
        return n

    # ------------------------------------------------------------------ the change feed

    def capture_resume(self) -> Position | None:
        """The change feed's last acknowledged position (None on its first run)."""
        cp = self.state.checkpoint(self.pipeline, CAPTURE_CHECKPOINT, tenant=self.tenant)
        return cp.position if cp else None

    def add_changes(self, source: Any, cs: ChangeSet, streams: dict[str, Stream]) -> dict[str, int]:
        """Appends a change set to every stream it touches (a truncate marker, then its other
        markers, before a stream's rows), saves the feed's and those streams' checkpoints in one
        transaction, then acknowledges the feed position; returns rows per stream."""
        rows: dict[str, int] = {}
        for name in cs.truncated:
            self.append(streams[name], None, cs.position_of(name), marker={"kind": MARKER_TRUNCATE})
        for name, marker in (cs.markers or {}).items():
            self.append(streams[name], None, cs.position_of(name), marker=marker)
        for name, batch in cs.batches.items():
            self.append(streams[name], batch, cs.position_of(name))
            rows[name] = batch.num_rows
        touched = sorted(set(cs.batches) | set(cs.truncated) | set(cs.markers or ()))
        items: list[tuple[str, Position | None, int, int]] = [
            (name, cs.position_of(name), self._add_total(name, rows.get(name, 0)), self.log.end_offset(streams[name].log_name))
            for name in touched
        ]
        feed_total = self._add_total(CAPTURE_CHECKPOINT, sum(rows.values()))
        with _state_disk_full():
            self.state.save_checkpoints(self.pipeline, [(CAPTURE_CHECKPOINT, cs.position, feed_total, 0), *items],
                                        tenant=self.tenant)
        source.acknowledge_capture(cs.position)
        return rows

    def feed_positions(self, streams: list[Stream]) -> dict[str, Position | None]:
        """Per ``log`` stream, the last source position durable in the log (None: that stream
        still needs its initial snapshot)."""
        return {s.name: _source_position(self.log.last_position(s.log_name)) for s in streams}

    def added_columns(self, stream: Stream) -> list[str]:
        """``stream``'s columns that the schema of its last batch in the log lacks: added at the
        source since it was last read (none while the log holds no batch of it)."""
        schemas = self.log.schemas(stream.log_name)
        if not schemas:
            return []
        have = set(schemas[-1].names)
        return [f.name for f in stream.schema if f.name not in have]

    # ------------------------------------------------------------------ bookkeeping

    def _add_total(self, name: str, rows: int) -> int:
        with self._lock:
            if name not in self._totals:
                cp = self.state.checkpoint(self.pipeline, name, tenant=self.tenant)
                self._totals[name] = cp.rows_total if cp else 0
            self._totals[name] += rows
            return self._totals[name]


#: ``errno`` values of a full disk: no space, or the user's quota is used up.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@contextmanager
def _state_disk_full() -> Iterator[None]:
    """A state-store write that failed for want of space (SQLite: ``database or disk is full``)
    as :class:`DiskFullError`: the log already holds the batch, so a retry loses nothing."""
    try:
        yield
    except Exception as e:
        if getattr(e, "errno", None) not in _DISK_FULL and "database or disk is full" not in str(e):
            raise
        raise DiskFullError(f"disk full at the state store ({str(e).splitlines()[0]})") from None


def _engine_keys(pos: Position | None) -> dict[str, Any]:
    return {k: v for k, v in (pos or {}).items() if k.startswith("_")}


def _source_position(pos: Position | None) -> Position | None:
    src = {k: v for k, v in (pos or {}).items() if not k.startswith("_")}
    return src or None


def _tagged(batch: pa.RecordBatch, stream: Stream) -> pa.RecordBatch:
    """``batch`` with the stream's schema metadata (zero-copy)."""
    md = stream.schema.metadata
    return batch if batch.schema.metadata == md else batch.replace_schema_metadata(md)

"""The nouns every stage shares: streams, change batches, positions.

A *change batch* is a ``pyarrow.RecordBatch`` holding a stream's data columns followed
by three metadata columns:

``_op``
    ``"read"`` (snapshot), ``"insert"``, ``"update"`` or ``"delete"``. A delete carries at
    least the key columns; the other data columns may be null.
``_pos``
    The source position the row came from, as text (a JSON object for SQL sources: the
    chunk key, cursor value, LSN or binlog position).
``_ts``
    Commit or extract time, UTC, microseconds.

A *position* is a JSON-serialisable ``dict`` a source returns with each batch: resuming
the source from it yields exactly the rows *after* that batch (see
:class:`replicant.sources.base.Source`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

__all__ = [
    "OP_READ",
    "OP_INSERT",
    "OP_UPDATE",
    "OP_DELETE",
    "OPS",
    "META_FIELDS",
    "META_COLUMNS",
    "SQL_TYPE_KEY",
    "DIALECT_KEY",
    "Stream",
    "Position",
    "log_stream_name",
    "ReadBatch",
    "ChangeSet",
    "DeadLetter",
    "ConnectorContext",
    "with_meta",
    "data_schema",
    "strip_meta",
    "encode_position",
    "decode_position",
    "utcnow",
]

OP_READ = "read"
OP_INSERT = "insert"
OP_UPDATE = "update"
OP_DELETE = "delete"
OPS = (OP_READ, OP_INSERT, OP_UPDATE, OP_DELETE)

META_FIELDS = (
    pa.field("_op", pa.string(), nullable=False),
    pa.field("_pos", pa.string(), nullable=False),
    pa.field("_ts", pa.timestamp("us", tz="UTC"), nullable=False),
)
META_COLUMNS = tuple(f.name for f in META_FIELDS)

#: Arrow field metadata a source may set: the column's declared type in the source
#: dialect (e.g. ``numeric(40,20)``, ``uuid``, ``mood`` for an enum). A destination of the
#: same dialect uses it to create the exact type; others map from the Arrow type.
SQL_TYPE_KEY = b"replicant.sql_type"
#: Arrow schema metadata: the SQLAlchemy dialect name of the source (``postgresql``,
#: ``mysql``, ``sqlite``).
DIALECT_KEY = b"replicant.dialect"

Position = dict[str, Any]


def utcnow() -> datetime:
    return datetime.now(UTC)


def encode_position(position: Position | None) -> str:
    """Compact, deterministic JSON for a position (sorted keys); ``"null"`` for none."""
    return json.dumps(position, sort_keys=True, separators=(",", ":"), default=str)


def decode_position(text: str | None) -> Position | None:
    return None if text in (None, "", "null") else json.loads(text)


@dataclass(frozen=True)
class Stream:
    """One table (or file set, endpoint…) read as a unit.

    Attributes:
        name: the stream's stable name in the log, the state store and messages, as the
            user wrote it in ``streams:`` (``public.orders``, ``Album``).
        table: the source object's name parts, unquoted, e.g. ``("public", "orders")``.
        schema: the data columns (no metadata columns), with :data:`SQL_TYPE_KEY`
            field metadata where the source knows the declared type.
        primary_key: key column names; empty when the table has none and none was set.
        cursor: the cursor column for ``mode: cursor``.
        mode: the read strategy: ``full``, ``cursor``, ``snapshot_diff``, ``trigger`` or ``log``.
        options: source-specific extras (look-back, chunk size, soft-delete column…).
        tenant: the tenant whose source this stream is read from, or None. Identity is
            (pipeline, tenant, stream): see :attr:`log_name`.
    """

    name: str
    table: tuple[str, ...]
    schema: pa.Schema
    primary_key: tuple[str, ...] = ()
    cursor: str | None = None
    mode: str = "full"
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    tenant: str | None = None

    @property
    def log_name(self) -> str:
        """The stream's name in the staging log and in destination offsets: ``name``, or
        ``tenant/name`` for a tenant's stream, so two tenants' ``orders`` never share a log
        or an offset (state-store rows carry the tenant in their own column)."""
        return log_stream_name(self.name, self.tenant)

    @property
    def table_name(self) -> str:
        """The last part of the source name: the default destination table name."""
        return self.table[-1]

    @property
    def change_schema(self) -> pa.Schema:
        """The schema of this stream's change batches: data columns then metadata columns."""
        return pa.schema(list(self.schema) + list(META_FIELDS), metadata=self.schema.metadata)


@dataclass(frozen=True)
class ReadBatch:
    """One batch from a source.

    Attributes:
        data: a change batch (data columns plus ``_op``, ``_pos``, ``_ts``; see
            :mod:`replicant.model`). May have zero rows (e.g. the last, empty page).
        position: where to resume to get the rows after this batch.
        resumable: False when ``position`` cannot be resumed from (mid-way through an
            unkeyed full read); the stream must then restart from ``None``.
        final: True on the last batch of a ``full`` snapshot (marks the snapshot complete).
    """

    data: pa.RecordBatch
    position: Position
    resumable: bool = True
    final: bool = False


@dataclass(frozen=True)
class ChangeSet:
    """Whole source transactions read by :meth:`Source.capture`, split by stream.

    Attributes:
        batches: per stream name, a change batch (``_op`` insert/update/delete, or read for
            the initial snapshot). Streams without changes are absent.
        position: the capture position *after* these transactions (``{"lsn": …}``,
            ``{"file": …, "pos": …}``/``{"gtid": …}``). A transaction is never split
            across two change sets.
        stream_positions: optional per stream positions to append with that stream's batch
            instead of ``position`` (e.g. snapshot progress of one table).
        truncated: streams truncated in these transactions. The engine logs a
            ``{"kind": "truncate"}`` marker for each *before* that stream's batch, so the batch
            holds only the stream's changes after its (last) truncate.
        markers: per stream, another marker (``snapshot_start``, ``snapshot_end``…) the engine
            logs for it, before its batch: a derived pipeline passes its upstream's markers on.
    """

    batches: dict[str, pa.RecordBatch]
    position: Position
    stream_positions: dict[str, Position] | None = None
    truncated: frozenset[str] = frozenset()
    markers: dict[str, dict[str, Any]] | None = None

    def position_of(self, stream: str) -> Position:
        return (self.stream_positions or {}).get(stream, self.position)

@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """A record that could not be processed, kept with why and where it came from.

    Attributes:
        reason: what was wrong (redacted before it is stored).
        payload: the record as a JSON-able dict; values JSON cannot represent are stored
            as their ``str()``.
        origin: where it came from: file and line, or the source position.
        destination: the destination that rejected it, or ``None`` when it failed before
            reaching one (reading, transforming).
        created_at: when it was rejected, timezone-aware (a naive datetime raises
            ``ValueError`` when stored); ``None`` means now (the store's clock).
    """

    reason: str
    payload: dict[str, Any]
    origin: str
    destination: str | None = None
    created_at: datetime | None = None


#: ``sink(stream, records)``: stores rejected records in the dead-letter store and counts them.
DeadLetterSink = Callable[[Stream, list[DeadLetter]], None]


@dataclass(frozen=True)
class ConnectorContext:
    """Where a connector runs, given to it at construction (never set from outside later).

    Attributes:
        pipeline: the pipeline name (part of slot, publication and offset-table keys).
        tenant: the tenant id when the pipeline has ``tenants:``, else None.
        workdir: a private folder for the connector's own files (``snapshot_diff`` keeps its
            previous snapshot there), under the pipeline's home; None when it needs none.
        dead_letter: where rejected records go (:data:`DeadLetterSink`); None: nowhere to put
            them, so a connector that rejects a record raises instead.
        state_url: the pipeline's state store (a files source keeps its files seen and its
            dead letters there); None outside a pipeline.
        readers: how many sources of this feed read at once (the run's stream tasks: its
            ``parallelism``, at most one per stream). A source that buffers a read divides its
            buffers by it, so a run's memory stays what one read would hold.
    """

    pipeline: str
    tenant: str | None = None
    workdir: Path | None = None
    dead_letter: DeadLetterSink | None = field(default=None, compare=False)
    #: the pipeline's state store URL, for a source that keeps records there (files seen)
    state_url: str | None = field(default=None, compare=False, repr=False)
    readers: int = 1

    @property
    def feed(self) -> str:
        """The identity of this source feed: ``pipeline`` or ``pipeline.tenant``; names
        replication slots, publications and the capture checkpoint."""
        return self.pipeline if self.tenant is None else f"{self.pipeline}.{self.tenant}"


def log_stream_name(stream: str, tenant: str | None) -> str:
    """See :attr:`Stream.log_name`."""
    return stream if tenant is None else f"{tenant}/{stream}"


def data_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` without the metadata columns."""
    return pa.schema([f for f in schema if f.name not in META_COLUMNS], metadata=schema.metadata)


def strip_meta(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    """The data columns of a change batch."""
    keep = [i for i, f in enumerate(batch.schema) if f.name not in META_COLUMNS]
    return batch.select(keep)


def with_meta(batch: pa.RecordBatch, op: str, pos: str, ts: datetime) -> pa.RecordBatch:
    """Adds constant ``_op``, ``_pos`` and ``_ts`` columns to a batch of data columns.

    The constants are repeated by Arrow (``pa.repeat``), not per row in Python.
    """
    n = batch.num_rows
    op_col = pa.repeat(pa.scalar(op, pa.string()), n)
    pos_col = pa.repeat(pa.scalar(pos, pa.string()), n)
    ts_col = pa.repeat(pa.scalar(ts, pa.timestamp("us", tz="UTC")), n)
    arrays = list(batch.columns) + [op_col, pos_col, ts_col]
    schema = pa.schema(list(batch.schema) + list(META_FIELDS), metadata=batch.schema.metadata)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)

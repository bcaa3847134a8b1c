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
from dataclasses import dataclass, field
from datetime import datetime, timezone
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
    return datetime.now(timezone.utc)


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
        mode: the read strategy, ``full`` or ``cursor`` (later: ``snapshot_diff``, ``trigger``, ``log``).
        options: source-specific extras (look-back, chunk size, soft-delete column…).
    """

    name: str
    table: tuple[str, ...]
    schema: pa.Schema
    primary_key: tuple[str, ...] = ()
    cursor: str | None = None
    mode: str = "full"
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def table_name(self) -> str:
        """The last part of the source name: the default destination table name."""
        return self.table[-1]

    @property
    def change_schema(self) -> pa.Schema:
        """The schema of this stream's change batches: data columns then metadata columns."""
        return pa.schema(list(self.schema) + list(META_FIELDS), metadata=self.schema.metadata)


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

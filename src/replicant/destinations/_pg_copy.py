"""Binary ``COPY FROM STDIN`` of Arrow tables: encoded by pgpq, sent over psycopg.

The PostgreSQL destination writes every row this way, into the target table (the direct
path) or into its staging table. pgpq encodes an Arrow record batch into PostgreSQL's binary
``COPY`` format in compiled Rust; psycopg sends the bytes on the destination's one
connection, so rows and the ``_replicant_offsets`` row share a transaction.

Why not ADBC's ``adbc_ingest`` (the destination's writer until 2026-12): the driver wheels
1.9.0-1.13.0 are built without optimisation (docs/measurements.md, "ADBC's driver builds").
Measured here, 5M narrow rows into a keyed table: 1.12-1.24 client CPU-s with ADBC 1.13.0,
0.24-0.25 with pgpq + psycopg; 1M wide rows (11 columns, numeric included): 0.69-0.79
against 0.14-0.24. The server decodes the same binary format either way.

:func:`copy_ready` rewrites the few Arrow types pgpq has no encoder for into ones whose
binary form the server reads with the target column's receive function (the binary
``COPY`` format carries no type per field, only inside arrays):

* ``arrow.uuid`` → its 16 bytes (``uuid_recv`` reads exactly those);
* ``month_day_nano_interval`` → the 16 bytes of ``interval_recv`` (microseconds, days,
  months, big-endian), nanoseconds truncated to microseconds;
* ``timestamp``/``time64``/``duration`` in nanoseconds → microseconds (truncated: the
  server keeps microseconds);
* a ``null``-typed column → text (all NULL).

:func:`stage_columns` gives the staging table's column types for those wire types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["COPY_CHUNK_ROWS", "copy_into", "copy_ready", "interval_parts", "stage_columns"]

#: Rows per encoded chunk: the server inserts one chunk while the next is encoded and sent.
COPY_CHUNK_ROWS = 32_768


def copy_ready(table: pa.Table) -> pa.Table:
    """``table`` with every column in an Arrow type pgpq encodes (see the module docstring)."""
    columns, changed = [], False
    for col in table.columns:
        new = _ready(col)
        changed = changed or new is not col
        columns.append(new)
    return pa.table(columns, names=table.column_names) if changed else table


def _ready(col: pa.ChunkedArray) -> pa.ChunkedArray:
    t = col.type
    if isinstance(t, pa.BaseExtensionType):
        return pa.chunked_array([c.storage for c in col.chunks], type=t.storage_type)
    if t == pa.month_day_nano_interval():
        return pa.chunked_array([_interval_bytes(c) for c in col.chunks], type=pa.binary(16))
    if pa.types.is_null(t):
        return pa.chunked_array([pa.nulls(len(col), pa.string())])
    micro = _micro(t)
    if micro is not None:
        return pc.cast(col, micro, safe=False)
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and _micro(t.value_type) is not None:
        value = _micro(t.value_type)
        return pc.cast(col, pa.list_(value) if pa.types.is_list(t) else pa.large_list(value), safe=False)
    return col


def _micro(t: pa.DataType) -> pa.DataType | None:
    """The microsecond type for a nanosecond timestamp, time or duration, else None."""
    if pa.types.is_timestamp(t) and t.unit == "ns":
        return pa.timestamp("us", tz=t.tz)
    if pa.types.is_time64(t) and t.unit == "ns":
        return pa.time64("us")
    if pa.types.is_duration(t) and t.unit == "ns":
        return pa.duration("us")
    return None


_MDN = np.dtype([("months", "<i4"), ("days", "<i4"), ("nanos", "<i8")])
_INTERVAL = np.dtype([("micros", ">i8"), ("days", ">i4"), ("months", ">i4")])


def interval_parts(arr: pa.Array) -> np.ndarray:
    """The months, days and nanoseconds of a ``month_day_nano_interval`` array, as a numpy
    structured view of its buffer (no copy; null slots hold whatever the buffer holds)."""
    n = len(arr)
    return np.frombuffer(arr.buffers()[1], _MDN, count=n, offset=arr.offset * _MDN.itemsize) if n else np.zeros(0, _MDN)


def _interval_bytes(arr: pa.Array) -> pa.Array:
    """``month_day_nano_interval`` values as PostgreSQL's binary ``interval`` (numpy, no per-row Python)."""
    n = len(arr)
    values = interval_parts(arr)
    out = np.empty(n, _INTERVAL)
    nanos = values["nanos"]
    out["micros"] = np.where(nanos < 0, -((-nanos) // 1000), nanos // 1000)  # truncated toward zero
    out["days"] = values["days"]
    out["months"] = values["months"]
    validity = arr.buffers()[0] if arr.null_count else None
    if validity is not None and arr.offset:
        validity = pc.is_valid(arr).buffers()[1]
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [validity, pa.py_buffer(out.tobytes())], arr.null_count)


def stage_columns(ready: pa.Schema, original: pa.Schema) -> list[tuple[str, str]]:
    """(name, PostgreSQL type) of a staging table for rows of schema ``original`` sent as
    ``ready`` (:func:`copy_ready`): the type whose receive function reads pgpq's encoding."""
    import pgpq

    encoded = pgpq.ArrowToPostgresBinaryEncoder(ready).schema().columns
    out = []
    for f, column in zip(original, encoded):
        t = f.type
        if isinstance(t, pa.BaseExtensionType) and t.extension_name == "arrow.uuid":
            ddl = "uuid"
        elif t == pa.month_day_nano_interval():
            ddl = "interval"
        elif pa.types.is_timestamp(t) and t.tz:
            ddl = "timestamptz"
        else:
            ddl = column.data_type.ddl() or "text"
        out.append((f.name, ddl))
    return out


def copy_into(cursor: Any, target: str, columns: Sequence[str], table: pa.Table, *, chunk_rows: int = COPY_CHUNK_ROWS) -> None:
    """``COPY target (columns) FROM STDIN (FORMAT binary)`` of ``table`` (already
    :func:`copy_ready`), in chunks of ``chunk_rows``. ``target`` and ``columns`` are quoted SQL."""
    import pgpq

    encoder = pgpq.ArrowToPostgresBinaryEncoder(table.schema)
    with cursor.copy(f"COPY {target} ({', '.join(columns)}) FROM STDIN (FORMAT binary)") as copy:
        copy.write(encoder.write_header())
        for batch in table.to_batches(max_chunksize=chunk_rows):
            if batch.num_rows:
                copy.write(encoder.write_batch(batch))
        copy.write(encoder.finish())

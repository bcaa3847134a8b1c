"""SQLite destination types: DDL from Arrow, and the Arrow rewrites SQLite stores.

Type mapping (the table in ``docs/types.md``, section *SQLite destination*): decimals are
stored as exact ``TEXT`` in a column declared ``DECIMAL_TEXT(p,s)`` — the name holds the
precision and scale for readers, and contains ``TEXT`` so SQLite gives the column TEXT
affinity (`Determination Of Column Affinity <https://sqlite.org/datatype3.html>`_, rule 2);
a column declared ``DECIMAL(p,s)`` would have NUMERIC affinity and turn ``'1.10'`` into
the REAL ``1.1`` (datasets README, trap 6). Timestamps are ISO-8601 ``TEXT``
(``YYYY-MM-DD HH:MM:SS.ffffff``; zoned values as UTC wall time, as in MySQL), booleans
``0``/``1``, lists/structs/maps JSON ``TEXT``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from replicant.destinations._mysql_types import (
    decimal_text,
    interval_text,
    is_binary,
    is_nested,
    is_string,
    json_text,
    plain,
    stored_type,
    time_text,
)
from replicant.destinations._sql_base import Encoded, TypeMapper
from replicant.destinations._values import date_text, patch_timestamps
from replicant.errors import FatalError
from replicant.model import DIALECT_KEY, SQL_TYPE_KEY

__all__ = ["DIALECT", "SQLiteTypes", "affinity", "ddl_type", "declared_type"]

DIALECT = "sqlite"


class SQLiteTypes(TypeMapper):
    """The :class:`TypeMapper` of SQLite: :func:`ddl_type` and :func:`encode`."""

    dialect = DIALECT

    def ddl_type(self, field: pa.Field, schema: pa.Schema, *, key: bool = False) -> str:
        return ddl_type(field, schema)

    def encode(self, rows: pa.Table, declared: Mapping[str, str]) -> Encoded:
        return Encoded(encode(rows), [None] * rows.num_columns)

    def refused(self, rows: pa.Table) -> dict[int, str]:
        """Rows with a ``NaN`` float: SQLite stores NaN as NULL (``sqlite3_bind_double``),
        which would lose the value silently. ``±inf`` it keeps."""
        out: dict[int, str] = {}
        for name, col in zip(rows.column_names, rows.columns):
            if pa.types.is_floating(col.type) and col.null_count < len(col):
                mask = pc.fill_null(pc.is_nan(col), False).to_numpy(zero_copy_only=False)
                for i in np.nonzero(mask)[0].tolist():
                    out.setdefault(i, f"column {name!r}: NaN cannot be stored in SQLite (it would become NULL)")
        return out


def declared_type(f: pa.Field, schema: pa.Schema) -> str | None:
    """The field's ``replicant.sql_type`` when the schema came from an SQLite source."""
    if (schema.metadata or {}).get(DIALECT_KEY, b"").decode() != DIALECT:
        return None
    sql = (f.metadata or {}).get(SQL_TYPE_KEY)
    return sql.decode().strip() if sql else None


def ddl_type(f: pa.Field, schema: pa.Schema) -> str:
    """The declared type of a new column (an SQLite-declared ``sql_type`` is kept verbatim).

    Raises:
        FatalError: an Arrow type with no SQLite representation.
    """
    declared = declared_type(f, schema)
    if declared:
        return declared
    t = stored_type(f.type)
    sql = (f.metadata or {}).get(SQL_TYPE_KEY, b"").decode().strip().lower()
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        return "INTEGER"
    if pa.types.is_floating(t):
        return "REAL"
    if pa.types.is_decimal(t):
        return f"DECIMAL_TEXT({t.precision},{t.scale})" if t.scale >= 0 else "DECIMAL_TEXT"
    if is_string(t) and sql in ("numeric", "decimal"):
        return "DECIMAL_TEXT"  # an unconstrained numeric, as exact text
    if is_string(t) or pa.types.is_null(t) or pa.types.is_duration(t) or pa.types.is_interval(t):
        return "TEXT"
    if is_binary(t):
        return "BLOB"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_time(t):
        return "TIME"
    if pa.types.is_timestamp(t):
        return "DATETIME"
    if is_nested(t):
        return "TEXT"  # JSON text; a declared "JSON" would have NUMERIC affinity
    raise FatalError(f"column {f.name!r}: Arrow type {t} has no SQLite equivalent; exclude the column or cast it")


def encode(table: pa.Table) -> pa.Table:
    """``table`` with every column as int64, float64, string or binary (what SQLite stores).

    Raises:
        pa.ArrowInvalid: a ``uint64`` above 2**63-1 (SQLite integers are signed 64-bit).
    """
    return pa.table([_encode_column(c) for c in table.columns], names=table.column_names)


def _encode_column(col: pa.ChunkedArray) -> pa.ChunkedArray:
    col = plain(col)
    t = col.type
    if pa.types.is_boolean(t) or pa.types.is_integer(t):
        return col.cast(pa.int64())  # safe cast: a uint64 beyond int64 raises
    if pa.types.is_floating(t):
        return col.cast(pa.float64())
    if pa.types.is_decimal(t):
        return decimal_text(col)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return col
    if pa.types.is_string_view(t) or pa.types.is_null(t):
        return col.cast(pa.string())
    if pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t):
        return col.cast(pa.binary())
    if pa.types.is_timestamp(t):
        # UTC wall time for zoned values (they are UTC instants; a naive cast is also 25x
        # faster than a zoned one), microseconds at most: the text SQLite's date functions
        # and replicant's SQLite source read back.
        # Years outside 0001–9999 and ±infinity: the lossless text of _values (+10000-…,
        # -0043-… astronomical, infinity), never Arrow's "<value out of range: …>".
        unit = "us" if t.unit == "ns" else t.unit
        naive = pc.cast(col, pa.timestamp(unit), safe=False)
        return patch_timestamps(naive, naive.cast(pa.string()), sep=" ")
    if pa.types.is_time(t) and t.unit == "ns":
        return pc.cast(col, pa.time64("us"), safe=False).cast(pa.string())
    if pa.types.is_date(t):
        return date_text(col)
    if pa.types.is_time(t):
        return col.cast(pa.string())
    if pa.types.is_duration(t):
        return time_text(col)
    if pa.types.is_interval(t):
        return interval_text(col)
    if is_nested(t):
        return json_text(col)
    raise FatalError(f"Arrow type {t} has no SQLite representation")


def affinity(declared: str) -> str:
    """The column affinity SQLite gives a declared type (`Determination Of Column Affinity
    <https://sqlite.org/datatype3.html>`_): the first of these rules that matches."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t.strip():
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"

"""SQL types → Arrow types, per source dialect (the table in ``docs/types.md``).

Every mapping is exact: a value read into Arrow can be written back to the same SQL type
unchanged. Where the driver does not deliver a type exactly, the column is read through a
SQL expression (:attr:`Column.select`, e.g. ``uuid`` as ``col::text``) and/or converted
in Arrow afterwards (:func:`conform`, e.g. PostgreSQL ``numeric`` text → ``decimal128``).

Each Arrow field carries :data:`~replicant.model.SQL_TYPE_KEY` metadata: the declared type
as the dialect writes it in DDL (``numeric(40,20)``, ``character varying(20)``,
``integer[]``, ``mood`` for an enum; MySQL ``COLUMN_TYPE`` such as ``bigint(20) unsigned``;
SQLite's declared type verbatim).

Key and cursor values travel in positions as JSON (:func:`encode_value`,
:func:`decode_value`): integers, floats, booleans and strings as themselves; decimals,
dates, times and timestamps as their exact ISO/decimal text; bytes as hex.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from replicant.model import SQL_TYPE_KEY

__all__ = [
    "Column",
    "conform",
    "decode_value",
    "encode_column",
    "encode_value",
    "is_keyable",
    "is_numeric",
    "is_temporal",
    "mysql_column",
    "pg_column",
    "sqlite_column",
]


@dataclass(frozen=True)
class Column:
    """One column as the catalog describes it and as it is read.

    Attributes:
        name: the column name, unquoted.
        sql_type: the declared type as DDL (goes into the field's ``SQL_TYPE_KEY``).
        arrow: the Arrow type of the column in change batches.
        nullable: False for ``NOT NULL`` columns (and SQLite primary key columns).
        select: SQL for the select list; ``{}`` stands for the qualified, quoted column.
        charset: MySQL character set of a string column (for literals in key comparisons).
        collation: MySQL collation of a string column.
    """

    name: str
    sql_type: str
    arrow: pa.DataType
    nullable: bool = True
    select: str = "{}"
    charset: str | None = None
    collation: str | None = None

    def field(self) -> pa.Field:
        return pa.field(self.name, self.arrow, self.nullable, metadata={SQL_TYPE_KEY: self.sql_type.encode()})


def _decimal(precision: int, scale: int) -> pa.DataType | None:
    """decimal128 up to 38 digits, decimal256 up to 76; None when Arrow has no exact decimal."""
    if scale < 0 or scale > precision or precision < 1:
        return None
    if precision <= 38:
        return pa.decimal128(precision, scale)
    if precision <= 76:
        return pa.decimal256(precision, scale)
    return None


# ---------------------------------------------------------------------------- PostgreSQL

#: Base types ADBC's PostgreSQL driver delivers exactly (after :func:`conform`), by typname.
_PG_NATIVE: dict[str, pa.DataType] = {
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "bool": pa.bool_(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),  # char(n) keeps its padding
    "bytea": pa.binary(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "interval": pa.month_day_nano_interval(),
    "json": pa.string(),  # arrow.json extension → its string storage
    "jsonb": pa.string(),
}


def _pg_numeric(typmod: int) -> pa.DataType | None:
    """The decimal type of ``numeric(p,s)``; None (read as text) when unconstrained or too wide."""
    if typmod < 0:
        return None
    precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
    if scale > 0x7FFF:  # PG 15 allows a negative scale, stored as two's complement
        scale -= 0x10000
    return _decimal(precision, scale)


def _pg_scalar(typname: str, typtype: str, typmod: int) -> tuple[pa.DataType, bool]:
    """(Arrow type, needs ``::text``) of a non-array PostgreSQL base type."""
    if typname == "numeric":  # exact digits as text (and NaN, Infinity) when not a decimal
        dec = _pg_numeric(typmod)
        return (dec, False) if dec else (pa.string(), True)
    if typname in _PG_NATIVE:
        return _PG_NATIVE[typname], False
    if typtype == "e":  # enum: ADBC returns the label as text
        return pa.string(), False
    # uuid (36-char text), timetz, money, inet, xml, bit, tsvector, ranges, composites…
    return pa.string(), True


def pg_column(
    name: str,
    sql_type: str,
    typname: str,
    typtype: str,
    typmod: int,
    elem_typname: str | None = None,
    elem_typtype: str | None = None,
    nullable: bool = True,
) -> Column:
    """Maps one PostgreSQL column (its base type, domains already resolved).

    Args:
        sql_type: ``format_type(type, typmod)``.
        typname, typtype: ``pg_type.typname``/``typtype`` of the column's type.
        typmod: the attribute's typmod (numeric precision and scale live here; for arrays it
            applies to the elements).
        elem_typname, elem_typtype: for arrays, the element type's.
    """
    if elem_typname:
        if typname == "_money" or elem_typname == "money":
            return Column(name, sql_type, pa.list_(pa.string()), nullable, "{}::numeric[]::text[]")
        elem, as_text = _pg_scalar(elem_typname, elem_typtype or "b", typmod)
        return Column(name, sql_type, pa.list_(elem), nullable, "{}::text[]" if as_text else "{}")
    if typname == "money":  # locale-formatted as text; its numeric value is exact
        return Column(name, sql_type, pa.string(), nullable, "{}::numeric::text")
    arrow, as_text = _pg_scalar(typname, typtype, typmod)
    if pa.types.is_decimal(arrow):
        # as text, cast to the decimal in Arrow: ADBC decodes binary numeric into text itself,
        # digit by digit (measured per million numeric(12,2) values: 0.87 client CPU-s that
        # way, 0.37 for the server's text; the server's text output costs what its binary
        # output does, 0.54 s)
        return Column(name, sql_type, arrow, nullable, "{}::text")
    return Column(name, sql_type, arrow, nullable, "{}::text" if as_text else "{}")


# ---------------------------------------------------------------------------- MySQL / MariaDB

_MY_INTS = {
    "tinyint": (pa.int8(), pa.uint8()),
    "smallint": (pa.int16(), pa.uint16()),
    "mediumint": (pa.int32(), pa.uint32()),
    "int": (pa.int32(), pa.uint32()),
    "integer": (pa.int32(), pa.uint32()),
    "bigint": (pa.int64(), pa.uint64()),
}
_MY_STRINGS = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set", "json"}
_MY_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
_MY_SPATIAL = {"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon",
               "geometrycollection", "geomcollection"}


def mysql_column(
    name: str,
    data_type: str,
    column_type: str,
    precision: int | None,
    scale: int | None,
    nullable: bool = True,
    charset: str | None = None,
    collation: str | None = None,
) -> Column:
    """Maps one MySQL/MariaDB column from ``information_schema.COLUMNS``.

    Temporal columns are read as integers computed by the server (days, microseconds) so
    that zero dates (``0000-00-00``) arrive as NULL instead of failing the read, and
    ``TIMESTAMP`` values are exact UTC instants whatever the session time zone.
    """
    dt = data_type.lower()
    ct = column_type.lower()
    def col(arrow: pa.DataType, select: str = "{}") -> Column:
        return Column(name, column_type, arrow, nullable, select, charset, collation)

    if dt in _MY_INTS:
        return col(_MY_INTS[dt][1 if "unsigned" in ct else 0])
    if dt in ("decimal", "numeric"):
        arrow = _decimal(precision or 10, scale or 0) or pa.string()
        return col(arrow, "CAST({} AS CHAR)")  # exact digits; the driver's decimal is 28 digits
    if dt == "float":
        return col(pa.float32())
    if dt in ("double", "real"):
        return col(pa.float64())
    if dt == "bit":
        return col(pa.bool_() if ct in ("bit(1)", "bit") else pa.uint64(), "CAST({} AS UNSIGNED)")
    if dt == "year":
        return col(pa.int16())
    if dt == "date":
        return col(pa.date32(), "TO_DAYS({}) - 719528")  # days since 1970-01-01
    if dt == "datetime":
        return col(pa.timestamp("us"), "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {})")
    if dt == "timestamp":
        return col(pa.timestamp("us", tz="UTC"), "NULLIF(CAST(UNIX_TIMESTAMP({}) * 1000000 AS SIGNED), 0)")
    if dt == "time":
        return col(pa.time64("us"), "CAST(TIME_TO_SEC({}) * 1000000 AS SIGNED)")
    if dt in _MY_STRINGS:
        return col(pa.string())
    if dt in _MY_BINARY:
        return col(pa.binary())
    if dt in _MY_SPATIAL:
        return col(pa.binary(), "ST_AsBinary({})")  # WKB
    return col(pa.string(), "CAST({} AS CHAR)")


# ---------------------------------------------------------------------------- SQLite

_SQLITE_DECIMAL = re.compile(r"^\s*(?:NUMERIC|DECIMAL)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)\s*$", re.IGNORECASE)


def sqlite_column(name: str, declared: str, nullable: bool = True) -> Column:
    """Maps one SQLite column from its declared type.

    SQLite stores values dynamically; the declared type decides the Arrow type, following
    the affinity rules of https://www.sqlite.org/datatype3.html#determination_of_column_affinity
    with these refinements: ``DATE``, ``DATETIME``/``TIMESTAMP``, ``TIME`` (ISO-8601 text),
    ``BOOLEAN`` (0/1), and ``NUMERIC(p,s)``/``DECIMAL(p,s)``, whose values SQLite keeps as
    REAL and which are rounded to the declared scale into an exact decimal. A column without
    a declared type is read as text.
    """
    up = declared.upper().strip()
    def col(arrow: pa.DataType, select: str = "{}") -> Column:
        return Column(name, declared, arrow, nullable, select)

    if not up:
        return col(pa.string(), "CAST({} AS TEXT)")
    if up == "DATE":
        return col(pa.date32())
    if "DATETIME" in up or "TIMESTAMP" in up:
        return col(pa.timestamp("us"))
    if up == "TIME":
        return col(pa.time64("us"))
    if up in ("BOOLEAN", "BOOL"):
        return col(pa.bool_())
    m = _SQLITE_DECIMAL.match(up)
    if m:
        arrow = _decimal(int(m[1]), int(m[2] or 0))
        return col(arrow or pa.float64())
    if "INT" in up:
        return col(pa.int64())
    if "CHAR" in up or "CLOB" in up or "TEXT" in up:
        return col(pa.string())
    if "BLOB" in up:
        return col(pa.binary())
    return col(pa.float64())  # REAL/FLOAT/DOUBLE, and NUMERIC affinity (integers or reals)


# ---------------------------------------------------------------------------- Arrow conversion


def _storage(arr: pa.Array) -> pa.Array:
    """The plain Arrow array under extension types (arrow.json, opaque numeric, uuid), also
    inside lists."""
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if pa.types.is_list(arr.type) and isinstance(arr.type.value_type, pa.BaseExtensionType):
        arr = pa.ListArray.from_arrays(arr.offsets, _storage(arr.values), mask=arr.is_null())
    return arr


_DAY_US = 86_400_000_000


def _cast(arr: pa.Array, target: pa.DataType) -> pa.Array:
    if pa.types.is_time(target) and pa.types.is_integer(arr.type):
        lo, hi = pc.min_max(arr).values()
        if lo.is_valid and (lo.as_py() < 0 or hi.as_py() >= _DAY_US):
            bad = lo.as_py() if lo.as_py() < 0 else hi.as_py()
            raise pa.ArrowInvalid(f"{bad / 1e6:g} s is not a time of day (a TIME beyond 00:00..24:00)")
    if pa.types.is_date32(target) and pa.types.is_integer(arr.type):
        return arr.cast(pa.int32()).cast(target)  # days since the epoch
    if pa.types.is_boolean(target) and pa.types.is_string(arr.type):
        return arr.cast(pa.int64()).cast(target)
    return arr.cast(target)


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Casts a driver's batch to ``schema`` (same column order), exactly.

    Raises:
        ValueError: naming the column when a value does not fit its type (a ``NaN`` in a
            ``numeric(p,s)``, a decimal with more digits than declared…).
    """
    arrays = []
    for arr, field in zip(batch.columns, schema):
        arr = _storage(arr)
        if arr.type != field.type:
            try:
                arr = _cast(arr, field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                raise ValueError(
                    f"column {field.name!r}: cannot read {arr.type} as {field.type}: {e}; "
                    "exclude the column or fix the value"
                ) from None
        arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# ---------------------------------------------------------------------------- key values


def is_temporal(t: pa.DataType) -> bool:
    return pa.types.is_date(t) or pa.types.is_timestamp(t) or pa.types.is_time(t)


def is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def is_keyable(t: pa.DataType, *, cursor: bool = False) -> bool:
    """Whether a column of type ``t`` can order a keyset (a key; with ``cursor``, a cursor)."""
    if is_numeric(t) or is_temporal(t) or pa.types.is_string(t):
        return True
    return not cursor and (pa.types.is_binary(t) or pa.types.is_boolean(t))


def encode_value(value: Any) -> Any:
    """A key or cursor value as JSON: exact, and :func:`decode_value` reverses it."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    raise TypeError(f"cannot keep a {type(value).__name__} in a position")


def decode_value(value: Any, t: pa.DataType) -> Any:
    """The Python value of an :func:`encode_value` output, for a column of Arrow type ``t``."""
    if value is None:
        return None
    if pa.types.is_decimal(t):
        return Decimal(value)
    if pa.types.is_timestamp(t):
        v = datetime.fromisoformat(value)
        return v.astimezone(UTC) if t.tz else v
    if pa.types.is_date(t):
        return date.fromisoformat(value)
    if pa.types.is_time(t):
        return time.fromisoformat(value)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return bytes.fromhex(value)
    if pa.types.is_floating(t):
        return float(value)
    if pa.types.is_integer(t):
        return int(value)
    return value


def encode_column(arr: pa.Array | pa.ChunkedArray) -> list[Any]:
    """The values of ``arr`` in a form :func:`decode_value` reverses (vectorised by Arrow:
    ISO text for dates and times, digits for decimals)."""
    t = arr.type
    if is_temporal(t) or pa.types.is_decimal(t):
        return arr.cast(pa.string()).to_pylist()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return [None if v is None else v.hex() for v in arr.to_pylist()]
    return arr.to_pylist()

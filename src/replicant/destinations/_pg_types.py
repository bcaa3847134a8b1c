"""PostgreSQL destination types: DDL from Arrow, and how each column travels.

Two questions are answered here, both without a round trip to the server:

1. :func:`ddl_type` — the PostgreSQL type a new column gets. A field whose
   ``replicant.sql_type`` came from a PostgreSQL source is created with that declared type
   when the caller confirmed it exists here (exact same-dialect round trip); otherwise the
   Arrow type is mapped (the table in ``docs/types.md``, section *PostgreSQL destination*).

2. :func:`wire_type` — how a column reaches an existing target column. Rows are written
   with a binary ``COPY`` (pgpq, :mod:`~replicant.destinations._pg_copy`), which encodes each Arrow type in one
   PostgreSQL binary format and lets the server decode it with the *target* column's
   receive function. That only works when the two agree (``int32`` into ``integer``, a
   string into ``text``/``varchar``/``char(n)``/an enum/``json``, ``fixed_size_binary(16)``
   into ``uuid``…). :func:`wire_type` returns the Arrow type to cast to (a lossless Arrow
   cast, done in C++) when one exists, or :data:`STAGE` when the column must go through a
   temporary staging table and an SQL cast (``text`` → ``uuid``/``jsonb``/``numeric``/
   ``interval``/``inet``…).

:func:`normalize` first rewrites the Arrow types the encoder cannot write at all (dictionaries,
``date64``, ``uint64``, ``decimal256``, ``binary_view``, structs, maps, nested lists, lists
of intervals) into ones it can.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from replicant.destinations._mysql_types import json_text
from replicant.destinations._pg_copy import interval_parts
from replicant.destinations._sql_base import Encoded, TypeMapper
from replicant.errors import FatalError
from replicant.model import DIALECT_KEY, SQL_TYPE_KEY

__all__ = [
    "DIALECT",
    "JSONB_TEXT",
    "STAGE",
    "UUID_TEXT",
    "PgColumn",
    "PgTypes",
    "cast_column",
    "ddl_type",
    "declared_type",
    "has_equality",
    "needs_cast",
    "normalize",
    "split_infinity",
    "wire_type",
]

DIALECT = "postgresql"
STAGE = object()  #: sentinel of :func:`wire_type`: stage the column and cast it in SQL


class _Encoding:
    """A :func:`wire_type` result done by a vectorised function instead of an Arrow cast."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<wire encoding {self.name}>"


#: canonical uuid text (``8-4-4-4-12`` hex) → ``arrow.uuid`` (the 16 bytes ``uuid_recv`` reads)
UUID_TEXT = _Encoding("uuid from text")
#: JSON text → ``\x01`` + text, the binary format ``jsonb_recv`` reads (version 1, then text)
JSONB_TEXT = _Encoding("jsonb from text")

_STRING_BASES = frozenset({"text", "varchar", "bpchar", "name", "json", "xml", "citext"})
_INT_TYPES = {"int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64()}
_FLOAT_TYPES = {"float4": pa.float32(), "float8": pa.float64()}
#: Arrow types the COPY encoder (pgpq, :mod:`~replicant.destinations._pg_copy`) writes with
#: exactly these element OIDs inside an array (``array_recv`` refuses an element type other
#: than the column's). ``timestamptz[]`` and ``interval[]`` are missing: pgpq writes
#: ``timestamp`` elements and has no month-day-nano encoder, so those arrays are staged
#: (``timestamp[]`` and text, cast by the server).
_ELEMENT_TYPES = {
    "bool": pa.bool_(),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "text": pa.string(),
    "bytea": pa.binary(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"),
}


@dataclass(frozen=True)
class PgColumn:
    """A column of an existing PostgreSQL table, as the catalog describes it.

    Attributes:
        name: the column name.
        type_sql: ``format_type()`` of the column (``numeric(40,20)``, ``"Mood"``, ``integer[]``).
        base: ``typname`` of the column type, or of its base type for a domain (``int4``,
            ``varchar``, ``_int4`` for ``integer[]``, the enum's name).
        category: ``typcategory`` of that type (``S`` string, ``E`` enum, ``A`` array…).
        element: for an array, ``typname`` of the element type; else ``""``.
        element_category: ``typcategory`` of the element type; else ``""``.
        nullable: the column accepts NULL.
        has_default: the column has a default expression.
    """

    name: str
    type_sql: str
    base: str
    category: str
    element: str = ""
    element_category: str = ""
    nullable: bool = True
    has_default: bool = False


# --------------------------------------------------------------------------- mapper


class PgTypes(TypeMapper):
    """The :class:`TypeMapper` of PostgreSQL.

    A PostgreSQL source's declared type (:func:`declared_type`) is kept verbatim when the
    server knows it (``known``: declared type text → whether the server parses it as one
    existing type, filled by the destination with ``to_regtype`` before any DDL: only such
    text is ever spliced into DDL); otherwise :func:`ddl_type` maps from Arrow. The
    encoder is :func:`normalize`; the per-column wire casts for the target column
    (:func:`wire_type`, :func:`cast_column`) depend on the catalog and live with the loader.
    """

    dialect = DIALECT

    def __init__(self) -> None:
        self.known: dict[str, bool] = {}

    def ddl_type(self, field: pa.Field, schema: pa.Schema, *, key: bool = False) -> str:
        declared = declared_type(field, schema)
        if declared and self.known.get(declared, False):
            return declared
        try:
            return ddl_type(field)
        except TypeError as e:
            raise FatalError(f"column {field.name!r}: {e}") from None

    def encode(self, rows: pa.Table, declared: Mapping[str, str]) -> Encoded:
        return Encoded(normalize(rows), [None] * rows.num_columns)


# --------------------------------------------------------------------------- DDL


def declared_type(field: pa.Field, schema: pa.Schema) -> str | None:
    """The field's declared PostgreSQL type when the schema comes from a PostgreSQL source."""
    if not schema.metadata or schema.metadata.get(DIALECT_KEY, b"").decode() != DIALECT:
        return None
    if not field.metadata or SQL_TYPE_KEY not in field.metadata:
        return None
    text = field.metadata[SQL_TYPE_KEY].decode().strip()
    return text or None


def _hint(field: pa.Field) -> str:
    """The declared type's bare name in lower case (``numeric(10,2)`` → ``numeric``), any dialect."""
    if not field.metadata or SQL_TYPE_KEY not in field.metadata:
        return ""
    text = field.metadata[SQL_TYPE_KEY].decode().strip().lower()
    return re.split(r"[\s(\[]", text, maxsplit=1)[0].strip('"')


def ddl_type(field: pa.Field) -> str:
    """The PostgreSQL type of a new column for an Arrow field (no declared type used).

    Strings whose declared type (from any dialect) is ``numeric``/``decimal`` become
    ``numeric`` (exact), ``json``/``jsonb`` become ``jsonb``, ``uuid`` becomes ``uuid``.
    """
    return _ddl(field.type, _hint(field))


def _ddl(t: pa.DataType, hint: str = "") -> str:
    if isinstance(t, pa.BaseExtensionType):
        if t.extension_name == "arrow.uuid":
            return "uuid"
        if t.extension_name == "arrow.json":
            return "jsonb"
        return _ddl(t.storage_type, hint)
    if pa.types.is_dictionary(t):
        return _ddl(t.value_type, hint)
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        if t in (pa.int8(), pa.int16(), pa.uint8()):
            return "smallint"
        if t in (pa.int32(), pa.uint16()):
            return "integer"
        if t == pa.uint64():
            return "numeric(20,0)"
        return "bigint"
    if pa.types.is_floating(t):
        return "double precision" if t == pa.float64() else "real"
    if pa.types.is_decimal(t):
        return f"numeric({t.precision},{t.scale})"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        if hint in ("numeric", "decimal"):
            return "numeric"
        if hint in ("json", "jsonb"):
            return "jsonb"
        if hint == "uuid":
            return "uuid"
        return "text"
    if pa.types.is_fixed_size_binary(t) and t.byte_width == 16 and hint == "uuid":
        return "uuid"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t):
        return "bytea"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp with time zone" if t.tz else "timestamp without time zone"
    if pa.types.is_time(t):
        return "time without time zone"
    if pa.types.is_duration(t) or t == pa.month_day_nano_interval():
        return "interval"
    if _is_list(t):
        if _is_list(t.value_type) or _is_nested(t.value_type):
            return "jsonb"
        return _ddl(t.value_type) + "[]"
    if _is_nested(t):
        return "jsonb"
    if pa.types.is_null(t):
        return "text"
    raise TypeError(f"no PostgreSQL type for Arrow type {t}")


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_list_view(t)


def _is_nested(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_union(t)


# --------------------------------------------------------------------------- wire


def normalize(table: pa.Table) -> pa.Table:
    """Rewrites columns the COPY encoder cannot write into ones it can (Arrow casts, numpy).

    Dictionaries are decoded, ``date64`` → ``date32``, ``uint64`` → ``decimal128(20,0)``
    (values above 2**63 do not fit ``bigint``), ``decimal256`` → ``decimal128`` up to 38
    digits, else its text (staged, cast by the server), ``binary_view`` → ``large_binary``,
    extension types other than ``arrow.uuid`` → their storage, structs, maps, unions and lists
    of lists → JSON text (rendered by DuckDB's ``to_json``), lists of intervals → lists of
    interval text (staged).
    """
    changed = False
    columns = []
    for i, field in enumerate(table.schema):
        col = table.column(i)
        new = _normalize_column(col, field.type)
        changed = changed or new is not col
        columns.append(new)
    if not changed:
        return table
    return pa.table(columns, names=table.column_names)


def _normalize_column(col: pa.ChunkedArray, t: pa.DataType) -> pa.ChunkedArray:
    if isinstance(t, pa.BaseExtensionType):
        if t.extension_name == "arrow.uuid":
            return col
        storage = pa.chunked_array([c.storage for c in col.chunks], type=t.storage_type)
        return _normalize_column(storage, t.storage_type)
    if pa.types.is_dictionary(t):
        return _normalize_column(col.cast(t.value_type), t.value_type)
    if pa.types.is_date64(t):
        return col.cast(pa.date32())
    if t == pa.uint64():
        return col.cast(pa.decimal128(20, 0))
    if pa.types.is_decimal256(t):  # pgpq encodes decimal32/64/128
        return col.cast(pa.decimal128(t.precision, t.scale)) if t.precision <= 38 else col.cast(pa.string())
    if pa.types.is_binary_view(t):
        return col.cast(pa.large_binary())
    if _is_list(t) and t.value_type == pa.month_day_nano_interval():
        return _interval_lists_as_text(col)
    if _is_nested(t) or (_is_list(t) and (_is_list(t.value_type) or _is_nested(t.value_type))):
        return json_text(col)
    if _is_list(t) and not pa.types.is_fixed_size_list(t):
        value = _normalize_column(pa.chunked_array([c.flatten() for c in col.chunks], type=t.value_type), t.value_type)
        if value.type != t.value_type:
            return col.cast(pa.list_(value.type))
    return col


def wire_type(t: pa.DataType, column: PgColumn) -> pa.DataType | object:
    """The Arrow type a (normalised) column of type ``t`` is cast to for a binary COPY
    straight into ``column``, or :data:`STAGE` when only an SQL cast can get it there.

    A returned type equal to ``t`` means "send as it is". Casts returned here are value
    preserving or raise (Arrow's safe cast); a caller that sees a cast fail stages the
    column instead, and the server decides.
    """
    if isinstance(t, pa.BaseExtensionType):
        return t if column.base == "uuid" and t.extension_name == "arrow.uuid" else STAGE
    base, cat = column.base, column.category
    if base == "bool":
        return t if pa.types.is_boolean(t) else STAGE
    if base in _INT_TYPES:
        return _INT_TYPES[base] if pa.types.is_integer(t) else STAGE
    if base in _FLOAT_TYPES:
        if pa.types.is_floating(t) or t in (pa.int8(), pa.int16(), pa.uint8(), pa.uint16()):
            return _FLOAT_TYPES[base]
        if base == "float8" and t in (pa.int32(), pa.uint32()):
            return pa.float64()
        return STAGE
    if base == "numeric":
        if pa.types.is_decimal(t):
            return t
        if pa.types.is_integer(t):
            return pa.decimal128(20, 0)
        return STAGE
    if base in _STRING_BASES or cat == "E":
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return t
        if pa.types.is_string_view(t):
            return pa.large_string()
        return STAGE
    if base == "bytea":
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            return t
        return STAGE
    if base == "uuid":
        # as the arrow.uuid extension so that a staging table gets a uuid column too
        if pa.types.is_fixed_size_binary(t) and t.byte_width == 16:
            return pa.uuid()
        return UUID_TEXT if _is_text(t) else STAGE
    if base == "jsonb":
        return JSONB_TEXT if _is_text(t) else STAGE
    if base == "date":
        return t if pa.types.is_date32(t) else STAGE
    if base in ("timestamp", "timestamptz"):
        return t if pa.types.is_timestamp(t) else STAGE
    if base == "time":
        return t if pa.types.is_time(t) else STAGE
    if base == "interval":
        return t if (t == pa.month_day_nano_interval() or pa.types.is_duration(t)) else STAGE
    if cat == "A" and _is_list(t) and not pa.types.is_fixed_size_list(t):
        element = _ELEMENT_TYPES.get(column.element)
        value = t.value_type
        if element is None:
            if column.element == "numeric" and pa.types.is_decimal(value):
                return t
            return STAGE
        if value == element or (pa.types.is_large_string(value) and element == pa.string()):
            return t
        if _element_castable(value, element):
            return pa.list_(element)
        return STAGE
    return STAGE


def _element_castable(value: pa.DataType, element: pa.DataType) -> bool:
    if pa.types.is_integer(element):
        return pa.types.is_integer(value)
    if pa.types.is_floating(element):
        return pa.types.is_floating(value)
    if pa.types.is_timestamp(element):
        return pa.types.is_timestamp(value)
    if pa.types.is_time(element):
        return pa.types.is_time(value)
    if element == pa.string():
        return pa.types.is_string_view(value)
    if element == pa.binary():
        return pa.types.is_large_binary(value)
    return False


def needs_cast(t: pa.DataType, column: PgColumn) -> bool:
    """Whether a staged column of Arrow type ``t`` needs an explicit ``CAST`` to ``column``'s
    type in ``INSERT … SELECT``.

    Only text into a non-string type does: every other pair has an assignment cast (which,
    unlike an explicit cast to ``varchar(n)``, raises instead of truncating).
    """
    if _is_list(t):
        return _is_text(t.value_type) and column.element_category not in ("", "S")
    return _is_text(t) and column.category != "S"


_EQ_CATEGORIES = frozenset("NSBDTEV")  # numeric, string, bool, datetime, timespan, enum, bit
_EQ_BASES = frozenset({"uuid", "jsonb", "bytea", "inet", "cidr", "macaddr", "macaddr8", "pg_lsn", "tsvector", "oid"})


def has_equality(column: PgColumn) -> bool:
    """Whether ``IS DISTINCT FROM`` works on the column's type as it is (``json``, ``xml``
    and geometric types have no equality operator; they are compared as text)."""
    if column.category == "A":
        return column.element_category in _EQ_CATEGORIES or column.element in _EQ_BASES
    return column.category in _EQ_CATEGORIES or column.base in _EQ_BASES


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def cast_column(col: pa.ChunkedArray, target: pa.DataType | _Encoding) -> pa.ChunkedArray | None:
    """``col`` cast to ``target`` (safe cast) or encoded by it, or ``None`` when a value does
    not fit (the caller then stages the column and lets the server convert it)."""
    if target is UUID_TEXT:
        return _uuid_from_text(col)
    if target is JSONB_TEXT:
        text_type = pa.string() if pa.types.is_string_view(col.type) else col.type
        return pc.binary_join_element_wise(
            pa.scalar("\x01", text_type), col.cast(text_type), pa.scalar("", text_type)
        )
    if col.type == target:
        return col
    if isinstance(target, pa.BaseExtensionType) and col.type == target.storage_type:
        return pa.chunked_array([pa.ExtensionArray.from_storage(target, c) for c in col.chunks], type=target)
    try:
        return pc.cast(col, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


_HEX_COLUMNS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _uuid_from_text(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """Canonical uuid strings → ``arrow.uuid`` (numpy over the string buffer, no per-row Python);
    ``None`` if any value is not ``xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`` hex."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.large_string())
    n = len(arr)
    if n == 0:
        return pa.chunked_array([], type=pa.uuid())
    filled = pc.fill_null(arr, "00000000-0000-0000-0000-000000000000") if arr.null_count else arr
    lengths = pc.min_max(pc.binary_length(filled)).as_py()
    if lengths["min"] != 36 or lengths["max"] != 36:
        return None
    offsets = np.frombuffer(filled.buffers()[1], np.int64 if pa.types.is_large_string(filled.type) else np.int32)
    start = int(offsets[filled.offset])
    chars = np.frombuffer(filled.buffers()[2], np.uint8)[start : start + 36 * n].reshape(n, 36)
    if (chars[:, [8, 13, 18, 23]] != ord("-")).any():
        return None
    nibbles = _HEX_VALUE[chars[:, _HEX_COLUMNS]]
    if (nibbles > 15).any():
        return None
    raw = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    out = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(raw.tobytes())])
    if arr.null_count:
        out = pc.if_else(arr.is_valid(), out, pa.nulls(n, pa.binary(16)))
    return pa.chunked_array([pa.ExtensionArray.from_storage(pa.uuid(), out)])


#: ±infinity of ``timestamp``/``date`` as PostgreSQL sources deliver them (DuckDB's encoding:
#: ± the integer's max). A binary COPY writer shifts them by the 2000 epoch into finite
#: (wrong) values or overflows, so they travel as flags and are restored in SQL.
_INFINITY = {64: 2**63 - 1, 32: 2**31 - 1}


def split_infinity(col: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray] | None:
    """For a timestamp or date32 column holding ±infinity sentinels: the column with them
    nulled, and an ``int8`` flag column (1 = infinity, -1 = -infinity, else null). ``None``
    when there are none (a min/max scan: the common case costs no copy)."""
    t = col.type
    if pa.types.is_timestamp(t):
        storage, inf = pa.int64(), _INFINITY[64]
    elif pa.types.is_date32(t):
        storage, inf = pa.int32(), _INFINITY[32]
    else:
        return None
    if col.null_count == len(col):
        return None
    ints = col.cast(storage)
    bounds = pc.min_max(ints).as_py()
    if bounds["max"] < inf and bounds["min"] > -inf:
        return None
    pos, neg = pc.equal(ints, inf), pc.less_equal(ints, -inf)
    flags = pc.if_else(pos, pa.scalar(1, pa.int8()), pc.if_else(neg, pa.scalar(-1, pa.int8()), pa.scalar(None, pa.int8())))
    return pc.if_else(pc.or_(pos, neg), pa.scalar(None, t), col), flags


def _interval_lists_as_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Lists of ``month_day_nano_interval`` as lists of PostgreSQL interval text
    (``'1 mons -2 days 3.000004000 secs'``): no binary encoder writes ``interval`` array
    elements, so such a column is staged and cast by the server."""
    large = pa.types.is_large_list(col.type)
    if not (large or pa.types.is_list(col.type)):
        col = col.cast(pa.list_(pa.month_day_nano_interval()))
    chunks = []
    for chunk in col.chunks:
        offsets = chunk.offsets
        start = offsets[0].as_py() if len(offsets) else 0
        offsets = pc.subtract(offsets, pa.scalar(start, offsets.type))  # a new array: from_arrays refuses a sliced one with a mask
        values = chunk.values.slice(start, (offsets[-1].as_py() if len(offsets) else 0))
        n = len(values)
        parts = interval_parts(values)
        nanos = parts["nanos"]
        wide = np.empty((n, 2), np.int64)  # decimal128 storage: little-endian low word, sign-extended high word
        wide[:, 0], wide[:, 1] = nanos, nanos >> 63
        seconds = pa.Array.from_buffers(pa.decimal128(38, 9), n, [None, pa.py_buffer(wide.tobytes())]).cast(pa.string())
        text = pc.binary_join_element_wise(
            pa.array(parts["months"]).cast(pa.string()), " mons ", pa.array(parts["days"]).cast(pa.string()), " days ",
            seconds, " secs", "",
        )
        if values.null_count:
            text = pc.if_else(values.is_valid(), text, pa.scalar(None, pa.string()))
        mask = chunk.is_null() if chunk.null_count else None
        make = pa.LargeListArray if large else pa.ListArray
        chunks.append(make.from_arrays(offsets, text, mask=mask))
    return pa.chunked_array(chunks, type=pa.large_list(pa.string()) if large else pa.list_(pa.string()))

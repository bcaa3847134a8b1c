"""Change batches as JSON and text, vectorised: shared by the push and file destinations.

Nothing here loops over rows in Python: Arrow kernels rewrite the columns JSON has no type
for, then one DuckDB query builds every row's JSON text (DuckDB's ``to_json`` and
``json_object``, C++). The caller gets an Arrow string array, one JSON document per row.

Value mapping (Arrow → JSON; CSV uses the same text where noted):

=============================  ==============================================================
Arrow type                     JSON value
=============================  ==============================================================
null (any type)                ``null``
integers                       number, exact (a JavaScript reader loses precision past 2^53)
float, double                  number; NaN and ±infinity as the strings ``"NaN"``,
                               ``"Infinity"``, ``"-Infinity"`` (protobuf's JSON mapping, as the
                               HTTP push; CSV keeps ``nan``/``inf``)
decimal128/256                 **string**, exact, scale kept, never scientific notation
                               (``"12.30"``, ``"0.0000000001"``): a number would be read as a
                               binary float by most JSON parsers
boolean                        ``true``/``false``
string                         string; a column declared ``json``/``jsonb`` by the source
                               (``replicant.sql_type``) is embedded as JSON (a string if it
                               does not parse)
binary, fixed-size binary      string, standard base64 with padding (``"AP8="``)
timestamp with a time zone     string, ISO 8601 in UTC with ``Z``: ``"2026-11-21T01:02:03.456789Z"``
                               (digits after the point follow the unit: none for seconds,
                               3/6/9 for ms/us/ns)
timestamp without time zone    string, ISO 8601 without offset: ``"2026-11-21T01:02:03.456789"``
date                           string ``"2026-11-21"``
dates, timestamps beyond       ``"infinity"``, ``"-infinity"``; years after 9999 as ``"+10000-01-01…"``,
0001–9999                      before year 1 in astronomical numbering, 44 BC ``"-0043-03-15…"``
                               (:mod:`replicant.destinations._values`)
time                           string ``"01:02:03.456789"`` (DuckDB's text)
interval                       string, ISO 8601 duration by PostgreSQL's components (months,
                               days, seconds, each with its sign): ``"P14M3DT4.5S"``
duration                       string, DuckDB's interval text (``"00:00:01.5"``)
list, struct, map              array / object, encoded by DuckDB (inner decimals become numbers,
                               inner NaN is not valid JSON: flatten such columns first)
dictionary, extension types    as their value / storage type
=============================  ==============================================================
"""

from __future__ import annotations

import threading

import duckdb
import numpy as np
import pyarrow as pa

from replicant.destinations._mysql_types import decimal_text, interval_text
from replicant.destinations._values import date_text, patch_timestamps
from replicant.model import META_COLUMNS, OP_DELETE, SQL_TYPE_KEY

__all__ = ["record_json", "row_json", "text_table", "iso_text", "joined_lines"]

_local = threading.local()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A DuckDB connection private to this thread (in-memory, UTC session)."""
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect(":memory:")
        con.execute("SET TimeZone = 'UTC'")
        _local.con = con
    return con


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_ISO = {"s": "%Y-%m-%dT%H:%M:%S", "ms": "%Y-%m-%dT%H:%M:%S.%g", "us": "%Y-%m-%dT%H:%M:%S.%f", "ns": "%Y-%m-%dT%H:%M:%S.%n"}


def iso_text(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """ISO 8601 text of a timestamp column: UTC with ``Z`` when the type has a time zone,
    no offset when it has none; as many fraction digits as the unit has. Nulls stay null.

    Formatted by DuckDB's ``strftime`` (about 5x faster than Arrow's, which looks up the
    time zone per value); the epoch values are handed over as naive timestamps, so a
    zoned column is written as its UTC wall time."""
    t = col.type
    if isinstance(col, pa.Array):
        col = pa.chunked_array([col], t)
    naive = col.cast(pa.int64()).cast(pa.timestamp(t.unit))  # same epoch values, no zone
    expr = f"strftime(v{'::TIMESTAMP' if t.unit in ('s', 'ms') else ''}, '{_ISO[t.unit]}')"
    if t.tz is not None:
        expr = f"{expr} || 'Z'"
    con = _cursor()
    con.register("_replicant_ts", pa.table({"v": naive}))
    try:
        out = con.sql(f"SELECT {expr} AS v FROM _replicant_ts").to_arrow_table()["v"]
    finally:
        con.unregister("_replicant_ts")
    return patch_timestamps(col, out, sep="T", zulu=t.tz is not None)


def _plain(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Arrow-side rewrites before DuckDB: dictionaries decoded, extensions to storage,
    decimals, dates, timestamps and intervals to their lossless text, fixed-size binary to
    binary."""
    t = col.type
    if isinstance(t, pa.BaseExtensionType):
        col = pa.chunked_array([c.storage for c in col.chunks], t.storage_type)
        t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    if pa.types.is_decimal(t):
        return decimal_text(col)
    if pa.types.is_timestamp(t):
        return iso_text(col)
    if pa.types.is_date(t):
        return date_text(col)
    if pa.types.is_interval(t):
        return interval_text(col)
    if pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t):
        return col.cast(pa.large_binary())
    if pa.types.is_string_view(t):
        return col.cast(pa.large_string())
    return col


def _plain_table(table: pa.Table) -> pa.Table:
    """The :func:`_plain` columns, each field keeping its metadata (``replicant.sql_type``)."""
    cols = [_plain(c) for c in table.columns]
    fields = [pa.field(f.name, c.type, f.nullable, f.metadata) for f, c in zip(table.schema, cols)]
    return pa.table(cols, schema=pa.schema(fields))


_JSON_TYPES = (b"json", b"jsonb")


def _is_nested(t: pa.DataType) -> bool:
    return pa.types.is_nested(t)


def _value(f: pa.Field, *, json: bool) -> str:
    """The DuckDB expression for one (already :func:`_plain`) column."""
    c, t = _ident(f.name), f.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return f"base64({c})"
    if json and pa.types.is_floating(t):
        return (
            f"CASE WHEN isnan({c}) THEN '\"NaN\"'::JSON WHEN isinf({c}) AND {c} > 0 THEN '\"Infinity\"'::JSON "
            f"WHEN isinf({c}) THEN '\"-Infinity\"'::JSON ELSE to_json({c}) END"
        )
    declared = (f.metadata or {}).get(SQL_TYPE_KEY, b"").lower()
    if json and declared in _JSON_TYPES and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return f"CASE WHEN json_valid({c}) THEN json({c}) ELSE to_json({c}) END"
    if not json and _is_nested(t):
        return f"CAST(to_json({c}) AS VARCHAR)"
    return c


def _struct(table: pa.Table, names: list[str]) -> str:
    if not names:
        return "NULL::JSON"
    parts = [f"{_ident(n)} := {_value(table.schema.field(n), json=True)}" for n in names]
    return f"struct_pack({', '.join(parts)})"


def _query(table: pa.Table, select: str) -> pa.Array:
    con = _cursor()
    con.register("_replicant_rows", table)
    try:
        out = con.sql(f"SELECT {select} AS j FROM _replicant_rows").to_arrow_table()
    finally:
        con.unregister("_replicant_rows")
    col = out["j"]
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def record_json(table: pa.Table, key: tuple[str, ...] | list[str], *, newline: bool = False) -> pa.Array:
    """One JSON record per row of a change table: ``{"op", "key", "data", "position", "ts"}``.

    ``key`` is an object of the key columns (``null`` when the stream has none), ``data`` an
    object of all data columns (``null`` for a delete of a keyed stream, as the HTTP push;
    a keyless stream's delete keeps its columns: they are all that identify it), ``position``
    the row's ``_pos`` decoded (a JSON object; text that is not JSON stays a string), ``ts``
    ``_ts`` in ISO 8601 UTC. Row order is kept. With ``newline`` each text ends in ``\\n``.
    """
    plain = _plain_table(table)
    data = [n for n in table.column_names if n not in META_COLUMNS]
    pos = _ident("_pos")
    data_sql = _struct(plain, data)
    if key and data:
        data_sql = f"CASE WHEN {_ident('_op')} = {_literal(OP_DELETE)} THEN NULL ELSE {data_sql} END"
    select = (
        "json_object("
        f"'op', {_ident('_op')}, "
        f"'key', {_struct(plain, list(key))}, "
        f"'data', {data_sql}, "
        f"'position', CASE WHEN json_valid({pos}) THEN json({pos}) ELSE to_json({pos}) END, "
        f"'ts', {_ident('_ts')})"
    )
    if newline:
        select = f"CAST({select} AS VARCHAR) || chr(10)"
    return _query(plain, select)


def row_json(table: pa.Table, *, newline: bool = False) -> pa.Array:
    """One flat JSON object per row, every column (metadata columns too) by its name."""
    plain = _plain_table(table)
    select = f"CAST(to_json({_struct(plain, plain.column_names)}) AS VARCHAR)"
    if newline:
        select += " || chr(10)"
    return _query(plain, select)


def text_table(table: pa.Table) -> pa.Table:
    """``table`` with every column ``pyarrow.csv`` cannot write exactly rewritten as text:
    decimals, timestamps, binary (base64) and nested values (JSON text) by the mapping in
    the module docstring; numbers, booleans, strings, dates and times are kept."""
    plain = _plain_table(table)
    if not any(
        pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) or _is_nested(f.type) for f in plain.schema
    ):
        return plain
    select = ", ".join(f"{_value(f, json=False)} AS {_ident(f.name)}" for f in plain.schema)
    con = _cursor()
    con.register("_replicant_rows", plain)
    try:
        return con.sql(f"SELECT {select} FROM _replicant_rows").to_arrow_table()
    finally:
        con.unregister("_replicant_rows")


def joined_lines(texts: pa.Array) -> pa.Buffer:
    """The concatenation of every text of a string array with no nulls, without copying
    row by row (the array's value buffer between its first and last offset)."""
    if len(texts) == 0:
        return pa.py_buffer(b"")
    if texts.null_count:
        raise ValueError("joined_lines needs an array without nulls")
    if texts.offset:
        texts = pa.concat_arrays([texts])
    wide = pa.types.is_large_string(texts.type) or pa.types.is_large_binary(texts.type)
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64 if wide else np.int32, count=len(texts) + 1)
    start, end = int(offsets[0]), int(offsets[-1])
    return texts.buffers()[2].slice(start, end - start)

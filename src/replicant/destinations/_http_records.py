"""The request records of the HTTP push as one DuckDB query: each change row → one JSON
record ``{"op", "key", "data", "position", "ts"}`` followed by a comma (the body is the
concatenation). Value mapping as documented in :mod:`replicant.destinations.http`."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from replicant.destinations._mysql_types import decimal_text, interval_text
from replicant.destinations._values import date_text
from replicant.destinations.records import iso_text
from replicant.errors import FatalError
from replicant.model import META_COLUMNS, SQL_TYPE_KEY, Stream

__all__ = ["precast", "record_sql"]


def _needs_precast(t: pa.DataType) -> bool:
    """Columns turned into text in Arrow first: decimals DuckDB cannot read (decimal256),
    and dates, timestamps and intervals, whose lossless text (``infinity``, ``+10000-…``,
    ``-0043-…``, ``P14M3DT4.5S``) DuckDB's own formatting does not give."""
    wide = pa.types.is_decimal(t) and (t.precision > 38 or pa.types.is_decimal256(t))
    return wide or pa.types.is_date(t) or pa.types.is_timestamp(t) or t == pa.month_day_nano_interval()


def precast(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """The text of a column :func:`record_sql` listed to cast first (vectorised)."""
    t = col.type
    if pa.types.is_decimal(t):
        return decimal_text(col)
    if pa.types.is_date(t):
        return date_text(col)
    if pa.types.is_timestamp(t):  # microseconds, as the push always wrote them
        return iso_text(col if t.unit == "us" else pc.cast(col, pa.timestamp("us", t.tz), safe=False))
    return interval_text(col)

_JSON_TYPES = ("json", "jsonb")


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _value_sql(f: pa.Field, col: str, precast: bool) -> str:
    t = f.type
    sql_type = (f.metadata or {}).get(SQL_TYPE_KEY, b"").decode(errors="replace").lower()
    if precast:
        return col
    if pa.types.is_decimal(t):
        return f"{col}::VARCHAR"
    if pa.types.is_timestamp(t):
        fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if t.tz is not None else "%Y-%m-%dT%H:%M:%S.%f"
        return f"strftime({col}::TIMESTAMP, '{fmt}')"
    if pa.types.is_floating(t):
        return (
            f"CASE WHEN isnan({col}) THEN '\"NaN\"'::JSON WHEN isinf({col}) AND {col} > 0 THEN '\"Infinity\"'::JSON "
            f"WHEN isinf({col}) THEN '\"-Infinity\"'::JSON ELSE to_json({col}) END"
        )
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return f"base64({col}::BLOB)"
    if sql_type in _JSON_TYPES and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return f"CASE WHEN json_valid({col}) THEN json({col}) ELSE to_json({col}) END"
    return col


def _object(fields: list[tuple[int, pa.Field]], precast: list[int]) -> str:
    """A JSON object of columns given as (position, field); the table's columns are ``c<position>``.

    A struct literal (serialised by the outer ``to_json``, about a third faster) when the names
    differ case-insensitively (DuckDB's struct keys do not), else ``json_object``."""
    values = [(_lit(f.name), _value_sql(f, f"c{i}", i in precast)) for i, f in fields]
    if len({f.name.lower() for _, f in fields}) == len(fields):
        return "{" + ", ".join(f"{k}: {v}" for k, v in values) + "}"
    return "json_object(" + ", ".join(f"{k}, {v}" for k, v in values) + ")"


def record_sql(stream: Stream, schema: pa.Schema) -> tuple[str, list[int]]:
    """The DuckDB query turning the registered ``changes`` table into one JSON text per row,
    and the column indexes to cast to text in Arrow first."""
    precast_idx = [i for i, f in enumerate(schema) if f.name not in META_COLUMNS and _needs_precast(f.type)]
    data = [(i, f) for i, f in enumerate(schema) if f.name not in META_COLUMNS]
    position = {f.name: i for i, f in data}
    missing = [k for k in stream.primary_key if k not in position]
    if missing:
        raise FatalError(f"stream {stream.name!r}: key columns {missing} are not in the batch")
    keys = [(position[k], schema.field(position[k])) for k in stream.primary_key]
    key_sql = _object(keys, precast_idx) if keys else "NULL"
    data_sql = _object(data, precast_idx) if data else "NULL"
    if keys:
        data_sql = f"CASE WHEN _op = 'delete' THEN NULL ELSE {data_sql} END"
    record = (
        f"to_json({{'op': _op, 'key': {key_sql}, 'data': {data_sql}, "
        f"'position': CASE WHEN json_valid(_pos) THEN json(_pos) ELSE to_json(_pos) END, "
        f"'ts': strftime(_ts::TIMESTAMP, '%Y-%m-%dT%H:%M:%S.%fZ')}})"
    )
    return f"SELECT {record} || ',' AS j FROM changes", precast_idx

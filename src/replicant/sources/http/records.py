"""JSON records to typed Arrow tables, a page at a time; JSONPath look-ups.

JSONPath is `jsonpath-ng <https://github.com/h2non/jsonpath-ng>`_'s dialect (``$.data[*]``,
``$.meta.next``, ``$..id``); a bare name (``next_cursor``) is a top-level field.

A page's records become one table in bulk: :func:`pyarrow.Table.from_pylist` converts the
parsed JSON in C++ (no per-field Python), nested objects become structs and arrays lists; with
``nested: json`` they become JSON text through DuckDB's ``to_json`` over the Arrow columns.
Declared types (``schema:``) are Arrow casts (``timestamp_format`` through ``strptime``). A
field not in the stream's schema follows ``on_new_columns``: ``add`` (a new column, the schema
grows and the log records a new schema version), ``rescue`` (kept as JSON text in
``_rescued``), ``fail``.
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from replicant.errors import FatalError, SchemaDriftError

__all__ = ["RESCUED", "BadValues", "arrow_type", "find", "find_one", "infer_schema", "to_table"]

#: The column of ``on_new_columns: rescue``.
RESCUED = "_rescued"

_DECIMAL = re.compile(r"^\s*(?:decimal|numeric)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*$", re.IGNORECASE)
_TYPES: dict[str, pa.DataType] = {
    "integer": pa.int64(), "int": pa.int64(), "bigint": pa.int64(), "int64": pa.int64(),
    "number": pa.float64(), "float": pa.float64(), "double": pa.float64(),
    "string": pa.string(), "text": pa.string(), "json": pa.string(),
    "boolean": pa.bool_(), "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"), "timestamptz": pa.timestamp("us", tz="UTC"),
}


class BadValues(FatalError):
    """Values of a page that cannot be read as their column's type: the stream fails, or (with
    ``on_bad_record: dead_letter``) the records at fault go to the dead-letter store."""


@functools.lru_cache(maxsize=256)
def _compiled(path: str) -> Any:
    from jsonpath_ng.ext import parse

    return parse(path)


def find(body: Any, path: str) -> list[Any]:
    """Every value at ``path`` in ``body``."""
    return [m.value for m in _compiled(path).find(body)]


def find_one(body: Any, path: str) -> Any:
    """The first value at ``path`` (None when there is none)."""
    found = find(body, path)
    return found[0] if found else None


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type of a ``schema:`` type name.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    m = _DECIMAL.match(name)
    if m:
        return pa.decimal128(int(m[1]), int(m[2]))
    t = _TYPES.get(name.strip().lower())
    if t is None:
        raise ValueError(f"unknown type {name!r}; use {', '.join(sorted(_TYPES))} or decimal(p,s)")
    return t


def _plain(t: pa.DataType, nested: str) -> pa.DataType:
    """An inferred type as the stream keeps it: null → string; nested → string under ``json``."""
    if pa.types.is_null(t):
        return pa.string()
    if nested == "json" and (pa.types.is_struct(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
        return pa.string()
    return t


def infer_schema(records: list[Any], hints: dict[str, str], nested: str, key: tuple[str, ...] = ()) -> pa.Schema:
    """The schema of a sample of records: declared columns first (in ``schema:`` order), then
    the sample's others in their order; key columns NOT NULL."""
    fields = [pa.field(n, arrow_type(t)) for n, t in hints.items()]
    names = set(hints)
    rows = [r for r in records if isinstance(r, dict)]
    if rows:
        sample = pa.Table.from_pylist(rows)
        fields += [pa.field(f.name, _plain(f.type, nested)) for f in sample.schema if f.name not in names]
    for k in key:
        if k not in {f.name for f in fields}:
            fields.append(pa.field(k, pa.string()))
    return pa.schema([f.with_nullable(f.name not in key) for f in fields])


_DUCKDB = threading.local()


def _to_json(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Structs and lists as JSON text, in bulk (DuckDB's ``to_json``), on one in-memory DuckDB
    connection per thread (opening one costs more than converting a page)."""
    con = getattr(_DUCKDB, "con", None)
    if con is None:
        import duckdb

        con = _DUCKDB.con = duckdb.connect()
    con.register("page", pa.table({"v": column}))
    try:
        out = con.sql("SELECT to_json(v)::VARCHAR AS v FROM page").to_arrow_table()
    finally:
        con.unregister("page")
    return out.column("v").combine_chunks().cast(pa.string())


def _convert(column: pa.ChunkedArray, target: pa.DataType, name: str, timestamp_format: str | None) -> pa.Array:
    t = column.type
    if t == target:
        return column.combine_chunks()
    if pa.types.is_null(t):
        return pa.nulls(len(column), target)
    if pa.types.is_string(target) and (pa.types.is_struct(t) or pa.types.is_list(t)):
        return _to_json(column)
    if pa.types.is_timestamp(target) and pa.types.is_string(t) and timestamp_format:
        parsed = pc.strptime(column, format=timestamp_format, unit="us")
        if target.tz and not parsed.type.tz:
            parsed = pc.assume_timezone(parsed, target.tz)
        return parsed.cast(target).combine_chunks()
    if pa.types.is_timestamp(target) and target.tz is None and pa.types.is_string(t):
        # ISO 8601 text with an offset becomes UTC, then the zone is dropped (a naive column)
        try:
            return column.cast(target).combine_chunks()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return column.cast(pa.timestamp("us", tz="UTC")).cast(target).combine_chunks()
    if pa.types.is_string(target) and not pa.types.is_string(t):
        return column.cast(target).combine_chunks()
    try:
        return column.cast(target).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise BadValues(f"column {name!r}: values of type {t} cannot be read as {target} ({e}); declare its type "
                        f"under the stream's `schema:`") from None


def to_table(records: list[Any], schema: pa.Schema, *, nested: str, on_new_columns: str,
             timestamp_format: str | None, stream: str) -> tuple[pa.Table, pa.Schema]:
    """One page of records as a table of ``schema`` (grown by new fields under ``add``).

    Returns:
        ``(table, schema)``: the page, and the stream's schema from now on.

    Raises:
        SchemaDriftError: a new field under ``on_new_columns: fail``.
        FatalError: a value that cannot be read as its column's type, a record that is not an
            object.
    """
    bad = next((r for r in records if not isinstance(r, dict)), None)
    if bad is not None:
        raise FatalError(f"stream {stream!r}: a record is not a JSON object but {type(bad).__name__}; "
                         "point `records:` at the list of objects")
    try:
        raw = pa.Table.from_pylist(records) if records else pa.table({})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise BadValues(f"stream {stream!r}: a field holds values of mixed JSON types ({e}); declare its type "
                        "under the stream's `schema:` as string or json") from None
    new = [f for f in raw.schema if f.name not in schema.names]
    if new and on_new_columns == "fail":
        raise SchemaDriftError(f"stream {stream!r}: new field(s) {', '.join(f.name for f in new)} in the API's records "
                               "and on_new_columns is fail")
    if new and on_new_columns == "add":
        schema = pa.schema(list(schema) + [pa.field(f.name, _plain(f.type, nested)) for f in new],
                           metadata=schema.metadata)
    arrays = []
    n = raw.num_rows
    for f in schema:
        if f.name in raw.column_names:
            try:
                arrays.append(_convert(raw.column(f.name), f.type, f.name, timestamp_format))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:  # strptime, a date
                raise BadValues(f"column {f.name!r}: values cannot be read as {f.type} ({e})") from None
        elif f.name == RESCUED and on_new_columns == "rescue":
            arrays.append(_rescued(raw, new, n))
        else:
            arrays.append(pa.nulls(n, f.type))
    table = pa.Table.from_arrays(arrays, schema=pa.schema([f.with_nullable(True) for f in schema]))
    return table.cast(schema) if all(not c.null_count for c, f in zip(table.columns, schema) if not f.nullable) \
        else _null_key(table, schema, stream), schema


def _rescued(raw: pa.Table, new: list[pa.Field], n: int) -> pa.Array:
    if not new:
        return pa.nulls(n, pa.string())
    struct = pa.StructArray.from_arrays([raw.column(f.name).combine_chunks() for f in new], [f.name for f in new])
    return _to_json(struct)


def _null_key(table: pa.Table, schema: pa.Schema, stream: str) -> pa.Table:
    missing = [f.name for c, f in zip(table.columns, schema) if not f.nullable and c.null_count]
    raise FatalError(f"stream {stream!r}: record(s) without key field(s) {', '.join(missing)}")

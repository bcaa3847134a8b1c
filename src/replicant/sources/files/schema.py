"""A files stream's schema: inferred from a sample of its first file, ``schema:`` hints per
column, and the columns that appear later (``on_new_columns``).

``add``: a new column joins the stream's schema (the staging log keeps a new schema version,
destinations add the column); it is remembered in the source's work dir so later runs keep it.
``rescue``: the stream has a ``_rescued`` column (JSON text) holding, per row, the values of
columns not in the schema. ``fail``: the stream stops, naming the file and the columns.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from replicant.errors import ConfigError, FatalError
from replicant.sources.files.readers import Bad

__all__ = ["FILE", "LINE", "RESCUED", "conform", "parse_type", "with_origin"]

FILE, LINE, RESCUED = "_file", "_line", "_rescued"
ORIGIN = (FILE, LINE)

_NAMES: dict[str, pa.DataType] = {
    "int": pa.int64(), "integer": pa.int64(), "bigint": pa.int64(), "int64": pa.int64(), "int32": pa.int32(),
    "smallint": pa.int16(), "double": pa.float64(), "float": pa.float64(), "float64": pa.float64(),
    "real": pa.float32(), "string": pa.string(), "text": pa.string(), "varchar": pa.string(),
    "bool": pa.bool_(), "boolean": pa.bool_(), "date": pa.date32(), "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"), "binary": pa.binary(), "json": pa.string(),
}
_DECIMAL = re.compile(r"^(?:decimal|numeric)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)$", re.IGNORECASE)


def parse_type(text: str, key: str) -> pa.DataType:
    """An Arrow type from a ``schema:`` hint (``int64``, ``decimal(12,2)``, ``timestamptz``…).

    Raises:
        ConfigError: an unknown type name, at ``key``.
    """
    m = _DECIMAL.match(text.strip())
    if m:
        precision, scale = int(m[1]), int(m[2])
        return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    t = _NAMES.get(text.strip().lower())
    if t is None:
        raise ConfigError("invalid source", [(key, f"unknown type {text!r}; use one of {', '.join(sorted(_NAMES))}, "
                                                   "decimal(p,s)")])
    return t


def data_fields(schema: pa.Schema) -> list[pa.Field]:
    """The fields a file provides (not ``_file``, ``_line``, ``_rescued``)."""
    return [f for f in schema if f.name not in (FILE, LINE, RESCUED)]


def stable(t: pa.DataType) -> pa.DataType:
    """An inferred type as the stream keeps it: no ``null`` type (all-empty sample: text),
    timestamps in microseconds, large strings as strings."""
    if pa.types.is_null(t):
        return pa.string()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz=t.tz)
    if pa.types.is_large_string(t):
        return pa.string()
    return t


def with_origin(fields: list[pa.Field], rescue: bool) -> pa.Schema:
    """The stream's schema: data columns, ``_rescued`` when rescuing, ``_file``, ``_line``."""
    extra = [pa.field(RESCUED, pa.string())] if rescue else []
    return pa.schema([*fields, *extra, pa.field(FILE, pa.string(), nullable=False),
                      pa.field(LINE, pa.int64(), nullable=False)])


def conform(table: pa.Table, schema: pa.Schema, path: str, on_new_columns: str) -> tuple[pa.Table, list[pa.Field], list[Bad]]:
    """``table`` (a piece: data columns and ``_line``) in ``schema``'s columns and types, with
    ``_file``. Returns the table, the fields it added (``add``: appended after ``schema``'s own;
    the caller keeps them in the schema) and the rows whose values do not convert.

    Raises:
        FatalError: new columns with ``on_new_columns: fail``.
    """
    known = {f.name for f in schema}
    new = [n for n in table.column_names if n not in known and n != LINE]
    added: list[pa.Field] = []
    if new and on_new_columns == "fail":
        raise FatalError(f"file {path!r} has column(s) {', '.join(map(repr, new))} that the stream's schema has not "
                         "(on_new_columns: fail); add them under `schema:` or set on_new_columns: add | rescue")
    bad: list[Bad] = []
    if new and on_new_columns == "add":
        added = [pa.field(n, stable(table.schema.field(n).type)) for n in new]
        schema = pa.schema([*schema, *added])
    n = table.num_rows
    lines = table.column(LINE)
    ok = None
    columns: list[pa.Array | pa.ChunkedArray] = []
    for f in schema:
        if f.name == FILE:
            columns.append(pa.repeat(pa.scalar(path, pa.string()), n))
        elif f.name == LINE:
            columns.append(lines)
        elif f.name == RESCUED:
            columns.append(_rescued(table, new) if new else pa.nulls(n, pa.string()))
        elif f.name not in table.column_names:
            columns.append(pa.nulls(n, f.type))
        else:
            col = table.column(f.name)
            if col.type == f.type:
                columns.append(col)
                continue
            converted, failed = _cast(col, f.type)
            columns.append(converted)
            if failed is not None:
                ok = failed if ok is None else pc.or_(ok, failed)
                bad.extend(Bad(int(lines[i].as_py()), json.dumps({f.name: col[i].as_py()}, default=str),
                               f"column {f.name!r}: value {col[i].as_py()!r} is not {f.type}")
                           for i in pc.indices_nonzero(failed).to_pylist())  # only the bad rows, few
    out = pa.Table.from_arrays(columns, schema=pa.schema([f.with_nullable(True) if f.name not in (FILE, LINE) else f
                                                          for f in schema]))
    if ok is not None:
        out = out.filter(pc.invert(ok))
    return out, added, bad


def _cast(col: pa.ChunkedArray, t: pa.DataType) -> tuple[pa.ChunkedArray, pa.Array | None]:
    """``col`` cast to ``t``; the mask of values that do not convert (nulled) or None."""
    try:
        return col.cast(t), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    values = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    failed = [False] * len(values)

    def visit(a: int, b: int) -> None:  # halves until each bad value is alone
        try:
            values.slice(a, b - a).cast(t)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            if b - a == 1:
                failed[a] = True
                return
            mid = (a + b) // 2
            visit(a, mid)
            visit(mid, b)

    visit(0, len(values))
    mask = pa.array(failed, pa.bool_())
    kept = pc.if_else(mask, pa.nulls(len(values), values.type), values).cast(t)
    return pa.chunked_array([kept]), mask


def _rescued(table: pa.Table, names: list[str]) -> pa.Array:
    """Per row, the values of ``names`` as a JSON object (null when all are null)."""
    import duckdb

    sub = table.select(names)
    con = duckdb.connect()
    try:
        con.register("rescued", sub)
        fields = ", ".join(f"'{n.replace(chr(39), chr(39) * 2)}': \"{n.replace(chr(34), chr(34) * 2)}\"" for n in names)
        anyv = " OR ".join(f"\"{n.replace(chr(34), chr(34) * 2)}\" IS NOT NULL" for n in names)
        out = con.sql(f"SELECT CASE WHEN {anyv} THEN to_json({{{fields}}})::VARCHAR END FROM rescued").to_arrow_table()
    finally:
        con.close()
    return out.column(0).cast(pa.string())


def load_added(workdir: Path | None, stream: str) -> list[pa.Field]:
    """The columns ``add`` joined to ``stream`` in earlier runs."""
    path = _added_path(workdir, stream)
    if path is None or not path.is_file():
        return []
    return list(pa.ipc.read_schema(pa.py_buffer(path.read_bytes())))


def save_added(workdir: Path | None, stream: str, fields: list[pa.Field]) -> None:
    path = _added_path(workdir, stream)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pa.schema(fields).serialize().to_pybytes())
    tmp.replace(path)


def _added_path(workdir: Path | None, stream: str) -> Path | None:
    if workdir is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", stream)
    return workdir / "files" / f"{safe}.added.arrow"

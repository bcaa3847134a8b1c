"""DuckDB destination types: DDL from Arrow, and the Arrow rewrites DuckDB needs.

DuckDB is never a source dialect, so a field's declared type is used only as a hint
(from any dialect): ``uuid`` → ``UUID``, ``json``/``jsonb`` → ``JSON``. Everything else maps
from the Arrow type (the table in ``docs/types.md``, section *DuckDB destination*):
``decimal128`` → ``DECIMAL(p,s)``; ``decimal256`` and unconstrained numerics (Arrow strings)
→ ``VARCHAR`` holding the exact digits (DuckDB's ``DECIMAL`` stops at 38 digits);
``month_day_nano``/``duration`` → ``INTERVAL``; lists → ``LIST``; structs → ``STRUCT``;
timestamps with a zone → ``TIMESTAMPTZ``; binary → ``BLOB``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pyarrow as pa

from replicant.destinations._mysql_types import decimal_text
from replicant.destinations._sql_base import Encoded, TypeMapper
from replicant.errors import FatalError

__all__ = ["DuckDBTypes", "ddl_type", "normalize", "quote", "select_expr"]


def quote(name: str) -> str:
    """A DuckDB quoted identifier (``a"b`` → ``"a""b"``). DuckDB matches identifiers
    case-insensitively even when quoted: ``"Items"`` and ``"items"`` are the same table."""
    return '"' + name.replace('"', '""') + '"'


def _hint(field: pa.Field) -> str:
    meta = field.metadata or {}
    text = meta.get(b"replicant.sql_type", b"").decode().strip().lower()
    return re.split(r"[\s(\[]", text, maxsplit=1)[0].strip('"') if text else ""


def ddl_type(field: pa.Field) -> str:
    """The DuckDB type of a new column for an Arrow field."""
    return _ddl(field.type, _hint(field))


def _ddl(t: pa.DataType, hint: str = "") -> str:
    if isinstance(t, pa.BaseExtensionType):
        if t.extension_name == "arrow.uuid":
            return "UUID"
        if t.extension_name == "arrow.json":
            return "JSON"
        return _ddl(t.storage_type, hint)
    if pa.types.is_dictionary(t):
        return _ddl(t.value_type, hint)
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        names = {8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"}
        return ("U" if pa.types.is_unsigned_integer(t) else "") + names[t.bit_width]
    if pa.types.is_floating(t):
        return "DOUBLE" if t == pa.float64() else "FLOAT"
    if pa.types.is_decimal(t):
        if t.precision <= 38 and not pa.types.is_decimal256(t):
            return f"DECIMAL({t.precision},{t.scale})"
        return "VARCHAR"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        if hint == "uuid":
            return "UUID"
        if hint in ("json", "jsonb"):
            return "JSON"
        return "VARCHAR"
    if pa.types.is_fixed_size_binary(t) and t.byte_width == 16 and hint == "uuid":
        return "UUID"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t):
        return "BLOB"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        if t.tz:
            return "TIMESTAMPTZ"
        return "TIMESTAMP_NS" if t.unit == "ns" else "TIMESTAMP"
    if pa.types.is_time(t):
        return "TIME"
    if pa.types.is_duration(t) or t == pa.month_day_nano_interval():
        return "INTERVAL"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_list_view(t):
        return _ddl(t.value_type) + "[]"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f"{quote(t.field(i).name)} {_ddl(t.field(i).type)}" for i in range(t.num_fields)) + ")"
    if pa.types.is_map(t):
        return f"MAP({_ddl(t.key_type)}, {_ddl(t.item_type)})"
    if pa.types.is_null(t):
        return "VARCHAR"
    raise TypeError(f"no DuckDB type for Arrow type {t}")


def normalize(table: pa.Table) -> pa.Table:
    """Casts (in C++) the Arrow types DuckDB cannot scan: ``decimal256`` and decimals above
    38 digits → exact decimal strings, ``float16`` → ``float32``."""
    changed = False
    columns = []
    for field, col in zip(table.schema, table.columns):
        t = field.type
        if pa.types.is_decimal(t) and (pa.types.is_decimal256(t) or t.precision > 38):
            col, changed = decimal_text(col), True  # plain digits: Arrow's cast writes 0E-10
        elif t == pa.float16():
            col, changed = col.cast(pa.float32()), True
        columns.append(col)
    return pa.table(columns, names=table.column_names) if changed else table


def select_expr(ref: str, field: pa.Field, target_type: str) -> str:
    """``ref`` as it goes into a column of ``target_type``: bare when the Arrow field maps to
    that type, else an explicit ``CAST`` (text → ``UUID``/``JSON``, ``BLOB`` → ``UUID``…)."""
    try:
        mapped = _ddl(field.type, _hint(field))
    except TypeError:
        mapped = ""
    if mapped.upper() == target_type.upper():
        return ref
    return f"CAST({ref} AS {target_type})"


class DuckDBTypes(TypeMapper):
    """The :class:`TypeMapper` of DuckDB: :func:`ddl_type`; :func:`normalize` with a ``CAST``
    where the Arrow type does not map to the target column's type (:func:`select_expr`)."""

    dialect = None  # never a source dialect: declared types are hints only

    def ddl_type(self, field: pa.Field, schema: pa.Schema, *, key: bool = False) -> str:
        try:
            return ddl_type(field)
        except TypeError as e:
            raise FatalError(f"column {field.name!r}: {e}") from None

    def encode(self, rows: pa.Table, declared: Mapping[str, str]) -> Encoded:
        rows = normalize(rows)
        exprs: list[str | None] = []
        for f in rows.schema:
            target = declared.get(f.name.casefold())
            expr = select_expr("{v}", f, target) if target is not None else "{v}"
            exprs.append(None if expr == "{v}" else expr)
        return Encoded(rows, exprs)

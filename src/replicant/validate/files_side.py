"""The destination side of a files destination: DuckDB over the files it wrote.

Files hold change events, so the compared rows are the last change per key (by the log offsets
in the file names, then the row's place in its file), deletes left out. Parquet is read as it
is. CSV and JSON lines hold text (the mapping in :mod:`replicant.destinations.records`): each
column is read as text and decoded back to the type the stream declares (decimals, times, dates,
numbers, booleans by a cast; binary from base64). Intervals, durations and nested values have
no exact way back from that text, nor has a JSON column in JSON lines (it is embedded as JSON,
where a JSON ``null`` and no value are both ``null``): such columns are listed as unverified
(:func:`unverified_text`).
"""

from __future__ import annotations

import glob as globmod
from typing import Any

import pyarrow as pa

from replicant.config import DestinationConfig
from replicant.destinations._duckdb_types import ddl_type
from replicant.model import SQL_TYPE_KEY, Stream
from replicant.validate.canon import DIALECTS
from replicant.validate.sides import Column, Side, duckdb_connection
from replicant.validate.targets import TENANT_COLUMN, CannotValidate, Plan

__all__ = ["files_side", "unverified_text"]

_D = DIALECTS["duckdb"]


def _undecodable(f: pa.Field, fmt: str) -> str | None:
    """Why a text file's value of field ``f`` cannot be compared, or None when it can."""
    if fmt == "jsonl" and (f.metadata or {}).get(SQL_TYPE_KEY, b"").lower() in (b"json", b"jsonb"):
        return "a JSON column is embedded as JSON, where a JSON null and no value are both null"
    return _undecodable_type(f.type)


def _undecodable_type(t: pa.DataType) -> str | None:
    if isinstance(t, pa.BaseExtensionType):
        return _undecodable_type(t.storage_type)
    if pa.types.is_dictionary(t):
        return _undecodable_type(t.value_type)
    if pa.types.is_nested(t):
        return f"type {t} is written as JSON text"
    if pa.types.is_interval(t) or pa.types.is_duration(t):
        return f"type {t} is written as text with no exact way back"
    return None


def unverified_text(plan: Plan, dest: Any, dcfg: DestinationConfig) -> None:
    """For a CSV or JSON lines files destination: the value columns its text cannot bring back
    move to ``plan.unverified`` (before either side is built: both compare the same columns).

    Raises:
        CannotValidate: a key column is such a column.
    """
    if dcfg.type != "files" or dest.format == "parquet":
        return
    fields = plan.compared.schema
    for k in plan.keys:
        why = _undecodable(fields.field(k), dest.format)
        if why:
            raise CannotValidate(f"destination {dcfg.name}: key column {k!r}: {why}")
    for v in list(plan.values):
        why = _undecodable(fields.field(v), dest.format)
        if why:
            plan.values.remove(v)
            plan.unverified[v] = f"{dest.format} file: {why}"


def _decoded(f: pa.Field) -> str:
    """The DuckDB expression turning column ``f``'s text back into its type."""
    ref = _D.quote(f.name)
    t = f.type.storage_type if isinstance(f.type, pa.BaseExtensionType) else f.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return f"from_base64({ref})"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return ref
    return f"CAST({ref} AS {ddl_type(f)})"


def _events(plan: Plan, dest: Any, pattern: str) -> str:
    """The change events of every file ``pattern`` matches: the compared columns typed, plus
    ``_op``, ``filename`` and the row's place in its file (``file_row_number``)."""
    if dest.format == "parquet":
        return (f"read_parquet({_D.literal(pattern)}, filename = true, file_row_number = true, hive_partitioning = false, "
                "union_by_name = true)")
    names = [*plan.keys, *plan.values]
    if TENANT_COLUMN in plan.compared.schema.names:
        names.append(TENANT_COLUMN)
    wanted = {n: plan.compared.schema.field(n) for n in names}
    if dest.format == "csv":
        read = (f"read_csv({_D.literal(pattern)}, all_varchar = true, header = true, allow_quoted_nulls = false, filename = true, "
                "hive_partitioning = false, union_by_name = true)")
    else:
        columns = ", ".join(f"{_D.literal(n)}: 'VARCHAR'" for n in [*wanted, "_op"])
        read = (f"read_json({_D.literal(pattern)}, format = 'newline_delimited', columns = {{{columns}}}, "
                "filename = true, hive_partitioning = false, union_by_name = true)")
    # rows keep their order in a scan (DuckDB preserves insertion order): their place in a file
    typed = ", ".join(f"{_decoded(f)} AS {_D.quote(n)}" for n, f in wanted.items())
    return (f"(SELECT {typed}, _op, filename, row_number() OVER (PARTITION BY filename) AS file_row_number "
            f"FROM {read})")


def files_side(plan: Plan, dest: Any, dcfg: DestinationConfig, stream: Stream, tenant: str | None) -> Side:
    """The files destination ``dest``'s rows of ``stream`` (see the module docstring)."""
    label = f"destination {dcfg.name}"
    folder = dest.folder(stream)
    if "://" in folder:
        raise CannotValidate(f"{label}: validate reads local folders only, not {folder.split('://')[0]}://")
    c = plan.compared
    pattern = f"{folder}/**/*{dest.extension}"
    keys = ", ".join(_D.quote(k) for k in plan.keys)
    if globmod.glob(pattern, recursive=True):
        latest = (f"SELECT * FROM {_events(plan, dest, pattern)} QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY "
                  "regexp_extract(filename, '([0-9]{20})-[0-9]{20}[^/]*$', 1) DESC, file_row_number DESC) = 1")
        relation = f"(SELECT * FROM ({latest}) f WHERE f._op <> 'delete')"
    else:
        cols_sql = ", ".join(f"NULL::VARCHAR AS {_D.quote(n)}" for n in plan.keys + plan.values)
        relation = f"(SELECT {cols_sql} WHERE false)"
    execute, close = duckdb_connection(None, label)
    cols = {n: Column(n, c.schema.field(n), _D.quote(n)) for n in plan.keys + plan.values}
    where = [f"{_D.quote(TENANT_COLUMN)} = {_D.literal(tenant)}"] if tenant is not None and dest.config.tables is not None else []
    return Side(label, "duckdb", execute, relation + " t", [cols[k] for k in plan.keys], [cols[v] for v in plan.values],
                where=where, close=close)

"""Correctness check after each copy: row count plus per-column checksums.

A fast but wrong copy must not look good, yet copies made by different tools store
the same values with different types (dlt turns ``numeric(12,2)`` into
``numeric(38,9)``, ``char(84)`` may land as text, a ``timestamp`` may land as
``timestamptz`` in UTC). So each column is reduced to aggregates that compare
*values*, computed with the same meaning in PostgreSQL and in DuckDB:

========  ==========================================================================
kind      aggregates
========  ==========================================================================
int       count, sum
numeric   count, sum (exact decimal)
float     count, sum (relative tolerance 1e-9: summation order differs)
text      count, sum of lengths, sum of the first 32 bits of md5(value)
char      as text, after trimming trailing blanks (char(n) padding is not significant)
ts        count, sum of microseconds since the epoch (naive values read as UTC)
date      count, sum of days since 1970-01-01
bool      count, number of true
========  ==========================================================================
"""

from __future__ import annotations

import math
from decimal import Decimal

_MD5_32 = {
    "pg": "('x' || lpad(left(md5({x}), 8), 16, '0'))::bit(64)::bigint",
    "duckdb": "('0x' || left(md5({x}), 8))::BIGINT",
}


def _exprs(col: str, kind: str, dialect: str) -> list[tuple[str, str]]:
    c = f'"{col}"'
    pg = dialect == "pg"
    out = [(f"{col}.count", f"count({c})")]
    if kind in ("int", "numeric", "float"):
        out.append((f"{col}.sum", f"sum({c})"))
    elif kind in ("text", "char"):
        x = (f"rtrim({c}::text)" if pg else f"rtrim(CAST({c} AS VARCHAR))") if kind == "char" else c
        out.append((f"{col}.len", f"sum(length({x}))"))
        out.append((f"{col}.md5", f"sum({_MD5_32[dialect].format(x=x)})"))
    elif kind == "ts":
        # PG's extract(epoch) of a naive timestamp reads it as UTC, as DuckDB's epoch_us does.
        out.append((f"{col}.us", f"sum((extract(epoch FROM {c}) * 1000000)::bigint)" if pg
                    else f"sum(epoch_us({c}))"))
    elif kind == "date":
        out.append((f"{col}.days", f"sum({c} - DATE '1970-01-01')"))
    elif kind == "bool":
        out.append((f"{col}.true", f"sum(CASE WHEN {c} THEN 1 ELSE 0 END)"))
    else:
        raise ValueError(f"unknown column kind {kind!r}")
    return out


def fingerprint_sql(table_ref: str, columns, dialect: str) -> tuple[list[str], str]:
    """Return (aggregate names, SELECT statement) for ``table_ref`` (already quoted)."""
    pairs = [("rows", "count(*)")]
    for col, kind in columns:
        pairs.extend(_exprs(col, kind, dialect))
    names = [n for n, _ in pairs]
    return names, f"SELECT {', '.join(e for _, e in pairs)} FROM {table_ref}"


def fingerprint_pg(conn, schema: str, table: str, columns) -> dict:
    """Fingerprint of a PostgreSQL table through a psycopg connection."""
    names, sql = fingerprint_sql(f'"{schema}"."{table}"', columns, "pg")
    return dict(zip(names, conn.execute(sql).fetchone()))


def fingerprint_duckdb(path: str, schema: str, table: str, columns) -> dict:
    """Fingerprint of a table in a DuckDB file (opened read-only)."""
    import duckdb

    names, sql = fingerprint_sql(f'"{schema}"."{table}"', columns, "duckdb")
    with duckdb.connect(path, read_only=True) as con:
        return dict(zip(names, con.execute(sql).fetchone()))


def compare(expected: dict, got: dict, columns) -> list[str]:
    """List the aggregates that differ (empty when the copy is right)."""
    kinds = dict(columns)
    problems = []
    for name, want in expected.items():
        have = got.get(name)
        col = name.split(".", 1)[0]
        if want is None or have is None:
            ok = want is None and have is None
        elif kinds.get(col) == "float" and name.endswith(".sum"):
            ok = math.isclose(float(want), float(have), rel_tol=1e-9, abs_tol=1e-6)
        else:
            ok = Decimal(str(want)) == Decimal(str(have))
        if not ok:
            problems.append(f"{name}: source {want} != target {have}")
    return problems


def find_pg_table(conn, table: str, schema: str | None = None) -> str:
    """Return the schema holding ``table`` in ``conn``'s database (exactly one must)."""
    if schema:
        return schema
    rows = conn.execute(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = %s "
        "AND table_schema NOT IN ('pg_catalog', 'information_schema')", (table,)).fetchall()
    if len(rows) != 1:
        raise LookupError(f"expected one table {table!r} in the target, found {len(rows)}: {rows}")
    return rows[0][0]


def pg_has_primary_key(conn, schema: str, table: str) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE i.indisprimary AND n.nspname = %s AND c.relname = %s)", (schema, table)
    ).fetchone()[0]


def find_duckdb_table(path: str, table: str, schema: str | None = None) -> str:
    """Return the schema holding ``table`` in a DuckDB file (exactly one must)."""
    if schema:
        return schema
    import duckdb

    with duckdb.connect(path, read_only=True) as con:
        rows = con.execute("SELECT table_schema FROM information_schema.tables WHERE table_name = ?",
                           [table]).fetchall()
    if len(rows) != 1:
        raise LookupError(f"expected one table {table!r} in {path}, found {len(rows)}: {rows}")
    return rows[0][0]

"""A small SQLite shop run into DuckDB or PostgreSQL with transforms: the shared harness of
tests/transforms."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import psycopg

from replicant.config import parse
from replicant.engine import Engine
from replicant.results import RunResult

KINDS = ["duckdb", "postgres"]

CUSTOMERS = [
    (1, "Ada", "ada@example.com", "+44 20 7946 0001", "UK", 12.5, "active", "2026-01-01 00:00:01"),
    (2, "Bo", "bo@example.com", "+46 8 123 456 02", "SE", 3.25, "active", "2026-01-01 00:00:02"),
    (3, "Cy", None, "+1 212 555 0103", "US", 7.0, "inactive", "2026-01-01 00:00:03"),
]


def make_shop(path: Path) -> None:
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, phone TEXT, country TEXT, "
                  "total REAL, status TEXT, updated_at TEXT NOT NULL)")
        c.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", CUSTOMERS)


def execute(path: Path, *sql: str) -> None:
    with sqlite3.connect(path) as c:
        for s in sql:
            c.execute(s)


def destination(kind: str, tmp_path: Path, pg_url: str | None, **extra: Any) -> dict[str, Any]:
    if kind == "duckdb":
        return {"name": "d", "type": "duckdb", "path": str(tmp_path / "d.duckdb"), **extra}
    return {"name": "d", "type": "postgres", "url": pg_url, **extra}


def pipeline(tmp_path: Path, dest: dict[str, Any], *, transforms: list[Any] | None = None,
             stream: dict[str, Any] | None = None, name: str = "shop") -> dict[str, Any]:
    s = {"table": "customers", **(stream or {})}
    data: dict[str, Any] = {"pipeline": name, "source": {"type": "sqlite", "url": f"sqlite:///{tmp_path / 'shop.db'}",
                                                        "streams": [s]}, "destinations": [dest]}
    if transforms is not None:
        data["transforms"] = transforms
    return data


def run(tmp_path: Path, data: dict[str, Any]) -> RunResult:
    result = Engine(parse(data, base_dir=tmp_path)).run()
    assert result.ok, result.errors
    return result


def rows(kind: str, tmp_path: Path, pg_url: str | None, table: str = "customers", order: str = "1") -> list[dict[str, Any]]:
    """Every row of ``table`` as dicts (replicant's own columns left out), ordered."""
    sql = f'SELECT * FROM "{table}" ORDER BY {order}'
    if kind == "duckdb":
        with duckdb.connect(str(tmp_path / "d.duckdb"), read_only=True) as c:
            cur = c.execute(sql)
            names = [d[0] for d in cur.description]
            out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    else:
        with psycopg.connect(pg_url) as c:
            cur = c.execute(sql)
            names = [d.name for d in cur.description]
            out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return [{k: v for k, v in r.items() if not k.startswith("_replicant")} for r in out]


def columns(kind: str, tmp_path: Path, pg_url: str | None, table: str = "customers") -> list[str]:
    return list(rows_schema(kind, tmp_path, pg_url, table))


def rows_schema(kind: str, tmp_path: Path, pg_url: str | None, table: str) -> dict[str, str]:
    if kind == "duckdb":
        with duckdb.connect(str(tmp_path / "d.duckdb"), read_only=True) as c:
            return {r[0]: r[1] for r in c.execute(f"DESCRIBE \"{table}\"").fetchall() if not r[0].startswith("_replicant")}
    with psycopg.connect(pg_url) as c:
        got = c.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
                        "ORDER BY ordinal_position", (table,)).fetchall()
    return {n: t for n, t in got if not n.startswith("_replicant")}


def primary_key(kind: str, tmp_path: Path, pg_url: str | None, table: str = "customers") -> list[str]:
    sql = ("SELECT kcu.column_name FROM information_schema.table_constraints tc JOIN information_schema.key_column_usage kcu "
           "ON tc.constraint_name = kcu.constraint_name AND tc.table_name = kcu.table_name "
           "WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_name = %s")
    if kind == "duckdb":
        with duckdb.connect(str(tmp_path / "d.duckdb"), read_only=True) as c:
            return [r[0] for r in c.execute(sql.replace("%s", "?"), [table]).fetchall()]
    with psycopg.connect(pg_url) as c:
        return [r[0] for r in c.execute(sql, (table,)).fetchall()]

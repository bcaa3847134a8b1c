"""Reads tables from any supported database as normalised rows, to compare a destination
with its source across dialects (SQLite keeps decimals as REAL and dates as text; MySQL
has no timezone; DuckDB returns its own types)."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sqlite3
import uuid
from decimal import Decimal
from typing import Any

import duckdb
import psycopg
import pymysql

__all__ = ["fetch", "norm", "quote"]

_NUMBER = re.compile(r"-?\d+\.\d+")


def quote(kind: str, name: str) -> str:
    if kind == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def norm(v: Any) -> Any:
    """A canonical, dialect-free form of a value."""
    if v is None:
        return None
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, Decimal)):
        return Decimal(v).normalize()
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return Decimal(repr(v)).quantize(Decimal("1.0000000000")).normalize()
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(dt.UTC).replace(tzinfo=None)
        return v.isoformat(sep=" ")
    if isinstance(v, (dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, str):
        # SQLite stores DATETIME as text: '2021-01-01 00:00:00' or with '.ffffff'
        if 19 <= len(v) <= 32 and v[4] == "-" and v[10] in " T" and v[13] == ":":
            try:
                return dt.datetime.fromisoformat(v).isoformat(sep=" ")
            except ValueError:
                return v
        if _NUMBER.fullmatch(v):  # an exact decimal kept as text (SQLite destination)
            return Decimal(v).normalize()
        return v
    return v


def fetch(kind: str, target: str, table: str, columns: list[str], schema: str | None = None) -> list[tuple]:
    """Rows of ``table`` (columns in the given order), normalised and sorted."""
    cols = ", ".join(quote(kind, c) for c in columns)
    name = quote(kind, table) if schema is None else f"{quote(kind, schema)}.{quote(kind, table)}"
    sql = f"SELECT {cols} FROM {name}"
    if kind == "postgres":
        with psycopg.connect(target) as c:
            rows = c.execute(sql).fetchall()
    elif kind == "mysql":
        from urllib.parse import urlsplit

        u = urlsplit(target)
        con = pymysql.connect(host=u.hostname, port=u.port or 3306, user=u.username or "root", password=u.password or "",
                              database=u.path.lstrip("/"), charset="utf8mb4")
        try:
            with con.cursor() as cur:
                cur.execute(sql)
                rows = list(cur.fetchall())
        finally:
            con.close()
    elif kind == "sqlite":
        con = sqlite3.connect(target)
        try:
            rows = con.execute(sql).fetchall()
        finally:
            con.close()
    elif kind == "duckdb":
        with duckdb.connect(target, read_only=True) as con:
            rows = con.execute(sql).fetchall()
    else:
        raise ValueError(kind)
    return sorted((tuple(norm(v) for v in r) for r in rows), key=lambda r: tuple((x is None, str(x)) for x in r))

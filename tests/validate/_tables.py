"""Source tables for the validate tests, in each source dialect: the type round-trip columns,
a compound key, a text key with gaps; and the planted differences."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pymysql
from sqlalchemy.engine import make_url

DDL = {
    "postgres": [
        "CREATE TABLE types (id bigint PRIMARY KEY, i32 integer, f double precision, dec numeric(12,2), s varchar(60), "
        "c char(5), b boolean, d date, ts timestamp, tstz timestamptz, bin bytea)",
        "CREATE TABLE pairs (a integer, b varchar(10), v integer, PRIMARY KEY (a, b))",
        "CREATE TABLE words (k varchar(10) PRIMARY KEY, v integer)",
    ],
    "mysql": [
        "CREATE TABLE types (id bigint PRIMARY KEY, i32 int, f double, `dec` decimal(12,2), s varchar(60), "
        "c char(5), b boolean, d date, ts datetime(6), tstz timestamp(6) NULL DEFAULT NULL, bin varbinary(60))",
        "CREATE TABLE pairs (a int, b varchar(10), v int, PRIMARY KEY (a, b))",
        "CREATE TABLE words (k varchar(10) PRIMARY KEY, v int)",
    ],
    "sqlite": [
        "CREATE TABLE types (id INTEGER PRIMARY KEY, i32 INTEGER, f REAL, dec NUMERIC(12,2), s VARCHAR(60), c CHAR(5), "
        "b BOOLEAN, d DATE, ts DATETIME, tstz DATETIME, bin BLOB)",
        "CREATE TABLE pairs (a INTEGER, b VARCHAR(10), v INTEGER, PRIMARY KEY (a, b))",
        "CREATE TABLE words (k VARCHAR(10) PRIMARY KEY, v INTEGER)",
    ],
}

_TS = datetime(2024, 1, 2, 3, 4, 5, 6)
ROWS = [
    (1, 42, 0.5, Decimal("12.30"), "plain", "ab", True, date(2024, 1, 2), _TS, _TS.replace(tzinfo=UTC), b"\x00\x01\xff"),
    (2, None, None, None, None, None, None, None, None, None, None),
    (3, 2**31 - 1, -1e300, Decimal("-9999999999.99"), "", "x", False, date(1970, 1, 1),
     datetime(1999, 12, 31, 23, 59, 59, 999999), datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), b""),
    (4, -(2**31), 1.25e-7, Decimal("0.01"), "q \"double\" 'single' \\ back\nline\ttab", "abcde", True, date(2038, 1, 19),
     datetime(2030, 1, 19, 3, 14, 7), datetime(2030, 1, 19, 3, 14, 7, tzinfo=UTC), b"'\"\\\n"),
    (5, 0, 0.0, Decimal("0.00"), "NULL", "", False, date(2000, 2, 29), datetime(2000, 2, 29, 12),
     datetime(2000, 2, 29, 12, tzinfo=UTC), b"NULL"),
    (6, 1, 3.0, Decimal("1.00"), "ünïcødé ✓ 漢字 🙂", "✓", True, date(2024, 12, 31), datetime(2024, 12, 31, 23, 59, 59),
     datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), "✓".encode()),
]
PAIRS = [(1, "x", 1), (1, "y", 2), (2, "x", 3)]
WORDS = [("a", 1), ("c", 2), ("m", 3), ("zz", 4)]

#: What the changes below make validate find at a destination loaded before them.
EXPECTED = {
    "types": {("different", (("id", "2"),)), ("different", (("id", "3"),)), ("different", (("id", "4"),)),
              ("different", (("id", "5"),)), ("extra", (("id", "6"),)), ("missing", (("id", "7"),))},
    "pairs": {("different", (("a", "1"), ("b", "y"))), ("extra", (("a", "2"), ("b", "x")))},
    "words": {("missing", (("k", "b"),)), ("different", (("k", "m"),))},
}


def _sqlite_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.replace(tzinfo=None).isoformat(" ")
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    return v


class SourceDb:
    """A source database of one kind: runs statements with parameters in its own style."""

    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.target = target

    @property
    def url(self) -> str:
        return f"sqlite:///{self.target}" if self.kind == "sqlite" else self.target

    def run(self, sql: str, rows: list[tuple[Any, ...]] | None = None) -> None:
        if self.kind == "sqlite":
            with sqlite3.connect(self.target) as c:
                if rows is None:
                    c.execute(sql)
                else:
                    c.executemany(sql.replace("%s", "?"), [tuple(_sqlite_value(v) for v in r) for r in rows])
            return
        if self.kind == "postgres":
            with psycopg.connect(self.target, autocommit=True) as c, c.cursor() as cur:
                if rows is None:
                    cur.execute(sql.encode())
                else:
                    cur.executemany(sql, rows)  # type: ignore[arg-type]
            return
        u = make_url(self.target)
        c = pymysql.connect(host=u.host, port=u.port, user=u.username, password=u.password or "", database=u.database,
                            autocommit=True, charset="utf8mb4", init_command="SET time_zone = '+00:00'")
        try:
            with c.cursor() as cur:
                if rows is None:
                    cur.execute(sql)
                else:
                    cur.executemany(sql, [tuple(v.replace(tzinfo=None) if isinstance(v, datetime) else v for v in r) for r in rows])
        finally:
            c.close()

    def create(self) -> None:
        for ddl in DDL[self.kind]:
            self.run(ddl)
        self.run("INSERT INTO types VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", ROWS)
        self.run("INSERT INTO pairs VALUES (%s, %s, %s)", PAIRS)
        self.run("INSERT INTO words VALUES (%s, %s)", WORDS)

    def plant(self) -> None:
        """NULL → '', a decimal's last digit, a zoned timestamp an hour on, a trailing space,
        a deleted row, a new row; a compound key changed and deleted; a text key added."""
        q = "`" if self.kind == "mysql" else '"'
        shifted = ROWS[3][9] + timedelta(hours=1)
        if self.kind == "sqlite":
            shifted = shifted.replace(tzinfo=None).isoformat(" ")  # type: ignore[assignment]
        elif self.kind == "mysql":
            shifted = shifted.replace(tzinfo=None)
        self.run("UPDATE types SET s = '' WHERE id = 2")
        self.run(f"UPDATE types SET {q}dec{q} = -9999999999.98 WHERE id = 3")
        self.run("UPDATE types SET tstz = %s WHERE id = %s", [(shifted, 4)])
        self.run("UPDATE types SET s = 'NULL ' WHERE id = 5")
        self.run("DELETE FROM types WHERE id = 6")
        self.run("INSERT INTO types VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", [(7, *ROWS[0][1:])])
        self.run("UPDATE pairs SET v = 20 WHERE a = 1 AND b = 'y'")
        self.run("DELETE FROM pairs WHERE a = 2")
        self.run("INSERT INTO words VALUES (%s, %s)", [("b", 9)])
        self.run("UPDATE words SET v = 30 WHERE k = 'm'")


def found(results: list[Any]) -> dict[str, set[tuple[str, tuple[tuple[str, str | None], ...]]]]:
    """Per stream, the differences validate reported: (kind, key items)."""
    out: dict[str, set[tuple[str, tuple[tuple[str, str | None], ...]]]] = {}
    for r in results:
        assert r.error is None, f"{r.stream} at {r.destination}: {r.error}"
        assert r.comparison is not None
        out[r.stream.split(".")[-1]] = {(d.kind, tuple(d.key.items())) for d in r.comparison.differences}
    return out

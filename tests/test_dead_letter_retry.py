"""Re-sending dead letters: payloads back to Arrow exactly, and a transactional destination.

* :func:`replicant.dead_letters.payload_table` reads both payload forms (the change record of
  the HTTP push / ``record_json``, the flat row of ``row_json``) back into the stream's schema,
  value for value: decimals past 38 digits, timestamps with and without zone, dates, times,
  binary, NaN and infinities, JSON columns, big integers.
* ``replicant dead-letters retry`` into PostgreSQL, MariaDB, SQLite and DuckDB: the records land by the write mode, the
  applied offset in ``_replicant_offsets`` stays where it was, a payload that no longer fits
  the column stays with that reason.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
import yaml

from compare import fetch, norm
from replicant.dead_letters import payload_table
from replicant.destinations.records import record_json, row_json
from replicant.errors import RecordError
from replicant.model import SQL_TYPE_KEY, Stream, with_meta
from replicant.state import DeadLetter, StateStore

CLI = [sys.executable, "-m", "replicant.cli"]

SCHEMA = pa.schema([
    pa.field("id", pa.int64()),
    pa.field("big", pa.int64()),
    pa.field("amount", pa.decimal128(20, 4)),
    pa.field("huge", pa.decimal256(50, 10)),
    pa.field("ratio", pa.float64()),
    pa.field("flag", pa.bool_()),
    pa.field("name", pa.string()),
    pa.field("doc", pa.string(), metadata={SQL_TYPE_KEY: b"jsonb"}),
    pa.field("at", pa.timestamp("us", tz="UTC")),
    pa.field("wall", pa.timestamp("us")),
    pa.field("day", pa.date32()),
    pa.field("clock", pa.time64("us")),
    pa.field("blob", pa.binary()),
    pa.field("tags", pa.list_(pa.string())),
])
ROWS = [
    {"id": 1, "big": 2**62 + 1, "amount": Decimal("12.5000"), "huge": Decimal("1234567890123456789012345678901234567890.0000000001"),
     "ratio": math.nan, "flag": True, "name": "naïve ' \" \\ text", "doc": '{"a":[1,2],"b":{"c":null}}',
     "at": datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "wall": datetime(1999, 12, 31, 23, 59, 59, 999999),
     "day": date(1, 1, 1), "clock": time(23, 59, 59, 999999), "blob": b"\x00\xff\x10", "tags": ["x", ""]},
    {"id": 2, "big": -(2**63), "amount": Decimal("-0.0001"), "huge": None, "ratio": -math.inf, "flag": False,
     "name": "", "doc": None, "at": None, "wall": None, "day": date(9999, 12, 31), "clock": time(0), "blob": b"", "tags": []},
    {"id": 3, "big": None, "amount": None, "huge": Decimal("0E-10"), "ratio": 0.1, "flag": None, "name": None,
     "doc": "[]", "at": datetime(1970, 1, 1, tzinfo=UTC), "wall": datetime(2024, 2, 29), "day": None, "clock": None,
     "blob": None, "tags": None},
]


def _stream() -> Stream:
    return Stream(name="t", table=("t",), schema=SCHEMA, primary_key=("id",))


def _changes() -> pa.Table:
    data = pa.Table.from_pylist(ROWS, schema=SCHEMA)
    ts = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    return pa.Table.from_batches([with_meta(b, "update", '{"lsn":"0/16B3748"}', ts) for b in data.to_batches()])


def _same(got: pa.Table, want: pa.Table) -> None:
    for name in SCHEMA.names + ["_op", "_pos", "_ts"]:
        g, w = got.column(name).to_pylist(), want.column(name).to_pylist()
        if name == "ratio":
            assert [repr(x) for x in g] == [repr(x) for x in w], name
        elif name == "doc":
            assert [None if x is None else json.loads(x) for x in g] == [None if x is None else json.loads(x) for x in w]
        else:
            assert g == w, name


@pytest.mark.parametrize("form", ["record", "row"])
def test_payload_reads_back_every_value_exactly(form: str) -> None:
    changes = _changes()
    texts = record_json(changes, ["id"]) if form == "record" else row_json(changes)
    payloads = [json.loads(t) for t in texts.to_pylist()]
    back = pa.concat_tables([payload_table(_stream(), p, "origin") for p in payloads])
    assert back.schema.equals(_stream().change_schema)
    _same(back, changes)


def test_payload_that_no_longer_fits_names_the_column() -> None:
    with pytest.raises(RecordError, match="column 'id'"):
        payload_table(_stream(), {"id": "seven", "name": "x"})
    row = payload_table(_stream(), {"id": 7, "gone": 1})  # a dropped column is left out, a missing one is null
    assert row.column("id").to_pylist() == [7] and row.column("name").to_pylist() == [None]
    assert row.column("_op").to_pylist() == ["insert"]


def _target(kind: str, tmp: Path, request: pytest.FixtureRequest) -> tuple[dict, str]:
    """The destination section and the connection target of ``kind`` (a fresh database)."""
    if kind in ("postgres", "mysql"):
        url = request.getfixturevalue("pg_url" if kind == "postgres" else "mysql_url")
        return {"url": url}, url
    path = str(tmp / f"dest.{kind}")
    return {"path": path}, path


def _execute(kind: str, target: str, sql: str) -> None:
    if kind == "postgres":
        with psycopg.connect(target) as c:
            c.execute(sql)
    elif kind == "mysql":
        from urllib.parse import urlsplit

        import pymysql

        u = urlsplit(target)
        con = pymysql.connect(host=u.hostname, port=u.port or 3306, user=u.username or "root", password=u.password or "",
                              database=u.path.lstrip("/"), autocommit=True)
        with con:
            con.cursor().execute(sql)
    elif kind == "sqlite":
        with sqlite3.connect(target) as c:
            c.execute(sql)
    else:
        import duckdb

        with duckdb.connect(target) as c:
            c.execute(sql)


@pytest.mark.parametrize("kind", ["postgres", "mysql", "sqlite", "duckdb"])
def test_retry_into_a_sql_destination_keeps_the_applied_offset(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    src = tmp_path / "src.db"
    with sqlite3.connect(src) as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL)")
        c.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"item {i}", i * 0.5) for i in range(1, 11)])
    section, target = _target(kind, tmp_path, request)
    f = tmp_path / "p.yml"
    f.write_text(yaml.safe_dump({
        "pipeline": "dlsql",
        "source": {"type": "sqlite", "url": f"sqlite:///{src}", "streams": [{"table": "items", "mode": "full"}]},
        "destinations": [{"name": "db", "type": kind, "write": "merge", **section}],
    }))
    p = subprocess.run([*CLI, "run", str(f)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    applied = fetch(kind, target, "_replicant_offsets", ["stream", "log_offset"])
    assert applied and applied[0][1] >= 0
    _execute(kind, target, "DELETE FROM items WHERE id IN (3, 4)")  # as if a poison-record check had kept them out
    state = tmp_path / ".replicant" / "dlsql" / "state.db"
    with StateStore(f"sqlite:///{state}") as st:
        st.add_dead_letters("dlsql", "items", [
            DeadLetter(reason="poison", payload={"id": 3, "name": "item 3", "price": 1.5}, origin="offset 2", destination="db"),
            DeadLetter(reason="poison", payload={"id": 4, "name": "item 4 fixed", "price": 2.0, "_op": "update"},
                       origin="offset 3", destination="db"),
            DeadLetter(reason="poison", payload={"id": "four", "name": "x", "price": 1}, origin="offset 9", destination="db"),
        ])
    p = subprocess.run([*CLI, "dead-letters", "retry", str(f), "--all", "--destination", "db"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "retried 3: 2 accepted (removed), 1 rejected again (kept)" in p.stdout, p.stdout
    want = [tuple(norm(v) for v in (i, "item 4 fixed" if i == 4 else f"item {i}", i * 0.5)) for i in range(1, 11)]
    assert fetch(kind, target, "items", ["id", "name", "price"]) == sorted(want, key=lambda r: tuple(str(x) for x in r))
    assert fetch(kind, target, "_replicant_offsets", ["stream", "log_offset"]) == applied, (
        "a retry neither moves the applied offset back nor forward"
    )
    with StateStore(f"sqlite:///{state}") as st:
        (left,) = st.find_dead_letters("dlsql")
    assert left["payload"]["id"] == "four" and left["attempts"] == 1 and "column 'id'" in left["reason"]

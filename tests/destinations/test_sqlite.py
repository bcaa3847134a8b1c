"""SQLite destination against real files (the ``sqlite_path`` fixture).

Tables are read back through second connections of the *same* SQLite library the
destination uses (ADBC's): a second library in one process does not share POSIX locks with
the first (see the module docstring of ``replicant.destinations.sqlite``).
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import adbc_driver_sqlite.dbapi as adbc
import pyarrow as pa
import pytest

from replicant.config import DestinationConfig
from replicant.destinations.sqlite import SQLiteDestination
from replicant.errors import ConfigError, ConnectionError, FatalError, RetriableError
from replicant.model import DIALECT_KEY, SQL_TYPE_KEY, ConnectorContext

from . import conformance as cf
from .conformance import changes, make_stream

UTC = dt.UTC


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _run(cur: Any, sql: str, params: tuple | None = None) -> None:
    """A statement without rows, stepped to completion (ADBC's ``execute_update``)."""
    cur.executemany(sql, [params] if params is not None else None)


def _reader(path: Path):
    return adbc.connect(str(path), autocommit=True)


def _query(path: Path, sql: str, args: tuple | None = None) -> list[tuple]:
    con = _reader(path)
    try:
        with con.cursor() as cur:
            if sql.lstrip().upper().startswith(("SELECT", "PRAGMA")):
                cur.execute(sql, args)
                return cur.fetchall()
            _run(cur, sql, args)
            return []
    finally:
        con.close()


@pytest.fixture
def harness(sqlite_path: Path) -> cf.Harness:
    return sqlite_harness(sqlite_path)


def sqlite_harness(sqlite_path: Path) -> cf.Harness:
    """Reads tables back through a second ADBC connection (the destination closed first)."""
    def make(write: str, schema: str | None = None) -> SQLiteDestination:
        return SQLiteDestination(DestinationConfig(name="lite", type="sqlite", path=str(sqlite_path), write=write), ConnectorContext("p"))

    def rows(table: str, schema: str | None = None) -> list[tuple] | None:
        if not _query(sqlite_path, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)):
            return None
        return sorted(_query(sqlite_path, f"SELECT * FROM {_q(table)}"), key=repr)

    def columns(table: str, schema: str | None = None) -> list[str]:
        return [r[0] for r in _query(sqlite_path, "SELECT name FROM pragma_table_info(?)", (table,))]

    return cf.Harness(make=make, rows=rows, columns=columns)


def _dest(path: Path, write: str = "merge", **kw: Any) -> SQLiteDestination:
    d = SQLiteDestination(DestinationConfig(name="lite", type="sqlite", path=str(path), write=write), ConnectorContext("p"), **kw)
    d.open()
    return d


def test_wal_mode(sqlite_path: Path) -> None:
    _dest(sqlite_path).close()
    assert _query(sqlite_path, "PRAGMA journal_mode") == [("wal",)]


# ------------------------------------------------------------------ values


def test_nul_inside_a_string_round_trips(sqlite_path: Path) -> None:
    """SQLite (unlike PostgreSQL) stores NUL inside TEXT; the suite's string check cannot
    include it, so it is checked here."""
    s = make_stream("vals", [pa.field("id", pa.int64()), pa.field("s", pa.string()), pa.field("b", pa.binary())])
    rows = [{"id": 100, "s": "nul \x00 inside", "b": bytes(range(256))}]
    d = _dest(sqlite_path, "append")
    try:
        d.prepare(s)
        d.write(s, changes(s, rows, "insert"), last_offset=0)
    finally:
        d.close()
    assert _query(sqlite_path, "SELECT id, s, b FROM vals ORDER BY id") == [(r["id"], r["s"], r["b"]) for r in rows]


def test_types_round_trip(sqlite_path: Path) -> None:
    fields = [
        pa.field("id", pa.int64()),
        pa.field("u32", pa.uint32()),
        pa.field("i64", pa.int64()),
        pa.field("f64", pa.float64()),
        pa.field("dec", pa.decimal128(38, 10)),
        pa.field("money", pa.decimal128(10, 2)),
        pa.field("big", pa.decimal256(70, 5)),
        pa.field("num", pa.string(), metadata={SQL_TYPE_KEY: b"numeric"}),
        pa.field("flag", pa.bool_()),
        pa.field("d", pa.date32()),
        pa.field("t", pa.time64("us")),
        pa.field("ts", pa.timestamp("us")),
        pa.field("tstz", pa.timestamp("us", tz="Europe/Paris")),
        pa.field("dur", pa.duration("us")),
        pa.field("iv", pa.month_day_nano_interval()),
        pa.field("tags", pa.list_(pa.int32())),
        pa.field("fixed", pa.binary(2)),
        pa.field("cat", pa.dictionary(pa.int8(), pa.string())),
    ]
    s = make_stream("typed", fields, metadata={DIALECT_KEY: b"postgresql"})
    row = {
        "id": 1,
        "u32": 2**32 - 1,
        "i64": -(2**63),
        "f64": 0.1 + 0.2,
        "dec": Decimal("0.0000000001"),
        "money": Decimal("1.10"),
        "big": Decimal("-" + "9" * 65 + ".00001"),
        "num": "3.14159265358979323846264338327950288419716939937510",
        "flag": False,
        "d": dt.date(2024, 2, 29),
        "t": dt.time(1, 2, 3, 4),
        "ts": dt.datetime(2024, 2, 29, 12, 0, 0, 123456),
        "tstz": dt.datetime(2024, 7, 1, 12, 0, tzinfo=UTC),
        "dur": dt.timedelta(hours=-1, microseconds=-5),
        "iv": pa.MonthDayNano([1, -2, 3_000_000_000]),
        "tags": [1, None],
        "fixed": b"\xff\x00",
        "cat": "blue",
    }
    d = _dest(sqlite_path)
    try:
        d.prepare(s)
        d.write(s, changes(s, [row, {"id": 2}], "read"), last_offset=0)
    finally:
        d.close()
    got = _query(sqlite_path, "SELECT * FROM typed ORDER BY id")
    assert got[1] == (2,) + (None,) * (len(fields) - 1)
    r = dict(zip([f.name for f in fields], got[0]))
    assert r["u32"] == 2**32 - 1 and r["i64"] == -(2**63) and r["f64"] == 0.1 + 0.2
    assert r["dec"] == "0.0000000001" and r["money"] == "1.10" and Decimal(r["big"]) == row["big"]  # exact text
    assert r["num"] == row["num"]
    assert r["flag"] == 0 and r["d"] == "2024-02-29" and r["t"] == "01:02:03.000004"
    assert r["ts"] == "2024-02-29 12:00:00.123456" and r["tstz"] == "2024-07-01 12:00:00.000000"
    assert r["dur"] == "-1:00:00.000005" and r["iv"] == "P1M-2DT3S"
    assert json.loads(r["tags"]) == [1, None] and r["fixed"] == b"\xff\x00" and r["cat"] == "blue"
    types = {
        n: (t, a)
        for n, t, a in _query(
            sqlite_path, "SELECT name, type, (SELECT typeof(money) FROM typed WHERE id = 1) FROM pragma_table_info('typed')"
        )
    }
    assert types["money"] == ("DECIMAL_TEXT(10,2)", "text") and types["num"][0] == "DECIMAL_TEXT"
    assert types["ts"][0] == "DATETIME" and types["flag"][0] == "BOOLEAN" and types["id"][0] == "INTEGER"
    # SQLite's date functions read the stored text
    assert _query(sqlite_path, "SELECT datetime(tstz), date(d, '+1 day') FROM typed WHERE id = 1") == [
        ("2024-07-01 12:00:00", "2024-03-01")
    ]


def test_uint64_overflow_fails_whole_write(sqlite_path: Path) -> None:
    s = make_stream("u", [pa.field("id", pa.int64()), pa.field("x", pa.uint64())])
    d = _dest(sqlite_path)
    try:
        d.prepare(s)
        d.write(s, changes(s, [{"id": 1, "x": 2**63 - 1}], "insert"), last_offset=0)
        with pytest.raises(FatalError, match="stream 'u'"):
            d.write(s, changes(s, [{"id": 2, "x": 1}, {"id": 3, "x": 2**63}], "insert"), last_offset=1)
        assert d.applied_offset(s) == 0
    finally:
        d.close()
    assert _query(sqlite_path, "SELECT id, x FROM u") == [(1, 2**63 - 1)]


def test_same_dialect_declared_types(sqlite_path: Path) -> None:
    fields = [
        pa.field("id", pa.int64(), metadata={SQL_TYPE_KEY: b"INTEGER"}),
        pa.field("price", pa.decimal128(10, 2), metadata={SQL_TYPE_KEY: b"NUMERIC(10,2)"}),
        pa.field("name", pa.string(), metadata={SQL_TYPE_KEY: b"NVARCHAR(200)"}),
    ]
    s = make_stream("Track", fields, metadata={DIALECT_KEY: b"sqlite"})
    d = _dest(sqlite_path)
    try:
        d.prepare(s)
        d.write(s, changes(s, [{"id": 1, "price": Decimal("0.99"), "name": "x"}], "insert"), last_offset=0)
    finally:
        d.close()
    assert [r[0] for r in _query(sqlite_path, "SELECT type FROM pragma_table_info('Track')")] == [
        "INTEGER",
        "NUMERIC(10,2)",
        "NVARCHAR(200)",
    ]
    assert _query(sqlite_path, "SELECT price, typeof(price) FROM Track") == [
        (0.99, "real")
    ]  # as a Chinook SQLite source stores it


# ------------------------------------------------------------------ paths and errors


def test_replace_old_table_readable_from_another_connection(sqlite_path: Path) -> None:
    s = make_stream("items", cf.ITEMS)
    d = _dest(sqlite_path, "replace")
    try:
        d.prepare(s)
        d.begin_replace(s)
        d.write(s, changes(s, [{"id": 1, "name": "v1", "qty": 1}], "read"), last_offset=0)
        d.commit_replace(s, last_offset=1)
        reader = _reader(sqlite_path)
        cur = reader.cursor()

        def visible() -> list[tuple]:
            cur.execute("SELECT id, name FROM items")
            return cur.fetchall()

        try:
            d.begin_replace(s)
            d.write(s, changes(s, [{"id": 2, "name": "v2", "qty": 2}], "read"), last_offset=2)
            assert visible() == [(1, "v1")]  # during the replace, the visible table is the old one
            _run(cur, "BEGIN")  # a read transaction open across the swap keeps its snapshot
            assert visible() == [(1, "v1")]
            d.commit_replace(s, last_offset=3)
            assert visible() == [(1, "v1")]
            _run(cur, "COMMIT")
            assert visible() == [(2, "v2")]
        finally:
            cur.close()
            reader.close()
        assert d.applied_offset(s) == 3
    finally:
        d.close()


def test_replace_keeps_views_on_the_table(sqlite_path: Path) -> None:
    s = make_stream("items", cf.ITEMS)
    d = _dest(sqlite_path, "replace")
    try:
        d.prepare(s)
        _query(sqlite_path, "CREATE VIEW big AS SELECT id FROM items WHERE qty > 1")
        d.begin_replace(s)
        d.write(s, changes(s, [{"id": 1, "name": "a", "qty": 1}, {"id": 2, "name": "b", "qty": 2}], "read"), last_offset=0)
        d.commit_replace(s, last_offset=1)
    finally:
        d.close()
    assert _query(sqlite_path, "SELECT id FROM big") == [(2,)]


def test_locked_database_is_retriable(sqlite_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = make_stream("items", cf.ITEMS)
    d = _dest(sqlite_path, "append", busy_timeout_ms=200)
    locker = _reader(sqlite_path)
    lock = locker.cursor()
    try:
        d.prepare(s)
        _run(lock, "BEGIN IMMEDIATE")  # another writer holds the write lock
        with pytest.raises(RetriableError, match="locked"):
            d.write(s, changes(s, [{"id": 1, "name": "a", "qty": 1}], "insert"), last_offset=0)
        _run(lock, "ROLLBACK")
        d.write(s, changes(s, [{"id": 1, "name": "a", "qty": 1}], "insert"), last_offset=0)
        assert d.applied_offset(s) == 0
    finally:
        d.close()
        lock.close()
        locker.close()


def test_missing_folder_is_a_connection_error(tmp_path: Path) -> None:
    d = SQLiteDestination(DestinationConfig(name="lite", type="sqlite", path=str(tmp_path / "nope" / "x.db")), ConnectorContext("p"))
    with pytest.raises(ConnectionError, match="nope"):
        d.open()


def test_url_and_schema_config(tmp_path: Path) -> None:
    target = tmp_path / "via url.db"
    d = SQLiteDestination(DestinationConfig(name="lite", type="sqlite", url=f"sqlite:///{target}"), ConnectorContext("p"))
    d.open()
    d.close()
    assert target.exists()
    bad = SQLiteDestination(DestinationConfig(name="lite", type="sqlite", path=str(target), schema="other"), ConnectorContext("p"))
    with pytest.raises(ConfigError):
        bad.open()


# ------------------------------------------------------------------ Chinook-like data


def test_sqlite_source_reads_what_the_destination_wrote(sqlite_path: Path) -> None:
    """replicant's own SQLite source reads the written file back (after the destination closed)."""
    from replicant.config import SourceConfig
    from replicant.model import ConnectorContext
    from replicant.sources.sqlite import SQLiteSource

    fields = [
        pa.field("id", pa.int64()),
        pa.field("money", pa.decimal128(10, 2)),
        pa.field("ts", pa.timestamp("us")),
        pa.field("tstz", pa.timestamp("us", tz="UTC")),
        pa.field("d", pa.date32()),
        pa.field("t", pa.time64("us")),
        pa.field("flag", pa.bool_()),
        pa.field("s", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
    ]
    s = make_stream("back", fields)
    row = {
        "id": 1,
        "money": Decimal("-12.30"),
        "ts": dt.datetime(2021, 1, 1, 0, 0, 0, 5),
        "tstz": dt.datetime(2024, 7, 1, 12, 0, tzinfo=UTC),
        "d": dt.date(2021, 12, 31),
        "t": dt.time(23, 59, 59, 999999),
        "flag": True,
        "s": "x\\y ü",
        "tags": ["a"],
    }
    d = _dest(sqlite_path)
    try:
        d.prepare(s)
        d.write(s, changes(s, [row, {"id": 2}], "read"), last_offset=0)
    finally:
        d.close()
    source = SQLiteSource(SourceConfig(type="sqlite", url=f"sqlite:///{sqlite_path}"), ConnectorContext("test"))
    try:
        stream = next(x for x in source.discover() if x.table_name == "back")
        batches = [b.data for b in source.read(stream, None)]
    finally:
        source.close()
    got = sorted(pa.Table.from_batches(batches).drop_columns(["_op", "_pos", "_ts"]).to_pylist(), key=lambda r: r["id"])
    assert Decimal(got[0]["money"]) == row["money"]  # DECIMAL_TEXT: exact digits
    assert got[0]["ts"] == row["ts"] and got[0]["tstz"] == dt.datetime(2024, 7, 1, 12, 0)  # UTC wall time
    assert (got[0]["d"], got[0]["t"], got[0]["flag"], got[0]["s"]) == (row["d"], row["t"], True, row["s"])
    assert json.loads(got[0]["tags"]) == ["a"]
    assert got[1] == {f.name: None for f in fields} | {"id": 2}

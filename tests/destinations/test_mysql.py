"""MariaDB/MySQL destination against a real throwaway MariaDB (the ``mysql_url`` fixture)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pymysql
import pytest

from replicant.config import DestinationConfig
from replicant.destinations.mysql import MySQLDestination
from replicant.errors import ConnectionError, FatalError, RetriableError
from replicant.model import DIALECT_KEY, SQL_TYPE_KEY, ConnectorContext

from . import conformance as cf
from .conformance import changes, make_stream

UTC = dt.UTC


def _connect(url: str, database: str | None = None) -> pymysql.connections.Connection:
    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname,
        port=parts.port,
        user=unquote(parts.username or "root"),
        database=database or unquote(parts.path.lstrip("/")),
        charset="utf8mb4",
        autocommit=True,
    )


def _query(url: str, sql: str, args: Any = None, database: str | None = None) -> list[tuple]:
    conn = _connect(url, database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def _column_types(url: str, table: str) -> dict[str, str]:
    """``{column: COLUMN_TYPE}`` of a table in the URL's database, in table order."""
    sql = (
        "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION"
    )
    return dict(_query(url, sql, (table,)))


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@pytest.fixture
def harness(mysql_url: str) -> cf.Harness:
    return mysql_harness(mysql_url)


def mysql_harness(mysql_url: str) -> cf.Harness:
    """Reads tables back through a second connection (information_schema, ``SELECT *``)."""
    db = unquote(urlsplit(mysql_url).path.lstrip("/"))

    def make(write: str, schema: str | None = None) -> MySQLDestination:
        cfg = DestinationConfig(name="my", type="mysql", url=mysql_url, write=write, schema=schema)
        return MySQLDestination(cfg, ConnectorContext("p"))

    def exists(table: str, schema: str | None) -> bool:
        rows = _query(mysql_url, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (schema or db,))
        return any(r[0] == table for r in rows)

    def rows(table: str, schema: str | None = None) -> list[tuple] | None:
        if not exists(table, schema):
            return None
        return sorted(_query(mysql_url, f"SELECT * FROM {_q(schema or db)}.{_q(table)}"), key=repr)

    def columns(table: str, schema: str | None = None) -> list[str]:
        got = _query(
            mysql_url,
            "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s ORDER BY ORDINAL_POSITION",
            (schema or db,),
        )
        return [c for t, c in got if t == table]

    return cf.Harness(make=make, rows=rows, columns=columns)


def test_hostile_identifiers_in_url_database(harness: cf.Harness) -> None:
    """The suite writes into a hostile database named by ``schema:``; here, the URL's own."""
    cf.check_hostile_identifiers(harness)


# ------------------------------------------------------------------ values


def _dest(url: str, write: str = "merge", **kw: Any) -> MySQLDestination:
    d = MySQLDestination(DestinationConfig(name="my", type="mysql", url=url, write=write, **kw), ConnectorContext("p"))
    d.open()
    return d


def test_types_round_trip(mysql_url: str) -> None:
    fields = [
        pa.field("id", pa.int64()),
        pa.field("i8", pa.int8()),
        pa.field("u64", pa.uint64()),
        pa.field("i64", pa.int64()),
        pa.field("f64", pa.float64()),
        pa.field("f32", pa.float32()),
        pa.field("dec", pa.decimal128(38, 10)),
        pa.field("money", pa.decimal128(10, 2)),
        pa.field("big", pa.decimal256(70, 5)),
        pa.field("num", pa.string(), metadata={SQL_TYPE_KEY: b"numeric"}),  # unconstrained numeric from PG
        pa.field("flag", pa.bool_()),
        pa.field("d", pa.date32()),
        pa.field("t", pa.time64("us")),
        pa.field("ts", pa.timestamp("us")),
        pa.field("tstz", pa.timestamp("us", tz="UTC")),
        pa.field("tsns", pa.timestamp("ns", tz="Europe/Paris")),
        pa.field("dur", pa.duration("us")),
        pa.field("iv", pa.month_day_nano_interval()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("obj", pa.struct([("a", pa.int32()), ("b", pa.string())])),
        pa.field("fixed", pa.binary(4)),
        pa.field("cat", pa.dictionary(pa.int8(), pa.string())),
    ]
    s = make_stream("typed", fields, metadata={DIALECT_KEY: b"postgresql"})
    row = {
        "id": 1,
        "i8": -128,
        "u64": 2**64 - 1,
        "i64": -(2**63),
        "f64": 0.1 + 0.2,
        "f32": 1.5,
        "dec": Decimal("-1234567890123456789012345678.0123456789"),
        "money": Decimal("99999999.99"),
        "big": Decimal("1" * 65 + ".12345"),
        "num": "3.14159265358979323846264338327950288419716939937510",
        "flag": True,
        "d": dt.date(1999, 12, 31),
        "t": dt.time(23, 59, 59, 999999),
        "ts": dt.datetime(2024, 2, 29, 12, 0, 0, 123456),
        "tstz": dt.datetime(2024, 1, 1, 23, 30, tzinfo=UTC),
        "tsns": dt.datetime(2024, 7, 1, 12, 0, 0, 1, tzinfo=UTC),
        "dur": dt.timedelta(hours=-30, microseconds=-5),
        "iv": pa.MonthDayNano([14, 3, 4_500_000_000]),
        "tags": ["a", 'b"', None],
        "obj": {"a": 1, "b": "x\\y"},
        "fixed": b"\x00\x01\xfe\xff",
        "cat": "red",
    }
    empty = {f.name: None for f in fields} | {"id": 2}
    d = _dest(mysql_url)
    try:
        d.prepare(s)
        d.write(s, changes(s, [row, empty], "read"), last_offset=0)
    finally:
        d.close()
    got = _query(mysql_url, "SELECT * FROM typed ORDER BY id")
    assert got[1] == (2,) + (None,) * (len(fields) - 1)
    r = dict(zip([f.name for f in fields], got[0]))
    assert r["i8"] == -128 and r["u64"] == 2**64 - 1 and r["i64"] == -(2**63)
    assert r["f64"] == 0.1 + 0.2 and r["f32"] == 1.5
    assert r["dec"] == row["dec"] and str(r["money"]) == "99999999.99"
    assert r["big"] == "1" * 65 + ".12345"  # beyond DECIMAL(65): exact text
    assert r["num"] == row["num"]
    assert r["flag"] == 1 and r["d"] == row["d"] and r["t"] == dt.timedelta(hours=23, minutes=59, seconds=59, microseconds=999999)
    assert r["ts"] == row["ts"]
    assert r["tstz"] == dt.datetime(2024, 1, 1, 23, 30)  # stored as UTC wall time
    assert r["tsns"] == dt.datetime(2024, 7, 1, 12, 0, 0, 1)  # Europe/Paris-typed, stored as UTC
    assert r["dur"] == dt.timedelta(hours=-30, microseconds=-5)
    assert r["iv"] == "P14M3DT4.5S"
    assert r["tags"] == '["a","b\\"",null]' and r["obj"] == '{"a":1,"b":"x\\\\y"}'
    assert r["fixed"] == b"\x00\x01\xfe\xff" and r["cat"] == "red"
    types = _column_types(mysql_url, "typed")
    assert types["dec"] == "decimal(38,10)" and types["ts"] == "datetime(6)" and types["flag"] == "tinyint(1)"
    assert types["u64"] == "bigint(20) unsigned" and types["num"] == "longtext" and types["fixed"] == "binary(4)"


def test_same_dialect_declared_types(mysql_url: str) -> None:
    meta = {DIALECT_KEY: b"mysql"}
    fields = [
        pa.field("code", pa.string(), metadata={SQL_TYPE_KEY: b"char(3)"}),
        pa.field("amount", pa.decimal256(40, 20), metadata={SQL_TYPE_KEY: b"decimal(40,20)"}),
        pa.field("mood", pa.string(), metadata={SQL_TYPE_KEY: b"enum('happy','sad')"}),
        pa.field("bits", pa.int64(), metadata={SQL_TYPE_KEY: b"bit(5)"}),
        pa.field("yes", pa.bool_(), metadata={SQL_TYPE_KEY: b"tinyint(1)"}),
        pa.field("at", pa.timestamp("us", tz="UTC"), metadata={SQL_TYPE_KEY: b"timestamp(3)"}),
    ]
    s = make_stream("declared", fields, key=("code",), metadata=meta)
    d = _dest(mysql_url)
    try:
        d.prepare(s)
        d.write(
            s,
            changes(
                s,
                [
                    {
                        "code": "abc",
                        "amount": Decimal("12345678901234567890.12345678901234567890"),
                        "mood": "sad",
                        "bits": 21,
                        "yes": False,
                        "at": dt.datetime(2030, 1, 1, 0, 0, 0, 123000, tzinfo=UTC),
                    },
                ],
                "insert",
            ),
            last_offset=0,
        )
        with pytest.raises(FatalError, match=r"truncated for column .code"):  # "abcd" is too long for char(3): refused
            d.write(s, changes(s, [{"code": "abcd"}], "insert"), last_offset=1)
        assert d.applied_offset(s) == 0
    finally:
        d.close()
    types = _column_types(mysql_url, "declared")
    assert list(types.values()) == ["char(3)", "decimal(40,20)", "enum('happy','sad')", "bit(5)", "tinyint(1)", "timestamp(3)"]
    got = _query(mysql_url, "SELECT code, amount, mood, bits + 0, yes, CAST(at AS CHAR) FROM declared")
    assert got == [("abc", Decimal("12345678901234567890.12345678901234567890"), "sad", 21, 0, "2030-01-01 00:00:00.123")]


def test_string_keys_are_exact_and_sized(mysql_url: str) -> None:
    """Key strings become VARCHAR(n) with a binary no-pad collation: 'a', 'A' and 'a ' are three keys."""
    s = make_stream(
        "k",
        [
            pa.field("k", pa.string(), metadata={SQL_TYPE_KEY: b"character varying(40)"}),
            pa.field("b", pa.binary()),
            pa.field("v", pa.int32()),
        ],
        key=("k", "b"),
    )
    d = _dest(mysql_url)
    try:
        d.prepare(s)
        keys = ["a", "A", "a ", "é", "e"]
        d.write(s, changes(s, [{"k": k, "b": b"\x00", "v": i} for i, k in enumerate(keys)], "insert"), last_offset=0)
        d.write(
            s, changes(s, [{"k": "a ", "b": b"\x00", "v": 99}, {"k": "A", "b": b"\x00"}], ["update", "delete"]), last_offset=1
        )
    finally:
        d.close()
    assert sorted(_query(mysql_url, "SELECT k, v FROM k")) == sorted([("a", 0), ("a ", 99), ("é", 3), ("e", 4)])
    types = _column_types(mysql_url, "k")
    assert types == {"k": "varchar(40)", "b": "varbinary(255)", "v": "int(11)"}


def test_unstorable_value_fails_whole_write(mysql_url: str) -> None:
    s = make_stream("f", [pa.field("id", pa.int64()), pa.field("x", pa.float64())])
    d = _dest(mysql_url)
    try:
        d.prepare(s)
        d.write(s, changes(s, [{"id": 1, "x": 1.0}], "insert"), last_offset=0)
        with pytest.raises(FatalError, match=r"`f`"):
            d.write(s, changes(s, [{"id": 2, "x": 2.0}, {"id": 3, "x": float("nan")}], "insert"), last_offset=1)
        assert d.applied_offset(s) == 0
    finally:
        d.close()
    assert _query(mysql_url, "SELECT id, x FROM f") == [(1, 1.0)]


# ------------------------------------------------------------------ paths and errors


def test_wrong_password_is_a_connection_error(mysql_url: str) -> None:
    """Beyond the suite's check (host named, password hidden): port, user and database named."""
    parts = urlsplit(mysql_url)
    bad = f"mysql://root:Sup3rSecret%21@{parts.hostname}:{parts.port}{parts.path}"
    d = MySQLDestination(DestinationConfig(name="my", type="mysql", url=bad), ConnectorContext("p"))
    with pytest.raises(ConnectionError) as info:
        d.open()
    text = str(info.value)
    assert "Sup3rSecret" not in text and "Sup3rSecret" not in repr(info.value.args)
    assert str(parts.port) in text and "root" in text and parts.path.lstrip("/") in text


def test_unreachable_server_is_a_connection_error() -> None:
    d = MySQLDestination(DestinationConfig(name="my", type="mysql", url="mysql://u:pw@127.0.0.1:1/db"), ConnectorContext("p"))
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:1"):
        d.open()


def test_lost_connection_is_retriable_then_reconnects(mysql_url: str) -> None:
    s = make_stream("items", cf.ITEMS)
    d = _dest(mysql_url, "append")
    try:
        d.prepare(s)
        d.write(s, changes(s, [{"id": 1, "name": "a", "qty": 1}], "insert"), last_offset=0)
        [(thread_id,)] = d.query("SELECT CONNECTION_ID()")
        _query(mysql_url, f"KILL CONNECTION {int(thread_id)}")
        with pytest.raises(RetriableError):
            d.write(s, changes(s, [{"id": 2, "name": "b", "qty": 2}], "insert"), last_offset=1)
        assert d.applied_offset(s) == 0  # reconnected
        d.write(s, changes(s, [{"id": 2, "name": "b", "qty": 2}], "insert"), last_offset=1)
    finally:
        d.close()
    assert _query(mysql_url, "SELECT id FROM items ORDER BY id") == [(1,), (2,)]


def test_replace_old_table_readable_from_another_connection(mysql_url: str) -> None:
    s = make_stream("items", cf.ITEMS)
    d = _dest(mysql_url, "replace")
    reader = _connect(mysql_url)
    try:
        d.prepare(s)
        d.begin_replace(s)
        d.write(s, changes(s, [{"id": 1, "name": "v1", "qty": 1}], "read"), last_offset=0)
        d.commit_replace(s, last_offset=1)
        d.begin_replace(s)
        d.write(s, changes(s, [{"id": 2, "name": "v2", "qty": 2}], "read"), last_offset=2)
        with reader.cursor() as cur:  # during the replace, the visible table is the old one
            cur.execute("SELECT id, name FROM items")
            assert cur.fetchall() == ((1, "v1"),)
        d.commit_replace(s, last_offset=3)
        with reader.cursor() as cur:
            cur.execute("SELECT id, name FROM items")
            assert cur.fetchall() == ((2, "v2"),)
            cur.execute("SHOW TABLES")
            assert sorted(r[0] for r in cur.fetchall()) == ["_replicant_offsets", "items"]
        assert d.applied_offset(s) == 3
    finally:
        reader.close()
        d.close()


def test_long_table_name_gets_short_pending_name(mysql_url: str) -> None:
    name = "t" * 60
    s = make_stream(name, cf.ITEMS)
    d = _dest(mysql_url, "replace")
    try:
        d.prepare(s)
        d.begin_replace(s)
        d.write(s, changes(s, [{"id": 1, "name": "x", "qty": 1}], "read"), last_offset=0)
        d.commit_replace(s, last_offset=1)
    finally:
        d.close()
    assert _query(mysql_url, f"SELECT id FROM {name}") == [(1,)]


def test_mysql_source_reads_what_the_destination_wrote(mysql_url: str) -> None:
    """replicant's own MySQL source reads the written table back with the same values."""
    from replicant.config import SourceConfig
    from replicant.model import ConnectorContext
    from replicant.sources.mysql import MySQLSource

    fields = [
        pa.field("id", pa.int64()),
        pa.field("money", pa.decimal128(10, 2)),
        pa.field("ts", pa.timestamp("us")),
        pa.field("tstz", pa.timestamp("us", tz="UTC")),
        pa.field("d", pa.date32()),
        pa.field("t", pa.time64("us")),
        pa.field("s", pa.string()),
        pa.field("b", pa.binary()),
    ]
    s = make_stream("back", fields)
    row = {
        "id": 1,
        "money": Decimal("-12.30"),
        "ts": dt.datetime(2021, 1, 1, 0, 0, 0, 5),
        "tstz": dt.datetime(2024, 7, 1, 12, 0, tzinfo=UTC),
        "d": dt.date(2021, 12, 31),
        "t": dt.time(23, 59, 59, 999999),
        "s": "x\\y 😀",
        "b": b"\x00\xff",
    }
    d = _dest(mysql_url)
    try:
        d.prepare(s)
        d.write(s, changes(s, [row, {"id": 2}], "read"), last_offset=0)
    finally:
        d.close()
    source = MySQLSource(SourceConfig(type="mysql", url=mysql_url), ConnectorContext("test"))
    try:
        stream = next(x for x in source.discover() if x.table_name == "back")
        batches = [b.data for b in source.read(stream, None)]
    finally:
        source.close()
    got = sorted(pa.Table.from_batches(batches).drop_columns(["_op", "_pos", "_ts"]).to_pylist(), key=lambda r: r["id"])
    assert got[0] == row | {"tstz": dt.datetime(2024, 7, 1, 12, 0)}  # DATETIME(6): UTC wall time
    assert got[1] == {f.name: None for f in fields} | {"id": 2}

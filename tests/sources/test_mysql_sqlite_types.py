"""MariaDB and SQLite type mappings read exactly, and values that cannot be read are reported."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, time
from decimal import Decimal

import pyarrow as pa
import pytest

from replicant.errors import FatalError

from .dbs import Db, data_of, read_all

MYSQL_DDL = """
CREATE TABLE t (
  id int PRIMARY KEY, ti tinyint, tb tinyint(1), tu tinyint unsigned, su smallint unsigned,
  mi mediumint, mu mediumint unsigned, iu int unsigned, bi bigint, bu bigint unsigned,
  d122 decimal(12,2), d6530 decimal(65,30), d3020 decimal(30,20), f float, dd double,
  c char(5), vc varchar(20), tx text, bn binary(4), vb varbinary(10), bl blob,
  dt date, tm time(6), dtm datetime(6), dtm0 datetime, ts timestamp(6) NULL, yr year,
  e enum('a','b c'), st set('x','y'), j json, b1 bit(1), b5 bit(5), b64 bit(64)
) DEFAULT CHARSET utf8mb4
"""
MYSQL_ROW = (
    "(1, -128, 1, 255, 65535, -8388608, 16777215, 4294967295, -9223372036854775808, 18446744073709551615, "
    "1234567890.12, 12345678901234567890123456789012345.123456789012345678901234567891, "
    "1234567890.12345678901234567891, 1.5, 2.5, 'ab', 'x😀y', 'te''xt\\\\b', 'ab', 'xyz', 'blob', "
    "'2021-01-02', '23:59:59.999999', '2021-01-02 03:04:05.678901', '2021-01-02 03:04:05', "
    "'2021-01-02 03:04:05.678901', 2021, 'b c', 'x,y', '{\"a\": [1, 2]}', b'1', b'10101', 18446744073709551615)"
)


def test_mysql_types_read_exactly(mysql_url: str) -> None:
    db = Db("mysql", mysql_url)
    db.execute(MYSQL_DDL, f"INSERT INTO t VALUES {MYSQL_ROW}", "INSERT INTO t (id) VALUES (2)")
    src, (s,) = db.streams(["t"])
    with src:
        types = {f.name: f.type for f in s.schema}
        assert types == {
            "id": pa.int32(), "ti": pa.int8(), "tb": pa.int8(), "tu": pa.uint8(), "su": pa.uint16(),
            "mi": pa.int32(), "mu": pa.uint32(), "iu": pa.uint32(), "bi": pa.int64(), "bu": pa.uint64(),
            "d122": pa.decimal128(12, 2), "d6530": pa.decimal256(65, 30), "d3020": pa.decimal128(30, 20),
            "f": pa.float32(), "dd": pa.float64(), "c": pa.string(), "vc": pa.string(), "tx": pa.string(),
            "bn": pa.binary(), "vb": pa.binary(), "bl": pa.binary(), "dt": pa.date32(), "tm": pa.time64("us"),
            "dtm": pa.timestamp("us"), "dtm0": pa.timestamp("us"), "ts": pa.timestamp("us", tz="UTC"),
            "yr": pa.int16(), "e": pa.string(), "st": pa.string(), "j": pa.string(), "b1": pa.bool_(),
            "b5": pa.uint64(), "b64": pa.uint64(),
        }
        rows = data_of(read_all(src, s)).to_pylist()
    assert rows[1] == {"id": 2, **{k: None for k in types if k != "id"}}
    r = rows[0]
    assert (r["ti"], r["tb"], r["tu"], r["su"], r["mi"], r["mu"], r["iu"]) == (-128, 1, 255, 65535, -8388608, 16777215, 4294967295)
    assert (r["bi"], r["bu"]) == (-9223372036854775808, 18446744073709551615)
    assert r["d122"] == Decimal("1234567890.12")
    assert r["d6530"] == Decimal("12345678901234567890123456789012345.123456789012345678901234567891")
    assert r["d3020"] == Decimal("1234567890.12345678901234567891")
    assert (r["f"], r["dd"], r["c"], r["vc"], r["tx"]) == (1.5, 2.5, "ab", "x😀y", "te'xt\\b")
    assert (r["bn"], r["vb"], r["bl"]) == (b"ab\x00\x00", b"xyz", b"blob")
    assert r["dt"] == date(2021, 1, 2) and r["tm"] == time(23, 59, 59, 999999)
    assert r["dtm"] == datetime(2021, 1, 2, 3, 4, 5, 678901) and r["dtm0"] == datetime(2021, 1, 2, 3, 4, 5)
    assert r["yr"] == 2021 and (r["e"], r["st"], r["j"]) == ("b c", "x,y", '{"a": [1, 2]}')
    assert (r["b1"], r["b5"], r["b64"]) == (True, 21, 18446744073709551615)


def test_mysql_timestamp_is_utc_whatever_the_session_time_zone(mysql_url: str) -> None:
    """A TIMESTAMP is an instant: inserted at +05:00 wall time, it reads as that instant in UTC."""
    db = Db("mysql", mysql_url)
    db.execute("CREATE TABLE ev (id int PRIMARY KEY, at timestamp(6) NULL)")
    from urllib.parse import urlsplit

    import pymysql

    p = urlsplit(mysql_url)
    conn = pymysql.connect(host=p.hostname, port=p.port, user=p.username, database=p.path.lstrip("/"), autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+05:00'")
            cur.execute("INSERT INTO ev VALUES (1, '2024-06-01 12:00:00.5'), (2, '2024-06-01 12:00:01')")
    finally:
        conn.close()
    src, (s,) = db.streams([{"table": "ev", "mode": "cursor", "cursor": "at"}])
    with src:
        batches = read_all(src, s)
        got = data_of(batches).column("at").to_pylist()
        assert got == [datetime(2024, 6, 1, 7, 0, 0, 500000, tzinfo=UTC), datetime(2024, 6, 1, 7, 0, 1, tzinfo=UTC)]
        assert read_all(src, s, batches[-1].position) == [], "the cursor compares the same instants"


def test_mysql_zero_dates_read_as_null_and_out_of_day_times_stop_the_stream(mysql_url: str) -> None:
    db = Db("mysql", mysql_url)
    db.execute("CREATE TABLE z (id int PRIMARY KEY, d date, dt datetime)")
    from urllib.parse import urlsplit

    import pymysql

    p = urlsplit(mysql_url)
    conn = pymysql.connect(host=p.hostname, port=p.port, user=p.username, database=p.path.lstrip("/"), autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_mode = ''")
            cur.execute("INSERT INTO z VALUES (1, '0000-00-00', '0000-00-00 00:00:00'), (2, '2021-01-01', '2021-01-01 10:00:00')")
            cur.execute("CREATE TABLE d (id int PRIMARY KEY, took time)")
            cur.execute("INSERT INTO d VALUES (1, '12:00:00'), (2, '125:00:00')")
    finally:
        conn.close()
    src, (z, d) = db.streams(["z", "d"])
    with src:
        assert data_of(read_all(src, z)).to_pylist() == [
            {"id": 1, "d": None, "dt": None}, {"id": 2, "d": date(2021, 1, 1), "dt": datetime(2021, 1, 1, 10)},
        ]
        with pytest.raises(FatalError) as e:
            read_all(src, d)
    assert "'took'" in str(e.value) and "time of day" in str(e.value)


def test_sqlite_declared_types_and_storage(sqlite_path) -> None:
    conn = sqlite3.connect(sqlite_path)
    conn.executescript("""
        CREATE TABLE s (id INTEGER PRIMARY KEY, price NUMERIC(10,2), big DECIMAL(30,4), free NUMERIC,
                        r REAL, t NVARCHAR(20), b BLOB, flag BOOLEAN, d DATE, dt DATETIME, tm TIME, anything);
        INSERT INTO s VALUES (1, 0.99, 12345678901234567890.1234, 3, 0.1, 'x', x'00ff', 1, '2024-02-29',
                              '2024-01-01 10:00:00', '12:30:00.5', 42);
        INSERT INTO s VALUES (2, 2, 1, 2.5, 1, 'y', NULL, 0, NULL, '2024-01-01T10:00:00.123456', NULL, 'text');
        INSERT INTO s (id) VALUES (3);
        CREATE TABLE bad (id INTEGER PRIMARY KEY, n INTEGER);
        INSERT INTO bad VALUES (1, 1), (2, 'two');
    """)
    conn.close()
    db = Db("sqlite", "sqlite:///" + str(sqlite_path))
    src, (s, bad) = db.streams(["s", "bad"])
    with src:
        assert {f.name: f.type for f in s.schema} == {
            "id": pa.int64(), "price": pa.decimal128(10, 2), "big": pa.decimal128(30, 4), "free": pa.float64(),
            "r": pa.float64(), "t": pa.string(), "b": pa.binary(), "flag": pa.bool_(), "d": pa.date32(),
            "dt": pa.timestamp("us"), "tm": pa.time64("us"), "anything": pa.string(),
        }
        rows = data_of(read_all(src, s)).to_pylist()
        big = rows[0].pop("big")
        assert rows[0] == {
            "id": 1, "price": Decimal("0.99"),
            "free": 3.0, "r": 0.1, "t": "x", "b": b"\x00\xff", "flag": True, "d": date(2024, 2, 29),
            "dt": datetime(2024, 1, 1, 10), "tm": time(12, 30, 0, 500000), "anything": "42",
        }
        # SQLite kept the 24-digit DECIMAL as a REAL: what is read is that REAL, at the declared scale
        assert big == Decimal(float("12345678901234567890.1234")).quantize(Decimal("0.0001"))
        assert rows[1]["price"] == Decimal("2.00") and rows[1]["flag"] is False and rows[1]["anything"] == "text"
        assert rows[1]["dt"] == datetime(2024, 1, 1, 10, 0, 0, 123456)
        assert rows[2] == {"id": 3, "big": None, **{k: None for k in rows[0] if k != "id"}}
        with pytest.raises(FatalError) as e:
            read_all(src, bad)
    assert "'n'" in str(e.value) and "str" in str(e.value) and "exclude the column" in str(e.value)

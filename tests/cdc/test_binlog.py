"""``mode: log`` on MariaDB: snapshot, binlog changes, resume, types, truncate, schema change.

Every test drives :meth:`MySQLSource.capture` directly against the session's throwaway
MariaDB (ROW binlog) and replays the change sets into a dict keyed by the primary key,
which must then equal the table as a ``full`` read sees it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pymysql
import pytest

from replicant.config import SourceConfig
from replicant.errors import FatalError
from replicant.model import ConnectorContext, Position, Stream
from replicant.sources.base import ChangeSet
from replicant.sources.mysql import MySQLSource


def _conn(url: str) -> pymysql.connections.Connection:
    p = urlsplit(url)
    return pymysql.connect(host=p.hostname, port=p.port, user=p.username, password=p.password or "",
                           database=p.path.lstrip("/"), charset="utf8mb4", autocommit=True)


def sql(url: str, *statements: str | tuple[str, Any]) -> None:
    conn = _conn(url)
    try:
        with conn.cursor() as cur:
            for s in statements:
                if isinstance(s, tuple):
                    cur.execute(s[0], s[1])
                else:
                    cur.execute(s)
    finally:
        conn.close()


def source(url: str, tables: list[str], name: str, **kw: Any) -> tuple[MySQLSource, dict[str, Stream]]:
    src = MySQLSource(SourceConfig(type="mysql", url=url, streams=[{"table": t} for t in tables], **kw), ConnectorContext(name))
    found = {s.name: replace(s, mode="log") for s in src.discover() if s.name in tables}
    return src, found


def full_rows(src: MySQLSource, stream: Stream) -> dict[Any, dict]:
    batches = [b.data for b in src.read(replace(stream, mode="full"), None)]
    rows = pa.Table.from_batches(batches).drop_columns(["_op", "_pos", "_ts"]).to_pylist()
    return {_pk(stream, r): r for r in rows}


def _pk(stream: Stream, row: dict) -> Any:
    return tuple(row[k] for k in stream.primary_key)


class Replica:
    """Applies change sets in order, as a merge destination would, and keeps positions."""

    def __init__(self, streams: dict[str, Stream]) -> None:
        self.streams = streams
        self.state: dict[str, dict[Any, dict]] = {n: {} for n in streams}
        self.positions: dict[str, Position | None] = dict.fromkeys(streams)
        self.resume: Position | None = None
        self.seen: dict[str, list[tuple]] = {n: [] for n in streams}  # (op, _pos, key) of changes
        self.schemas: dict[str, list[pa.Schema]] = {n: [] for n in streams}

    def apply(self, cs: ChangeSet, *, ack: bool = True) -> None:
        for name in cs.truncated:
            self.state[name].clear()
        for name, batch in cs.batches.items():
            stream = self.streams[name]
            self.schemas[name].append(batch.schema)
            for row in batch.to_pylist():
                op, pos, ts = row.pop("_op"), row.pop("_pos"), row.pop("_ts")
                assert ts.tzinfo is not None
                key = _pk(stream, row)
                if op != "read":
                    self.seen[name].append((op, pos, key))
                if op == "delete":
                    self.state[name].pop(key, None)
                else:
                    self.state[name][key] = row
            self.positions[name] = cs.position_of(name)
        if ack:
            self.resume = cs.position

    def run(self, src: MySQLSource, *, follow: bool = False, stop: threading.Event | None = None) -> list[ChangeSet]:
        sets = list(src.capture(list(self.streams.values()), dict(self.positions), resume=self.resume,
                                follow=follow, stop=stop or threading.Event()))
        for cs in sets:
            self.apply(cs)
        return sets


def test_snapshot_then_inserts_updates_deletes_round_trip(mysql_url: str, unique_name: str) -> None:
    sql(mysql_url, "CREATE TABLE t (id int PRIMARY KEY, name varchar(20), amount decimal(10,2))",
        "INSERT INTO t VALUES (1, 'a', 1.50), (2, 'b', 2.25), (3, 'c', NULL)")
    src, streams = source(mysql_url, ["t"], unique_name)
    with src:
        r = Replica(streams)
        sets = r.run(src)
        assert {op for cs in sets for op in cs.batches["t"].column("_op").to_pylist()} == {"read"}
        assert "snapshot" not in r.positions["t"]  # the snapshot finished
        assert r.state["t"] == full_rows(src, streams["t"])

        sql(mysql_url, "INSERT INTO t VALUES (4, 'd', 4.00), (5, 'e', 5.00)", "UPDATE t SET name = 'B' WHERE id = 2",
            "DELETE FROM t WHERE id = 1", "UPDATE t SET id = 30 WHERE id = 3",  # a key change
            "UPDATE t SET amount = amount + 1 WHERE id >= 4")
        sets = r.run(src)
        ops = [op for op, _, _ in r.seen["t"]]
        assert ops == ["insert", "insert", "update", "delete", "delete", "insert", "update", "update"]
        assert r.state["t"] == full_rows(src, streams["t"])
        assert r.state["t"][(30,)] == {"id": 30, "name": "c", "amount": None}
        assert r.state["t"][(4,)]["amount"] == Decimal("5.00")
        for cs in sets:  # the change set position is after its last change
            for p in cs.batches["t"].column("_pos").to_pylist():
                assert (json.loads(p)["file"], json.loads(p)["pos"]) <= (cs.position["file"], cs.position["pos"])

        # caught up: nothing more, and a second capture from the same place is empty
        assert all(not cs.batches for cs in r.run(src))


def test_one_transaction_touching_two_tables_is_one_change_set(mysql_url: str, unique_name: str) -> None:
    sql(mysql_url, "CREATE TABLE a (id int PRIMARY KEY, v int)", "CREATE TABLE b (id int PRIMARY KEY, v int)")
    src, streams = source(mysql_url, ["a", "b"], unique_name, batch_size=1)  # flush after every transaction
    with src:
        r = Replica(streams)
        r.run(src)
        conn = _conn(mysql_url)
        try:
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("INSERT INTO a VALUES (1, 1), (2, 2)")
                cur.execute("INSERT INTO b VALUES (1, 10)")
                cur.execute("UPDATE a SET v = 3 WHERE id = 2")
                cur.execute("COMMIT")
                cur.execute("INSERT INTO a VALUES (3, 3)")  # a transaction of its own
        finally:
            conn.close()
        sets = [cs for cs in r.run(src) if cs.batches]
        assert len(sets) == 2
        first, second = sets
        assert set(first.batches) == {"a", "b"}
        assert first.batches["a"].column("_op").to_pylist() == ["insert", "insert", "update"]
        assert first.batches["b"].num_rows == 1
        assert len(set(first.batches["a"].column("_pos").to_pylist() + first.batches["b"].column("_pos").to_pylist())) == 1
        assert set(second.batches) == {"a"} and second.batches["a"].num_rows == 1
        assert r.state["a"] == full_rows(src, streams["a"]) and r.state["b"] == full_rows(src, streams["b"])


def test_restart_from_positions_has_no_duplicates_or_gaps(mysql_url: str, unique_name: str) -> None:
    sql(mysql_url, "CREATE TABLE a (id int PRIMARY KEY, v int)", "CREATE TABLE b (id int PRIMARY KEY, v int)")
    src, streams = source(mysql_url, ["a", "b"], unique_name, batch_size=1)
    with src:
        r = Replica(streams)
        r.run(src)
        for i in range(1, 7):
            sql(mysql_url, f"INSERT INTO a VALUES ({i}, {i})", f"INSERT INTO b VALUES ({i}, {i})",
                f"UPDATE a SET v = v * 10 WHERE id = {i}")
        sets = [cs for cs in src.capture(list(streams.values()), dict(r.positions), resume=r.resume,
                                         follow=False, stop=threading.Event()) if cs.batches]
        assert len(sets) == 18
        # crash: the first 9 change sets are durable, only the first 4 were acknowledged, and
        # stream a's batch of set 10 was appended too (a is ahead of b)
        for cs in sets[:4]:
            r.apply(cs)
        for cs in sets[4:9]:
            r.apply(cs, ack=False)
        tenth = sets[9]
        assert "a" in tenth.batches or "b" in tenth.batches
        for name in tenth.batches:
            if name == "a":
                r.apply(ChangeSet({"a": tenth.batches["a"]}, tenth.position), ack=False)
        r.run(src)
        for name in streams:
            assert len(r.seen[name]) == len(set(r.seen[name])), f"{name}: a change came twice"
        assert [op for op, _, _ in r.seen["a"]] == ["insert", "update"] * 6
        assert [op for op, _, _ in r.seen["b"]] == ["insert"] * 6
        assert r.state["a"] == full_rows(src, streams["a"]) and r.state["b"] == full_rows(src, streams["b"])


def test_snapshot_hands_off_to_the_binlog_under_concurrent_writes(mysql_url: str, unique_name: str) -> None:
    sql(mysql_url, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)")
    sql(mysql_url, ("INSERT INTO t VALUES " + ", ".join(["(%s, %s)"] * 3000), [x for i in range(3000) for x in (i, i)]))
    src, streams = source(mysql_url, ["t"], unique_name, batch_size=200)
    done, twenty = threading.Event(), threading.Event()
    wrote: list[int] = []

    def writer() -> None:
        conn = _conn(mysql_url)
        try:
            with conn.cursor() as cur:
                i = 0
                while not done.is_set() or i < 30:
                    cur.execute("UPDATE t SET v = v + 1 WHERE id = %s", (i * 97 % 3000,))
                    cur.execute("DELETE FROM t WHERE id = %s", (i * 89 % 3000 + 1,))
                    cur.execute("INSERT INTO t VALUES (%s, 0) ON DUPLICATE KEY UPDATE v = -1", (5000 + i,))
                    wrote.append(i)
                    i += 1
                    if i == 20:
                        twenty.set()
        finally:
            conn.close()

    with src:
        r = Replica(streams)
        th = threading.Thread(target=writer)
        gen = src.capture([streams["t"]], dict(r.positions), resume=None, follow=False, stop=threading.Event())
        read_sets = during = 0
        for cs in gen:
            r.apply(cs)
            if cs.batches and cs.batches["t"].num_rows and cs.batches["t"].column("_op")[0].as_py() == "read":
                read_sets += 1
                if read_sets == 1:
                    th.start()  # writes while the snapshot is read
                elif read_sets == 2:
                    assert twenty.wait(10)
                    during = len(wrote)
            elif not done.is_set():
                done.set()
        done.set()
        th.join()
        assert read_sets >= 15 and during >= 20 and len(wrote) >= 30
        assert any(op != "read" for op, _, _ in r.seen["t"])  # the binlog brought the writes
        r.run(src)  # catch up with what the writer did after the first capture's end
        assert r.state["t"] == full_rows(src, streams["t"])


def test_crash_in_the_middle_of_the_snapshot_converges(mysql_url: str, unique_name: str) -> None:
    sql(mysql_url, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)")
    sql(mysql_url, ("INSERT INTO t VALUES " + ", ".join(["(%s, %s)"] * 1000), [x for i in range(1000) for x in (i, i)]))
    src, streams = source(mysql_url, ["t"], unique_name, batch_size=100)
    with src:
        r = Replica(streams)
        gen = src.capture([streams["t"]], {"t": None}, resume=None, follow=False, stop=threading.Event())
        for _ in range(3):
            r.apply(next(gen))
        gen.close()  # crash after 300 rows
        assert r.positions["t"]["snapshot"]["after"] == [299]
        # rows on both sides of the crash point change before the restart
        sql(mysql_url, "DELETE FROM t WHERE id IN (5, 500)", "UPDATE t SET v = -1 WHERE id IN (6, 600)",
            "INSERT INTO t VALUES (2000, 1)")
        sets = r.run(src)
        assert sum(cs.batches["t"].num_rows for cs in sets if "t" in cs.batches and
                   cs.batches["t"].column("_op")[0].as_py() == "read") == 1000 - 300 - 1 + 1  # ids 300..999 without 500, and 2000
        assert r.state["t"] == full_rows(src, streams["t"])


def test_statement_binlog_format_is_refused(mysql_url: str, unique_name: str) -> None:
    sql(mysql_url, "CREATE TABLE t (id int PRIMARY KEY)")
    src, streams = source(mysql_url, ["t"], unique_name)
    with src:
        assert "binlog_format is ROW" in src.install(list(streams.values()))
        sql(mysql_url, "SET GLOBAL binlog_format = 'STATEMENT'")
        try:
            with pytest.raises(FatalError, match="binlog_format=ROW"):
                list(src.capture(list(streams.values()), {"t": None}, resume=None, follow=False, stop=threading.Event()))
            with pytest.raises(FatalError, match="binlog_format is STATEMENT"):
                src.install(list(streams.values()))
        finally:
            sql(mysql_url, "SET GLOBAL binlog_format = 'ROW'")
        sql(mysql_url, "SET GLOBAL binlog_row_image = 'MINIMAL'")
        try:
            with pytest.raises(FatalError, match="set binlog_row_image=FULL"):
                list(src.capture(list(streams.values()), {"t": None}, resume=None, follow=False, stop=threading.Event()))
        finally:
            sql(mysql_url, "SET GLOBAL binlog_row_image = 'FULL'")


MYSQL_DDL = """
CREATE TABLE ty (
  id int PRIMARY KEY, ti tinyint, tb tinyint(1), tu tinyint unsigned, su smallint unsigned,
  mi mediumint, mu mediumint unsigned, iu int unsigned, bi bigint, bu bigint unsigned,
  d122 decimal(12,2), d6530 decimal(65,30), d3020 decimal(30,20), f float, dd double,
  c char(5), vc varchar(20), tx text, l1 varchar(10) CHARACTER SET latin1, bn binary(4), vb varbinary(10), bl blob,
  dt date, tm time(6), dtm datetime(6), dtm0 datetime, ts timestamp(6) NULL, yr year,
  e enum('a','b c'), st set('x','y'), j json, b1 bit(1), b5 bit(5), b64 bit(64)
) DEFAULT CHARSET utf8mb4
"""
ROW = (
    "({id}, -128, 1, 255, 65535, -8388608, 16777215, 4294967295, -9223372036854775808, 18446744073709551615, "
    "1234567890.12, 12345678901234567890123456789012345.123456789012345678901234567891, "
    "-1234567890.12345678901234567891, 1.2345678, 0.30000000000000004, 'ab', 'x😀y', 'te''xt\\\\b  ', 'café', "
    "'a\\0', X'00ff', X'deadbeef00', '2021-01-02', '23:59:59.999999', '2021-01-02 03:04:05.678901', "
    "'2021-01-02 03:04:05', '2021-01-02 03:04:05.678901', 2021, 'b c', 'y,x', '{{\"a\": [1, 2]}}', b'1', b'10101', "
    "18446744073709551615)"
)


@pytest.fixture(params=["MINIMAL", "FULL"])
def row_metadata(request: pytest.FixtureRequest, mysql_url: str) -> Any:
    """binlog_row_metadata: MINIMAL (columns matched by position) or FULL (by name)."""
    sql(mysql_url, f"SET GLOBAL binlog_row_metadata = '{request.param}'")
    try:
        yield request.param
    finally:
        sql(mysql_url, "SET GLOBAL binlog_row_metadata = 'MINIMAL'")


def test_values_equal_a_full_read(mysql_url: str, unique_name: str, row_metadata: str) -> None:
    sql(mysql_url, MYSQL_DDL, "SET time_zone = '+00:00'", f"INSERT INTO ty VALUES {ROW.format(id=1)}",
        "INSERT INTO ty (id) VALUES (2)", "INSERT INTO ty (id, st, yr, e) VALUES (3, '', 0, 'a')")
    src, streams = source(mysql_url, ["ty"], unique_name)
    s = streams["ty"]
    with src:
        r = Replica(streams)
        snap = r.run(src)
        after_snapshot = full_rows(src, s)
        for cs in snap:
            assert cs.batches["ty"].schema.equals(s.change_schema, check_metadata=True)
        assert r.state["ty"] == after_snapshot

        sql(mysql_url, f"INSERT INTO ty VALUES {ROW.format(id=11)}", "INSERT INTO ty (id) VALUES (12)",
            "INSERT INTO ty (id, st, yr, e) VALUES (13, '', 0, 'a')",
            "UPDATE ty SET vc = 'z', tm = '00:00:00', b1 = b'0', bu = 7 WHERE id = 1")
        sets = [cs for cs in r.run(src) if cs.batches]
        for cs in sets:
            assert cs.batches["ty"].schema.equals(s.change_schema, check_metadata=True)
        full = full_rows(src, s)
        assert r.state["ty"] == full
        # the binlog copy of a row equals the snapshot copy of the same values
        for a, b in ((11, 1), (12, 2), (13, 3)):
            assert {**full[(a,)], "id": b} == after_snapshot[(b,)]
        row = full[(11,)]
        assert (row["bu"], row["mu"], row["b64"], row["b1"], row["b5"]) == (18446744073709551615, 16777215, 18446744073709551615, True, 21)
        assert (row["bn"], row["l1"], row["tx"], row["st"], row["e"]) == (b"a\x00\x00\x00", "café", "te'xt\\b  ", "x,y", "b c")
        assert row["ts"] == datetime(2021, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        assert (full[(13,)]["st"], full[(13,)]["yr"]) == ("", 0)


def test_truncate_is_reported(mysql_url: str, unique_name: str) -> None:
    sql(mysql_url, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE TABLE u (id int PRIMARY KEY)",
        "INSERT INTO t VALUES (1), (2)", "INSERT INTO u VALUES (1)")
    src, streams = source(mysql_url, ["t", "u"], unique_name)
    with src:
        r = Replica(streams)
        r.run(src)
        sql(mysql_url, "INSERT INTO t VALUES (3)", "TRUNCATE TABLE t", "INSERT INTO t VALUES (4)", "INSERT INTO u VALUES (2)")
        sets = [cs for cs in r.run(src) if cs.batches]
        assert [cs.truncated for cs in sets] == [frozenset({"t"})]
        assert sets[0].batches["t"].column("id").to_pylist() == [4]  # only what came after the truncate
        assert r.state["t"] == {(4,): {"id": 4}} == full_rows(src, streams["t"])
        assert r.state["u"] == full_rows(src, streams["u"])


def test_a_new_nullable_column_joins_the_stream(mysql_url: str, unique_name: str) -> None:
    sql(mysql_url, "CREATE TABLE t (id int PRIMARY KEY, v int)", "INSERT INTO t VALUES (1, 1)")
    src, streams = source(mysql_url, ["t"], unique_name)
    with src:
        r = Replica(streams)
        stop = threading.Event()
        gen = src.capture([streams["t"]], {"t": None}, resume=None, follow=True, stop=stop)
        r.apply(next(gen))  # the snapshot
        assert "snapshot" not in r.positions["t"]
        sql(mysql_url, "INSERT INTO t VALUES (2, 2)", "ALTER TABLE t ADD COLUMN note varchar(10) NULL",
            "INSERT INTO t VALUES (3, 3, 'three')", "UPDATE t SET note = 'one' WHERE id = 1")
        while len(r.seen["t"]) < 3:
            r.apply(next(gen))
        stop.set()
        for cs in gen:
            r.apply(cs)
        names = [s.names for s in r.schemas["t"]]
        assert names[0] == ["id", "v", "_op", "_pos", "_ts"] and names[-1] == ["id", "v", "note", "_op", "_pos", "_ts"]
        assert r.state["t"] == {(1,): {"id": 1, "v": 1, "note": "one"}, (2,): {"id": 2, "v": 2},
                                (3,): {"id": 3, "v": 3, "note": "three"}}


def test_follow_stops_promptly_and_status(mysql_url: str, unique_name: str) -> None:
    sql(mysql_url, "CREATE TABLE t (id int PRIMARY KEY)")
    src, streams = source(mysql_url, ["t"], unique_name, heartbeat=0.3)
    with src:
        r = Replica(streams)
        stop = threading.Event()
        gen = src.capture([streams["t"]], {"t": None}, resume=None, follow=True, stop=stop)
        r.apply(next(gen))
        sql(mysql_url, "CREATE TABLE other (id int PRIMARY KEY)", "INSERT INTO other VALUES (1)")
        cs = next(gen)  # no rows for t, but the position moves past the other table's writes
        assert not cs.batches and cs.position != r.resume
        r.apply(cs)
        src.acknowledge_capture(cs.position)
        status = src.cdc_status([streams["t"]])
        assert status["lag bytes"] == 0 and status["binlog pos"] == cs.position["pos"]
        timer = threading.Timer(0.2, stop.set)
        timer.start()
        started = time.monotonic()
        assert list(gen) == []
        assert time.monotonic() - started < 2
        assert src.uninstall([streams["t"]])


def test_through_the_engine_into_duckdb(tmp_path: Any, mysql_url: str, unique_name: str) -> None:
    """Two catch-up runs of a real pipeline: the snapshot, then changes, a transaction over
    two tables and a column added between the runs, merged into DuckDB."""
    from compare import fetch
    from replicant.config import parse
    from replicant.engine import Engine

    sql(mysql_url, "CREATE TABLE a (id int PRIMARY KEY, v varchar(10), d decimal(8,2))",
        "CREATE TABLE b (id int PRIMARY KEY, w int)",
        "INSERT INTO a VALUES (1, 'one', 1.10), (2, 'two', 2.20), (3, 'three', NULL)", "INSERT INTO b VALUES (1, 1)")
    duck = str(tmp_path / "d.duckdb")
    cfg = parse({
        "pipeline": unique_name[:40],
        "source": {"type": "mysql", "url": mysql_url, "streams": [{"table": "a", "mode": "log"}, {"table": "b", "mode": "log"}]},
        "destinations": [{"name": "duck", "type": "duckdb", "path": duck, "write": "merge"}],
    }, base_dir=tmp_path)
    first = Engine(cfg).run()
    assert first.ok, first.errors
    assert fetch("duckdb", duck, "a", ["id", "v", "d"]) == fetch("mysql", mysql_url, "a", ["id", "v", "d"])

    sql(mysql_url, "INSERT INTO a VALUES (4, 'four', 4.40)", "UPDATE a SET v = 'TWO' WHERE id = 2", "DELETE FROM a WHERE id = 1",
        "BEGIN", "UPDATE a SET d = 3.30 WHERE id = 3", "INSERT INTO b VALUES (2, 2)", "COMMIT",
        "ALTER TABLE a ADD COLUMN n int NULL", "INSERT INTO a VALUES (5, 'five', 5.50, 5)")
    second = Engine(cfg).run()
    assert second.ok, second.errors
    assert fetch("duckdb", duck, "a", ["id", "v", "d", "n"]) == fetch("mysql", mysql_url, "a", ["id", "v", "d", "n"])
    assert fetch("duckdb", duck, "b", ["id", "w"]) == fetch("mysql", mysql_url, "b", ["id", "w"])
    assert second.rows_read["a"] == 5 and second.rows_read["b"] == 1  # changes only, not a new snapshot


def test_a_copy_reading_the_same_binlog_takes_nothing_from_the_original(mysql_url: str, unique_name: str) -> None:
    """Issue 9.1: unlike a PostgreSQL slot, a binlog position is not consumed. Two pipelines
    with the same name (a copy of the file run from another folder: same derived server_id,
    its own state) each keep their own position and read the same binlog from it: the
    original, resumed after the copy ran, still gets every change."""
    sql(mysql_url, "CREATE TABLE cp (id int PRIMARY KEY, v varchar(20))", "INSERT INTO cp VALUES (1, 'a')")
    src, streams = source(mysql_url, ["cp"], unique_name)
    copy_src, copy_streams = source(mysql_url, ["cp"], unique_name)
    assert copy_src.server_id == src.server_id
    with src, copy_src:
        original, copy = Replica(streams), Replica(copy_streams)
        original.run(src)
        sql(mysql_url, "INSERT INTO cp VALUES (2, 'b')", "UPDATE cp SET v = 'A' WHERE id = 1")
        copy.run(copy_src)
        sql(mysql_url, "INSERT INTO cp VALUES (3, 'c')")
        copy.run(copy_src)
        sql(mysql_url, "DELETE FROM cp WHERE id = 2")
        original.run(src)
        assert [op for op, _, _ in original.seen["cp"]] == ["insert", "update", "insert", "delete"]
        assert original.state["cp"] == full_rows(src, streams["cp"])
        assert sorted(copy.state["cp"]) == [(1,), (2,), (3,)]  # the delete came after the copy's last run

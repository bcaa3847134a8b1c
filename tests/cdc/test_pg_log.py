"""PostgreSQL ``mode: log`` (replicant.sources.postgres.capture) against a real server with wal_level=logical.

Every test drives ``PostgresSource.capture`` directly, acknowledges what it got like the
engine does, applies the change sets in order to a dict keyed by primary key, and compares
that with a full read of the table.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from replicant.config import SourceConfig
from replicant.errors import ConfigError, FatalError
from replicant.model import ConnectorContext, strip_meta
from replicant.sources.base import ChangeSet
from replicant.sources.postgres import PostgresSource


def _source(url: str, **kw: Any) -> PostgresSource:
    return PostgresSource(SourceConfig(type="postgres", url=url, **kw), ConnectorContext("t" + uuid.uuid4().hex[:8]))


def _streams(src: PostgresSource, names: list[str]) -> list:
    found = {s.name: s for s in src.discover()}
    return [dataclasses.replace(found[n], mode="log") for n in names]


def _capture(src, streams, positions, resume, *, ack=True, follow=False, stop=None, limit=None) -> list[ChangeSet]:
    out = []
    stop = stop or threading.Event()
    for cs in src.capture(streams, positions, resume=resume, follow=follow, stop=stop):
        for name, b in cs.batches.items():
            s = next(s for s in streams if s.name == name)
            assert b.schema == s.change_schema, name
        out.append(cs)
        if ack:
            src.acknowledge_capture(cs.position)
        if limit is not None and len(out) >= limit:
            break
    return out


class Log:
    """What the engine keeps: per stream positions, the last capture position, and the rows."""

    def __init__(self, streams) -> None:
        self.streams = streams
        self.positions: dict[str, Any] = {s.name: None for s in streams}
        self.resume = None
        self.state: dict[str, dict] = {s.name: {} for s in streams}
        self.rows: dict[str, list[dict]] = {s.name: [] for s in streams}

    def apply(self, changesets: list[ChangeSet]) -> None:
        for cs in changesets:
            for name in cs.truncated:
                self.state[name].clear()
                self.rows[name].append({"_op": "truncate"})
            for name, b in cs.batches.items():
                key = next(s for s in self.streams if s.name == name).primary_key
                for r in b.to_pylist():
                    self.rows[name].append(r)
                    k = tuple(r[c] for c in key)
                    if r["_op"] == "delete":
                        self.state[name].pop(k, None)
                    else:
                        self.state[name][k] = {c: v for c, v in r.items() if not c.startswith("_")}
                self.positions[name] = cs.position_of(name)
            self.resume = cs.position

    def run(self, src, **kw) -> list[ChangeSet]:
        got = _capture(src, self.streams, dict(self.positions), self.resume, **kw)
        self.apply(got)
        return got


def _table_state(src, stream) -> dict:
    rows = pa.Table.from_batches([strip_meta(rb.data) for rb in src.read(dataclasses.replace(stream, mode="full"), None)])
    return {tuple(r[c] for c in stream.primary_key): r for r in rows.to_pylist()}


def _exec(url: str, *sql: str, params: tuple | None = None) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        for s in sql:
            c.execute(s, params)


def _confirmed(url: str, slot: str) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                        (slot,)).fetchone()
    return int(row[0])


def _drop_slot(src) -> None:
    src.uninstall(list(src.discover()))
    src.close()


@pytest.fixture
def shop(pg_url: str):
    _exec(pg_url,
          "CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, note text, amount numeric(10,2))",
          "CREATE TABLE customers (id bigint PRIMARY KEY, name text)",
          "INSERT INTO orders SELECT g, g % 7, 'n' || g, g * 1.5 FROM generate_series(1, 50) g",
          "INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 7) g")
    src = _source(pg_url, batch_size=20, chunk_size=40)
    yield src, _streams(src, ["orders", "customers"])
    try:
        src.uninstall([])
    finally:
        src.close()


def test_snapshot_then_changes_round_trip(shop, pg_url: str) -> None:
    src, streams = shop
    log = Log(streams)
    first = log.run(src)
    reads = [r for r in log.rows["orders"] if r["_op"] == "read"]
    assert len(reads) == 50 and len(log.rows["customers"]) == 7
    assert all(cs.stream_positions for cs in first)  # snapshot progress per stream
    assert log.positions["orders"] == {"lsn": log.resume["lsn"]}
    assert [json.loads(r["_pos"])["lsn"] for r in reads] == [log.resume["lsn"]] * 50

    _exec(pg_url,
          "INSERT INTO orders VALUES (51, 1, 'new', 9.99)",
          "UPDATE orders SET note = 'changed', amount = 1.01 WHERE id = 3",
          "DELETE FROM orders WHERE id = 4",
          "UPDATE customers SET name = NULL WHERE id = 2",
          "UPDATE orders SET id = 100 WHERE id = 5")  # a key change: delete 5, then 100
    log.run(src)
    ops = [(r["_op"], r["id"]) for r in log.rows["orders"] if r["_op"] != "read"]
    assert ops == [("insert", 51), ("update", 3), ("delete", 4), ("delete", 5), ("update", 100)]
    for s in streams:
        assert log.state[s.name] == _table_state(src, s)
    # nothing new: no change set with rows
    assert not any(cs.batches for cs in log.run(src))


def test_one_transaction_touching_two_tables_is_one_change_set(pg_url: str) -> None:
    _exec(pg_url, "CREATE TABLE a (id int PRIMARY KEY)", "CREATE TABLE b (id int PRIMARY KEY)")
    src = _source(pg_url, batch_size=1)
    try:
        streams = _streams(src, ["a", "b"])
        log = Log(streams)
        log.run(src)
        with psycopg.connect(pg_url) as c:  # one transaction of 5 rows over two tables
            c.execute("INSERT INTO a SELECT generate_series(1, 3)")
            c.execute("INSERT INTO b SELECT generate_series(1, 2)")
        _exec(pg_url, "INSERT INTO a VALUES (10)", "INSERT INTO b VALUES (10)")  # two transactions
        got = [cs for cs in log.run(src) if cs.batches]
        assert [{k: b.num_rows for k, b in cs.batches.items()} for cs in got] == [{"a": 3, "b": 2}, {"a": 1}, {"b": 1}]
        assert got[0].position["lsn"] < got[1].position["lsn"] < got[2].position["lsn"]
    finally:
        src.uninstall([])
        src.close()


def test_restart_with_streams_at_different_positions_has_no_gaps_or_duplicates(shop, pg_url: str) -> None:
    src, streams = shop
    log = Log(streams)
    log.run(src)
    base = (dict(log.positions), dict(log.resume))
    for i in range(6):
        _exec(pg_url, f"INSERT INTO orders VALUES ({100 + i}, {i}, 'x', 1)", f"UPDATE customers SET name = 'v{i}' WHERE id = 1")
    # the reference: everything in one go, without acknowledging
    reference = _capture(src, streams, dict(base[0]), base[1], ack=False)
    ref_rows = {n: [(r["_op"], r["id"], r["_pos"]) for cs in reference if n in cs.batches
                    for r in cs.batches[n].to_pylist()] for n in ("orders", "customers")}
    assert len(ref_rows["orders"]) == 6 and len(ref_rows["customers"]) == 6
    # a crash after orders got 4 transactions in the log, customers only 2; the capture was acknowledged at 1
    with_rows = [cs for cs in reference if cs.batches]
    lsns = sorted({json.loads(p)["lsn"] for _, _, p in ref_rows["orders"]})
    positions = {"orders": {"lsn": lsns[3]}, "customers": {"lsn": lsns[1]}}
    resume = {"lsn": lsns[0]}
    assert with_rows
    again = _capture(src, streams, positions, resume, ack=True)
    rows = {n: [(r["_op"], r["id"], r["_pos"]) for cs in again if n in cs.batches for r in cs.batches[n].to_pylist()]
            for n in ("orders", "customers")}
    kept = {n: [r for r in ref_rows[n] if json.loads(r[2])["lsn"] <= positions[n]["lsn"]] for n in positions}
    assert kept["orders"] + rows["orders"] == ref_rows["orders"]
    assert kept["customers"] + rows["customers"] == ref_rows["customers"]


def test_slot_is_confirmed_only_up_to_acknowledged_positions(shop, pg_url: str) -> None:
    src, streams = shop
    log = Log(streams)
    log.run(src)
    slot = src.slot
    acked = log.resume["lsn"]
    assert _confirmed(pg_url, slot) == acked
    for i in range(3):
        _exec(pg_url, f"INSERT INTO orders VALUES ({200 + i}, 1, 'x', 1)")
    got = _capture(src, streams, dict(log.positions), log.resume, ack=False)
    assert sum(cs.batches["orders"].num_rows for cs in got if cs.batches) == 3
    assert _confirmed(pg_url, slot) == acked  # read, not acknowledged: the slot keeps it
    src.acknowledge_capture(got[0].position)
    assert _confirmed(pg_url, slot) == got[0].position["lsn"]
    # following: acknowledgements go out on the open connection, never ahead of them
    stop = threading.Event()
    seen: list[ChangeSet] = []
    gen = src.capture(streams, {"orders": got[0].position, "customers": got[0].position}, resume=got[0].position,
                      follow=True, stop=stop)
    _exec(pg_url, "INSERT INTO orders VALUES (300, 1, 'x', 1)")
    for cs in gen:
        seen.append(cs)
        if cs.batches:
            assert _confirmed(pg_url, slot) < cs.position["lsn"]
            src.acknowledge_capture(cs.position)
            deadline = time.monotonic() + 5
            while _confirmed(pg_url, slot) < cs.position["lsn"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _confirmed(pg_url, slot) == cs.position["lsn"]
            if any(r["id"] == 300 for r in cs.batches.get("orders", pa.table({"id": []})).to_pylist()):
                stop.set()
    assert stop.is_set()


def test_handoff_under_concurrent_writes(pg_url: str) -> None:
    _exec(pg_url, "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)",
          "INSERT INTO items SELECT g, 0 FROM generate_series(1, 3000) g")
    src = _source(pg_url, batch_size=200, chunk_size=400)
    done = threading.Event()

    def writer() -> None:
        with psycopg.connect(pg_url, autocommit=True) as c:
            i = 0
            while not done.is_set() and i < 400:
                i += 1
                c.execute("UPDATE items SET v = v + 1 WHERE id = %s", ((i * 37) % 3000 + 1,))
                c.execute("INSERT INTO items VALUES (%s, %s)", (10_000 + i, i))
                if i % 5 == 0:
                    c.execute("DELETE FROM items WHERE id = %s", ((i * 53) % 3000 + 1,))

    try:
        streams = _streams(src, ["items"])
        log = Log(streams)
        t = threading.Thread(target=writer)
        t.start()
        try:
            time.sleep(0.05)
            log.run(src)
        finally:
            done.set()
            t.join()
        log.run(src)  # catch up with what was written after the first run's end
        assert log.state["items"] == _table_state(src, streams[0])
        # the writer's rows met the snapshot: some were read by it, later ones came from the log
        written = [r["_op"] for r in log.rows["items"] if r["id"] > 10_000]
        assert "read" in written and "insert" in written
        assert len(log.state["items"]) > 3000
    finally:
        src.uninstall([])
        src.close()


def test_interrupted_snapshot_resumes_and_converges(pg_url: str) -> None:
    _exec(pg_url, "CREATE TABLE big (id int PRIMARY KEY, v text)", "CREATE TABLE small (id int PRIMARY KEY, v text)",
          "INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 100) g", "INSERT INTO small VALUES (1, 'a')")
    src = _source(pg_url, batch_size=10, chunk_size=20)
    try:
        streams = _streams(src, ["big", "small"])
        log = Log(streams)
        # the run dies after three snapshot batches of `big` (its exported snapshot dies with it)
        log.apply(_capture(src, streams, dict(log.positions), None, limit=3))
        src.close()
        assert log.positions["big"]["snapshot"] == {"after": [30]} and log.positions["small"] is None
        # changes below and above the snapshot's key, then a new run
        _exec(pg_url, "UPDATE big SET v = 'low' WHERE id = 5", "UPDATE big SET v = 'high' WHERE id = 50",
              "DELETE FROM big WHERE id IN (6, 60)", "INSERT INTO big VALUES (101, 'new'), (0, 'zero')",
              "UPDATE small SET v = 'b'")
        log.run(src)
        assert log.state == {s.name: _table_state(src, s) for s in streams}
        reads = [r["id"] for r in log.rows["big"] if r["_op"] == "read"]
        assert len(reads) == len(set(reads))  # no row snapshotted twice
        # and again with a truncate inside the window of a resumed snapshot
        log2 = Log(streams)
        src2 = _source(pg_url, batch_size=10, chunk_size=20)
        log2.apply(_capture(src2, streams, dict(log2.positions), None, limit=2))
        src2.close()
        _exec(pg_url, "TRUNCATE big", "INSERT INTO big VALUES (1, 'one'), (90, 'ninety')")
        log2.run(src2)
        assert log2.state["big"] == _table_state(src2, streams[0])
        src2.uninstall([])
        src2.close()
    finally:
        src.uninstall([])
        src.close()


def test_a_crash_inside_the_catch_up_window_still_finishes_the_snapshot(pg_url: str) -> None:
    """A resumed snapshot first streams the changes committed before its new snapshot point
    (the window), then reads the rest of the table. A crash between the two must not leave
    the stream taken for snapshotted: the rows after ``after`` were never read."""
    _exec(pg_url, "CREATE TABLE big (id int PRIMARY KEY, v text)", "INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 100) g")
    src = _source(pg_url, batch_size=10, chunk_size=20)
    try:
        streams = _streams(src, ["big"])
        log = Log(streams)
        log.apply(_capture(src, streams, dict(log.positions), None, limit=3))  # dies mid-snapshot
        src.close()
        assert log.positions["big"]["snapshot"] == {"after": [30]}
        _exec(pg_url, "UPDATE big SET v = 'low' WHERE id = 5")  # a window change (key below `after`)
        got = _capture(src, streams, dict(log.positions), log.resume, limit=1)  # dies after the window's first set
        src.close()
        assert got and "big" in got[0].batches and got[0].batches["big"].column("_op").to_pylist() == ["update"]
        log.apply(got)
        assert log.positions["big"].get("snapshot") == {"after": [30]}, "the window keeps the snapshot's progress"
        log.run(src)
        assert log.state["big"] == _table_state(src, streams[0])
        assert len(log.state["big"]) == 100
    finally:
        src.uninstall([])
        src.close()


def test_stream_added_later_is_snapshotted_at_a_consistent_point(shop, pg_url: str) -> None:
    src, streams = shop
    orders, _customers = streams
    log = Log([orders])
    log.run(src)
    _exec(pg_url, "INSERT INTO orders VALUES (500, 1, 'x', 1)", "UPDATE customers SET name = 'early' WHERE id = 3")
    log.streams = streams
    log.positions["customers"] = None
    log.state["customers"], log.rows["customers"] = {}, []
    log.run(src)
    _exec(pg_url, "UPDATE customers SET name = 'late' WHERE id = 4")
    log.run(src)
    assert log.state == {s.name: _table_state(src, s) for s in streams}
    assert {r["id"] for r in log.rows["customers"] if r["_op"] == "update"} == {4}


def test_truncate_is_a_marker_and_the_batch_holds_what_follows(shop, pg_url: str) -> None:
    src, streams = shop
    log = Log(streams)
    log.run(src)
    with psycopg.connect(pg_url) as c:
        c.execute("INSERT INTO customers VALUES (90, 'gone')")
        c.execute("TRUNCATE customers")
        c.execute("INSERT INTO customers VALUES (91, 'kept')")
    got = [cs for cs in log.run(src) if cs.batches]
    assert got[0].truncated == frozenset({"customers"})
    assert got[0].batches["customers"].column("id").to_pylist() == [91]
    assert log.state["customers"] == _table_state(src, streams[1])


def test_deletes_under_replica_identity_full_and_default(pg_url: str) -> None:
    _exec(pg_url, "CREATE TABLE d (id int PRIMARY KEY, v text)", "CREATE TABLE f (id int PRIMARY KEY, v text)",
          "CREATE TABLE nokey (v text)", "ALTER TABLE f REPLICA IDENTITY FULL",
          "INSERT INTO d VALUES (1, 'one')", "INSERT INTO f VALUES (1, 'one')")
    src = _source(pg_url)
    try:
        streams = _streams(src, ["d", "f"])
        log = Log(streams)
        log.run(src)
        _exec(pg_url, "DELETE FROM d", "DELETE FROM f")
        log.run(src)
        dels = {n: [r for r in log.rows[n] if r["_op"] == "delete"] for n in ("d", "f")}
        assert [(r["id"], r["v"]) for r in dels["d"]] == [(1, None)]  # key only
        assert [(r["id"], r["v"]) for r in dels["f"]] == [(1, "one")]  # the whole old row
        with pytest.raises(ConfigError, match="REPLICA IDENTITY FULL"):
            _capture(src, _streams(src, ["nokey"]), {"nokey": None}, None)
    finally:
        src.uninstall([])
        src.close()


def test_unchanged_toasted_values_are_never_nulled(pg_url: str) -> None:
    big = "SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g"  # ~13 kB, stored out of line
    _exec(pg_url, "CREATE TABLE d (id int PRIMARY KEY, n int, doc text)", "CREATE TABLE f (id int PRIMARY KEY, n int, doc text)",
          "ALTER TABLE f REPLICA IDENTITY FULL", "ALTER TABLE d ALTER doc SET STORAGE EXTERNAL",
          "ALTER TABLE f ALTER doc SET STORAGE EXTERNAL")
    src = _source(pg_url)
    try:
        streams = _streams(src, ["d", "f"])
        log = Log(streams)
        log.run(src)
        _exec(pg_url, f"INSERT INTO d VALUES (1, 0, ({big})), (2, 0, ({big}))", f"INSERT INTO f VALUES (1, 0, ({big}))")
        _exec(pg_url, "UPDATE d SET n = 1", "UPDATE f SET n = 1", "UPDATE d SET n = 2 WHERE id = 2",
              "DELETE FROM d WHERE id = 2")
        log.run(src)
        for n in ("d", "f"):
            updates = [r for r in log.rows[n] if r["_op"] == "update"]
            assert updates and all(r["doc"] is not None and len(r["doc"]) == 12800 for r in updates), n
            assert log.state[n] == _table_state(src, next(s for s in streams if s.name == n))
    finally:
        src.uninstall([])
        src.close()


TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE alltypes (
  id bigint PRIMARY KEY,
  i2 smallint, i4 integer, i8 bigint,
  n_big numeric(40,20), n_free numeric, n_small numeric(12,2),
  f4 real, f8 double precision,
  t text, vc varchar(20), ch char(5),
  b boolean, d date, tm time, ts timestamp, tstz timestamptz, iv interval,
  u uuid, j json, jb jsonb, by bytea,
  ai integer[], at text[],
  m mood,
  an numeric(6,2)[], tmtz timetz, money1 money, inet1 inet, ma mood[]
);
"""
TYPES_ROWS = """
INSERT INTO alltypes VALUES
 (1, -32768, -2147483648, -9223372036854775808, 12345678901234567890.12345678901234567890,
  123456789012345678901234567890.123456789012345, 1234567890.12,
  1.5, 3.141592653589793, 'text ü 😀', 'varchar', 'ab', true, '2024-02-29', '23:59:59.999999',
  '2024-01-01 12:34:56.789012', '2024-06-01 00:00:00.000001+02', '1 year 2 mons 3 days 04:05:06.789',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"b": {"c": null}}', '\\x00ff10',
  '{1,NULL,3}', '{"x",NULL,"y z","q\\"uote","back\\\\slash",""}', 'happy',
  '{1.50,NULL}', '12:34:56.5+05:30', -1234.5, '192.168.0.1/24', '{sad,happy}'),
 (2, 32767, 2147483647, 9223372036854775807, -0.00000000000000000001, -1e-30, -0.01,
  'NaN', '-Infinity', '', '', '     ', false, '0001-01-01', '00:00:00', '1970-01-01 00:00:00',
  '1970-01-01 00:00:00+00', '-3 days', '00000000-0000-0000-0000-000000000000', '[]', '{}', '\\x',
  '{}', '{}', 'sad', '{}', '00:00:00+00', 0, '::1', '{}'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, 0, 0, 0, 'NaN', 0, 'Infinity', 1e-300, 'x', 'y', 'z', true, 'infinity', '12:00:00', '-infinity',
  'infinity', '-1 day +02:03:00.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '1', '2', '\\xdeadbeef',
  '{-1}', '{NULL}', 'ok', '{-0.01}', '23:00:00-01', 0.01, '10.0.0.0/8', '{ok}')
"""


def test_log_values_are_identical_to_the_full_read(pg_url: str) -> None:
    _exec(pg_url, TYPES_DDL)
    src = _source(pg_url)
    try:
        (stream,) = _streams(src, ["alltypes"])
        log = Log([stream])
        log.run(src)
        _exec(pg_url, TYPES_ROWS)
        got = _capture(src, [stream], dict(log.positions), log.resume)  # ±infinity has no Python value
        log.resume = got[-1].position
        log.positions["alltypes"] = got[-1].position
        logged = pa.Table.from_batches([strip_meta(cs.batches["alltypes"]) for cs in got if cs.batches])
        full = pa.Table.from_batches([strip_meta(rb.data) for rb in src.read(dataclasses.replace(stream, mode="full"), None)])
        assert logged.schema == full.schema
        for name in full.column_names:
            a, b = logged.column(name).combine_chunks(), full.column(name).combine_chunks()
            if pa.types.is_floating(a.type):  # NaN == NaN bit for bit
                bits = pa.int32() if a.type == pa.float32() else pa.int64()
                a, b = pc.fill_null(a, 0).view(bits), pc.fill_null(b, 0).view(bits)
                assert logged.column(name).is_null().equals(full.column(name).is_null()), name
            assert a.equals(b), (name, a, b)
        # updates decode the same way
        _exec(pg_url, "UPDATE alltypes SET i2 = 7 WHERE id = 1")
        upd = next(cs for cs in _capture(src, [stream], dict(log.positions), log.resume) if cs.batches).batches["alltypes"]
        row = strip_meta(upd).to_pylist()[0]
        assert row == {**full.slice(0, 1).to_pylist()[0], "i2": 7}
    finally:
        src.uninstall([])
        src.close()


def test_role_without_replication_gets_a_clear_error(pg_url: str, pg_server) -> None:
    role = "norepl_" + uuid.uuid4().hex[:8]
    db = pg_url.rsplit("/", 1)[1]
    _exec(pg_url, f"CREATE ROLE {role} LOGIN", f"GRANT ALL ON SCHEMA public TO {role}",
          "CREATE TABLE x (id int PRIMARY KEY)", f"GRANT SELECT ON x TO {role}")
    url = f"postgresql://{role}@{pg_server.host}:{pg_server.port}/{db}"
    src = _source(url)
    try:
        with pytest.raises(ConfigError) as e:
            _capture(src, _streams(src, ["x"]), {"x": None}, None)
        assert f'ALTER ROLE "{role}" REPLICATION' in str(e.value)
    finally:
        src.close()
        _exec(pg_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_install_status_uninstall(shop, pg_url: str) -> None:
    src, streams = shop
    done = src.install(streams)
    cap = src  # the slot and publication names are the source's
    assert done == [f"created publication {cap.publication}", f"created replication slot {cap.slot}"]
    assert src.install(streams) == []
    status = src.cdc_status(streams)
    assert status["slot"] == cap.slot and status["slot lag bytes"] >= 0 and "/" in status["confirmed lsn"]
    # a slot made by install (no exported snapshot) still hands off exactly
    _exec(pg_url, "UPDATE orders SET note = 'after install' WHERE id = 1")
    log = Log(streams)
    log.run(src)
    assert log.state == {s.name: _table_state(src, s) for s in streams}
    assert src.uninstall(streams) == [f"dropped replication slot {cap.slot}", f"dropped publication {cap.publication}"]
    assert src.cdc_status(streams)["slot"] == cap.slot and "slot lag bytes" not in src.cdc_status(streams)


def test_partitioned_table_changes_arrive_under_the_parent(pg_url: str) -> None:
    _exec(pg_url, "CREATE TABLE m (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)",
          "CREATE TABLE m_lo PARTITION OF m FOR VALUES FROM (0) TO (100)",
          "CREATE TABLE m_hi PARTITION OF m FOR VALUES FROM (100) TO (1000)",
          "INSERT INTO m VALUES (1, 'a'), (150, 'b')")
    src = _source(pg_url)
    try:
        streams = _streams(src, ["m"])
        log = Log(streams)
        log.run(src)
        _exec(pg_url, "INSERT INTO m VALUES (2, 'c'), (250, 'd')", "DELETE FROM m WHERE id = 150")
        log.run(src)
        assert [(r["_op"], r["id"]) for r in log.rows["m"] if r["_op"] != "read"] == [
            ("insert", 2), ("insert", 250), ("delete", 150)]
        assert log.state["m"] == _table_state(src, streams[0])
    finally:
        src.uninstall([])
        src.close()


# ---------------------------------------------------------------- schema changes while capturing


def _collect(src, streams, positions, resume, *, ack: bool = True) -> list[ChangeSet]:
    """Change sets without the fixed-schema check of ``_capture`` (schemas change here)."""
    out = []
    for cs in src.capture(streams, positions, resume=resume, follow=False, stop=threading.Event()):
        out.append(cs)
        if ack:
            src.acknowledge_capture(cs.position)
    return out


def _rows(changesets: list[ChangeSet], name: str) -> list[tuple[pa.Schema, dict]]:
    return [(cs.batches[name].schema, r) for cs in changesets if name in cs.batches for r in cs.batches[name].to_pylist()]


def _fresh(src, name: str, metadata) -> pa.Schema:
    """What a fresh discover() gives for ``name`` now, with the capture's schema metadata."""
    s = next(s for s in src.discover() if s.name == name)
    return dataclasses.replace(s, schema=s.schema.with_metadata(metadata)).change_schema


def test_added_column_and_widened_types_are_followed(pg_url: str) -> None:
    _exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, n int, s varchar(10))", "CREATE TABLE u (id int PRIMARY KEY)",
          "INSERT INTO t VALUES (1, 1, 'a')")
    src = _source(pg_url)
    try:
        streams = _streams(src, ["t", "u"])
        md = {**streams[0].schema.metadata, b"replicant.primary_key": b"id"}  # as the engine tags it
        streams[0] = dataclasses.replace(streams[0], schema=streams[0].schema.with_metadata(md))
        log = Log(streams)
        log.run(src)
        old = streams[0].change_schema
        _exec(pg_url, "INSERT INTO t VALUES (2, 2, 'b')", "INSERT INTO u VALUES (1)",
              "ALTER TABLE t ADD COLUMN c text",
              "ALTER TABLE t ALTER COLUMN n TYPE bigint, ALTER COLUMN s TYPE varchar(50)",
              "INSERT INTO t VALUES (3, 3000000000, 'a much longer text', 'x')",
              "UPDATE t SET c = 'y' WHERE id = 1", "INSERT INTO u VALUES (2)")
        got = _collect(src, streams, dict(log.positions), log.resume)
        new = _fresh(src, "t", md)
        assert new.field("n").type == pa.int64() and new.field("s").metadata[b"replicant.sql_type"] == b"character varying(50)"
        rows = _rows(got, "t")
        assert [(r["_op"], r["id"]) for _, r in rows] == [("insert", 2), ("insert", 3), ("update", 1)]
        assert rows[0][0].equals(old, check_metadata=True)  # read before the change: the old schema
        for schema, _ in rows[1:]:  # identical to a fresh discovery, field metadata included
            assert schema.equals(new, check_metadata=True)
        assert {k: v for k, v in rows[1][1].items() if not k.startswith("_")} == {
            "id": 3, "n": 3000000000, "s": "a much longer text", "c": "x"}
        assert rows[2][1]["c"] == "y"
        assert [r["id"] for _, r in _rows(got, "u")] == [1, 2]
        lsns = [cs.position["lsn"] for cs in got]
        assert lsns == sorted(lsns)

        # a restart with the streams discovered again sees no change (the schema is the same)
        again = _streams(src, ["t", "u"])
        again[0] = dataclasses.replace(again[0], schema=again[0].schema.with_metadata(md))
        log2 = Log(again)
        log2.positions = {s.name: got[-1].position_of(s.name) or log.positions[s.name] for s in streams}
        log2.resume = got[-1].position
        _exec(pg_url, "INSERT INTO t VALUES (4, 4, 'd', 'z')")
        tail = log2.run(src)  # _capture checks every batch against the stream's schema
        assert [r["id"] for _, r in _rows(tail, "t")] == [4]
        assert _rows(tail, "t")[0][0].equals(new, check_metadata=True)
    finally:
        src.uninstall([])
        src.close()


def test_dropped_column_and_a_change_inside_one_transaction(pg_url: str) -> None:
    _exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, a text, b text)")
    src = _source(pg_url)
    try:
        streams = _streams(src, ["t"])
        log = Log(streams)
        log.run(src)
        before = (dict(log.positions), dict(log.resume))
        _exec(pg_url, "INSERT INTO t VALUES (10, 'a', 'b')")
        with psycopg.connect(pg_url) as c:  # one transaction: a row, the change, a row
            c.execute("INSERT INTO t VALUES (11, 'a', 'b')")
            c.execute("ALTER TABLE t DROP COLUMN b")
            c.execute("ALTER TABLE t ADD COLUMN c int")
            c.execute("INSERT INTO t VALUES (12, 'a', 5)")
        _exec(pg_url, "DELETE FROM t WHERE id = 10")
        got = _collect(src, streams, *before, ack=False)
        rows = _rows(got, "t")
        assert [(r["_op"], r["id"]) for _, r in rows] == [("insert", 10), ("insert", 11), ("insert", 12), ("delete", 10)]
        assert rows[0][0].names == ["id", "a", "b", "_op", "_pos", "_ts"] and rows[0][1]["b"] == "b"
        new = _fresh(src, "t", streams[0].schema.metadata)
        assert new.names == ["id", "a", "c", "_op", "_pos", "_ts"]
        for schema, _ in rows[1:]:
            assert schema.equals(new, check_metadata=True)
        # the transaction is whole, in one change set; its row from before the change has c null
        assert rows[1][1]["_pos"] == rows[2][1]["_pos"]
        assert sum(1 for cs in got if "t" in cs.batches and any(r["id"] == 11 for r in cs.batches["t"].to_pylist())) == 1
        assert (rows[1][1]["c"], rows[2][1]["c"]) == (None, 5)

        # a restart from before the change, with streams discovered after it, emits each row in
        # the schema it had in the log
        fresh = _streams(src, ["t"])
        again = _collect(src, fresh, *before)
        assert [(s.names, r["id"]) for s, r in _rows(again, "t")] == [(s.names, r["id"]) for s, r in rows]
    finally:
        src.uninstall([])
        src.close()


def test_include_keeps_new_columns_out(pg_url: str) -> None:
    _exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, a varchar(5), secret text)")
    src = PostgresSource(SourceConfig(type="postgres", url=pg_url,
                                      streams=[{"table": "t", "mode": "log", "include": ["a"]}]),
                         ConnectorContext("t" + uuid.uuid4().hex[:8]))
    try:
        from replicant.sources.select import resolve_streams

        streams = resolve_streams(src.config, src.discover())
        assert streams[0].schema.names == ["id", "a"]
        log = Log(streams)
        log.run(src)
        _exec(pg_url, "ALTER TABLE t ADD COLUMN extra text", "INSERT INTO t VALUES (1, 'x', 's', 'e')",
              "ALTER TABLE t ALTER COLUMN a TYPE varchar(9)", "INSERT INTO t VALUES (2, 'longer', 's', 'e')")
        rows = _rows(_collect(src, streams, dict(log.positions), log.resume), "t")
        assert [(s.names, r["id"]) for s, r in rows] == [(["id", "a", "_op", "_pos", "_ts"], 1),
                                                        (["id", "a", "_op", "_pos", "_ts"], 2)]
        assert rows[0][0].field("a").metadata[b"replicant.sql_type"] == b"character varying(5)"
        assert rows[1][0].field("a").metadata[b"replicant.sql_type"] == b"character varying(9)"
    finally:
        src.uninstall([])
        src.close()


def test_generated_column_is_refused_with_what_to_do(pg_url: str) -> None:
    _exec(pg_url, "CREATE TABLE g (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) STORED)")
    src = _source(pg_url)
    try:
        streams = _streams(src, ["g"])
        log = Log(streams)
        log.run(src)
        _exec(pg_url, "INSERT INTO g (id, a) VALUES (1, 1)")
        with pytest.raises(FatalError, match=r"'twice'.*generated.*exclude"):
            log.run(src)
    finally:
        src.uninstall([])
        src.close()


_BIG = "SELECT string_agg(md5(g::text), '') FROM generate_series(1, 32768) g"  # 1 MB, stored out of line


def test_unchanged_toast_beside_an_array_column_is_refetched_exactly(pg_url: str) -> None:
    """Issue 9 item 2: the re-fetch of unchanged TOASTed values joined with pyarrow on every
    column and failed for list columns (``not supported in join non-key field arr``)."""
    _exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, big text, arr int[], small int)",
          "ALTER TABLE t ALTER big SET STORAGE EXTERNAL")
    src = _source(pg_url)
    try:
        (stream,) = _streams(src, ["t"])
        log = Log([stream])
        log.run(src)
        _exec(pg_url, f"INSERT INTO t VALUES (1, ({_BIG}), '{{1,NULL,3}}', 0), (2, ({_BIG}) || 'x', '{{}}', 0), "
                      "(3, 'short', NULL, 0)")
        _exec(pg_url, "UPDATE t SET small = small + 1", "UPDATE t SET small = small + 1 WHERE id = 1")
        log.run(src)
        updates = [r for r in log.rows["t"] if r["_op"] == "update"]
        assert len(updates) == 4
        assert {len(r["big"]) for r in updates} == {1_048_576, 1_048_577, 5}
        assert [r["arr"] for r in updates] == [[1, None, 3], [], None, [1, None, 3]]
        assert log.state["t"] == _table_state(src, stream)
    finally:
        src.uninstall([])
        src.close()


def test_unchanged_toast_with_every_type_of_the_matrix(pg_url: str) -> None:
    """Every type of the round-trip matrix (lists, decimals beyond 38 digits, intervals, json,
    bytea, enums, ±infinity …) beside an unchanged TOASTed column comes out of an update
    exactly as a full read gives it."""
    _exec(pg_url, TYPES_DDL, "ALTER TABLE alltypes ADD big text", "ALTER TABLE alltypes ALTER big SET STORAGE EXTERNAL")
    src = _source(pg_url)
    try:
        (stream,) = _streams(src, ["alltypes"])
        log = Log([stream])
        log.run(src)
        _exec(pg_url, TYPES_ROWS, f"UPDATE alltypes SET big = ({_BIG})")
        got = _capture(src, [stream], dict(log.positions), log.resume)
        log.resume = log.positions["alltypes"] = got[-1].position
        _exec(pg_url, "UPDATE alltypes SET i2 = 7 WHERE id = 1", "UPDATE alltypes SET n_small = 1 WHERE id <> 1")
        got = _capture(src, [stream], dict(log.positions), log.resume)
        ops = [op for cs in got if cs.batches for op in cs.batches["alltypes"].column("_op").to_pylist()]
        assert ops == ["update"] * 4
        logged = pa.Table.from_batches([strip_meta(cs.batches["alltypes"]) for cs in got if cs.batches]).sort_by("id")
        full = pa.Table.from_batches([strip_meta(rb.data) for rb in src.read(dataclasses.replace(stream, mode="full"), None)])
        full = full.sort_by("id")
        assert logged.schema == full.schema
        for name in full.column_names:
            a, b = logged.column(name).combine_chunks(), full.column(name).combine_chunks()
            if pa.types.is_floating(a.type):  # NaN == NaN bit for bit
                bits = pa.int32() if a.type == pa.float32() else pa.int64()
                a, b = pc.fill_null(a, 0).view(bits), pc.fill_null(b, 0).view(bits)
            assert a.equals(b), (name, a, b)
        assert {len(v) for v in logged.column("big").to_pylist()} == {1_048_576}
    finally:
        src.uninstall([])
        src.close()


@pytest.mark.parametrize("ddl", ["DROP COLUMN big", "RENAME COLUMN big TO huge"])
def test_unchanged_toast_of_a_column_dropped_since_snapshots_that_stream_again(pg_url: str, ddl: str) -> None:
    """Issue 9 item 3: an update left a TOASTed value out and the column was dropped or
    renamed before the capture re-read it. The capture used to fail as a whole (every stream
    stopped, with advice validation rejects); now the other stream flows and this one is
    snapshotted again by the next capture, which converges."""
    _exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, big text, small int)", "ALTER TABLE t ALTER big SET STORAGE EXTERNAL",
          "CREATE TABLE o (id int PRIMARY KEY, v text)", "INSERT INTO o VALUES (1, 'one')")
    src = _source(pg_url)
    try:
        log = Log(_streams(src, ["t", "o"]))
        log.run(src)
        _exec(pg_url, f"INSERT INTO t VALUES (1, ({_BIG}), 0), (2, 'short', 0)")
        log.run(src)
        _exec(pg_url, "UPDATE t SET small = small + 1", f"ALTER TABLE t {ddl}", "INSERT INTO o VALUES (2, 'two')",
              "UPDATE t SET small = small + 1 WHERE id = 2")
        got = log.run(src)
        assert log.state["o"] == _table_state(src, log.streams[1]), "the other stream flows"
        assert all(cs.batches["t"].num_rows == 0 for cs in got if "t" in cs.batches)
        assert log.positions["t"]["snapshot"] == {"after": None}
        log.streams = _streams(src, ["t", "o"])  # a run discovers the tables again
        got = log.run(src)
        assert any("t" in cs.truncated for cs in got)
        assert log.state["t"] == _table_state(src, log.streams[0])
        if "huge" in ddl:
            assert {len(v["huge"]) for v in log.state["t"].values()} == {1_048_576, 5}
        assert "snapshot" not in log.positions["t"]
        _exec(pg_url, "UPDATE t SET small = 7 WHERE id = 1", "INSERT INTO o VALUES (3, 'three')")
        log.run(src)
        assert log.state["t"] == _table_state(src, log.streams[0])
        assert log.state["o"] == _table_state(src, log.streams[1])
    finally:
        src.uninstall([])
        src.close()


def test_unchanged_toast_under_replica_identity_full_survives_a_later_drop(pg_url: str) -> None:
    """Issue 9 item 3, where the value is in the log: under ``REPLICA IDENTITY FULL`` the old
    row carries the TOASTed value, so a column dropped after the update changes nothing."""
    _exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, big text, small int)", "ALTER TABLE t ALTER big SET STORAGE EXTERNAL",
          "ALTER TABLE t REPLICA IDENTITY FULL", f"INSERT INTO t VALUES (1, ({_BIG}), 0)")
    src = _source(pg_url)
    try:
        log = Log(_streams(src, ["t"]))
        log.run(src)
        _exec(pg_url, "UPDATE t SET small = 1", "ALTER TABLE t DROP COLUMN big")
        got = log.run(src)
        (update,) = [r for cs in got if "t" in cs.batches for r in cs.batches["t"].to_pylist()]
        assert (update["_op"], len(update["big"]), update["small"]) == ("update", 1_048_576, 1)
        assert "snapshot" not in log.positions["t"]
    finally:
        src.uninstall([])
        src.close()

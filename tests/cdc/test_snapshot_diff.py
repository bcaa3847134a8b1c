"""``mode: snapshot_diff`` on every SQL source: a first full snapshot, then inserts, updates and
deletes derived by diffing against the previous snapshot; composite keys and NULLs; resume
after a crash at any batch; runs that were never acknowledged; bounded memory; exact types."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicant.errors import FatalError
from replicant.model import ConnectorContext, Stream
from replicant.sources.strategies import snapshot_diff
from sources.dbs import HTTP, KINDS, TOY, Db, db_for


@pytest.fixture(params=[*KINDS, TOY, HTTP])
def db(request: pytest.FixtureRequest) -> Db:
    """Each SQL source, the non-SQL toy source and the http source (an API serving the toy
    source's files): snapshot_diff needs only a full read."""
    return db_for(request.param, request)


def _open(db: Db, tmp_path: Path, table: str, **kw: Any) -> tuple[Any, Stream]:
    """A source with a workdir, and ``table`` as a snapshot_diff stream."""
    entry = {"table": table, **{k: kw.pop(k) for k in ("primary_key",) if k in kw}}
    src, (s,) = db.streams([entry], context=ConnectorContext("test", workdir=tmp_path / "work"), **kw)
    return src, dataclasses.replace(s, mode="snapshot_diff")


def _run(src: Any, s: Stream, position: Any, *, ack: bool = True) -> list:
    batches = list(src.read(s, position))
    assert batches, "a run always ends with its done batch"
    done = batches[-1]
    assert done.position["done"] is True and done.position["mode"] == "snapshot_diff"
    assert not done.final and done.data.num_rows == 0
    for b in batches:
        assert b.data.schema == s.change_schema
        assert b.data.schema.metadata == s.change_schema.metadata
    if ack:
        src.acknowledge(s, done.position)
    return batches


def _changes(batches: list, s: Stream) -> list[dict]:
    rows = pa.Table.from_batches([b.data for b in batches], schema=s.change_schema).to_pylist()
    return rows


def _key(row: dict, s: Stream) -> tuple:
    return tuple(row[k] for k in s.primary_key)


def _apply(state: dict, batches: list, s: Stream) -> dict:
    data_names = s.schema.names
    for row in _changes(batches, s):
        k = _key(row, s)
        if row["_op"] == "delete":
            assert k in state, f"delete of a key the destination never had: {k}"
            assert all(row[n] is None for n in data_names if n not in s.primary_key)
            del state[k]
        else:
            if row["_op"] == "insert":
                assert k not in state
            if row["_op"] == "update":
                assert k in state
            state[k] = {n: row[n] for n in data_names}
    return state


def _table(src: Any, s: Stream) -> dict:
    """The table as a plain full read sees it, keyed like :func:`_apply`."""
    full = dataclasses.replace(s, mode="full")
    rows = pa.Table.from_batches([b.data for b in src.read(full, None)], schema=s.change_schema).to_pylist()
    return {_key(r, s): {n: r[n] for n in s.schema.names} for r in rows}


def _ops(batches: list, s: Stream) -> dict:
    return {_key(r, s): r["_op"] for r in _changes(batches, s)}


def _items(db: Db, n: int) -> None:
    amount = "decimal(12,2)"
    db.execute(
        f"CREATE TABLE items (id integer PRIMARY KEY, name {db.text} NOT NULL, amount {amount}, "
        f"note {db.text}, {db.q('at')} {db.timestamp})"
    )
    db.insert("items", ["id", "name", "amount", "note", "at"],
              [(i, f"n{i}", str(Decimal(i) / 4), None if i % 3 else f"note {i}", f"2026-01-0{1 + i % 9} 10:00:00")
               for i in range(1, n + 1)])


def test_first_run_is_a_full_snapshot_then_changes_are_diffed(db: Db, tmp_path: Path) -> None:
    _items(db, 25)
    src, s = _open(db, tmp_path, "items", batch_size=4, chunk_size=10)
    with src:
        first = _run(src, s, None)
        assert Counter(r["_op"] for r in _changes(first, s)) == {"read": 25}
        # read-phase progress: one empty batch per complete part of chunk_size rows
        phases = [b.position.get("phase") for b in first[:-1]]
        assert phases.count("read") >= 2 and "emit" in phases
        state = _apply({}, first, s)
        assert state == _table(src, s)

        db.execute(
            "INSERT INTO items (id, name, amount) VALUES (26, 'new', 1.5), (27, 'new2', NULL)",
            "UPDATE items SET name = 'changed' WHERE id = 3",
            "UPDATE items SET note = NULL WHERE id = 6",  # a value → NULL
            "UPDATE items SET note = 'now set' WHERE id = 7",  # NULL → a value
            "DELETE FROM items WHERE id IN (1, 25)",
        )
        second = _run(src, s, first[-1].position)
        assert _ops(second, s) == {
            (26,): "insert", (27,): "insert", (3,): "update", (6,): "update", (7,): "update",
            (1,): "delete", (25,): "delete",
        }
        # updates carry the whole new row
        by_key = {_key(r, s): r for r in _changes(second, s)}
        assert by_key[(3,)]["name"] == "changed" and by_key[(3,)]["amount"] == Decimal("0.75")
        assert by_key[(6,)]["note"] is None and by_key[(7,)]["note"] == "now set"
        assert _apply(state, second, s) == _table(src, s)

        third = _run(src, s, second[-1].position)
        assert _changes(third, s) == []
        assert third[-1].position["run"] != second[-1].position["run"]


def test_composite_keys_and_nulls(db: Db, tmp_path: Path) -> None:
    db.execute(f"CREATE TABLE pairs (a integer NOT NULL, b {db.text if db.kind != 'mysql' else 'varchar(20)'} NOT NULL, "
               f"v {db.text}, w integer, PRIMARY KEY (a, b))")
    db.insert("pairs", ["a", "b", "v", "w"],
              [(i // 3, f"k{i % 3}", None if i % 2 else f"v{i}", None if i % 5 == 0 else i) for i in range(30)])
    src, s = _open(db, tmp_path, "pairs", batch_size=7, chunk_size=11)
    with src:
        assert s.primary_key == ("a", "b")
        first = _run(src, s, None)
        state = _apply({}, first, s)
        assert len(state) == 30 and state == _table(src, s)
        db.execute(
            "DELETE FROM pairs WHERE a = 2 AND b = 'k1'",
            "UPDATE pairs SET v = NULL, w = NULL WHERE a = 4 AND b = 'k0'",
            "UPDATE pairs SET v = 'x' WHERE a = 5 AND b = 'k1'",
            "INSERT INTO pairs (a, b) VALUES (2, 'k9'), (99, 'k1')",
        )
        second = _run(src, s, first[-1].position)
        assert _ops(second, s) == {
            (2, "k1"): "delete", (4, "k0"): "update", (5, "k1"): "update", (2, "k9"): "insert", (99, "k1"): "insert",
        }
        deleted = [r for r in _changes(second, s) if r["_op"] == "delete"]
        assert deleted == [{"a": 2, "b": "k1", "v": None, "w": None, "_op": "delete",
                            "_pos": deleted[0]["_pos"], "_ts": deleted[0]["_ts"]}]
        assert _apply(state, second, s) == _table(src, s)


def _mutate(db: Db) -> None:
    db.execute(
        "DELETE FROM items WHERE id IN (2, 9, 30)",
        "UPDATE items SET name = 'u' WHERE id IN (4, 11, 17, 23, 29)",
        "INSERT INTO items (id, name) VALUES (31, 'a'), (32, 'b'), (33, 'c'), (40, 'd')",
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres", TOY])
def test_crash_at_every_batch_yields_each_change_exactly_once(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    db = db_for(kind, request)
    _items(db, 30)
    src, s = _open(db, tmp_path, "items", batch_size=3, chunk_size=8)
    with src:
        base = _run(src, s, None, ack=False)
        for k in range(1, len(base)):  # a crash during the first run (a full snapshot)
            it = src.read(s, None)
            head = [next(it) for _ in range(k)]
            it.close()
            tail = list(src.read(s, head[-1].position))
            rows = _changes(head + tail, s)
            assert sorted(_key(r, s) for r in rows) == [(i,) for i in range(1, 31)]
            assert {r["_op"] for r in rows} == {"read"}
        # each attempt started a new run (dropping the unacknowledged ones): the last is the base
        base = tail
        src.acknowledge(s, base[-1].position)
        _mutate(db)
        # the uninterrupted run, never acknowledged: every attempt below diffs against `base`
        whole = _run(src, s, base[-1].position, ack=False)
        expected = sorted((_key(r, s), r["_op"], r["name"]) for r in _changes(whole, s))
        assert len(expected) == 12
        n = len(whole)
        for k in range(1, n):
            it = src.read(s, base[-1].position)
            head = [next(it) for _ in range(k)]
            it.close()  # the crash: the engine never asks for batch k+1
            tail = list(src.read(s, head[-1].position))
            got = sorted((_key(r, s), r["_op"], r["name"]) for r in _changes(head + tail, s))
            assert got == expected, f"crash after batch {k} of {n}"
            assert tail[-1].position["done"]
            # resumed the same run (parts already read are not read again), not a new one
            assert tail[-1].position["run"] == head[-1].position["run"]
        src.acknowledge(s, tail[-1].position)
        assert _changes(_run(src, s, tail[-1].position), s) == []


def test_a_run_never_acknowledged_is_derived_again(db: Db, tmp_path: Path) -> None:
    _items(db, 30)
    src, s = _open(db, tmp_path, "items", batch_size=5, chunk_size=100)
    with src:
        base = _run(src, s, None)
        _mutate(db)
        lost = _run(src, s, base[-1].position, ack=False)  # its done position never became durable
        again = _run(src, s, base[-1].position, ack=False)
        assert _ops(again, s) == _ops(lost, s) and len(_ops(lost, s)) == 12
        state = _apply(_apply({}, base, s), again, s)
        assert state == _table(src, s)
        # the done position is durable but the acknowledgement was lost: reading from it
        # promotes that run, so nothing is derived again
        assert _changes(_run(src, s, again[-1].position), s) == []


def test_acknowledge_is_idempotent_and_ignores_other_positions(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db = db_for("sqlite", request)
    _items(db, 10)
    src, s = _open(db, tmp_path, "items", batch_size=4)
    with src:
        first = _run(src, s, None)
        for b in first:  # every position, twice, and the done one again
            src.acknowledge(s, b.position)
            src.acknowledge(s, b.position)
        db.execute("DELETE FROM items WHERE id = 5")
        second = _run(src, s, first[-1].position)
        src.acknowledge(s, first[-1].position)  # an older done position, after a newer one
        assert _ops(second, s) == {(5,): "delete"}
        third = _run(src, s, second[-1].position)
        assert _changes(third, s) == []
        home = snapshot_diff.home_of(src.workdir, s)
        assert sorted(p.name for p in home.iterdir()) == ["previous.json", "runs"]
        # only the previous snapshot's keys remain: no rows, no diff, no older runs
        (kept,) = (home / "runs").iterdir()
        assert kept.name == third[-1].position["run"]
        assert sorted(p.name for p in kept.iterdir()) == ["diffed.json", "keys-00000.parquet", "run.json"]


def test_read_from_none_is_a_full_snapshot_even_with_a_previous_one(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db = db_for("sqlite", request)
    _items(db, 10)
    src, s = _open(db, tmp_path, "items")
    with src:
        _run(src, s, None)
        assert Counter(r["_op"] for r in _changes(_run(src, s, None), s)) == {"read": 10}


def test_a_table_without_a_key_needs_primary_key(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db = db_for("sqlite", request)
    db.execute("CREATE TABLE nokey (a integer, b text)", "INSERT INTO nokey VALUES (1, 'x'), (1, 'y')")
    src, s = _open(db, tmp_path, "nokey")
    with src, pytest.raises(FatalError, match="primary_key"):
        src.read(s, None)
    # with a key set by the user, it works
    src, s = _open(db, tmp_path, "nokey", primary_key=["a", "b"])
    with src:
        first = _run(src, s, None)
        db.execute("UPDATE nokey SET b = 'z' WHERE b = 'y'")
        assert _ops(_run(src, s, first[-1].position), s) == {(1, "y"): "delete", (1, "z"): "insert"}


def test_postgres_types_survive_exactly(pg_url: str, tmp_path: Path) -> None:
    db = Db("postgres", pg_url)
    db.execute(
        "CREATE TABLE typed (id bigint PRIMARY KEY, big numeric(50, 20), n numeric(12, 4), tz timestamptz, "
        "ts timestamp, d date, t time, iv interval, j jsonb, u uuid, by bytea, arr integer[], f double precision, "
        "flag boolean)",
        "INSERT INTO typed VALUES "
        "(1, 123456789012345678901234567890.12345678901234567890, 1.5, '2026-01-01 10:00:00+02', "
        "'2026-01-01 10:00:00.123456', '2026-02-03', '12:34:56.789', '1 year 2 days 03:04:05', '{\"a\": [1, 2]}', "
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff', '{1,NULL,3}', 0.1, true), "
        "(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    src, s = _open(db, tmp_path, "typed")
    with src:
        first = _run(src, s, None)
        assert _apply({}, first, s) == _table(src, s)
        db.execute(
            "UPDATE typed SET big = big + 0.00000000000000000001 WHERE id = 1",  # the 50th digit
            "UPDATE typed SET iv = '1 year 2 days 03:04:06' WHERE id = 2",
            "INSERT INTO typed (id, tz) VALUES (3, '2026-05-05 05:05:05.5+00')",
        )
        second = _run(src, s, first[-1].position)
        assert _ops(second, s) == {(1,): "update", (2,): "update", (3,): "insert"}
        assert _apply(_apply({}, first, s), second, s) == _table(src, s)
        big = _changes(second, s)[0]["big"]
        assert big == Decimal("123456789012345678901234567890.12345678901234567891")


@pytest.mark.slow
def test_memory_stays_bounded_on_a_200k_row_table(pg_url: str, tmp_path: Path) -> None:
    db = Db("postgres", pg_url)
    db.execute(
        "CREATE TABLE wide (id integer PRIMARY KEY, grp integer NOT NULL, payload text NOT NULL)",
        "INSERT INTO wide SELECT g, g % 97, repeat(md5(g::text), 8) FROM generate_series(1, 200000) g",
    )
    table_bytes = 200_000 * (4 + 4 + 256)  # ≈ 53 MB of row data
    src, s = _open(db, tmp_path, "wide", batch_size=5_000, chunk_size=50_000)
    s = dataclasses.replace(s, options={**s.options, "memory_limit": "64MB", "duckdb_threads": 1})
    with src:
        peak = 0

        def consume(position: Any, ack: bool = True) -> tuple[list, Counter]:
            nonlocal peak
            ops: Counter = Counter()
            last = None
            for b in src.read(s, position):
                peak = max(peak, pa.total_allocated_bytes())
                ops.update(b.data.column("_op").to_pylist())
                last = b
            if ack:
                src.acknowledge(s, last.position)
            return last, ops

        start = pa.total_allocated_bytes()
        last, ops = consume(None)
        assert ops == {"read": 200_000}
        db.execute(
            "UPDATE wide SET payload = 'changed' WHERE id % 100 = 0",
            "DELETE FROM wide WHERE id % 1000 = 1",
            "INSERT INTO wide SELECT g, 0, 'new' FROM generate_series(200001, 201000) g",
        )
        last, ops = consume(last.position)
        assert ops == {"update": 2_000, "delete": 200, "insert": 1_000}
        # Arrow memory held at any time is a few batches, not the table
        assert peak - start < table_bytes / 4, f"peak Arrow allocation {peak - start} bytes"


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    states=st.lists(
        st.dictionaries(
            st.tuples(st.integers(0, 6), st.sampled_from(["a", "B", "é", ""])),
            st.tuples(st.one_of(st.none(), st.text(max_size=5)), st.one_of(st.none(), st.integers(-3, 3))),
            max_size=25,
        ),
        min_size=1, max_size=4,
    ),
    crash_after=st.integers(0, 6),
)
def test_property_every_run_converges_to_the_table(tmp_path_factory: pytest.TempPathFactory, states: list, crash_after: int) -> None:
    """Any sequence of table states, with a crash after ``crash_after`` batches in each run
    (0: none): applying every run's changes reproduces the table each time."""
    tmp = tmp_path_factory.mktemp("prop")
    path = tmp / "p.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (k integer NOT NULL, s text NOT NULL, v text, n integer, PRIMARY KEY (k, s))")
    conn.commit()
    db = Db("sqlite", "sqlite:///" + str(path))
    src, s = _open(db, tmp, "t", batch_size=2, chunk_size=3)
    state: dict = {}
    position = None
    with src:
        for table in states:
            conn.execute("DELETE FROM t")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", [(*k, *v) for k, v in table.items()])
            conn.commit()
            it = src.read(s, position)
            head = [b for _, b in zip(range(crash_after), it)]
            it.close()
            batches = head + list(src.read(s, head[-1].position if head else position))
            if head and head[-1].position.get("done"):
                batches = head  # the run ended within the first batches
            if position is None:
                state = {}
            state = _apply(state, batches, s)
            assert state == {k: {"k": k[0], "s": k[1], "v": v[0], "n": v[1]} for k, v in table.items()}
            position = batches[-1].position
            if crash_after % 2:  # sometimes the acknowledgement is lost: reading from done promotes
                src.acknowledge(s, position)
    conn.close()


def test_engine_runs_keep_a_merge_destination_equal_to_the_table(pg_url: str, tmp_path: Path) -> None:
    """End to end through the engine (workdir, staging log, acknowledgement): PostgreSQL →
    DuckDB with ``write: merge``, three runs, deletes included."""
    from compare import fetch
    from replicant.config import parse
    from replicant.engine import Engine

    db = Db("postgres", pg_url)
    db.execute(
        "CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric(12, 2))",
        "INSERT INTO acct SELECT g, 'o' || g, g * 1.25 FROM generate_series(1, 3000) g",
    )
    dst = tmp_path / "d.duckdb"
    cfg = parse({
        "pipeline": "sd",
        "source": {"type": "postgres", "url": pg_url, "batch_size": 500, "chunk_size": 1000,
                   "streams": [{"table": "acct", "mode": "snapshot_diff"}]},
        "destinations": [{"name": "d", "type": "duckdb", "path": str(dst), "write": "merge"}],
    }, base_dir=tmp_path)
    cols = ["id", "owner", "balance"]
    r1 = Engine(cfg).run()
    assert r1.ok, r1.errors
    assert r1.rows_read["acct"] == 3000
    assert fetch("duckdb", str(dst), "acct", cols) == fetch("postgres", pg_url, "acct", cols)
    db.execute(
        "DELETE FROM acct WHERE id % 100 = 0",
        "UPDATE acct SET owner = NULL WHERE id % 7 = 0",
        "INSERT INTO acct VALUES (5000, 'new', 1)",
    )
    r2 = Engine(cfg).run()
    assert r2.ok, r2.errors
    changed = 30 + len([i for i in range(1, 3001) if i % 7 == 0 and i % 100]) + 1
    assert r2.rows_read["acct"] == changed
    assert fetch("duckdb", str(dst), "acct", cols) == fetch("postgres", pg_url, "acct", cols)
    r3 = Engine(cfg).run()
    assert r3.ok and r3.rows_read["acct"] == 0

"""PostgreSQL destination: a ``merge`` table it creates gets its primary key after the fast
path's bulk load (the deferred key), with duplicates of an overlapping resumed chunk removed,
and a key left pending by a crash is built before anything else is written."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from replicant.config import DestinationConfig, parse
from replicant.destinations._pg_sql import KEY_PENDING_COMMENT
from replicant.destinations.postgres import PostgresDestination
from replicant.engine import Engine
from replicant.model import ConnectorContext

from . import conformance as cf


def _dest(url: str, write: str = "merge") -> PostgresDestination:
    return PostgresDestination(DestinationConfig(name="pg", type="postgres", write=write, url=url), ConnectorContext("p1"))


@contextmanager
def _prepared(url: str, write: str = "merge") -> Iterator[tuple[PostgresDestination, Any]]:
    """An opened destination with the ``items`` stream prepared, closed after the block."""
    s = cf.make_stream("items", cf.ITEMS)
    d = _dest(url, write)
    d.open()
    try:
        d.prepare(s)
        yield d, s
    finally:
        d.close()


def _key(url: str, table: str = "items") -> tuple[str | None, list[str], str | None]:
    """The table's primary key constraint name, its columns, and the table's comment."""
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(
            "SELECT con.conname::text, (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a "
            "WHERE a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey)) "
            "FROM pg_constraint con WHERE con.conrelid = %s::regclass AND con.contype = 'p'",
            [table],
        ).fetchone()
        comment = c.execute("SELECT obj_description(%s::regclass, 'pg_class')", [table]).fetchone()[0]
    return (row[0], row[1], comment) if row else (None, [], comment)


def _rows(url: str, table: str = "items") -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2').fetchall()


def test_key_is_built_when_a_change_follows_the_bulk_load(pg_url: str) -> None:
    with _prepared(pg_url) as (d, s):
        assert _key(pg_url) == (None, [], KEY_PENDING_COMMENT)
        d.write(s, cf.changes(s, [{"id": 1, "name": "a", "qty": 1}, {"id": 2, "name": "b", "qty": 2}], "read"), last_offset=1)
        assert _key(pg_url)[0] is None  # the snapshot's rows went into the bare heap
        d.write(s, cf.changes(s, [{"id": 2, "name": "B", "qty": 20}, {"id": 3, "name": "c", "qty": 3}], ["update", "insert"]),
                last_offset=3)
        # named as CREATE TABLE … PRIMARY KEY names it, the mark gone
        assert _key(pg_url) == ("items_pkey", ["id"], None)
        d.write(s, cf.changes(s, [{"id": 4, "name": "d", "qty": 4}], "insert"), last_offset=4)
        staged = d.staged_batches
        d.write(s, cf.changes(s, [{"id": 1, "name": "A", "qty": 10}], "update"), last_offset=5)  # the COPY meets key 1
        assert d.staged_batches == staged + 1
        assert d.applied_offset(s) == 5
    assert _rows(pg_url) == [(1, "A", 10), (2, "B", 20), (3, "c", 3), (4, "d", 4)]


def test_overlapping_reads_keep_the_row_written_last(pg_url: str) -> None:
    """Without the key nothing stops a resumed chunk from appending keys again: when the key is
    built (here: at close) the rows written earlier go and each key is there once."""
    with _prepared(pg_url) as (d, s):
        d.write(s, cf.changes(s, [{"id": i, "name": f"a{i}", "qty": i} for i in range(1, 5)], "read"), last_offset=3)
        d.write(s, cf.changes(s, [{"id": i, "name": f"b{i}", "qty": -i} for i in range(3, 7)], "read"), last_offset=7)
        d.write(s, cf.changes(s, [{"id": 4, "name": "c4", "qty": 40}], "read"), last_offset=8)
        assert len(_rows(pg_url)) == 9  # appended, duplicates included
    assert _key(pg_url) == ("items_pkey", ["id"], None)
    assert _rows(pg_url) == [(1, "a1", 1), (2, "a2", 2), (3, "b3", -3), (4, "c4", 40), (5, "b5", -5), (6, "b6", -6)]


def test_next_snapshot_builds_the_key(pg_url: str) -> None:
    with _prepared(pg_url) as (d, s):
        d.begin_snapshot(s, "one")
        assert _key(pg_url)[2] == KEY_PENDING_COMMENT  # nothing loaded yet: still deferred
        d.write(s, cf.changes(s, [{"id": 1, "name": "a", "qty": 1}], "read"), last_offset=1)
        d.begin_snapshot(s, "two")
        assert _key(pg_url) == ("items_pkey", ["id"], None)
        d.write(s, cf.changes(s, [{"id": 1, "name": "a2", "qty": 2}, {"id": 2, "name": "b", "qty": 2}], "read"), last_offset=3)
    assert _rows(pg_url) == [(1, "a2", 2), (2, "b", 2)]


def test_key_left_pending_by_a_crash_is_built_before_the_next_write(pg_url: str) -> None:
    """The state a kill -9 between the load and the key leaves (the mark, rows, a duplicate key
    from a resumed chunk, committed by a later transaction): the next prepare dedupes and keys."""
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE items (id bigint NOT NULL, name text, qty integer)")
        c.execute(f"COMMENT ON TABLE items IS '{KEY_PENDING_COMMENT}'")
        c.execute("INSERT INTO items VALUES (1, 'a', 1), (2, 'old', 2), (3, 'c', 3)")
        c.execute("INSERT INTO items VALUES (2, 'new', 20)")
        c.execute("INSERT INTO items VALUES (4, 'd', 4), (3, 'c2', 30)")
    with _prepared(pg_url) as (d, s):
        assert _key(pg_url) == ("items_pkey", ["id"], None)
        assert _rows(pg_url) == [(1, "a", 1), (2, "new", 20), (3, "c2", 30), (4, "d", 4)]
        d.write(s, cf.changes(s, [{"id": 4, "name": "D", "qty": 40}], "read"), last_offset=0)  # not fresh: upserted
    assert _rows(pg_url) == [(1, "a", 1), (2, "new", 20), (3, "c2", 30), (4, "D", 40)]


def test_snapshot_end_builds_the_key(pg_url: str) -> None:
    with _prepared(pg_url) as (d, s):
        d.write(s, cf.changes(s, [{"id": 1, "name": "a", "qty": 1}], "read"), last_offset=1)
        d.end_snapshot(s)
        assert _key(pg_url) == ("items_pkey", ["id"], None)


def test_empty_pending_table_stays_deferred_for_the_next_load(pg_url: str) -> None:
    s = cf.make_stream("items", cf.ITEMS)
    first = _dest(pg_url)
    first.open()
    first.prepare(s)
    first._disconnect()  # as if killed: no close, no key
    d = _dest(pg_url)
    d.open()
    try:
        d.prepare(s)
        assert _key(pg_url)[2] == KEY_PENDING_COMMENT
        d.write(s, cf.changes(s, [{"id": 1, "name": "a", "qty": 1}], "read"), last_offset=0)
        assert d.staged_batches == 0
    finally:
        d.close()
    assert _key(pg_url) == ("items_pkey", ["id"], None)


def test_table_without_key_made_by_hand_is_left_alone(pg_url: str) -> None:
    """No mark, no key built: a user's keyless table keeps its rows (merge deletes + inserts)."""
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE items (id bigint, name text, qty integer)")
        c.execute("INSERT INTO items VALUES (1, 'a', 1), (1, 'twice', 1)")
    with _prepared(pg_url) as (d, s):
        d.write(s, cf.changes(s, [{"id": 2, "name": "b", "qty": 2}], "insert"), last_offset=0)
    assert _key(pg_url) == (None, [], None)
    assert _rows(pg_url) == [(1, "a", 1), (1, "twice", 1), (2, "b", 2)]


@pytest.mark.parametrize("why", ["tenant", "append"])
def test_no_deferral_for_tenants_or_append(pg_url: str, why: str) -> None:
    s = cf.make_stream("items", cf.ITEMS)
    if why == "tenant":
        s = dataclasses.replace(s, tenant="acme")
    d = _dest(pg_url, "merge" if why == "tenant" else "append")
    d.open()
    try:
        d.prepare(s)
        assert _key(pg_url) == (("items_pkey", ["id"], None) if why == "tenant" else (None, [], None))
    finally:
        d.close()


def test_schema_drift_builds_the_key_first(pg_url: str) -> None:
    s = cf.make_stream("items", cf.ITEMS)
    wider = dataclasses.replace(s, schema=s.schema.append(pa.field("note", pa.string())))
    d = _dest(pg_url)
    d.open()
    try:
        d.prepare(s)
        d.write(s, cf.changes(s, [{"id": 1, "name": "a", "qty": 1}], "read"), last_offset=0)
        d.write(s, cf.changes(s, [{"id": 1, "name": "a2", "qty": 2}], "read"), last_offset=1)
        d.evolve(wider, s)
        assert _key(pg_url) == ("items_pkey", ["id"], None)
        d.write(wider, cf.changes(wider, [{"id": 2, "name": "b", "qty": 2, "note": "n"}], "insert"), last_offset=2)
    finally:
        d.close()
    assert _rows(pg_url) == [(1, "a2", 2, None), (2, "b", 2, "n")]


def test_a_full_run_builds_the_key_at_the_snapshot_end(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delivery tells the destination where the snapshot ends (not only close() builds it)."""
    src = tmp_path / "src.db"
    with sqlite3.connect(src) as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
        c.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"n{i}", i) for i in range(1, 101)])
    monkeypatch.setattr(PostgresDestination, "settle_keys", lambda self: None)  # no key built at close
    cfg = parse(
        {"pipeline": "p", "source": {"type": "sqlite", "url": f"sqlite:///{src}", "streams": [{"table": "items", "mode": "full"}]},
         "destinations": [{"name": "pg", "type": "postgres", "url": pg_url, "write": "merge"}]},
        base_dir=tmp_path,
    )
    result = Engine(cfg).run()
    assert result.ok, result.errors
    assert _key(pg_url) == ("items_pkey", ["id"], None)
    assert len(_rows(pg_url)) == 100


@pytest.mark.parametrize("mode", ["snapshot_diff", "cursor"])
def test_a_following_pipeline_builds_the_key_once_caught_up(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A stream whose first read carries no snapshot markers: under ``--follow``, with no
    change after it, the key is built once delivery has written all the log holds (neither
    the first change nor the run's end, as close() is disabled here), and later changes merge."""
    src = tmp_path / "src.db"
    with sqlite3.connect(src) as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
        c.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"n{i}", i) for i in range(1, 101)])
    monkeypatch.setattr(PostgresDestination, "settle_keys", lambda self: None)  # no key built at close
    stream: dict[str, Any] = {"table": "items", "mode": mode}
    if mode == "cursor":
        stream["cursor"] = "qty"
    cfg = parse(
        {"pipeline": "p", "source": {"type": "sqlite", "url": f"sqlite:///{src}", "poll_interval": "0.2s", "streams": [stream]},
         "destinations": [{"name": "pg", "type": "postgres", "url": pg_url, "write": "merge"}]},
        base_dir=tmp_path,
    )
    engine = Engine(cfg)
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.setdefault("r", engine.run(follow=True)), daemon=True)
    t.start()
    try:
        _poll(lambda: len(_rows(pg_url)) == 100 and _key(pg_url)[0] == "items_pkey", 60)
        assert _key(pg_url) == ("items_pkey", ["id"], None)  # the pending comment is gone too
        with sqlite3.connect(src) as c:
            c.execute("UPDATE items SET name = 'changed', qty = 1000 WHERE id = 7")
        _poll(lambda: (7, "changed", 1000) in _rows(pg_url), 60)
    finally:
        engine.stop_event.set()
        t.join(60)
    assert not t.is_alive()
    assert out["r"].ok, out["r"].errors
    rows = _rows(pg_url)
    assert len(rows) == 100 and len({r[0] for r in rows}) == 100


def _poll(check: Any, seconds: float) -> None:
    """Until ``check()`` holds (a table not created yet counts as not yet), within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except psycopg.errors.UndefinedTable:
            pass
        assert time.monotonic() < deadline, "not reached before the deadline"
        time.sleep(0.05)  # polling a condition with a deadline, not waiting a fixed time

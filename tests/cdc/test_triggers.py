"""``mode: trigger`` on PostgreSQL, MariaDB and SQLite: install, snapshot, rounds of changes
applied in order equal the table, key changes, one transaction over two tables, purge on
acknowledge, re-read after a crash, late commits, uninstall, and deletes reaching a
destination."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pymysql
import pytest

from replicant.errors import FatalError
from replicant.sources.strategies import trigger
from sources.dbs import KINDS, Db  # tests/ is on sys.path (rootdir conftest)

ITEMS_KEY = ("id",)
LINES_KEY = ("order_id", "line")


@pytest.fixture(params=KINDS)
def db(request: pytest.FixtureRequest) -> Iterator[Db]:
    kind = request.param
    if kind == "postgres":
        yield Db(kind, request.getfixturevalue("pg_url"))
    elif kind == "mysql":
        yield Db(kind, request.getfixturevalue("mysql_url"))
    else:
        path = request.getfixturevalue("sqlite_path")
        sqlite3.connect(path).close()
        yield Db(kind, "sqlite:///" + str(Path(path).resolve()))


def _tables(db: Db) -> None:
    db.execute(
        f"CREATE TABLE items (id integer PRIMARY KEY, name {db.text}, qty integer)",
        f"CREATE TABLE order_lines (order_id integer NOT NULL, line integer NOT NULL, note {db.text}, "
        "PRIMARY KEY (order_id, line))",
    )
    db.insert("items", ["id", "name", "qty"], [(i, f"n{i}", i * 10) for i in range(1, 8)])
    db.insert("order_lines", ["order_id", "line", "note"], [(o, ln, f"o{o}l{ln}") for o in (1, 2) for ln in (1, 2, 3)])


def _source(db: Db, **kw: Any) -> tuple[Any, dict[str, Any]]:
    src = db.source("all", **kw)
    streams = {s.name: dataclasses.replace(s, mode="trigger") for s in src.discover() if s.name in ("items", "order_lines")}
    return src, streams


def _rows(db: Db, sql: str) -> list[tuple]:
    if db.kind == "postgres":
        with psycopg.connect(db.url) as conn:
            return conn.execute(sql).fetchall()
    if db.kind == "mysql":
        conn = _my(db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()
    conn = sqlite3.connect(db.url.removeprefix("sqlite:///"))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _my(db: Db, autocommit: bool = True) -> Any:
    p = urlsplit(db.url)
    return pymysql.connect(host=p.hostname, port=p.port, user=p.username, password=p.password or "",
                           database=p.path.lstrip("/"), charset="utf8mb4", autocommit=autocommit)


def _table(db: Db, stream: Any) -> dict[tuple, dict]:
    cols = [f.name for f in stream.schema]
    rows = _rows(db, f"SELECT {', '.join(db.q(c) for c in cols)} FROM {db.q(stream.table_name)}")
    return {tuple(r[cols.index(k)] for k in stream.primary_key): dict(zip(cols, r)) for r in rows}


def _apply(state: dict[tuple, dict], batches: list[Any], stream: Any) -> list[tuple[str, tuple]]:
    """Applies change batches in order (what a merge destination does); returns (op, key)s."""
    cols = [f.name for f in stream.schema]
    seen = []
    for b in batches:
        assert b.data.schema == stream.change_schema
        for row in b.data.to_pylist():
            key = tuple(row[k] for k in stream.primary_key)
            seen.append((row["_op"], key))
            if row["_op"] == "delete":
                assert all(row[c] is None for c in cols if c not in stream.primary_key)
                state.pop(key, None)
            else:
                state[key] = {c: row[c] for c in cols}
    return seen


def _shadow_count(db: Db, src: Any, stream: Any) -> int:
    d = src.trigger_sql(stream)
    return _rows(db, f"SELECT count(*) FROM {d.shadow}")[0][0]


def _read(src: Any, stream: Any, position: Any) -> tuple[list[Any], Any]:
    batches = list(trigger.read(src, stream, position))
    return batches, (batches[-1].position if batches else position)


# ---------------------------------------------------------------------------- tests


def test_snapshot_then_rounds_of_changes_equal_the_table(db: Db) -> None:
    _tables(db)
    src, st = _source(db, batch_size=2, chunk_size=3)
    items, lines = st["items"], st["order_lines"]
    with src:
        done = trigger.install(src, [items, lines])
        assert any(line.startswith("created trigger") and "items" in line for line in done)
        assert any(line.startswith("created table") and "_replicant_changes_order_lines" in line for line in done)

        state_i: dict = {}
        state_l: dict = {}
        snap, pos_i = _read(src, items, None)
        assert {b.data.column("_op")[i].as_py() for b in snap for i in range(b.data.num_rows)} == {"read"}
        _apply(state_i, snap, items)
        assert state_i == _table(db, items)
        snap_l, pos_l = _read(src, lines, None)
        _apply(state_l, snap_l, lines)
        assert state_l == _table(db, lines)
        assert _read(src, items, pos_i)[0] == [] or all(b.data.num_rows == 0 for b in _read(src, items, pos_i)[0])

        # round 1: inserts, updates, deletes
        db.execute(
            "INSERT INTO items VALUES (8, 'n8', 80)",
            "INSERT INTO items VALUES (9, 'n9', 90)",
            "UPDATE items SET name = 'changed' WHERE id = 3",
            "UPDATE items SET qty = qty + 1 WHERE id = 3",
            "DELETE FROM items WHERE id = 5",
            "UPDATE items SET qty = 0 WHERE id = 9",
            "DELETE FROM order_lines WHERE order_id = 1 AND line = 2",
            "UPDATE order_lines SET note = 'x' WHERE order_id = 2",
        )
        b1, pos_i = _read(src, items, pos_i)
        ops = _apply(state_i, b1, items)
        assert ("delete", (5,)) in ops and ("insert", (8,)) in ops and ("update", (3,)) in ops
        assert ("insert", (9,)) in ops, "the last shadow op of 9 is its update, but 9 was inserted in this read"
        assert state_i == _table(db, items)
        b1l, pos_l = _read(src, lines, pos_l)
        _apply(state_l, b1l, lines)
        assert state_l == _table(db, lines)

        # round 2: key changes (one key column of a composite key), delete and re-insert
        db.execute(
            "UPDATE items SET id = 100 WHERE id = 2",
            "UPDATE items SET name = 'after move' WHERE id = 100",
            "DELETE FROM items WHERE id = 4",
            "INSERT INTO items VALUES (4, 'again', 4)",
            "UPDATE order_lines SET line = 7 WHERE order_id = 2 AND line = 3",
            "INSERT INTO order_lines VALUES (3, 1, 'new')",
        )
        b2, pos_i = _read(src, items, pos_i)
        ops = _apply(state_i, b2, items)
        assert ("delete", (2,)) in ops and ("update", (100,)) in ops
        assert state_i == _table(db, items)
        b2l, pos_l = _read(src, lines, pos_l)
        ops = _apply(state_l, b2l, lines)
        assert ("delete", (2, 3)) in ops and ("insert", (2, 7)) in ops
        assert state_l == _table(db, lines)
        assert state_l[(2, 7)]["note"] == "x"

        # caught up: nothing more
        assert sum(b.data.num_rows for b in _read(src, items, pos_i)[0]) == 0


def test_one_transaction_over_two_tables(db: Db) -> None:
    _tables(db)
    src, st = _source(db)
    items, lines = st["items"], st["order_lines"]
    with src:
        trigger.install(src, [items, lines])
        _, pi = _read(src, items, None)
        _, pl = _read(src, lines, None)
        stmts = ["INSERT INTO items VALUES (50, 'order', 1)", "INSERT INTO order_lines VALUES (50, 1, 'first')",
                 "DELETE FROM order_lines WHERE order_id = 1", "UPDATE items SET qty = 2 WHERE id = 1"]
        if db.kind == "postgres":
            with psycopg.connect(db.url) as conn:  # one transaction, committed on exit
                for s in stmts:
                    conn.execute(s)
        elif db.kind == "mysql":
            conn = _my(db, autocommit=False)
            with conn.cursor() as cur:
                for s in stmts:
                    cur.execute(s)
            conn.commit()
            conn.close()
        else:
            conn = sqlite3.connect(db.url.removeprefix("sqlite:///"))
            with conn:
                for s in stmts:
                    conn.execute(s)
            conn.close()
        bi, _ = _read(src, items, pi)
        bl, _ = _read(src, lines, pl)
        assert sorted(_apply({}, bi, items)) == [("insert", (50,)), ("update", (1,))]
        assert sorted(_apply({}, bl, lines)) == [("delete", (1, 1)), ("delete", (1, 2)), ("delete", (1, 3)),
                                                  ("insert", (50, 1))]


def test_purge_only_after_acknowledge(db: Db) -> None:
    _tables(db)
    src, st = _source(db)
    items = st["items"]
    with src:
        trigger.install(src, [items])
        _, pos = _read(src, items, None)
        trigger.acknowledge(src, items, pos)  # nothing read yet in the shadow table: a no-op
        db.execute("UPDATE items SET qty = -1 WHERE id < 4", "DELETE FROM items WHERE id = 7")
        assert _shadow_count(db, src, items) == 4
        batches, pos2 = _read(src, items, pos)
        assert sum(b.data.num_rows for b in batches) == 4
        assert _shadow_count(db, src, items) == 4, "reading does not purge"
        trigger.acknowledge(src, items, pos)  # an older position: purges nothing read later
        assert _shadow_count(db, src, items) == 4
        trigger.acknowledge(src, items, pos2)
        assert _shadow_count(db, src, items) == 0
        trigger.acknowledge(src, items, pos2)  # idempotent
        db.execute("INSERT INTO items VALUES (70, 'later', 1)")
        trigger.acknowledge(src, items, pos2)
        assert _shadow_count(db, src, items) == 1, "rows after the position are kept"
        assert _apply({}, _read(src, items, pos2)[0], items) == [("insert", (70,))]


def test_re_read_after_crash_loses_nothing(db: Db) -> None:
    _tables(db)
    src, st = _source(db, batch_size=2, chunk_size=3)
    items = st["items"]
    with src:
        trigger.install(src, [items])
        snap, pos = _read(src, items, None)
        # a crash inside the snapshot: resume from its second batch
        state: dict = {}
        _apply(state, snap[:2], items)
        rest = list(trigger.read(src, items, snap[1].position))
        _apply(state, rest, items)
        assert state == _table(db, items)
        db.execute(*[f"INSERT INTO items VALUES ({i}, 'x{i}', {i})" for i in range(20, 31)],
                   "UPDATE items SET name = 'u' WHERE id IN (1, 20, 25)", "DELETE FROM items WHERE id IN (2, 21, 29)")
        first, _ = _read(src, items, pos)
        assert len(first) >= 3
        # crash after the second batch was logged, before any acknowledge
        crashed = dict(state)
        _apply(crashed, first[:2], items)
    src2, st2 = _source(db, batch_size=2, chunk_size=3)
    with src2:
        again, pos3 = _read(src2, st2["items"], first[1].position)
        _apply(crashed, again, st2["items"])
        assert crashed == _table(db, items)
        # and from the position before the read (nothing acknowledged): the same end state
        whole = dict(state)
        _apply(whole, _read(src2, st2["items"], pos)[0], st2["items"])
        assert whole == _table(db, items)
        assert pos3 == first[-1].position


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_late_commit_is_not_lost(kind: str, request: pytest.FixtureRequest) -> None:
    db = Db(kind, request.getfixturevalue("pg_url" if kind == "postgres" else "mysql_url"))
    _tables(db)
    src, st = _source(db)
    items = st["items"]
    with src:
        trigger.install(src, [items])
        _, pos = _read(src, items, None)
        if kind == "postgres":
            a = psycopg.connect(db.url)
            a.execute("INSERT INTO items VALUES (200, 'late', 1)")  # seq k, not committed
            db.execute("INSERT INTO items VALUES (201, 'early', 1)")  # seq k+1, committed
        else:
            a = _my(db, autocommit=False)
            a.cursor().execute("INSERT INTO items VALUES (200, 'late', 1)")
            db.execute("INSERT INTO items VALUES (201, 'early', 1)")
        try:
            first, pos = _read(src, items, pos)
            got = [k for _, k in _apply({}, first, items)]
            assert (200,) not in got
            if kind == "mysql":
                assert got == [(201,)]
                assert pos["gaps"] and pos["gaps"][0][:2] == [pos["seq"] - 1, pos["seq"] - 1]
            trigger.acknowledge(src, items, pos)  # must not purge the late row once it commits
            a.commit()
        finally:
            a.close()
        second, pos = _read(src, items, pos)
        got2 = [k for _, k in _apply({}, second, items)]
        assert (200,) in got2
        assert set(got + got2) == {(200,), (201,)}
        if kind == "mysql":
            assert pos["gaps"] == [], "the gap is filled and no older transaction runs"
        trigger.acknowledge(src, items, pos)
        assert _shadow_count(db, src, items) == 0
        assert sum(b.data.num_rows for b in _read(src, items, pos)[0]) == 0


def test_mysql_rolled_back_gap_is_dropped(mysql_url: str) -> None:
    db = Db("mysql", mysql_url)
    _tables(db)
    src, st = _source(db)
    items = st["items"]
    with src:
        trigger.install(src, [items])
        _, pos = _read(src, items, None)
        a = _my(db, autocommit=False)
        a.cursor().execute("INSERT INTO items VALUES (300, 'rolled back', 1)")
        db.execute("INSERT INTO items VALUES (301, 'kept', 1)")
        _b, pos = _read(src, items, pos)
        assert len(pos["gaps"]) == 1
        _b2, pos2 = _read(src, items, pos)
        assert pos2["gaps"] == pos["gaps"], "still open: the gap stays"
        a.rollback()
        a.close()
        deadline = time.monotonic() + 10  # INNODB_TRX is a cache, and recent gaps wait a second
        while True:
            b3, pos3 = _read(src, items, pos2)
            assert sum(x.data.num_rows for x in b3) == 0
            if not pos3["gaps"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert pos3["gaps"] == [] and pos3["seq"] == pos2["seq"]
        assert b3 and b3[-1].data.num_rows == 0, "the dropped gap is kept in the log by an empty batch"


def test_install_is_idempotent_and_uninstall_removes_everything(db: Db) -> None:
    _tables(db)
    src, st = _source(db)
    items, lines = st["items"], st["order_lines"]
    with src:
        trigger.install(src, [items, lines])
        id1 = src.trigger_sql(items).installed()
        again = trigger.install(src, [items, lines])
        assert again and all("already exists" in line for line in again)
        assert src.trigger_sql(items).installed() == id1 and id1[1]
        done = trigger.uninstall(src, [items, lines])
        assert any(line.startswith("dropped trigger") for line in done)
        assert any(line.startswith("dropped table") for line in done)
        assert src.trigger_sql(items).installed() == (None, False)
        leftovers = {
            "postgres": "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_replicant%' "
                        "UNION ALL SELECT count(*) FROM pg_trigger WHERE tgname LIKE '\\_replicant%' "
                        "UNION ALL SELECT count(*) FROM pg_proc WHERE proname LIKE '\\_replicant%'",
            "mysql": "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                     "AND TABLE_NAME LIKE '\\_replicant%' UNION ALL SELECT count(*) FROM information_schema.TRIGGERS "
                     "WHERE TRIGGER_SCHEMA = DATABASE()",
            "sqlite": "SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_replicant%' ESCAPE '\\'",
        }[db.kind]
        assert all(r[0] == 0 for r in _rows(db, leftovers))
        db.execute("UPDATE items SET qty = 1", "DELETE FROM order_lines")  # the application still writes
        assert trigger.uninstall(src, [items, lines]) == []
        with pytest.raises(FatalError, match="replicant cdc install"):
            list(trigger.read(src, items, None))


def test_reading_without_install_is_a_clear_error(db: Db) -> None:
    _tables(db)
    src, st = _source(db)
    with src, pytest.raises(FatalError, match=r"not installed; run `replicant cdc install PIPELINE.yml`"):
        list(src.read(st["items"], None))


def test_reinstalled_shadow_table_is_refused(db: Db) -> None:
    _tables(db)
    src, st = _source(db)
    items = st["items"]
    with src:
        trigger.install(src, [items])
        _, pos = _read(src, items, None)
        trigger.uninstall(src, [items])
        trigger.install(src, [items])
        with pytest.raises(FatalError, match="re-created"):
            list(trigger.read(src, items, pos))


def test_table_without_key_is_refused(db: Db) -> None:
    db.execute(f"CREATE TABLE nokey (a integer, b {db.text})")
    src = db.source("all")
    with src:
        (s,) = [dataclasses.replace(s, mode="trigger") for s in src.discover() if s.name == "nokey"]
        with pytest.raises(FatalError, match="primary_key"):
            trigger.install(src, [s])


def test_deletes_reach_a_merge_destination(db: Db, tmp_path: Path) -> None:
    import duckdb

    from replicant.config import DestinationConfig
    from replicant.destinations.duckdb import DuckDBDestination
    from replicant.model import ConnectorContext

    _tables(db)
    src, st = _source(db)
    lines = st["order_lines"]
    dest = DuckDBDestination(DestinationConfig(name="wh", type="duckdb", write="merge", path=str(tmp_path / "w.duckdb")),
                             ConnectorContext("p"))
    offset = 0
    with src:
        trigger.install(src, [lines])
        dest.open()
        dest.prepare(lines)
        pos = None
        for round_ in (
            [],
            ["DELETE FROM order_lines WHERE order_id = 1", "UPDATE order_lines SET line = 9 WHERE order_id = 2 AND line = 1"],
            ["DELETE FROM order_lines WHERE line = 9", "INSERT INTO order_lines VALUES (1, 1, 'back')"],
        ):
            if round_:
                db.execute(*round_)
            batches, pos = _read(src, lines, pos)
            import pyarrow as pa

            data = pa.Table.from_batches([b.data for b in batches], schema=lines.change_schema)
            offset += max(data.num_rows, 1)
            dest.write(lines, data, last_offset=offset)
        dest.close()
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    got = {(o, ln): n for o, ln, n in con.execute("SELECT order_id, line, note FROM order_lines").fetchall()}
    con.close()
    want = {(r["order_id"], r["line"]): r["note"] for r in _table(db, lines).values()}
    assert got == want == {(1, 1): "back", (2, 2): "o2l2", (2, 3): "o2l3"}


def test_changes_during_the_snapshot_are_re_applied(db: Db) -> None:
    """The mark is taken before the snapshot: a change committed while it runs, or by a
    transaction open when it starts, arrives after it."""
    _tables(db)
    src, st = _source(db, batch_size=2, chunk_size=2)
    items = st["items"]
    with src:
        trigger.install(src, [items])
        open_txn = None
        if db.kind == "postgres":
            open_txn = psycopg.connect(db.url)
            open_txn.execute("UPDATE items SET name = 'open at start' WHERE id = 7")
        elif db.kind == "mysql":
            open_txn = _my(db, autocommit=False)
            open_txn.cursor().execute("UPDATE items SET name = 'open at start' WHERE id = 7")
        reader = trigger.read(src, items, None)
        state: dict = {}
        _apply(state, [next(reader)], items)  # rows 1, 2
        db.execute("UPDATE items SET qty = -1 WHERE id IN (1, 6)", "DELETE FROM items WHERE id = 2",
                   "DELETE FROM items WHERE id = 5", "INSERT INTO items VALUES (60, 'during', 1)")
        if open_txn is not None:
            open_txn.commit()
            open_txn.close()
        rest = list(reader)
        _apply(state, rest, items)
        pos = rest[-1].position
        assert "snapshot" not in pos
        more, _ = _read(src, items, pos)  # PostgreSQL: a window closes when the reader looks again
        _apply(state, more, items)
        assert state == _table(db, items)
        assert state[(7,)]["name"] == ("open at start" if open_txn is not None else "n7")


def test_hostile_and_long_identifiers(db: Db) -> None:
    name = 'Odd "q" `t` ' + "x" * (44 if db.kind != "sqlite" else 80)
    t, k1, k2 = db.q(name), db.q('k "1"'), db.q("k`2")
    db.execute(f"CREATE TABLE {t} ({k1} integer NOT NULL, {k2} varchar(20) NOT NULL, v integer, PRIMARY KEY ({k1}, {k2}))",
               f"INSERT INTO {t} VALUES (1, 'a', 1), (2, 'b', 2)")
    src = db.source("all")
    with src:
        (s,) = [dataclasses.replace(s, mode="trigger") for s in src.discover() if s.table_name == name]
        done = trigger.install(src, [s])
        assert len(done) == (2 if db.kind == "postgres" else 4)
        d = src.trigger_sql(s)
        assert len(d.shadow_name.encode()) <= 63
        state: dict = {}
        _, pos = _read(src, s, None)
        db.execute(f"UPDATE {t} SET {k2} = 'c' WHERE {k1} = 1", f"DELETE FROM {t} WHERE {k1} = 2",
                   f"INSERT INTO {t} VALUES (3, 'z', 3)")
        _apply(state, list(trigger.read(src, s, None)), s)
        ops = _apply(state, _read(src, s, pos)[0], s)
        assert ("delete", (1, "a")) in ops and ("insert", (1, "c")) in ops and ("delete", (2, "b")) in ops
        assert state == _table(db, s)
        trigger.acknowledge(src, s, _read(src, s, pos)[1])
        assert _shadow_count(db, src, s) == 0
        assert len(trigger.uninstall(src, [s])) == len(done)



def test_a_second_pipeline_on_the_shadow_table_is_refused_not_silently_robbed(db: Db) -> None:
    """Issue 9.1: two pipelines (two positions: a copy of the pipeline file run from another
    folder has its own state) reading one shadow table. The reader purges what it
    acknowledged, so the second one would delete rows the first has not read: it is
    refused, and a purge by a pipeline that does not own the table deletes nothing."""
    _tables(db)
    src, st = _source(db)
    items = st["items"]
    with src:
        trigger.install(src, [items])
        _, pos_a = _read(src, items, None)  # the original's snapshot ...
        _, pos_copy = _read(src, items, None)  # ... and the copy's, both before any acknowledgement
        trigger.acknowledge(src, items, pos_a)  # the original's first purge claims the table
        db.execute("UPDATE items SET qty = 100 WHERE id = 1")
        with pytest.raises(FatalError, match=r"read by another pipeline.*cdc uninstall.*cdc install"):
            list(trigger.read(src, items, None))  # the copy, started again from scratch
        with pytest.raises(FatalError, match="read by another pipeline"):
            list(trigger.read(src, items, pos_copy))  # the copy, resuming
        trigger.acknowledge(src, items, {**pos_copy, "txid": 2**62, "seq": 2**62})  # a late purge of the copy
        assert _shadow_count(db, src, items) > 0  # deleted nothing
        got, pos_a = _read(src, items, pos_a)  # the original reads on, nothing lost
        assert [(r["id"], r["qty"]) for b in got for r in b.data.to_pylist()] == [(1, 100)]
        trigger.acknowledge(src, items, pos_a)
        assert _shadow_count(db, src, items) == 0
        # the documented hand-over: a new shadow table has no owner
        trigger.uninstall(src, [items])
        trigger.install(src, [items])
        got, _ = _read(src, items, None)
        assert sorted(r["id"] for b in got for r in b.data.to_pylist()) == list(range(1, 8))


def test_a_copy_of_the_pipeline_in_another_folder_is_refused_end_to_end(pg_url: str, tmp_path: Path) -> None:
    """Issue 9.1 through the command line: ``cdc install`` and runs of the original, then the
    same pipeline file run from another folder (its own state) is refused with the message,
    and the original goes on without losing a change."""
    import subprocess
    import sys

    import duckdb
    import yaml

    db = Db("postgres", pg_url)
    db.execute("CREATE TABLE tc (id integer PRIMARY KEY, v text)", "INSERT INTO tc VALUES (1, 'a'), (2, 'b')")

    def write(folder: str) -> Path:
        home = tmp_path / folder
        home.mkdir()
        f = home / "pipeline.yaml"
        f.write_text(yaml.safe_dump({
            "pipeline": "trigger_copy",
            "source": {"type": "postgres", "url": pg_url, "streams": [{"table": "public.tc", "mode": "trigger"}]},
            "destinations": [{"name": "duck", "type": "duckdb", "path": str(home / "d.duckdb"), "write": "merge"}]}))
        return f

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "replicant.cli", *args], capture_output=True, text=True, timeout=120)

    def rows(f: Path) -> list[tuple]:
        with duckdb.connect(str(f.parent / "d.duckdb"), read_only=True) as con:
            return con.execute("SELECT id, v FROM tc ORDER BY id").fetchall()

    original, copy = write("original"), write("copy")
    for args in (("cdc", "install", str(original)), ("run", str(original))):
        p = cli(*args)
        assert p.returncode == 0, p.stdout + p.stderr
    db.execute("UPDATE tc SET v = 'A' WHERE id = 1")
    p = cli("run", str(copy))
    out = " ".join((p.stdout + p.stderr).split())
    assert p.returncode != 0 and "read by another pipeline" in out and "cdc uninstall" in out, out
    db.execute("INSERT INTO tc VALUES (3, 'c')")
    p = cli("run", str(original))
    assert p.returncode == 0, p.stdout + p.stderr
    assert rows(original) == [(1, "A"), (2, "b"), (3, "c")]

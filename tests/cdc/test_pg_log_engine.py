"""PostgreSQL ``mode: log`` through the real :class:`~replicant.engine.Engine` in ``--follow``
mode (in a thread), into a PostgreSQL and a DuckDB destination.

* changes (inserts, updates, deletes, one transaction over two tables) arrive in both;
* schema changes while capturing: a new nullable column and widened types are followed;
  an incompatible change (a type changed to another, a dropped key column) pauses only that
  stream, with a message naming the column and what to do, while another stream flows;
* ``replicant status`` shows the slot and its lag after a run.

The PostgreSQL destination is read while the engine runs (an independent connection);
DuckDB only after the stop (an in-process reader would share the open file's lock).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml

from compare import fetch
from replicant.config import parse
from replicant.engine import Engine, RunResult


def _exec(url: str, *sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        for s in sql:
            c.execute(s)


def _pipeline(name: str, pg_url: str, dest_url: str, tmp_path: Path, tables: list[str]) -> dict:
    return {
        "pipeline": name,
        "source": {"type": "postgres", "url": pg_url, "flush_interval": 0.1,
                   "streams": [{"table": f"public.{t}", "mode": "log"} for t in tables]},
        "destinations": [
            {"name": "pg", "type": "postgres", "url": dest_url, "write": "merge"},
            {"name": "duck", "type": "duckdb", "path": str(tmp_path / "d.duckdb"), "write": "merge"},
        ],
    }


@contextmanager
def _following(cfg: Any) -> Iterator[dict]:
    """Runs the engine with ``follow=True`` in a thread; yields a dict that gets ``"r"``
    (the :class:`RunResult`) once the block ends and the engine stopped."""
    engine = Engine(cfg)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", engine.run(follow=True)), daemon=True)
    t.start()
    try:
        yield out
    finally:
        engine.stop_event.set()
        t.join(timeout=60)
        assert not t.is_alive(), "follow mode stops promptly"


def _wait(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except psycopg.Error:  # the table (or column) may not exist yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _same(kind: str, where: str, pg_url: str, table: str, cols: list[str]) -> bool:
    return fetch(kind, where, table, cols) == fetch("postgres", pg_url, table, cols)


def _pg_types(url: str, table: str) -> dict[str, str]:
    with psycopg.connect(url) as c:
        rows = c.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped", (table,)).fetchall()
    return dict(rows)


def _duck_types(path: Path, table: str) -> dict[str, str]:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?",
                           [table]).fetchall()
    return dict(rows)


A = ["id", "v", "n"]
B = ["id", "w"]


def test_changes_and_a_transaction_over_two_tables_arrive_in_both(tmp_path: Path, pg_url: str, dest_url: str,
                                                                  pipeline_name: str) -> None:
    _exec(pg_url, "CREATE TABLE a (id int PRIMARY KEY, v text, n int)", "CREATE TABLE b (id int PRIMARY KEY, w text)",
          "INSERT INTO a SELECT g, 'v' || g, g FROM generate_series(1, 20) g", "INSERT INTO b VALUES (1, 'one')")
    cfg = parse(_pipeline(pipeline_name, pg_url, dest_url, tmp_path, ["a", "b"]), base_dir=tmp_path)
    with _following(cfg) as out:
        _wait(lambda: _same("postgres", dest_url, pg_url, "a", A) and _same("postgres", dest_url, pg_url, "b", B),
              "the snapshot")
        _exec(pg_url, "INSERT INTO a VALUES (21, 'new', 21)", "UPDATE a SET v = 'changed', n = NULL WHERE id = 3",
              "DELETE FROM a WHERE id = 4")
        with psycopg.connect(pg_url) as c:  # one transaction over both tables
            c.execute("INSERT INTO a VALUES (22, 'txn', 22)")
            c.execute("UPDATE b SET w = 'txn' WHERE id = 1")
            c.execute("INSERT INTO b VALUES (2, 'two')")
            c.execute("DELETE FROM a WHERE id = 5")
        _wait(lambda: _same("postgres", dest_url, pg_url, "a", A) and _same("postgres", dest_url, pg_url, "b", B),
              "the changes in the PostgreSQL destination")
        ids = [r[0] for r in fetch("postgres", dest_url, "a", ["id"])]
        assert 21 in ids and 22 in ids and 4 not in ids and 5 not in ids
        assert fetch("postgres", dest_url, "b", B) == [(1, "txn"), (2, "two")]
    result: RunResult = out["r"]
    assert result.ok, result.errors
    assert _same("duckdb", str(tmp_path / "d.duckdb"), pg_url, "a", A)
    assert _same("duckdb", str(tmp_path / "d.duckdb"), pg_url, "b", B)
    assert result.rows_read["public.a"] >= 20 + 5 and result.rows_read["public.b"] == 3


def test_added_column_and_widened_types_are_followed(tmp_path: Path, pg_url: str, dest_url: str,
                                                      pipeline_name: str) -> None:
    _exec(pg_url, "CREATE TABLE a (id int PRIMARY KEY, v varchar(10), n int)",
          "INSERT INTO a SELECT g, 'v' || g, g FROM generate_series(1, 10) g")
    cfg = parse(_pipeline(pipeline_name, pg_url, dest_url, tmp_path, ["a"]), base_dir=tmp_path)
    cols = ["id", "v", "n", "c"]
    with _following(cfg) as out:
        _wait(lambda: _same("postgres", dest_url, pg_url, "a", A), "the snapshot")
        _exec(pg_url, "INSERT INTO a VALUES (11, 'before', 11)")
        _wait(lambda: _same("postgres", dest_url, pg_url, "a", A), "a row before the change")
        _exec(pg_url, "ALTER TABLE a ADD COLUMN c text",
              "INSERT INTO a VALUES (12, 'with c', 12, 'c12')", "UPDATE a SET c = 'c1' WHERE id = 1")
        _wait(lambda: _same("postgres", dest_url, pg_url, "a", cols), "the new column in the PostgreSQL destination")
        _exec(pg_url, "ALTER TABLE a ALTER COLUMN n TYPE bigint, ALTER COLUMN v TYPE varchar(50)",
              "INSERT INTO a VALUES (13, 'a value longer than ten', 3000000000, 'c13')",
              "UPDATE a SET n = -3000000000 WHERE id = 2")
        _wait(lambda: _same("postgres", dest_url, pg_url, "a", cols), "the widened values in the PostgreSQL destination")
        types = _pg_types(dest_url, "a")
        assert (types["c"], types["n"], types["v"]) == ("text", "bigint", "character varying(50)")
    result: RunResult = out["r"]
    assert result.ok, result.errors
    duck = tmp_path / "d.duckdb"
    assert _same("duckdb", str(duck), pg_url, "a", cols)
    assert {(int(i), c) for i, c in fetch("duckdb", str(duck), "a", ["id", "c"]) if c is not None} == {
        (1, "c1"), (12, "c12"), (13, "c13")}
    assert (_duck_types(duck, "a")["n"], _duck_types(duck, "a")["c"]) == ("BIGINT", "VARCHAR")


def test_incompatible_change_pauses_only_that_stream(tmp_path: Path, pg_url: str, dest_url: str,
                                                     pipeline_name: str) -> None:
    _exec(pg_url, "CREATE TABLE a (id int PRIMARY KEY, v text, n int)", "CREATE TABLE b (id int PRIMARY KEY, w text)",
          "CREATE TABLE k (id int PRIMARY KEY, w text)",
          "INSERT INTO a VALUES (1, 'one', 1)", "INSERT INTO b VALUES (1, 'one')", "INSERT INTO k VALUES (1, 'one')")
    cfg = parse(_pipeline(pipeline_name, pg_url, dest_url, tmp_path, ["a", "b", "k"]), base_dir=tmp_path)
    with _following(cfg) as out:
        _wait(lambda: all(_same("postgres", dest_url, pg_url, t, c) for t, c in (("a", A), ("b", B), ("k", B))),
              "the snapshot")
        _exec(pg_url, "ALTER TABLE a ALTER COLUMN n TYPE text", "INSERT INTO a VALUES (2, 'two', 'not a number')",
              "ALTER TABLE k DROP COLUMN id", "INSERT INTO k VALUES ('keyless')",
              "INSERT INTO b VALUES (2, 'two')")
        _wait(lambda: _same("postgres", dest_url, pg_url, "b", B), "stream b despite the paused ones")
        _exec(pg_url, "UPDATE b SET w = 'still flowing' WHERE id = 1", "INSERT INTO a VALUES (3, 'three', 'x')")
        _wait(lambda: _same("postgres", dest_url, pg_url, "b", B), "stream b after the pause")
        assert fetch("postgres", dest_url, "a", ["id", "n"]) == [(1, 1)], "stream a is paused where it was"
        assert fetch("postgres", dest_url, "k", ["id", "w"]) == [(1, "one")], "stream k is paused where it was"
    result: RunResult = out["r"]
    assert not result.ok
    by_stream = {s: [e for e in result.errors if e.stream == s] for s in ("public.a", "public.b", "public.k")}
    assert not by_stream["public.b"], result.errors
    assert len(result.errors) == 4, result.errors  # a and k, in each destination
    for e in by_stream["public.a"]:
        assert "column n changed from" in e.message and "replay" in e.message, e
    for e in by_stream["public.k"]:
        assert "key column id is gone" in e.message and "replay" in e.message, e
    assert {e.kind for e in result.errors} == {"delivery"}
    assert {e.destination for e in result.errors} == {"pg", "duck"}
    assert all(str(e).startswith(f"destination {e.destination}, stream {e.stream}: ") for e in result.errors)
    assert _same("duckdb", str(tmp_path / "d.duckdb"), pg_url, "b", B)
    assert fetch("duckdb", str(tmp_path / "d.duckdb"), "a", ["id", "n"]) == [(1, 1)]


def test_a_paused_stream_is_logged_and_shown_by_status_while_follow_runs(
        tmp_path: Path, pg_url: str, dest_url: str, pipeline_name: str, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 9 item 14: schema drift pauses stream a at both destinations during ``--follow``: a
    WARNING says so at once, and ``status`` (``--json`` and the table) from another process shows
    it paused with the reason, per destination, until a delivery of it succeeds (a replay)."""
    _exec(pg_url, "CREATE TABLE a (id int PRIMARY KEY, v text, n int)", "CREATE TABLE b (id int PRIMARY KEY, w text)",
          "INSERT INTO a VALUES (1, 'one', 1)", "INSERT INTO b VALUES (1, 'one')")
    data = _pipeline(pipeline_name, pg_url, dest_url, tmp_path, ["a", "b"])
    f = tmp_path / "p.yml"
    f.write_text(yaml.safe_dump(data))
    cfg = parse(data, base_dir=tmp_path)
    cli = [sys.executable, "-m", "replicant.cli"]

    def status() -> dict:
        p = subprocess.run([*cli, "status", str(f), "--json"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def paused(st: dict) -> dict[tuple[str, str], str]:
        return {(d["destination"], d["stream"]): d["paused"] for d in st["destinations"] if d["paused"]}

    caplog.set_level(logging.WARNING, logger="replicant")
    with _following(cfg):
        _wait(lambda: all(_same("postgres", dest_url, pg_url, t, c) for t, c in (("a", A), ("b", B))), "the snapshot")
        assert not paused(status())
        _exec(pg_url, "ALTER TABLE a ALTER COLUMN n TYPE text", "INSERT INTO a VALUES (2, 'two', 'not a number')",
              "INSERT INTO b VALUES (2, 'two')")
        _wait(lambda: len(paused(status())) == 2, "status to show stream a paused at both destinations")
        st = paused(status())  # from another process, while follow runs
        assert set(st) == {("pg", "public.a"), ("duck", "public.a")}, st
        assert all("column n changed from" in reason and "replay" in reason for reason in st.values()), st
        table = subprocess.run([*cli, "status", str(f)], capture_output=True, text=True, timeout=60)
        said = " ".join(table.stdout.split())
        assert "paused: pg / public.a since" in said and "paused: duck / public.a since" in said, table.stdout
        warned = [r for r in caplog.records if r.levelno == logging.WARNING and "paused stream public.a" in r.getMessage()]
        assert {r.getMessage().split()[1] for r in warned} == {"pg", "duck"}, [r.getMessage() for r in caplog.records]
        assert all("column n changed from" in r.getMessage() and "replicant status" in r.getMessage() for r in warned)
    # resumed at duck by a successful replay into a table rebuilt from the log; still paused at pg
    with duckdb.connect(str(tmp_path / "d.duckdb")) as c:
        c.execute("DROP TABLE a")
    assert Engine(cfg).replay("duck", start="start").rows_written["duck"]["public.a"] > 0
    assert set(paused(status())) == {("pg", "public.a")}


def test_status_shows_the_slot_lag_after_a_run(tmp_path: Path, pg_url: str, dest_url: str, pipeline_name: str) -> None:
    _exec(pg_url, "CREATE TABLE a (id int PRIMARY KEY, v text, n int)", "INSERT INTO a VALUES (1, 'one', 1)")
    data = _pipeline(pipeline_name, pg_url, dest_url, tmp_path, ["a"])
    result = Engine(parse(data, base_dir=tmp_path)).run()
    assert result.ok, result.errors
    _exec(pg_url, "INSERT INTO a SELECT g, repeat('x', 100), g FROM generate_series(2, 1000) g")  # WAL past the slot
    f = tmp_path / "p.yml"
    f.write_text(yaml.safe_dump(data))
    p = subprocess.run([sys.executable, "-m", "replicant.cli", "status", str(f)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in p.stdout.splitlines()) if v}
    assert lines.get("slot") == f"replicant_{pipeline_name}", p.stdout
    assert int(lines["slot lag bytes"]) > 0, p.stdout
    assert lines.get("slot active") == "False", p.stdout


def test_restart_delivers_a_change_captured_before_a_stop(tmp_path: Path, pg_url: str, dest_url: str,
                                                           pipeline_name: str) -> None:
    """The log holds a widened column the destinations have not applied yet when the engine
    restarts (and discovers the table already widened): the destinations still follow it."""
    _exec(pg_url, "CREATE TABLE a (id int PRIMARY KEY, v varchar(10), n int)", "INSERT INTO a VALUES (1, 'one', 1)")
    cfg = parse(_pipeline(pipeline_name, pg_url, dest_url, tmp_path, ["a"]), base_dir=tmp_path)
    assert Engine(cfg).run().ok
    _exec(pg_url, "ALTER TABLE a ALTER COLUMN n TYPE bigint, ALTER COLUMN v TYPE varchar(50), ADD COLUMN c text",
          "INSERT INTO a VALUES (2, 'a value longer than ten', 3000000000, 'c')")
    captured = Engine(cfg, destinations_factory=lambda context_for: []).run()  # into the log only (a stop before delivery)
    assert captured.ok and captured.rows_read["public.a"] == 1, captured
    result = Engine(cfg).run()
    assert result.ok, result.errors
    cols = ["id", "v", "n", "c"]
    assert _same("postgres", dest_url, pg_url, "a", cols)
    assert _same("duckdb", str(tmp_path / "d.duckdb"), pg_url, "a", cols)
    assert _pg_types(dest_url, "a")["n"] == "bigint"


def test_an_idle_pipeline_still_moves_its_slot(tmp_path: Path, pg_url: str, dest_url: str, pipeline_name: str) -> None:
    """The heartbeat: while the captured table is idle and only other tables write WAL, the
    slot's confirmed position keeps advancing, so PostgreSQL does not retain WAL without bound."""
    _exec(pg_url, "CREATE TABLE a (id int PRIMARY KEY, v text, n int)", "CREATE TABLE other (id int, pad text)",
          "INSERT INTO a VALUES (1, 'x', 1)")
    data = _pipeline(pipeline_name, pg_url, dest_url, tmp_path, ["a"])
    data["source"]["heartbeat"] = 0.5
    cfg = parse(data, base_dir=tmp_path)

    def confirmed() -> int:
        with psycopg.connect(pg_url, autocommit=True) as c:
            row = c.execute("SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                            (f"replicant_{pipeline_name}",)).fetchone()
        return int(row[0]) if row and row[0] is not None else -1

    with _following(cfg) as out:
        _wait(lambda: _same("postgres", dest_url, pg_url, "a", A), "the snapshot")
        _exec(pg_url, "INSERT INTO other SELECT g, repeat('p', 500) FROM generate_series(1, 20000) g")  # WAL, not captured
        with psycopg.connect(pg_url, autocommit=True) as c:
            after_writes = int(c.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])
        _wait(lambda: confirmed() >= after_writes, "the slot to move past WAL it has no changes in", timeout=30)
    assert out["r"].ok, out["r"].errors


def test_a_copy_in_another_folder_cannot_silently_steal_the_originals_changes(tmp_path: Path, pg_url: str,
                                                                              pipeline_name: str) -> None:
    """Issue 9.1: the same pipeline file in two folders (two state stores, one slot name). The
    copy confirms the shared slot past the original's checkpoint; the original must refuse
    with advice instead of resuming from its own LSN and skipping what the copy took."""
    import duckdb

    _exec(pg_url, "CREATE TABLE a (id int PRIMARY KEY, v text, n int)",
          "INSERT INTO a SELECT g, 'v' || g, g FROM generate_series(1, 5) g")

    def write(folder: str) -> Path:
        home = tmp_path / folder
        home.mkdir()
        data = {"pipeline": pipeline_name,
                "source": {"type": "postgres", "url": pg_url, "streams": [{"table": "public.a", "mode": "log"}]},
                "destinations": [{"name": "duck", "type": "duckdb", "path": str(home / "d.duckdb"), "write": "merge"}]}
        f = home / "pipeline.yaml"
        f.write_text(yaml.safe_dump(data))
        return f

    def run(f: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "replicant.cli", "run", str(f)], capture_output=True, text=True,
                              timeout=120, cwd=f.parent)

    def ids(f: Path) -> list[int]:
        with duckdb.connect(str(f.parent / "d.duckdb"), read_only=True) as con:
            return [r[0] for r in con.execute("SELECT id FROM a ORDER BY id").fetchall()]

    original, copy = write("original"), write("copy")
    p = run(original)
    assert p.returncode == 0, p.stdout + p.stderr
    _exec(pg_url, "INSERT INTO a VALUES (6, 'restart', 6)")
    p = run(original)  # a normal restart resumes from its own checkpoint
    assert p.returncode == 0, p.stdout + p.stderr
    assert ids(original) == [1, 2, 3, 4, 5, 6]

    _exec(pg_url, "INSERT INTO a VALUES (7, 'taken by the copy', 7)")
    p = run(copy)  # first run of the copy: it snapshots, then confirms the shared slot past the original
    assert p.returncode == 0, p.stdout + p.stderr
    assert ids(copy) == [1, 2, 3, 4, 5, 6, 7]

    _exec(pg_url, "INSERT INTO a VALUES (8, 'after', 8)")
    p = run(original)
    out = " ".join((p.stdout + p.stderr).split())
    assert p.returncode != 0, f"the original resumed past the changes the copy took: {ids(original)}\n{out}"
    assert "another consumer" in out and "`slot:`" in out and "cdc uninstall" in out, out
    assert 7 not in ids(original)  # refused, not half-delivered

    # the documented way out: the copy gets its own slot, the original re-snapshots
    p = subprocess.run([sys.executable, "-m", "replicant.cli", "cdc", "uninstall", str(original)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    p = run(original)
    assert p.returncode == 0, p.stdout + p.stderr
    assert ids(original) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_follow_reconnects_after_the_source_crashes(tmp_path: Path, dest_url: str, unique_name: str) -> None:
    """Issue 9 item 12: ``pg_ctl stop -m immediate`` on the source during ``--follow`` (the
    capture used to catch ``pq.PQerror``, which psycopg does not have, and ended the run with an
    AttributeError); the run reconnects once the server is back and converges."""
    import servers

    server = servers.start_postgres()  # its own server: crashing the session's would hit other tests
    try:
        server.create_database("src")
        src_url = server.url("src")
        _exec(src_url, "CREATE TABLE a (id int PRIMARY KEY, v text, n int)",
              "INSERT INTO a SELECT g, 'v' || g, g FROM generate_series(1, 20) g")
        cfg = parse(_pipeline(f"crash_{unique_name}"[:40], src_url, dest_url, tmp_path, ["a"]), base_dir=tmp_path)
        with _following(cfg) as out:
            _wait(lambda: _same("postgres", dest_url, src_url, "a", A), "the snapshot")
            _exec(src_url, "INSERT INTO a VALUES (21, 'before the crash', 21)")
            _wait(lambda: _same("postgres", dest_url, src_url, "a", A), "a change before the crash")
            server.crash()
            time.sleep(2)  # the outage: the capture loses both connections and retries meanwhile
            server.start()
            _exec(src_url, "INSERT INTO a VALUES (22, 'after the crash', 22)", "UPDATE a SET v = 'changed' WHERE id = 1",
                  "DELETE FROM a WHERE id = 2")
            _wait(lambda: _same("postgres", dest_url, src_url, "a", A), "the changes after the restart", timeout=120)
            ids = [r[0] for r in fetch("postgres", dest_url, "a", ["id"])]
            assert 22 in ids and 2 not in ids
        result: RunResult = out["r"]
        assert result.ok, result.errors
        assert _same("duckdb", str(tmp_path / "d.duckdb"), src_url, "a", A)
    finally:
        server.stop()


def test_unchanged_toast_of_a_dropped_column_does_not_stop_the_other_stream(tmp_path: Path, pg_url: str, dest_url: str,
                                                                           pipeline_name: str) -> None:
    """Issue 9 item 3 in ``--follow``: an update left a TOASTed value out, then its column was
    dropped. The other stream keeps flowing, and this one is snapshotted again (the capture
    restarts) and converges, instead of the whole capture ending."""
    big = "SELECT string_agg(md5(g::text), '') FROM generate_series(1, 32768) g"
    _exec(pg_url, "CREATE TABLE t (id int PRIMARY KEY, big text, small int)", "ALTER TABLE t ALTER big SET STORAGE EXTERNAL",
          f"INSERT INTO t VALUES (1, ({big}), 0), (2, 'short', 0)", "CREATE TABLE b (id int PRIMARY KEY, w text)",
          "INSERT INTO b VALUES (1, 'one')")
    cfg = parse(_pipeline(pipeline_name, pg_url, dest_url, tmp_path, ["t", "b"]), base_dir=tmp_path)
    cols = ["id", "small"]
    with _following(cfg) as out:
        _wait(lambda: _same("postgres", dest_url, pg_url, "t", cols) and _same("postgres", dest_url, pg_url, "b", B),
              "the snapshot")
        _exec(pg_url, "UPDATE t SET small = small + 1", "ALTER TABLE t DROP COLUMN big", "INSERT INTO b VALUES (2, 'two')")
        _wait(lambda: _same("postgres", dest_url, pg_url, "b", B), "stream b")
        _wait(lambda: _same("postgres", dest_url, pg_url, "t", cols), "stream t, snapshotted again")
        _exec(pg_url, "UPDATE t SET small = 9 WHERE id = 2", "INSERT INTO b VALUES (3, 'three')")
        _wait(lambda: _same("postgres", dest_url, pg_url, "t", cols) and _same("postgres", dest_url, pg_url, "b", B),
              "both streams after that")
        assert fetch("postgres", dest_url, "t", cols) == [(1, 1), (2, 9)]
    result: RunResult = out["r"]
    assert result.ok, result.errors
    assert _same("duckdb", str(tmp_path / "d.duckdb"), pg_url, "t", cols)

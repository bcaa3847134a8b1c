"""Fan-out, replay and ``--follow`` on real databases.

* Fan-out: three destinations read the same log, each at its own pace; one that fails (its
  database is missing) never blocks the others, and converges once it recovers — on the
  next run, and inside one ``--follow`` run by retrying with back-off.
* Replay: from the start, an offset or a time, into each database destination; a merge
  destination ends exactly as before; a replay past retention fails naming what the log holds.
* ``--follow``: cursor streams are polled until the engine is stopped (SIGTERM for the CLI,
  which then exits 0 within seconds).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from compare import fetch
from replicant.config import parse
from replicant.engine import Engine
from replicant.errors import FatalError
from replicant.log import LocalLog

COLS = ["id", "name", "updated_at"]


def _source_db(path: Path, n: int = 3000) -> None:
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, updated_at INTEGER NOT NULL)")
        c.execute("CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT, updated_at INTEGER NOT NULL)")
        c.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"item {i}", i) for i in range(1, n + 1)])
        c.executemany("INSERT INTO tags VALUES (?, ?, ?)", [(i, f"tag {i}", i) for i in range(1, 51)])


def _exec_sqlite(path: Path, *sql: str) -> None:
    with sqlite3.connect(path) as c:
        for s in sql:
            c.execute(s)


def _pipeline(tmp_path: Path, src: Path, dests: list[dict], **source: object) -> dict:
    return {
        "pipeline": "fan",
        "source": {
            "type": "sqlite", "url": f"sqlite:///{src}", "batch_size": 500,
            "streams": [{"table": t, "mode": "cursor", "cursor": "updated_at"} for t in ("items", "tags")],
            **source,
        },
        "destinations": dests,
    }


def _same(kind: str, where: str, src: Path, table: str = "items") -> bool:
    return fetch(kind, where, table, COLS) == fetch("sqlite", str(src), table, COLS)


def _wait(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the destinations to converge")
        time.sleep(0.2)


# ---------------------------------------------------------------- fan-out


def test_fan_out_with_a_failing_destination_converges_on_the_next_run(tmp_path: Path, pg_server, unique_name: str) -> None:
    src = tmp_path / "src.db"
    _source_db(src)
    pg_db = f"fan_{unique_name}"[:60]
    dests = [
        {"name": "duck", "type": "duckdb", "path": str(tmp_path / "d.duckdb"), "write": "merge"},
        {"name": "lite", "type": "sqlite", "path": str(tmp_path / "d.db"), "write": "merge"},
        {"name": "pg", "type": "postgres", "url": pg_server.url(pg_db), "write": "merge"},
    ]
    cfg = parse(_pipeline(tmp_path, src, dests), base_dir=tmp_path)

    r1 = Engine(cfg).run()  # the PostgreSQL database does not exist yet
    assert not r1.ok and any("pg" in str(e) for e in r1.errors)
    assert _same("duckdb", str(tmp_path / "d.duckdb"), src) and _same("sqlite", str(tmp_path / "d.db"), src)

    pg_server.create_database(pg_db)
    try:
        _exec_sqlite(src, "UPDATE items SET name = 'changed', updated_at = 9000 WHERE id = 5", "DELETE FROM items WHERE id = 6")
        r2 = Engine(cfg).run()
        assert r2.ok, r2.errors
        assert r2.rows_written["pg"]["items"] >= 3000, "the recovered destination caught up from the log's start"
        assert r2.rows_written["duck"]["items"] == 1, "the healthy ones only got the new change"
        for kind, where in (("duckdb", str(tmp_path / "d.duckdb")), ("sqlite", str(tmp_path / "d.db")), ("postgres", pg_server.url(pg_db))):
            # a cursor stream does not see deletes: all three agree with each other and hold row 6
            assert fetch(kind, where, "items", COLS) == fetch("duckdb", str(tmp_path / "d.duckdb"), "items", COLS)
            assert {int(i): n for i, n in fetch(kind, where, "items", ["id", "name"])}[5] == "changed"
    finally:
        pg_server.drop_database(pg_db)


def test_follow_retries_a_failing_destination_while_the_others_keep_up(tmp_path: Path, pg_server, pg_url: str, unique_name: str) -> None:
    src = tmp_path / "src.db"
    _source_db(src, n=1000)
    pg_db = f"fol_{unique_name}"[:60]
    app, duck = str(tmp_path / "a.db"), str(tmp_path / "d.duckdb")
    # polled while running: PostgreSQL only (an in-process reader of the SQLite or DuckDB file
    # would share the file locks of the open destination); those two are read after the stop
    dests = [
        {"name": "healthy", "type": "postgres", "url": pg_url, "write": "merge"},
        {"name": "app", "type": "sqlite", "path": app, "write": "append"},
        {"name": "pg", "type": "postgres", "url": pg_server.url(pg_db), "write": "merge"},
        {"name": "duck", "type": "duckdb", "path": duck, "write": "merge"},
    ]
    cfg = parse(_pipeline(tmp_path, src, dests, poll_interval=0.2), base_dir=tmp_path)
    engine = Engine(cfg)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", engine.run(follow=True)))
    t.start()
    try:
        _wait(lambda: _pg_same(pg_url, src))
        _exec_sqlite(src, "INSERT INTO items VALUES (5000, 'live', 5000)")
        _wait(lambda: _pg_same(pg_url, src))
        pg_server.create_database(pg_db)  # the failing destination recovers…
        _wait(lambda: _pg_same(pg_server.url(pg_db), src))  # …and catches up without a restart
        _exec_sqlite(src, "UPDATE items SET name = 'again', updated_at = 5001 WHERE id = 1")
        _wait(lambda: _pg_same(pg_server.url(pg_db), src) and _pg_same(pg_url, src))
    finally:
        engine.stop_event.set()
        t.join(timeout=30)
        assert not t.is_alive(), "follow mode stops promptly"
    assert out["r"].ok, out["r"].errors
    assert _same("duckdb", duck, src)
    appended = [r[0] for r in fetch("sqlite", app, "items", ["id"])]
    assert len(appended) == 1002 and len(set(appended)) == 1001, "append got every change once (row 1 twice: insert, update)"
    pg_server.drop_database(pg_db)


def _settled(check) -> bool:
    try:
        return check()
    except Exception:  # noqa: BLE001 - the database or table may not exist yet
        return False


def _pg_same(url: str, src: Path) -> bool:
    return _settled(lambda: _same("postgres", url, src))


# ---------------------------------------------------------------- replay


@pytest.mark.parametrize("kind", ["duckdb", "sqlite", "postgres", "mysql"])
def test_replay_from_start_offset_and_time_leaves_merge_destinations_unchanged(tmp_path: Path, kind: str, request) -> None:
    src = tmp_path / "src.db"
    _source_db(src, n=2000)
    if kind in ("duckdb", "sqlite"):
        where = str(tmp_path / f"d.{kind}")
        dest = {"name": "d", "type": kind, "path": where, "write": "merge"}
    else:
        where = request.getfixturevalue("pg_url" if kind == "postgres" else "mysql_url")
        dest = {"name": "d", "type": kind, "url": where, "write": "merge"}
    cfg = parse(_pipeline(tmp_path, src, [dest]), base_dir=tmp_path)
    assert Engine(cfg).run().ok
    t_mid = datetime.now(UTC)
    time.sleep(0.05)
    _exec_sqlite(src, "UPDATE items SET name = 'v2', updated_at = 7000 WHERE id <= 10")
    assert Engine(cfg).run().ok
    before = fetch(kind, where, "items", COLS)
    assert before == fetch("sqlite", str(src), "items", COLS)

    r = Engine(cfg).replay("d", start="start")
    assert r.rows_written["d"]["items"] == 2010 and r.rows_written["d"]["tags"] == 50
    assert fetch(kind, where, "items", COLS) == before

    r = Engine(cfg).replay("d", start="offset", offset=1500)
    assert r.rows_written["d"]["items"] == 2010 - 1500  # offsets 1500..2009 (no markers in cursor mode)
    assert fetch(kind, where, "items", COLS) == before

    r = Engine(cfg).replay("d", start="since", since=t_mid)
    assert r.rows_written["d"]["items"] == 10, "only what was appended after t_mid"
    assert fetch(kind, where, "items", COLS) == before

    # the destination keeps going normally after a replay
    _exec_sqlite(src, "INSERT INTO items VALUES (9999, 'after', 9999)")
    assert Engine(cfg).run().ok
    assert fetch(kind, where, "items", COLS) == fetch("sqlite", str(src), "items", COLS)


def test_replay_past_retention_says_what_the_log_still_holds(tmp_path: Path) -> None:
    src = tmp_path / "src.db"
    _source_db(src, n=3000)
    cfg = parse(_pipeline(tmp_path, src, [{"name": "d", "type": "duckdb", "path": str(tmp_path / "d.duckdb"), "write": "merge"}]),
                base_dir=tmp_path)
    lg = LocalLog(tmp_path / "log", segment_bytes=4096)
    try:
        assert Engine(cfg, log=lg).run().ok
        lg.apply_retention("items", __import__("replicant.log", fromlist=["Retention"]).Retention(max_bytes=8192))
        start = lg.start_offset("items")
        assert start > 0
        with pytest.raises(FatalError, match=rf"{start}"):
            Engine(cfg, log=lg).replay("d", start="offset", offset=0)
        r = Engine(cfg, log=lg).replay("d", start="start")  # from what is left: fine
        assert r.rows_written["d"]["items"] == 3000 - start
    finally:
        lg.close()


def test_replay_cli_needs_exactly_one_starting_point(tmp_path: Path) -> None:
    src = tmp_path / "src.db"
    _source_db(src, n=10)
    f = tmp_path / "p.yml"
    f.write_text(yaml.safe_dump(_pipeline(tmp_path, src, [{"name": "d", "type": "duckdb", "path": "d.duckdb", "write": "merge"}])))
    cli = [sys.executable, "-m", "replicant.cli"]
    assert subprocess.run([*cli, "run", str(f)], capture_output=True, text=True).returncode == 0
    p = subprocess.run([*cli, "replay", str(f), "--destination", "d"], capture_output=True, text=True)
    assert p.returncode == 2 and "exactly one of --from-start" in p.stderr
    p = subprocess.run([*cli, "replay", str(f), "--destination", "nope", "--from-start"], capture_output=True, text=True)
    assert p.returncode == 2 and "no destination named 'nope'" in p.stderr
    p = subprocess.run([*cli, "replay", str(f), "--destination", "d", "--since", "1h"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "items" in p.stdout


def test_replay_since_into_an_empty_destination_warns_of_the_gap_and_how_to_fill_it(tmp_path: Path) -> None:
    """Issue 9 item 9: a replay from an offset or a time into a destination that has not
    applied what lies before it moves its offset past a gap no later ``run`` fills; the CLI
    and the ``RunResult`` say so, with the command that fills it."""
    src = tmp_path / "src.db"
    _source_db(src, n=2000)
    d = {"name": "d", "type": "duckdb", "path": "d.duckdb", "write": "merge"}
    e = {"name": "e", "type": "duckdb", "path": "e.duckdb", "write": "merge"}
    g = {"name": "g", "type": "duckdb", "path": "g.duckdb", "write": "merge"}
    f = tmp_path / "p.yml"
    f.write_text(yaml.safe_dump(_pipeline(tmp_path, src, [d])))
    cli = [sys.executable, "-m", "replicant.cli"]
    assert subprocess.run([*cli, "run", str(f)], capture_output=True, text=True, cwd=tmp_path).returncode == 0
    f.write_text(yaml.safe_dump(_pipeline(tmp_path, src, [d, e, g])))  # a new, empty destination
    p = subprocess.run([*cli, "replay", str(f), "--destination", "e", "--offset", "1500"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    said = " ".join((p.stdout + p.stderr).split())
    assert "items" in said and "1,500 records" in said and "not delivered" in said, said
    assert "replicant replay" in said and "--destination e --from-start" in said, said
    cfg = parse(yaml.safe_load(f.read_text()), base_dir=tmp_path)
    r = Engine(cfg).replay("g", start="offset", offset=1500)
    assert [w for w in r.warnings if "items" in w and "--destination g --from-start" in w], r.warnings
    assert not [w for w in r.warnings if "tags" in w], "nothing of tags was delivered: no gap"
    r = Engine(cfg).replay("g", start="start")  # what the warning says fills the gap
    assert not r.warnings
    assert _same("duckdb", str(tmp_path / "g.duckdb"), src)


# ---------------------------------------------------------------- --follow from the CLI


def test_cli_follow_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    src = tmp_path / "src.db"
    _source_db(src, n=100)
    f = tmp_path / "p.yml"
    f.write_text(yaml.safe_dump(_pipeline(tmp_path, src, [{"name": "d", "type": "sqlite", "path": "d.db", "write": "merge"}],
                                          poll_interval=0.2)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "replicant.cli", "run", str(f), "--follow"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait(lambda: _settled(lambda: _same("sqlite", str(tmp_path / "d.db"), src)), timeout=60)
        _exec_sqlite(src, "INSERT INTO items VALUES (777, 'while following', 777)")
        _wait(lambda: _same("sqlite", str(tmp_path / "d.db"), src), timeout=30)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=30)
        assert time.monotonic() - t0 < 10, "stops within seconds"
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert _same("sqlite", str(tmp_path / "d.db"), src), "the stop left the destination whole"
    status = subprocess.run([sys.executable, "-m", "replicant.cli", "status", str(f)], capture_output=True, text=True)
    assert status.returncode == 0 and "interrupted" not in status.stdout, status.stdout


def test_follow_refuses_pipelines_with_only_full_streams(tmp_path: Path) -> None:
    src = tmp_path / "src.db"
    _source_db(src, n=10)
    data = _pipeline(tmp_path, src, [{"name": "d", "type": "duckdb", "path": "d.duckdb"}])
    data["source"]["streams"] = ["items"]
    f = tmp_path / "p.yml"
    f.write_text(yaml.safe_dump(data))
    p = subprocess.run([sys.executable, "-m", "replicant.cli", "run", str(f), "--follow"], capture_output=True, text=True)
    assert p.returncode == 2 and "source.streams" in p.stderr


def test_retention_in_the_pipeline_file_is_applied_after_a_run(tmp_path: Path) -> None:
    src = tmp_path / "src.db"
    _source_db(src, n=3000)
    data = _pipeline(tmp_path, src, [{"name": "d", "type": "duckdb", "path": str(tmp_path / "d.duckdb"), "write": "merge"}])
    data["retention"] = {"max_bytes": "8KiB"}
    cfg = parse(data, base_dir=tmp_path)
    lg = LocalLog(tmp_path / "log", segment_bytes=4096)
    try:
        assert Engine(cfg, log=lg).run().ok
        start, end = lg.start_offset("items"), lg.end_offset("items")
        assert 0 < start < end, "old segments were dropped, the newest kept"
        assert lg.last_position("items") is not None
        assert _same("duckdb", str(tmp_path / "d.duckdb"), src), "after the destination had applied them"
    finally:
        lg.close()

"""``replicant validate`` pinned to the SOURCE's position while ``replicant run --follow`` runs
in another process: a PostgreSQL ``log`` pipeline and a MariaDB binlog pipeline, each into a
PostgreSQL destination.

* a burst of changes committed right before ``validate``: it reads the source's position
  (``pg_current_wal_lsn()`` / ``SHOW MASTER STATUS``), waits until the log covers it and the
  destination applied it, and exits 0 with no false positive; the report shows the position
  waited for and that it was reached;
* the pipeline stopped, then changes: ``validate --wait 2`` does not hang; it reports what
  was compared (log offset, source position) and the lag in the source's unit.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pymysql
import yaml

from cdc._pipelines import Follow, exec_sql, wait_until
from compare import fetch
from replicant.config import load
from replicant.validate.pin import writer_running

ROOT = Path(__file__).resolve().parents[2]
COLS = ["id", "v", "n"]
ROWS = 2000


def _validate(folder: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, Any], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "replicant.cli", "validate", "p.yml", "--report", "r.json", *args],
                          cwd=folder, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    report = json.loads((folder / "r.json").read_text()) if (folder / "r.json").exists() else {}
    return done, report, time.monotonic() - started


def _my(url: str, *sql: str) -> None:
    p = urlsplit(url)
    conn = pymysql.connect(host=p.hostname, port=p.port, user=p.username, password=p.password or "",
                           database=p.path.lstrip("/"), autocommit=True)
    try:
        with conn.cursor() as cur:
            for s in sql:
                cur.execute(s)
    finally:
        conn.close()


def _burst(run: Callable[..., None], url: str) -> None:
    """Many small transactions of every kind, the last one committed just before validate."""
    for i in range(20):
        run(url, f"UPDATE a SET v = 'burst {i}', n = n + 1 WHERE id % 20 = {i}",
            f"INSERT INTO a VALUES ({ROWS + 1 + i}, 'new {i}', {i})", f"DELETE FROM a WHERE id = {i * 7 + 1}")


def _pipeline(folder: Path, name: str, kind: str, url: str, table: str, dest_url: str) -> Path:
    doc = {
        "pipeline": name,
        "source": {"type": kind, "url": url, "flush_interval": 0.1, "heartbeat": 0.5,
                   "streams": [{"table": table, "mode": "log"}]},
        "destinations": [{"name": "pg", "type": "postgres", "url": dest_url, "write": "merge"}],
    }
    path = folder / "p.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _scenario(tmp_path: Path, name: str, kind: str, url: str, table: str, dest_url: str,
              run: Callable[..., None], source_kind: str) -> None:
    pipeline = _pipeline(tmp_path, name, kind, url, table, dest_url)
    follow = Follow(pipeline, "follow")
    try:
        wait_until(lambda: fetch("postgres", dest_url, "a", COLS) == fetch(source_kind, url, "a", COLS) if _has_a(dest_url)
                   else False, 120, f"the snapshot in the destination\n{follow.output()[-2000:]}")
        _burst(run, url)  # in flight when validate starts
        done, report, _ = _validate(tmp_path, "--wait", "60")
        assert done.returncode == 0, done.stdout + done.stderr + follow.output()[-2000:]
        [s] = report["streams"]
        pos = s["position"]
        assert s["verdict"] == "equal" and s["differences"] == [] and s["differences_found"] == 0
        assert s["source"]["rows"] == ROWS + 20 - 20
        assert pos["source_position_at_start"] is not None and pos["source_position_reached"] is True
        assert pos["source_lag"] == 0 and pos["applied_offset"] >= pos["log_offset"] and s["note"] is None
        assert follow.alive(), follow.output()[-2000:]
        assert writer_running(load(pipeline)) is True  # read from /proc/locks: the follower holds the log
    finally:
        code, _ = follow.terminate(60)
    assert code == 0, follow.output()[-3000:]
    assert writer_running(load(pipeline)) is False

    # the pipeline stopped: a change it never captured; validate says what it compared
    run(url, "UPDATE a SET v = 'after the stop' WHERE id = 2", "INSERT INTO a VALUES (999999, 'late', 0)")
    done, report, seconds = _validate(tmp_path, "--wait", "2")
    assert seconds < 60, "validate does not hang on a stopped pipeline"
    assert done.returncode == 1, done.stdout + done.stderr
    [s] = report["streams"]
    pos = s["position"]
    assert pos["source_position_reached"] is False and pos["source_lag"] is not None and pos["source_lag"] > 0
    assert pos["source_position"] is not None and pos["log_offset"] is not None
    assert f"compared at log offset {pos['log_offset']}" in s["note"] and "lag" in s["note"]
    unit = "WAL" if source_kind == "postgres" else "binlog"
    assert re.search(r"  note: the pipeline is not running \(no process holds its staging log\): compared at log offset "
                     r"\d+, source position \{.+\}, the source at \{.+\}, lag \d+ " + unit + " bytes",
                     done.stdout), done.stdout  # as docs/validate.md shows it
    assert {(d["kind"], json.dumps(d["key"])) for d in s["differences"]} == {
        ("different", json.dumps({"id": "2"})), ("missing", json.dumps({"id": "999999"}))}


def _has_a(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute("SELECT to_regclass('public.a') IS NOT NULL").fetchone()[0]


def test_postgres_log_pinned_to_the_wal_position(tmp_path: Path, pg_url: str, dest_url: str, pipeline_name: str) -> None:
    exec_sql(pg_url, "CREATE TABLE a (id int PRIMARY KEY, v text, n int)",
        f"INSERT INTO a SELECT g, 'v' || g, g FROM generate_series(1, {ROWS}) g")
    _scenario(tmp_path, pipeline_name, "postgres", pg_url, "public.a", dest_url, exec_sql, "postgres")


def test_mariadb_binlog_pinned_to_the_master_status(tmp_path: Path, mysql_url: str, dest_url: str, unique_name: str) -> None:
    _my(mysql_url, "CREATE TABLE a (id int PRIMARY KEY, v varchar(40), n int)",
        "INSERT INTO a SELECT seq, concat('v', seq), seq FROM seq_1_to_2000")
    _scenario(tmp_path, f"pin_{unique_name}"[:40].lower(), "mysql", mysql_url, "a", dest_url, _my, "mysql")


def test_sqlite_trigger_stream_pinned_to_its_shadow_table(tmp_path: Path) -> None:
    """``mode: trigger``: the position waited for is the shadow table's highest change; a run
    that has not read it yet is reported with its lag in changes, a run that has is equal."""
    import sqlite3

    with sqlite3.connect(tmp_path / "shop.db") as c:
        c.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
        c.executemany("INSERT INTO a VALUES (?, ?, ?)", [(i, f"v{i}", i) for i in range(1, 101)])
    (tmp_path / "p.yml").write_text(yaml.safe_dump({
        "pipeline": "trig",
        "source": {"type": "sqlite", "url": "sqlite:///shop.db", "streams": [{"table": "a", "mode": "trigger"}]},
        "destinations": [{"name": "wh", "type": "duckdb", "path": "wh.duckdb", "write": "merge"}],
    }))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "replicant.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})

    for step in (("cdc", "install", "p.yml"), ("run", "p.yml")):
        done = cli(*step)
        assert done.returncode == 0, done.stdout + done.stderr
    with sqlite3.connect(tmp_path / "shop.db") as c:
        c.execute("UPDATE a SET v = 'changed' WHERE id <= 3")
        c.execute("DELETE FROM a WHERE id = 50")
    done, report, _ = _validate(tmp_path, "--wait", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    [s] = report["streams"]
    pos = s["position"]
    assert pos["source_position_at_start"]["mode"] == "trigger" and pos["source_position_reached"] is False
    assert pos["source_lag"] == 4 and pos["source_lag_unit"] == "changes"  # four shadow rows not read yet
    assert len(s["differences"]) == 4

    done = cli("run", "p.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    done, report, _ = _validate(tmp_path, "--wait", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    [s] = report["streams"]
    # read and acknowledged (purged): nothing left to wait for, the log's end is the pin
    assert s["verdict"] == "equal" and s["note"] is None
    assert s["position"]["source_position_at_start"] is None or s["position"]["source_position_reached"] is True

"""Issue 9 item 4: a column added with a value for the rows that already exist (``ADD COLUMN …
DEFAULT``, ``NOT NULL DEFAULT``, a volatile default, an identity) must reach those rows at every
destination, not stay NULL there: the stream is snapshotted again (``mode: log``) or read again
in full (``cursor``, ``trigger``); ``snapshot_diff`` re-reads everything anyway.

Each test compares the whole table, source against destination (PostgreSQL and DuckDB).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc._pipelines import exec_sql, wait_until
from cdc.test_binlog import sql
from compare import fetch
from replicant.config import parse
from replicant.engine import Engine, RunResult

#: (the column's DDL, whether existing rows get a value from it)
ADDED = {
    "default": "c int DEFAULT 7",
    "not_null_default": "c int NOT NULL DEFAULT 7",
    "volatile_default": "c int DEFAULT (random() * 1000000)::int",
    "identity": "c int GENERATED ALWAYS AS IDENTITY",
}
COLS = ["id", "v", "c"]


def _config(name: str, pg_url: str, dest_url: str, tmp_path: Path, stream: dict) -> Any:
    return parse({
        "pipeline": name,
        "source": {"type": "postgres", "url": pg_url, "flush_interval": 0.1, "streams": [stream]},
        "destinations": [
            {"name": "pg", "type": "postgres", "url": dest_url, "write": "merge"},
            {"name": "duck", "type": "duckdb", "path": str(tmp_path / "d.duckdb"), "write": "merge"},
        ],
    }, base_dir=tmp_path)


def _table(pg_url: str) -> None:
    exec_sql(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL DEFAULT now())",
             "INSERT INTO t (id, v) SELECT g, 'v' || g FROM generate_series(1, 104) g")


def _assert_equal(pg_url: str, dest_url: str, tmp_path: Path) -> None:
    source = fetch("postgres", pg_url, "t", COLS)
    assert len(source) == 104 and all(r[2] is not None for r in source)
    assert fetch("postgres", dest_url, "t", COLS) == source
    assert fetch("duckdb", str(tmp_path / "d.duckdb"), "t", COLS) == source


def _run(cfg: Any) -> RunResult:
    result = Engine(cfg).run()
    assert result.ok, result.errors
    return result


@pytest.mark.parametrize("ddl", list(ADDED.values()), ids=list(ADDED))
def test_log_stream_backfills_a_column_added_between_runs(tmp_path: Path, pg_url: str, dest_url: str,
                                                          pipeline_name: str, ddl: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """``mode: log``, the ``ALTER`` while replicant is not running: the next run's Relation
    already shows the column, so the log's last schema tells it is new."""
    _table(pg_url)
    cfg = _config(pipeline_name, pg_url, dest_url, tmp_path, {"table": "public.t", "mode": "log"})
    _run(cfg)
    exec_sql(pg_url, f"ALTER TABLE t ADD COLUMN {ddl}", "UPDATE t SET v = 'changed' WHERE id = 3")
    with caplog.at_level(logging.WARNING, logger="replicant"):
        _run(cfg)
    _assert_equal(pg_url, dest_url, tmp_path)
    assert any("public.t" in r.getMessage() and "'c'" in r.getMessage() and "snapshotted again" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    exec_sql(pg_url, "UPDATE t SET v = 'after' WHERE id = 5", "DELETE FROM t WHERE id = 104",
             "INSERT INTO t (id, v) VALUES (104, 'again')")
    again = _run(cfg)  # the stream streams again, and is not snapshotted once more
    _assert_equal(pg_url, dest_url, tmp_path)
    assert again.rows_read["public.t"] == 3


def test_log_stream_with_an_added_generated_column_stops_with_advice(tmp_path: Path, pg_url: str, dest_url: str,
                                                                     pipeline_name: str) -> None:
    """PostgreSQL's logical replication does not carry generated columns: a stored generated
    column added between runs is not silently left NULL; the run says what to do."""
    _table(pg_url)
    cfg = _config(pipeline_name, pg_url, dest_url, tmp_path, {"table": "public.t", "mode": "log"})
    _run(cfg)
    exec_sql(pg_url, "ALTER TABLE t ADD COLUMN c int GENERATED ALWAYS AS (id * 2) STORED",
             "UPDATE t SET v = 'changed' WHERE id = 3")
    result = Engine(cfg).run()
    assert not result.ok
    assert any("generated" in e.message and "exclude" in e.message for e in result.errors), result.errors


@pytest.mark.parametrize("ddl", [ADDED["default"], ADDED["volatile_default"]], ids=["default", "volatile_default"])
def test_log_stream_backfills_a_column_added_while_following(tmp_path: Path, pg_url: str, dest_url: str,
                                                             pipeline_name: str, ddl: str) -> None:
    """``mode: log`` in ``--follow``: the Relation message shows the new column mid-stream;
    changes before and after the ``ALTER`` (same transaction too) are neither lost nor doubled."""
    _table(pg_url)
    cfg = _config(pipeline_name, pg_url, dest_url, tmp_path, {"table": "public.t", "mode": "log"})
    engine = Engine(cfg)
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", engine.run(follow=True)), daemon=True)
    thread.start()
    try:
        wait_until(lambda: _rows(dest_url) == 104, 60, "the snapshot")
        exec_sql(pg_url, "UPDATE t SET v = 'before' WHERE id = 1")
        with psycopg.connect(pg_url) as c:  # one transaction: a change, the ALTER, changes after it
            c.execute("UPDATE t SET v = 'same txn' WHERE id = 2")
            c.execute(f"ALTER TABLE t ADD COLUMN {ddl}")
            c.execute("UPDATE t SET v = 'in txn' WHERE id = 3")
        exec_sql(pg_url, "DELETE FROM t WHERE id = 4", "INSERT INTO t (id, v) VALUES (4, 'again')",
                 "UPDATE t SET v = 'after' WHERE id = 5")

        def converged() -> bool:
            try:
                return fetch("postgres", dest_url, "t", COLS) == fetch("postgres", pg_url, "t", COLS)
            except psycopg.Error:  # the column may not be there yet
                return False

        wait_until(converged, 90, "the added column at the destination")
    finally:
        engine.stop_event.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    result: RunResult = out["r"]
    assert result.ok, result.errors
    _assert_equal(pg_url, dest_url, tmp_path)
    got = {int(i): v for i, v in fetch("postgres", dest_url, "t", ["id", "v"])}
    assert [got[i] for i in range(1, 7)] == ["before", "same txn", "in txn", "again", "after", "v6"]


def _rows(dest_url: str) -> int:
    try:
        return len(fetch("postgres", dest_url, "t", ["id"]))
    except psycopg.Error:  # not created yet
        return 0


@pytest.mark.parametrize("mode", ["cursor", "trigger", "snapshot_diff"])
@pytest.mark.parametrize("ddl", [ADDED["default"], ADDED["volatile_default"]], ids=["default", "volatile_default"])
def test_polled_stream_backfills_a_column_added_between_runs(tmp_path: Path, pg_url: str, dest_url: str,
                                                             pipeline_name: str, ddl: str, mode: str) -> None:
    """``cursor``/``trigger``: rows whose cursor (or shadow table) did not move would never be
    read again, so the stream is read again in full once, after a truncate marker;
    ``snapshot_diff`` compares every row anyway (this test passed before the fix too)."""
    _table(pg_url)
    stream: dict = {"table": "public.t", "mode": mode, "primary_key": ["id"]}
    if mode == "cursor":
        stream["cursor"] = "updated_at"
    cfg = _config(pipeline_name, pg_url, dest_url, tmp_path, stream)
    if mode == "trigger":  # `replicant cdc install`
        engine = Engine(cfg)
        with engine.new_source() as src:
            src.install(engine.streams(src))
    _run(cfg)
    exec_sql(pg_url, f"ALTER TABLE t ADD COLUMN {ddl}", "UPDATE t SET v = 'changed', updated_at = now() WHERE id = 3")
    _run(cfg)
    _assert_equal(pg_url, dest_url, tmp_path)
    exec_sql(pg_url, "UPDATE t SET v = 'after', updated_at = now() WHERE id = 5")
    again = _run(cfg)
    _assert_equal(pg_url, dest_url, tmp_path)
    if mode != "snapshot_diff":  # read in full once, not at every run
        assert again.rows_read["public.t"] < 104
    assert fetch("postgres", dest_url, "t", ["v"]).count(("after",)) == 1


# --------------------------------------------------------------------------- MariaDB binlog

MARIA_ADDED = {
    "default": "c int DEFAULT 7",
    "not_null_default": "c int NOT NULL DEFAULT 7",
    "stored_generated": "c int AS (id * 2) STORED",
}


def _maria_config(name: str, mysql_url: str, dest_url: str, tmp_path: Path) -> Any:
    return parse({
        "pipeline": name,
        "source": {"type": "mysql", "url": mysql_url, "flush_interval": 0.1,
                   "streams": [{"table": "t", "mode": "log"}, {"table": "b", "mode": "log"}]},
        "destinations": [
            {"name": "pg", "type": "postgres", "url": dest_url, "write": "merge"},
            {"name": "duck", "type": "duckdb", "path": str(tmp_path / "d.duckdb"), "write": "merge"},
        ],
    }, base_dir=tmp_path)


def _maria_table(mysql_url: str) -> None:
    sql(mysql_url, "CREATE TABLE t (id int PRIMARY KEY, v varchar(20))", "CREATE TABLE b (id int PRIMARY KEY, w int)",
        "INSERT INTO t SELECT seq, CONCAT('v', seq) FROM seq_1_to_104", "INSERT INTO b VALUES (1, 1)")


def _maria_same(mysql_url: str, dest_url: str) -> bool:
    try:
        return (fetch("postgres", dest_url, "t", COLS) == fetch("mysql", mysql_url, "t", COLS)
                and fetch("postgres", dest_url, "b", ["id", "w"]) == fetch("mysql", mysql_url, "b", ["id", "w"]))
    except psycopg.Error:  # a table or column not there yet
        return False


def _maria_equal(mysql_url: str, dest_url: str, tmp_path: Path, rows: int = 104) -> None:
    source = fetch("mysql", mysql_url, "t", COLS)
    assert len(source) == rows and all(r[2] is not None for r in source)
    for kind, where in (("postgres", dest_url), ("duckdb", str(tmp_path / "d.duckdb"))):
        assert fetch(kind, where, "t", COLS) == source, kind
        assert fetch(kind, where, "b", ["id", "w"]) == fetch("mysql", mysql_url, "b", ["id", "w"]), kind


@pytest.mark.parametrize("ddl", list(MARIA_ADDED.values()), ids=list(MARIA_ADDED))
def test_binlog_stream_backfills_a_column_added_between_runs(tmp_path: Path, mysql_url: str, dest_url: str,
                                                             unique_name: str, ddl: str) -> None:
    """MariaDB ``mode: log``: ``ADD COLUMN … DEFAULT`` writes no row event for the existing rows;
    the stream alone is snapshotted again (stream ``b`` streams on), changes on either side of
    the ``ALTER`` kept exactly once (an image from before the ``ALTER`` must not overwrite the
    new snapshot's row)."""
    _maria_table(mysql_url)
    cfg = _maria_config(unique_name[:40], mysql_url, dest_url, tmp_path)
    _run(cfg)
    sql(mysql_url, "UPDATE t SET v = 'before' WHERE id = 1", f"ALTER TABLE t ADD COLUMN {ddl}",
        "UPDATE t SET v = 'changed' WHERE id = 3", "INSERT INTO b VALUES (2, 2)")
    _run(cfg)
    _maria_equal(mysql_url, dest_url, tmp_path)
    sql(mysql_url, "UPDATE t SET v = 'after' WHERE id = 5", "INSERT INTO b VALUES (3, 3)")
    again = _run(cfg)
    _maria_equal(mysql_url, dest_url, tmp_path)
    assert again.rows_read["t"] == 1 and again.rows_read["b"] == 1  # changes only, no snapshot again


def test_binlog_stream_backfills_a_column_added_while_following(tmp_path: Path, mysql_url: str, dest_url: str,
                                                                unique_name: str) -> None:
    """MariaDB ``mode: log`` in ``--follow``: the DDL event shows the column; the stream is
    snapshotted again at once (the capture restarts), the other stream goes on."""
    _maria_table(mysql_url)
    cfg = _maria_config(unique_name[:40], mysql_url, dest_url, tmp_path)
    engine = Engine(cfg)
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", engine.run(follow=True)), daemon=True)
    thread.start()
    try:
        wait_until(lambda: _rows(dest_url) == 104, 60, "the snapshot")
        sql(mysql_url, "UPDATE t SET v = 'before' WHERE id = 1", f"ALTER TABLE t ADD COLUMN {MARIA_ADDED['default']}",
            "UPDATE t SET v = 'changed' WHERE id = 3", "INSERT INTO b VALUES (2, 2)", "DELETE FROM t WHERE id = 4")
        wait_until(lambda: _maria_same(mysql_url, dest_url), 90, "the added column at the destination")
        sql(mysql_url, "UPDATE t SET v = 'after' WHERE id = 5", "INSERT INTO b VALUES (3, 3)")
        wait_until(lambda: _maria_same(mysql_url, dest_url), 60, "changes after the snapshot")
    finally:
        engine.stop_event.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    result: RunResult = out["r"]
    assert result.ok, result.errors
    _maria_equal(mysql_url, dest_url, tmp_path, rows=103)


# --------------------------------------------------------------------------- the docs' example


def test_docs_example_backfills_an_added_default(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """docs/schema-evolution.md's pipeline, verbatim: a SQLite ``cursor`` stream whose table
    gains ``NOT NULL DEFAULT 'open'`` between two runs holds the default at DuckDB for every
    row, though no cursor moved."""
    import re
    import sqlite3

    import yaml

    doc = (Path(__file__).resolve().parents[2] / "docs" / "schema-evolution.md").read_text()
    pipeline = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", doc, re.S)[0])
    con = sqlite3.connect(tmp_path / "shop.db")
    with con:
        con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL, updated_at TEXT NOT NULL)")
        con.executemany("INSERT INTO orders VALUES (?, ?, '2026-01-01 00:00:00')", [(i, i * 1.5) for i in range(1, 51)])
    cfg = parse(pipeline, base_dir=tmp_path)
    _run(cfg)
    with con:
        con.execute("ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'open'")
        con.execute("UPDATE orders SET status = 'paid', updated_at = '2026-01-02 00:00:00' WHERE id = 7")
    con.close()
    with caplog.at_level(logging.WARNING, logger="replicant"):
        _run(cfg)
    cols = ["id", "total", "status"]
    assert fetch("duckdb", str(tmp_path / "warehouse.duckdb"), "orders", cols) == fetch(
        "sqlite", str(tmp_path / "shop.db"), "orders", cols)
    statuses = [r[0] for r in fetch("duckdb", str(tmp_path / "warehouse.duckdb"), "orders", ["status"])]
    assert statuses.count("open") == 49 and statuses.count("paid") == 1
    assert any("'status'" in r.getMessage() and "snapshotted again" in r.getMessage() for r in caplog.records)

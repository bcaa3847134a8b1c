"""Derived pipelines (``source: {type: pipeline}``): a pipeline reads another pipeline's staging
log from its own stored offsets, into its own log and destinations.

Upstreams are real: PostgreSQL ``mode: log`` (inserts, updates, deletes, a truncate) or SQLite
``snapshot_diff``; destinations DuckDB (and SQLite where a test reads it while a process writes).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from cdc._pipelines import Follow, wait_until
from compare import fetch
from replicant import runtime
from replicant.config import load
from replicant.engine import Engine
from replicant.errors import ConfigError
from replicant.log import open_log
from replicant.results import RunResult

COLS = ["id", "name", "balance"]


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _upstream_sqlite(folder: Path, name: str = "bank") -> Path:
    with sqlite3.connect(folder / "bank.db") as c:
        c.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, balance NUMERIC)")
        c.executemany("INSERT INTO accounts VALUES (?, ?, ?)", [(i, f"n{i}", i * 10) for i in range(1, 51)])
    return _write(folder, f"{name}.yml", f"""
pipeline: {name}
source:
  type: sqlite
  url: sqlite:///bank.db
  streams: [{{table: accounts, mode: snapshot_diff}}]
destinations: [{{name: wh, type: duckdb, path: {name}.duckdb}}]
""")


def _derived(folder: Path, name: str, upstream: str, *, extra: str = "") -> Path:
    return _write(folder, f"{name}.yml", f"""
pipeline: {name}
source:
  type: pipeline
  pipeline: {upstream}
  streams: [accounts]
destinations:
  - {{name: wh, type: duckdb, path: {name}.duckdb, write: merge}}
{extra}""")


def _run(path: Path) -> RunResult:
    result = Engine(load(path)).run()
    assert result.ok, result.errors
    return result


def _change_sqlite(folder: Path, *sql: str) -> None:
    with sqlite3.connect(folder / "bank.db") as c:
        for s in sql:
            c.execute(s)


def _sqlite_rows(folder: Path) -> list[tuple]:
    return fetch("sqlite", str(folder / "bank.db"), "accounts", COLS)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "replicant.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- PostgreSQL upstream, mode log


def test_derived_equals_the_upstream_source_through_changes(tmp_path: Path, pg_url: str, unique_name: str) -> None:
    """Upstream PostgreSQL ``mode: log``; the derived pipeline's DuckDB equals the source after
    the snapshot and after inserts, updates, deletes and a truncate, and its log holds the
    upstream's records as they are (same rows, ``_op``s and markers, at the same offsets)."""
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE accounts (id int PRIMARY KEY, name text, balance numeric(12,2))")
        c.execute("INSERT INTO accounts SELECT g, 'n' || g, g * 1.25 FROM generate_series(1, 300) g")
    up = _write(tmp_path, "bank.yml", f"""
pipeline: {unique_name}
source:
  type: postgres
  url: {pg_url}
  batch_size: 100
  streams: [{{table: accounts, mode: log}}]
destinations: [{{name: wh, type: duckdb, path: bank.duckdb}}]
""")
    derived = _derived(tmp_path, "copy", "bank.yml")
    source = runtime.build_source(load(up))
    try:
        _run(up)
        _run(derived)
        assert fetch("duckdb", str(tmp_path / "copy.duckdb"), "accounts", COLS) == fetch("postgres", pg_url, "accounts", COLS)
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("INSERT INTO accounts VALUES (1001, 'new', 5)")
            c.execute("UPDATE accounts SET balance = balance + 1, name = NULL WHERE id % 7 = 0")
            c.execute("DELETE FROM accounts WHERE id % 11 = 0")
        _run(up)
        _run(derived)
        assert fetch("duckdb", str(tmp_path / "copy.duckdb"), "accounts", COLS) == fetch("postgres", pg_url, "accounts", COLS)
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("TRUNCATE accounts")
            c.execute("INSERT INTO accounts VALUES (1, 'again', 1), (2, 'and', 2)")
        _run(up)
        _run(derived)
        assert fetch("duckdb", str(tmp_path / "copy.duckdb"), "accounts", COLS) == fetch("postgres", pg_url, "accounts", COLS)
    finally:
        source.uninstall([])
        source.close()
    upstream_log = open_log(tmp_path / ".replicant" / unique_name / "log", read_only=True)
    derived_log = open_log(tmp_path / ".replicant" / "copy" / "log", read_only=True)
    ups, downs = list(upstream_log.read("accounts")), list(derived_log.read("accounts"))
    assert [r.offset for r in downs] == [r.offset for r in ups]
    assert [r.marker for r in downs] == [r.marker for r in ups]
    assert any(r.marker == {"kind": "truncate"} for r in downs)
    assert all(d.batch.to_pylist() == u.batch.to_pylist() for d, u in zip(downs, ups, strict=True) if u.batch is not None)
    ops = {op for r in downs if r.batch is not None for op in r.batch.column("_op").to_pylist()}
    assert ops == {"read", "insert", "update", "delete"}
    assert downs[-1].position == {"offset": ups[-1].next_offset, "ts": ups[-1].ts.isoformat()}


# --------------------------------------------------------------------------- SQLite upstream


def test_chain_a_to_b_to_c_equals_the_source(tmp_path: Path) -> None:
    """A → B → C: C's source is B (a derived pipeline), B's is A; C equals A's source table."""
    a = _upstream_sqlite(tmp_path, "a")
    b = _derived(tmp_path, "b", "a.yml")
    c = _derived(tmp_path, "c", "b")  # by pipeline name: b.yml is in this folder
    for p in (a, b, c):
        _run(p)
    assert fetch("duckdb", str(tmp_path / "c.duckdb"), "accounts", COLS) == _sqlite_rows(tmp_path)
    _change_sqlite(tmp_path, "UPDATE accounts SET balance = 0 WHERE id < 5", "DELETE FROM accounts WHERE id > 45",
                   "INSERT INTO accounts VALUES (99, 'x', 1)")
    for p in (a, b, c):
        _run(p)
    assert fetch("duckdb", str(tmp_path / "c.duckdb"), "accounts", COLS) == _sqlite_rows(tmp_path)
    assert fetch("duckdb", str(tmp_path / "b.duckdb"), "accounts", COLS) == _sqlite_rows(tmp_path)


def test_two_derived_pipelines_read_one_upstream_independently(tmp_path: Path) -> None:
    """Pub/sub: each derived pipeline keeps its own offset; one running does not move the
    other, and the upstream keeps no trace of its readers."""
    up = _upstream_sqlite(tmp_path)
    one, two = _derived(tmp_path, "one", "bank.yml"), _derived(tmp_path, "two", "bank.yml")
    _run(up)
    _run(one)
    _change_sqlite(tmp_path, "DELETE FROM accounts WHERE id = 1", "UPDATE accounts SET name = 'z' WHERE id = 2")
    _run(up)
    assert _run(two).rows_read == {"accounts": 52}  # the snapshot and both changes
    _run(one)
    assert _run(one).rows_read == {"accounts": 0}  # caught up: nothing twice
    status = json.loads(_cli("status", "one.yml", "--json", cwd=tmp_path).stdout)
    ends = status["source"]["upstream end offsets"]
    assert ends == {"accounts": status["streams"][0]["position"]["offset"]}
    assert status["source"]["upstream"].startswith("pipeline 'bank' (log at ")
    for name in ("one", "two"):
        assert fetch("duckdb", str(tmp_path / f"{name}.duckdb"), "accounts", COLS) == _sqlite_rows(tmp_path)
    with sqlite3.connect(tmp_path / ".replicant" / "bank" / "state.db") as c:
        dump = "\n".join(c.iterdump())
    assert "'bank'" in dump and "'one'" not in dump and "'two'" not in dump


def test_follow_picks_up_upstream_appends(tmp_path: Path) -> None:
    """``run --follow`` of the derived pipeline tails the upstream log: rows the upstream
    appends while it runs reach its destinations without another start."""
    up = _upstream_sqlite(tmp_path)
    _run(up)
    derived = _derived(tmp_path, "live", "bank.yml", extra="  - {name: lite, type: sqlite, url: 'sqlite:///live.sqlite'}\n")
    follow = Follow(derived, "live")
    try:
        lite = str(tmp_path / "live.sqlite")

        def equal() -> bool:
            assert follow.alive(), follow.output()
            try:
                return fetch("sqlite", lite, "accounts", COLS) == _sqlite_rows(tmp_path)
            except sqlite3.OperationalError:  # the table is not created yet
                return False

        wait_until(equal, 60, "the initial copy", every=0.1)
        _change_sqlite(tmp_path, "INSERT INTO accounts VALUES (500, 'late', 7)", "DELETE FROM accounts WHERE id = 3")
        _run(up)
        wait_until(equal, 60, "the upstream's appends to arrive while following", every=0.1)
    finally:
        code, _ = follow.terminate(60)
    assert code == 0, follow.output()
    assert fetch("duckdb", str(tmp_path / "live.duckdb"), "accounts", COLS) == _sqlite_rows(tmp_path)


def test_upstream_log_reset_is_a_clear_error_and_resync_starts_over(tmp_path: Path) -> None:
    """The upstream's log is deleted and rebuilt (behind, then past the derived offset): the
    derived run fails naming both pipelines and ``resync``, never skipping; after
    ``replicant resync`` the next run re-reads the new upstream log and equals the source."""
    import shutil

    up = _upstream_sqlite(tmp_path)
    derived = _derived(tmp_path, "copy", "bank.yml")
    _run(up)
    _change_sqlite(tmp_path, "UPDATE accounts SET balance = -1 WHERE id <= 20")
    _run(up)
    _run(derived)
    shutil.rmtree(tmp_path / ".replicant" / "bank")
    (tmp_path / "bank.duckdb").unlink()
    _change_sqlite(tmp_path, "DELETE FROM accounts WHERE id <= 10")
    _run(up)  # a new log, shorter than the derived offset
    bad = _cli("run", "copy.yml", cwd=tmp_path)
    assert bad.returncode == 1
    message = " ".join(bad.stderr.split())
    assert "derived pipeline 'copy'" in message and "upstream pipeline 'bank'" in message
    assert "no longer holds offset 70" in message and "replicant resync PIPELINE.yml --stream accounts" in message
    _change_sqlite(tmp_path, *[f"INSERT INTO accounts VALUES ({i}, 'g', {i})" for i in range(100, 140)])
    _run(up)  # grown past the derived offset again: the record there is another one
    bad = _cli("run", "copy.yml", cwd=tmp_path)
    assert bad.returncode == 1 and "was reset or recreated" in " ".join(bad.stderr.split())
    assert fetch("duckdb", str(tmp_path / "copy.duckdb"), "accounts", COLS) != _sqlite_rows(tmp_path)  # untouched

    done = _cli("resync", "copy.yml", "--stream", "accounts", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "starts over from upstream offset 0" in " ".join(done.stdout.split())
    ok = _cli("run", "copy.yml", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert fetch("duckdb", str(tmp_path / "copy.duckdb"), "accounts", COLS) == _sqlite_rows(tmp_path)


def test_resync_reprocesses_from_the_upstream_log_without_the_source(tmp_path: Path) -> None:
    """A reset of a derived pipeline (changed logic: here a changed destination table) re-reads
    the upstream log only: the source may be gone."""
    up = _upstream_sqlite(tmp_path)
    derived = _derived(tmp_path, "copy", "bank.yml")
    _run(up)
    _change_sqlite(tmp_path, "DELETE FROM accounts WHERE id = 7")
    _run(up)
    _run(derived)
    expected = _sqlite_rows(tmp_path)
    (tmp_path / "bank.db").unlink()  # the original source is gone
    text = derived.read_text().replace("write: merge", "write: merge, tables: {accounts: accounts_v2}")
    derived.write_text(text)
    done = _cli("resync", "copy.yml", "--stream", "accounts", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _run(derived).rows_read == {"accounts": 51}
    assert fetch("duckdb", str(tmp_path / "copy.duckdb"), "accounts_v2", COLS) == expected


def test_replay_of_a_derived_destination(tmp_path: Path) -> None:
    """``replicant replay`` re-delivers the derived pipeline's own log, as for any pipeline."""
    import duckdb

    up = _upstream_sqlite(tmp_path)
    derived = _derived(tmp_path, "copy", "bank.yml")
    _run(up)
    _run(derived)
    with duckdb.connect(str(tmp_path / "copy.duckdb")) as con:
        con.execute("DELETE FROM accounts WHERE id < 30")
    done = _cli("replay", "copy.yml", "--destination", "wh", "--from-start", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert fetch("duckdb", str(tmp_path / "copy.duckdb"), "accounts", COLS) == _sqlite_rows(tmp_path)


def test_derived_streams_are_log_mode_and_a_bad_upstream_names_the_key(tmp_path: Path) -> None:
    _upstream_sqlite(tmp_path)
    cfg = load(_derived(tmp_path, "copy", "bank.yml"))
    assert [(s.table, s.mode) for s in cfg.source.streams] == [("accounts", "log")]  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as e:
        runtime.check_connectors(load(_derived(tmp_path, "bad", "nowhere.yml")))
    assert e.value.problems[0][0] == "source.pipeline" and "nowhere.yml" in e.value.problems[0][1]
    result = _cli("run", "copy.yml", cwd=tmp_path)  # the upstream never ran
    assert result.returncode == 1 and "run `replicant run` on the upstream first" in " ".join(result.stderr.split())
    status = _cli("status", "copy.yml", "--json", cwd=tmp_path)
    assert status.returncode == 0 and json.loads(status.stdout)["pipeline"] == "copy"
    # an ordinary pipeline resyncs too (replicant.resync); one that never ran has nothing to start over
    not_derived = _cli("resync", "bank.yml", "--stream", "accounts", cwd=tmp_path)
    assert not_derived.returncode == 2 and "no stream 'accounts'" in not_derived.stderr and "run the pipeline first" in not_derived.stderr
    _run(tmp_path / "bank.yml")
    full = _derived(tmp_path, "full", "bank.yml")
    full.write_text(full.read_text().replace("streams: [accounts]", "streams: [{table: accounts, mode: full}]"))
    with pytest.raises(ConfigError) as e:
        Engine(load(full)).run()
    assert e.value.problems[0][0] == "source.streams (accounts)" and "reads log" in e.value.problems[0][1]


def test_snapshot_markers_and_schema_versions_pass_through(tmp_path: Path) -> None:
    """An upstream ``full`` stream's snapshot markers and a new schema version (an added
    column) reach the derived log as they are, and the destination follows the new column."""
    up = _upstream_sqlite(tmp_path)
    up.write_text(up.read_text().replace("mode: snapshot_diff", "mode: full"))
    derived = _derived(tmp_path, "copy", "bank.yml")
    _run(up)
    _change_sqlite(tmp_path, "ALTER TABLE accounts ADD COLUMN note TEXT", "UPDATE accounts SET note = 'n' || id")
    _run(up)
    _run(derived)
    ups = list(open_log(tmp_path / ".replicant" / "bank" / "log", read_only=True).read("accounts"))
    derived_log = open_log(tmp_path / ".replicant" / "copy" / "log", read_only=True)
    downs = list(derived_log.read("accounts"))
    kinds = [r.marker["kind"] for r in downs if r.marker is not None]
    assert kinds == ["snapshot_start", "snapshot_end", "snapshot_start", "snapshot_end"]
    assert [r.marker for r in downs] == [r.marker for r in ups]
    assert [s.names for s in derived_log.schemas("accounts")][-1][:4] == ["id", "name", "balance", "note"]
    assert fetch("duckdb", str(tmp_path / "copy.duckdb"), "accounts", [*COLS, "note"]) == fetch(
        "sqlite", str(tmp_path / "bank.db"), "accounts", [*COLS, "note"])


def test_upstream_log_on_nats(tmp_path: Path, nats_url: str, unique_name: str) -> None:
    """An upstream whose ``log:`` is NATS JetStream is read through the same interface; the
    derived pipeline's own log is local."""
    from replicant.log.nats import delete_nats_log

    up = _upstream_sqlite(tmp_path)
    up.write_text(up.read_text() + f"log: {nats_url}/{unique_name}\n")
    derived = _derived(tmp_path, "copy", "bank.yml")
    try:
        _run(up)
        _change_sqlite(tmp_path, "DELETE FROM accounts WHERE id = 5", "UPDATE accounts SET name = 'q' WHERE id = 6")
        _run(up)
        assert _run(derived).rows_read == {"accounts": 52}
        assert fetch("duckdb", str(tmp_path / "copy.duckdb"), "accounts", COLS) == _sqlite_rows(tmp_path)
        assert _run(derived).rows_read == {"accounts": 0}
    finally:
        delete_nats_log(nats_url, unique_name)


def test_tenant_identity_is_kept(tmp_path: Path) -> None:
    """Run for a tenant, a derived pipeline reads that tenant's upstream streams
    (``acme/accounts``) into its own ``acme/accounts``, and no other tenant's."""
    up = _upstream_sqlite(tmp_path)
    derived = _derived(tmp_path, "copy", "bank.yml")
    for tenant in ("acme", "globex"):
        result = Engine(load(up), tenant=tenant).run()
        assert result.ok, result.errors
    _change_sqlite(tmp_path, "DELETE FROM accounts WHERE id = 9")
    assert Engine(load(up), tenant="acme").run().ok
    result = Engine(load(derived), tenant="acme").run()
    assert result.ok, result.errors
    assert result.rows_read == {"accounts": 51}  # acme's snapshot and its delete; none of globex's
    derived_log = open_log(tmp_path / ".replicant" / "copy" / "log", read_only=True)
    assert derived_log.streams() == ["acme/accounts"]
    upstream_log = open_log(tmp_path / ".replicant" / "bank" / "log", read_only=True)
    assert [r.batch.to_pylist() for r in derived_log.read("acme/accounts") if r.batch is not None] == [
        r.batch.to_pylist() for r in upstream_log.read("acme/accounts") if r.batch is not None]


def test_upstream_retention_behind_the_derived_offset_is_a_clear_error(tmp_path: Path) -> None:
    """The upstream's retention dropped records a derived stream still needs: its run fails
    naming both pipelines and what the log holds; a resync refuses too, since the upstream
    log no longer starts with a snapshot (a re-read would miss rows)."""
    from replicant.log.base import Retention
    from replicant.log.local import LocalLog

    up = _upstream_sqlite(tmp_path)
    up.write_text(up.read_text().replace("mode: snapshot_diff", "mode: full"))
    derived = _derived(tmp_path, "copy", "bank.yml")

    def run_upstream() -> LocalLog:
        lg = LocalLog(tmp_path / ".replicant" / "bank" / "log", segment_bytes=1)  # a segment per record
        result = Engine(load(up), log=lg).run()
        assert result.ok, result.errors
        return lg

    run_upstream().close()
    _run(derived)
    run_upstream().close()
    lg = run_upstream()
    start = lg.apply_retention("accounts", Retention(max_bytes=1))
    lg.close()
    assert start > 52
    bad = _cli("run", "copy.yml", cwd=tmp_path)
    message = " ".join(bad.stderr.split())
    assert bad.returncode == 1 and "derived pipeline 'copy'" in message and "upstream pipeline 'bank'" in message
    assert "no longer holds offset 52" in message and "(older records were dropped)" in message
    refused = _cli("resync", "copy.yml", "--stream", "accounts", cwd=tmp_path)
    assert refused.returncode == 1 and "a re-read would miss rows" in " ".join(refused.stderr.split())

"""Crash tests: ``replicant run`` is killed with SIGKILL at random instants during a 1M-row
initial sync and re-run each time; at the end the destinations equal the source exactly.

Two pipelines:

* ``full`` mode into PostgreSQL (merge) and DuckDB (replace): every run reloads; the
  destinations must converge with no duplicate and no missing row.
* ``cursor`` mode (on the key) into DuckDB with ``append``: every row must arrive exactly
  once across all the kills — a doubled delivery would show as a duplicate row.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pytest

ROWS = 1_000_000
KILLS = 10

pytestmark = pytest.mark.slow


def _make_source(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "CREATE TABLE accounts (aid integer PRIMARY KEY, bid integer NOT NULL, abalance integer NOT NULL, "
            "filler character(84))"
        )
        c.execute(
            "INSERT INTO accounts SELECT g, g %% 50 + 1, (g::bigint * 7919) %% 100003 - 50000, "
            "CASE WHEN g %% 10 = 0 THEN NULL ELSE md5(g::text) END FROM generate_series(1, %s) g",
            (ROWS,),
        )
        c.execute("ANALYZE accounts")


def _run(pipeline: Path, *, kill_after: float | None) -> int | None:
    """Runs ``replicant run``; kills it after ``kill_after`` seconds if still running.
    Returns the exit code, or None if it was killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "replicant.cli", "run", str(pipeline)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if kill_after is None:
        out, errs = proc.communicate(timeout=600)
        assert proc.returncode == 0, errs.decode() + out.decode()
        return 0
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        return None
    out, errs = proc.communicate()
    assert proc.returncode == 0, errs.decode() + out.decode()
    return proc.returncode


def _source_table(url: str) -> pa.Table:
    with psycopg.connect(url) as c:
        rows = c.execute("SELECT aid, bid, abalance, filler FROM accounts ORDER BY aid").fetchall()
    cols = list(zip(*rows))
    return pa.table(
        {
            "aid": pa.array(cols[0], pa.int32()),
            "bid": pa.array(cols[1], pa.int32()),
            "abalance": pa.array(cols[2], pa.int32()),
            "filler": pa.array(cols[3], pa.string()),
        }
    )


def _duckdb_table(path: Path, table: str = "accounts") -> pa.Table:
    with duckdb.connect(str(path), read_only=True) as con:
        t = con.sql(f'SELECT aid, bid, abalance, filler FROM "{table}" ORDER BY aid').to_arrow_table()
    return t.cast(pa.schema([("aid", pa.int32()), ("bid", pa.int32()), ("abalance", pa.int32()), ("filler", pa.string())]))


def _kill_loop(pipeline: Path, seed: int, before_each=None) -> int:
    """Kills runs at random instants until ``KILLS`` runs died mid-way (at most 3×KILLS tries),
    then runs once to completion. Returns the number of runs killed."""
    rnd = random.Random(seed)
    killed = 0
    started = time.monotonic()
    for _ in range(3 * KILLS):
        if killed == KILLS:
            break
        if before_each is not None:
            before_each()
        # instants spread over start-up, reading, logging and writing
        if _run(pipeline, kill_after=rnd.uniform(0.3, 4.0)) is None:
            killed += 1
        assert time.monotonic() - started < 900, "crash loop took too long"
    _run(pipeline, kill_after=None)
    return killed


def test_full_mode_survives_sigkill(tmp_path: Path, pg_url: str, pg_server) -> None:
    _make_source(pg_url)
    dst_db = pg_url.rsplit("/", 1)[0] + "/" + pg_url.rsplit("/", 1)[1] + "_dst"
    with psycopg.connect(pg_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{dst_db.rsplit("/", 1)[1]}"')
    pipeline = tmp_path / "full.yml"
    pipeline.write_text(
        f"""
pipeline: crash_full
source:
  type: postgres
  url: {pg_url}
  batch_size: 20000
  chunk_size: 100000
  streams: [accounts]
destinations:
  - name: pg
    type: postgres
    url: {dst_db}
    write: merge
  - name: lake
    type: duckdb
    path: lake.duckdb
    write: replace
"""
    )
    killed = _kill_loop(pipeline, seed=20261121)
    assert killed == KILLS, f"only {killed} runs were killed mid-way; the kill window misses the sync"

    expected = _source_table(pg_url)
    assert expected.num_rows == ROWS
    got_pg = _source_table(dst_db)
    assert got_pg.num_rows == ROWS
    assert got_pg.equals(expected)
    got_duck = _duckdb_table(tmp_path / "lake.duckdb")
    assert got_duck.num_rows == ROWS
    assert got_duck.equals(expected)


def test_cursor_append_exactly_once_under_sigkill(tmp_path: Path, pg_url: str) -> None:
    _make_source(pg_url)
    pipeline = tmp_path / "cursor.yml"
    pipeline.write_text(
        f"""
pipeline: crash_cursor
source:
  type: postgres
  url: {pg_url}
  batch_size: 20000
  streams:
    - table: accounts
      mode: cursor
      cursor: aid
destinations:
  - name: lake
    type: duckdb
    path: lake.duckdb
    write: append
"""
    )
    next_aid = [ROWS]

    def more_rows() -> None:  # every run has new rows to catch up on, so kills land mid-way
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute(
                "INSERT INTO accounts SELECT g, g %% 50 + 1, g, md5(g::text) FROM generate_series(%s, %s) g",
                (next_aid[0] + 1, next_aid[0] + 100_000),
            )
        next_aid[0] += 100_000

    killed = _kill_loop(pipeline, seed=7, before_each=more_rows)
    assert killed >= KILLS // 2, f"only {killed} runs were killed mid-way"
    rows = next_aid[0]
    with duckdb.connect(str(tmp_path / "lake.duckdb"), read_only=True) as con:
        total, distinct = con.execute("SELECT count(*), count(DISTINCT aid) FROM accounts").fetchone()
    assert (total, distinct) == (rows, rows), "rows were lost or doubled"
    assert _duckdb_table(tmp_path / "lake.duckdb").equals(_source_table(pg_url))

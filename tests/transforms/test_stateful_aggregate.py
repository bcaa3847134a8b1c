"""Stateful ``aggregate`` in a derived pipeline: the output equals the GROUP BY recomputed on
the upstream source after inserts, updates, a move to another group, deletes and a group
emptied (real SQLite upstream through its staging log, DuckDB destination)."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import duckdb

from replicant.config import load
from replicant.engine import Engine

AGG = """
transforms:
  - aggregate:
      by: [client_id]
      values:
        deposits: "sum(amount) FILTER (WHERE kind = 'deposit')"
        n: "count(*)"
        n_amount: "count(amount)"
        avg_amount: "avg(amount)"
        lo: "min(amount)"
        hi: "max(amount)"
    as: client_totals
"""
#: the same aggregate, computed directly on the source (SQLite)
SOURCE_SQL = ("SELECT client_id, sum(amount) FILTER (WHERE kind = 'deposit'), count(*), count(amount), avg(amount), "
              "min(amount), max(amount) FROM transactions GROUP BY client_id ORDER BY client_id")
DEST_SQL = "SELECT client_id, deposits, n, n_amount, avg_amount, lo, hi FROM client_totals ORDER BY client_id"


def setup(folder: Path, pg_url: str | None = None) -> tuple[Path, Path]:
    with sqlite3.connect(folder / "bank.db") as c:
        c.execute("CREATE TABLE transactions (id INTEGER PRIMARY KEY, client_id INTEGER, kind TEXT, amount DOUBLE)")
        c.executemany("INSERT INTO transactions VALUES (?, ?, ?, ?)",
                      [(i, i % 5, "deposit" if i % 3 else "withdrawal", float(i * 7 % 23)) for i in range(1, 61)])
    (folder / "bank.yml").write_text("""
pipeline: bank
source:
  type: sqlite
  url: sqlite:///bank.db
  streams: [{table: transactions, mode: snapshot_diff}]
destinations: [{name: wh, type: duckdb, path: bank.duckdb}]
""")
    (folder / "totals.yml").write_text("""
pipeline: totals
source: {type: pipeline, pipeline: bank.yml}
destinations:
  - {name: wh, type: duckdb, path: totals.duckdb, write: merge}
""" + (f'  - {{name: pg, type: postgres, url: "{pg_url}", write: merge}}\n' if pg_url else "") + AGG)
    return folder / "bank.yml", folder / "totals.yml"


def run(path: Path) -> None:
    result = Engine(load(path)).run()
    assert result.ok, result.errors


def change(folder: Path, *sql: str) -> None:
    with sqlite3.connect(folder / "bank.db") as c:
        for s in sql:
            c.execute(s)


def source_rows(folder: Path) -> list[tuple]:
    with sqlite3.connect(folder / "bank.db") as c:
        return [tuple(round(v, 9) if isinstance(v, float) else v for v in r) for r in c.execute(SOURCE_SQL).fetchall()]


def dest_rows(folder: Path) -> list[tuple]:
    with duckdb.connect(str(folder / "totals.duckdb"), read_only=True) as c:
        return [tuple(round(v, 9) if isinstance(v, float) else v for v in r) for r in c.execute(DEST_SQL).fetchall()]


def pg_rows(url: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url) as c:
        return [tuple(round(float(v), 9) if isinstance(v, float | Decimal) else v for v in r) for r in c.execute(DEST_SQL)]


def test_aggregate_equals_group_by_under_inserts_updates_moves_and_deletes(tmp_path: Path, pg_url: str) -> None:
    bank, totals = setup(tmp_path, pg_url)
    steps = [
        (),  # the initial snapshot
        ("INSERT INTO transactions VALUES (100, 1, 'deposit', 50), (101, 7, 'deposit', NULL)",),  # a new group, a NULL
        ("UPDATE transactions SET amount = amount + 1000 WHERE id IN (3, 4)",),  # max changes
        ("UPDATE transactions SET client_id = 2 WHERE id = 100",),  # moves a row to another group
        ("DELETE FROM transactions WHERE amount = (SELECT max(amount) FROM transactions)",),  # a max deleted
        ("DELETE FROM transactions WHERE client_id = 7",),  # group 7 emptied: deleted downstream
        ("UPDATE transactions SET kind = 'withdrawal' WHERE client_id = 3",),  # FILTER result becomes NULL
    ]
    for sql in steps:
        change(tmp_path, *sql)
        run(bank)
        run(totals)
        assert dest_rows(tmp_path) == source_rows(tmp_path), sql
        assert pg_rows(pg_url) == source_rows(tmp_path), sql
    assert 7 not in [r[0] for r in dest_rows(tmp_path)]
    assert len(dest_rows(tmp_path)) == 5


def test_status_shows_state_size_and_rows(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    bank, totals = setup(tmp_path)
    run(bank)
    run(totals)
    out = subprocess.run([sys.executable, "-m", "replicant.cli", "status", str(totals), "--json"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout)["source"]["state"]
    assert state["rows"] == {"aggregate:client_totals.rows": 60}  # the row cache: every upstream row's last image
    assert state["bytes"] > 0 and state["file"].endswith("stateful/state.duckdb")
    text = subprocess.run([sys.executable, "-m", "replicant.cli", "status", str(totals)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert "aggregate:client_totals.rows" in text.stdout and "state.duckdb" in text.stdout.replace("\n", "")


def test_docs_aggregate_example_runs(tmp_path: Path) -> None:
    """docs/transforms.md's aggregate pipeline file, as written, over the same upstream."""
    import re

    docs = (Path(__file__).resolve().parents[2] / "docs" / "transforms.md").read_text()
    [example] = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.S) if "as: client_totals" in b]
    bank, totals = setup(tmp_path)
    totals.write_text(example)
    change(tmp_path, "UPDATE transactions SET client_id = 9 WHERE id < 5")
    run(bank)
    run(totals)
    with sqlite3.connect(tmp_path / "bank.db") as c:
        want = c.execute("SELECT client_id, sum(amount) FILTER (WHERE kind = 'deposit'), count(*), round(avg(amount), 9), "
                         "max(amount) FROM transactions GROUP BY client_id ORDER BY client_id").fetchall()
    with duckdb.connect(str(tmp_path / "totals.duckdb"), read_only=True) as c:
        got = c.execute("SELECT client_id, deposits, n, round(avg_amount, 9), largest FROM client_totals "
                        "ORDER BY client_id").fetchall()
    assert got == want


def test_resync_rebuilds_the_output_and_its_state(tmp_path: Path) -> None:
    """`replicant resync` of an aggregate's output starts its state over from the upstream log
    (the state is ahead of the derived log's new position): the output is rebuilt equal to the
    GROUP BY, not added onto the old state."""
    import subprocess
    import sys

    bank, totals = setup(tmp_path)
    run(bank)
    run(totals)
    change(tmp_path, "UPDATE transactions SET client_id = 8 WHERE id < 10", "DELETE FROM transactions WHERE id > 50")
    run(bank)
    out = subprocess.run([sys.executable, "-m", "replicant.cli", "resync", str(totals), "--stream", "client_totals"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    run(totals)
    assert dest_rows(tmp_path) == source_rows(tmp_path)
    with duckdb.connect(str(tmp_path / ".replicant" / "totals" / "stateful" / "state.duckdb"), read_only=True) as c:
        assert c.execute('SELECT count(*) FROM "aggregate:client_totals.rows"').fetchone() == (50,)


def test_status_shows_state_rows_while_a_follow_holds_the_state(tmp_path: Path) -> None:
    """A running `run --follow` holds the DuckDB file; status shows the rows it last published."""
    import json
    import subprocess
    import sys
    import time

    from cdc._pipelines import Follow

    bank, totals = setup(tmp_path)
    run(bank)
    follow = Follow(totals, "status")
    try:
        deadline, state = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-m", "replicant.cli", "status", str(totals), "--json"], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            state = json.loads(out.stdout).get("source", {}).get("state", {})
            if state.get("running") and state.get("rows") == {"aggregate:client_totals.rows": 60}:
                break
            assert follow.alive(), follow.output()
        assert state.get("running") and state["rows"] == {"aggregate:client_totals.rows": 60}, state
    finally:
        follow.kill()

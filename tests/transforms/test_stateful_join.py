"""Stateful ``join`` in a derived pipeline: the output equals the SQL join of the two upstream
tables computed on the source, inner and left, under changes on both sides (a changed account
re-emits its transactions; a deleted account removes or nulls them). Real SQLite upstream
through its staging log; DuckDB and PostgreSQL destinations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import psycopg
import pytest

from replicant.config import load
from replicant.engine import Engine


def setup(folder: Path, how: str, pg_url: str) -> tuple[Path, Path]:
    with sqlite3.connect(folder / "bank.db") as c:
        c.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, client_id INTEGER, branch TEXT)")
        c.execute("CREATE TABLE transactions (id INTEGER PRIMARY KEY, account_id INTEGER, amount DOUBLE)")
        c.executemany("INSERT INTO accounts VALUES (?, ?, ?)", [(i, i % 4, f"b{i % 3}") for i in range(1, 11)])
        c.executemany("INSERT INTO transactions VALUES (?, ?, ?)", [(i, i % 12, float(i)) for i in range(1, 41)])
    (folder / "bank.yml").write_text("""
pipeline: bank
source:
  type: sqlite
  url: sqlite:///bank.db
  streams: [{table: accounts, mode: snapshot_diff}, {table: transactions, mode: snapshot_diff}]
destinations: [{name: wh, type: duckdb, path: bank.duckdb}]
""")
    (folder / "enriched.yml").write_text(f"""
pipeline: enriched
source: {{type: pipeline, pipeline: bank.yml, streams: [transactions, accounts]}}  # upstream names: the join's input
                                                                                     # stands for its output
transforms:
  - join: {{with: accounts, on: {{account_id: id}}, columns: [client_id, branch], how: {how}}}
    streams: [transactions]
    as: enriched
destinations:
  - {{name: wh, type: duckdb, path: enriched.duckdb, write: merge, streams: [enriched]}}
  - {{name: pg, type: postgres, url: "{pg_url}", write: merge, streams: [enriched]}}
""")
    return folder / "bank.yml", folder / "enriched.yml"


def run(path: Path) -> None:
    result = Engine(load(path)).run()
    assert result.ok, result.errors


def expected(folder: Path, how: str) -> list[tuple]:
    with sqlite3.connect(folder / "bank.db") as c:
        return c.execute(f"SELECT t.id, t.account_id, t.amount, a.client_id, a.branch FROM transactions t "
                         f"{'LEFT' if how == 'left' else ''} JOIN accounts a ON t.account_id = a.id ORDER BY t.id").fetchall()


SQL = "SELECT id, account_id, amount, client_id, branch FROM enriched ORDER BY id"


def duck(folder: Path) -> list[tuple]:
    with duckdb.connect(str(folder / "enriched.duckdb"), read_only=True) as c:
        return [tuple(r) for r in c.execute(SQL).fetchall()]


def pg(url: str) -> list[tuple]:
    with psycopg.connect(url) as c:
        return [tuple(r) for r in c.execute(SQL).fetchall()]


@pytest.mark.parametrize("how", ["inner", "left"])
def test_join_equals_sql_join_under_changes_on_both_sides(tmp_path: Path, how: str, pg_url: str) -> None:
    bank, enriched = setup(tmp_path, how, pg_url)
    steps = [
        (),  # initial snapshots (transactions 11, 23, 35 of account 11 and 0 match none)
        ("UPDATE accounts SET branch = 'moved', client_id = 9 WHERE id = 3",),  # a changed account re-emits its rows
        ("INSERT INTO accounts VALUES (11, 5, 'new')",),  # an account appears: its waiting transactions join
        ("DELETE FROM accounts WHERE id = 5",),  # removes (inner) or nulls (left) its transactions
        ("UPDATE transactions SET account_id = 2 WHERE id = 7", "DELETE FROM transactions WHERE id = 8",
         "INSERT INTO transactions VALUES (100, 3, 1.5), (101, 99, 2.5)"),  # changes on the input side
        ("UPDATE accounts SET id = 50 WHERE id = 2",),  # a key change: delete + insert of the account
    ]
    for sql in steps:
        with sqlite3.connect(tmp_path / "bank.db") as c:
            for s in sql:
                c.execute(s)
        run(bank)
        run(enriched)
        want = expected(tmp_path, how)
        assert duck(tmp_path) == want, sql
        assert pg(pg_url) == want, sql
    if how == "inner":
        assert all(r[1] != 5 for r in duck(tmp_path))
    else:
        assert [r[3:] for r in duck(tmp_path) if r[1] == 5] == [(None, None)] * 3  # transactions 5, 17, 29

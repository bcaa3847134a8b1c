"""Stateful transforms over real PostgreSQL logical replication (``mode: log``, default
REPLICA IDENTITY: a delete carries only the key, an update only the new image): the aggregate
and the join take each row's previous image from their own row cache, and stay equal to the
SQL computed on the source after updates that move rows between groups, deletes, and a group
emptied; into DuckDB and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import duckdb
import psycopg

from replicant.config import load
from replicant.engine import Engine

AGG_SOURCE = ("SELECT client_id, sum(amount) FILTER (WHERE kind = 'deposit'), count(*), min(amount), max(amount) "
              "FROM transactions GROUP BY client_id ORDER BY 1")
AGG_DEST = "SELECT client_id, deposits, n, lo, hi FROM client_totals ORDER BY 1"
JOIN_SOURCE = ("SELECT t.id, t.amount, a.branch FROM transactions t LEFT JOIN accounts a ON t.account_id = a.id "
               "ORDER BY t.id")
JOIN_DEST = "SELECT id, amount, branch FROM enriched ORDER BY id"


def _exec(url: str, *sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        for s in sql:
            c.execute(s)


def _norm(rows: list) -> list[tuple]:
    return [tuple(int(v) if isinstance(v, Decimal) and v == int(v) else v for v in r) for r in rows]


def test_aggregate_and_join_over_logical_replication(tmp_path: Path, pg_url: str, dest_url: str, pipeline_name: str) -> None:
    _exec(pg_url, "CREATE TABLE accounts (id int PRIMARY KEY, branch text)",
          "CREATE TABLE transactions (id int PRIMARY KEY, account_id int, client_id int, kind text, amount bigint)",
          "INSERT INTO accounts SELECT g, 'b' || g % 3 FROM generate_series(1, 8) g",
          "INSERT INTO transactions SELECT g, g % 10, g % 4, CASE WHEN g % 3 = 0 THEN 'fee' ELSE 'deposit' END, g * 7 % 50 "
          "FROM generate_series(1, 40) g")
    (tmp_path / "bank.yml").write_text(f"""
pipeline: {pipeline_name}
source:
  type: postgres
  url: "{pg_url}"
  flush_interval: 0.1
  streams: [{{table: public.transactions, mode: log}}, {{table: public.accounts, mode: log}}]
destinations: [{{name: wh, type: duckdb, path: bank.duckdb}}]
""")
    (tmp_path / "derived.yml").write_text(f"""
pipeline: derived
source: {{type: pipeline, pipeline: bank.yml}}
transforms:
  - aggregate:
      by: [client_id]
      values: {{deposits: "sum(amount) FILTER (WHERE kind = 'deposit')", n: "count(*)", lo: "min(amount)", hi: "max(amount)"}}
    streams: [public.transactions]
    as: client_totals
  - join: {{with: public.accounts, on: {{account_id: id}}, columns: [branch], how: left}}
    streams: [public.transactions]
    as: enriched
destinations:
  - {{name: wh, type: duckdb, path: derived.duckdb, write: merge, streams: [client_totals, enriched]}}
  - {{name: pg, type: postgres, url: "{dest_url}", write: merge, streams: [client_totals, enriched]}}
""")
    steps = [
        (),
        ("UPDATE transactions SET client_id = 9 WHERE id IN (1, 2)", "UPDATE transactions SET amount = 999 WHERE id = 5"),
        ("DELETE FROM transactions WHERE id = 5", "DELETE FROM transactions WHERE client_id = 9"),  # max gone, group emptied
        ("UPDATE accounts SET branch = 'moved' WHERE id = 3", "DELETE FROM accounts WHERE id = 4"),
        ("INSERT INTO transactions VALUES (100, 4, 2, 'deposit', 1), (101, 3, 7, 'fee', 2)",),
    ]
    for sql in steps:
        _exec(pg_url, *sql)
        for name in ("bank", "derived"):
            result = Engine(load(tmp_path / f"{name}.yml")).run()
            assert result.ok, result.errors
        with psycopg.connect(pg_url) as c:
            agg, join = _norm(c.execute(AGG_SOURCE).fetchall()), c.execute(JOIN_SOURCE).fetchall()
        with duckdb.connect(str(tmp_path / "derived.duckdb"), read_only=True) as d:
            assert _norm(d.execute(AGG_DEST).fetchall()) == agg, sql
            assert [tuple(r) for r in d.execute(JOIN_DEST).fetchall()] == join, sql
        with psycopg.connect(dest_url) as c:
            assert _norm(c.execute(AGG_DEST).fetchall()) == agg, sql
            assert [tuple(r) for r in c.execute(JOIN_DEST).fetchall()] == join, sql
    assert 9 not in [r[0] for r in agg]

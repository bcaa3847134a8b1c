"""A multi-tenant ``replicant run`` killed with SIGKILL at random instants: three PostgreSQL
tenants (``log`` and ``cursor`` streams) and a MariaDB tenant (``log``: the binlog) into one
PostgreSQL and one DuckDB table per stream, with changes at every tenant between the runs.
After a last run each tenant's rows equal its source exactly: nothing lost, nothing doubled,
no tenant's rows in another's."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml

pytestmark = pytest.mark.slow

ROWS = 40_000
KILLS = 6
TENANTS = ("t0", "t1", "t2")


def _make_source(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        for table in ("accounts", "notes"):
            c.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL, tag text, "
                      "updated_at timestamptz NOT NULL DEFAULT clock_timestamp())")
            c.execute(f"INSERT INTO {table} (id, v, tag) SELECT g, g * 7 %% 1000, md5(g::text) FROM generate_series(1, %s) g",
                      (ROWS,))


def _change(url: str, rnd: random.Random) -> None:
    """Updates, deletes and inserts (the cursor table sees no deletes: its rows are only
    updated and inserted)."""
    low = rnd.randint(1, ROWS - 500)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("UPDATE accounts SET v = v + 1 WHERE id BETWEEN %s AND %s", (low, low + 300))
        c.execute("DELETE FROM accounts WHERE id BETWEEN %s AND %s", (low + 301, low + 320))
        c.execute("INSERT INTO accounts (id, v) SELECT g, 1 FROM generate_series(%s, %s) g ON CONFLICT DO NOTHING",
                  (ROWS + low, ROWS + low + 50))
        c.execute("UPDATE notes SET v = v + 1, updated_at = clock_timestamp() WHERE id BETWEEN %s AND %s", (low, low + 200))
        c.execute("INSERT INTO notes (id, v) SELECT g, 2 FROM generate_series(%s, %s) g ON CONFLICT DO NOTHING",
                  (ROWS + low, ROWS + low + 20))


def _my(url: str) -> Any:
    from urllib.parse import urlsplit

    import pymysql

    u = urlsplit(url)
    return pymysql.connect(host=u.hostname, port=u.port, user=u.username, password=u.password or "", database=u.path[1:],
                           autocommit=True)


def _make_mysql_source(url: str) -> None:
    con = _my(url)
    try:
        with con.cursor() as c:
            c.execute("CREATE TABLE accounts (id int PRIMARY KEY, v int NOT NULL, tag text)")
            import hashlib

            c.executemany("INSERT INTO accounts (id, v, tag) VALUES (%s, %s, %s)",
                          [(n, n * 7 % 1000, hashlib.md5(str(n).encode()).hexdigest()) for n in range(1, ROWS + 1)])
    finally:
        con.close()


def _change_mysql(url: str, rnd: random.Random) -> None:
    low = rnd.randint(1, ROWS - 500)
    con = _my(url)
    try:
        with con.cursor() as c:
            c.execute("UPDATE accounts SET v = v + 1 WHERE id BETWEEN %s AND %s", (low, low + 300))
            c.execute("DELETE FROM accounts WHERE id BETWEEN %s AND %s", (low + 301, low + 320))
            c.execute("INSERT IGNORE INTO accounts (id, v) VALUES " + ", ".join(f"({ROWS + low + i}, 1)" for i in range(50)))
    finally:
        con.close()


def _run(pipeline: Path, kill_after: float | None) -> bool:
    """True when the run finished (exit 0), False when it was killed."""
    proc = subprocess.Popen([sys.executable, "-m", "replicant.cli", "run", str(pipeline)], cwd=pipeline.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, errs = proc.communicate(timeout=kill_after if kill_after is not None else 600)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        return False
    assert proc.returncode == 0, errs.decode() + out.decode()
    return True


def _rows(query: Any, table: str, tenant: str | None = None) -> list[tuple[Any, ...]]:
    where = "" if tenant is None else f" WHERE _tenant = '{tenant}'"
    return sorted(tuple(r) for r in query(f"SELECT id, v, tag FROM {table}{where}"))


def test_a_multi_tenant_run_survives_sigkill(tmp_path: Path, pg_server: Any, mysql_url: str) -> None:
    names = {t: f"crash_{t}_{uuid.uuid4().hex[:8]}" for t in (*TENANTS, "dest")}
    for name in names.values():
        pg_server.create_database(name)
    urls = {t: pg_server.url(n) for t, n in names.items()}
    try:
        for t in TENANTS:
            _make_source(urls[t])
        _make_mysql_source(mysql_url)
        pipeline = tmp_path / "tenants.yml"
        pipeline.write_text(yaml.safe_dump({
            "pipeline": "crash_tenants",
            "source": {"type": "postgres", "url": urls["t0"], "batch_size": 5000, "chunk_size": 10000, "streams": [
                {"table": "public.accounts", "mode": "log"},
                {"table": "public.notes", "mode": "cursor", "cursor": "updated_at"},
            ]},
            "tenants": [{"id": t, "url": urls[t]} for t in TENANTS] + [
                {"id": "my", "type": "mysql", "url": mysql_url, "streams": [{"table": "accounts", "mode": "log"}]}],
            "destinations": [{"name": "pg", "type": "postgres", "url": urls["dest"], "write": "merge"},
                             {"name": "lake", "type": "duckdb", "path": "lake.duckdb", "write": "merge"}],
        }))
        rnd = random.Random(20261206)
        killed = 0
        started = time.monotonic()
        for _ in range(3 * KILLS):
            if killed == KILLS:
                break
            for t in TENANTS:
                _change(urls[t], rnd)
            _change_mysql(mysql_url, rnd)
            killed += not _run(pipeline, kill_after=rnd.uniform(0.5, 5.0))
            assert time.monotonic() - started < 900, "crash loop took too long"
        assert killed == KILLS, f"only {killed} runs were killed mid-way"
        assert _run(pipeline, kill_after=None)

        with psycopg.connect(urls["dest"]) as dest, duckdb.connect(str(tmp_path / "lake.duckdb"), read_only=True) as lake:
            totals = {"accounts": 0, "notes": 0}
            for t in TENANTS:
                with psycopg.connect(urls[t]) as src:
                    for table in totals:
                        expected = _rows(lambda sql, c=src: c.execute(sql).fetchall(), table)
                        totals[table] += len(expected)
                        assert _rows(lambda sql: dest.execute(sql).fetchall(), table, t) == expected, (t, table, "pg")
                        assert _rows(lambda sql: lake.execute(sql).fetchall(), table, t) == expected, (t, table, "duckdb")
            con = _my(mysql_url)
            try:
                with con.cursor() as c:
                    c.execute("SELECT id, v, tag FROM accounts")
                    expected = sorted(tuple(r) for r in c.fetchall())
            finally:
                con.close()
            totals["accounts"] += len(expected)
            assert _rows(lambda sql: dest.execute(sql).fetchall(), "accounts", "my") == expected, ("my", "pg")
            assert _rows(lambda sql: lake.execute(sql).fetchall(), "accounts", "my") == expected, ("my", "duckdb")
            for table, total in totals.items():  # and nothing else: every row belongs to one of the tenants
                assert dest.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == total
                assert lake.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == total
    finally:
        for t in TENANTS:
            try:
                with psycopg.connect(urls[t], autocommit=True) as c:
                    c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                              "WHERE slot_name LIKE 'replicant_crash_tenants%%' AND NOT active AND database = current_database()")
            except psycopg.Error:
                pass
        for name in names.values():
            try:
                pg_server.drop_database(name)
            except psycopg.Error:
                pass

"""A ``log`` (CDC) stream into PostgreSQL under ``--follow``: its table, created without its
primary key for the initial snapshot's bulk load (docs/types.md), gets the key once delivery has
written everything the log holds, with no change arriving and the run still going, and the
changes that follow merge into the keyed table."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc._pipelines import exec_sql, wait_until
from replicant.config import parse
from replicant.destinations.postgres import PostgresDestination
from replicant.engine import Engine


def _key(url: str) -> str | None:
    with psycopg.connect(url, autocommit=True) as c:
        if c.execute("SELECT to_regclass('public.t')").fetchone()[0] is None:
            return None
        row = c.execute("SELECT conname::text FROM pg_constraint WHERE conrelid = 'public.t'::regclass AND contype = 'p'").fetchone()
    return row[0] if row else None


def _rows(url: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as c:
        if c.execute("SELECT to_regclass('public.t')").fetchone()[0] is None:
            return []
        return c.execute("SELECT id, v FROM t ORDER BY id").fetchall()


def test_a_log_streams_table_gets_its_key_while_following(
    tmp_path: Path, pg_url: str, dest_url: str, pipeline_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    exec_sql(pg_url, "DROP TABLE IF EXISTS t", "CREATE TABLE t (id int PRIMARY KEY, v text)",
             "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 500) g")
    monkeypatch.setattr(PostgresDestination, "settle_keys", lambda self: None)  # not built by close()
    cfg = parse({
        "pipeline": pipeline_name,
        "source": {"type": "postgres", "url": pg_url, "flush_interval": 0.1, "streams": [{"table": "t", "mode": "log"}]},
        "destinations": [{"name": "pg", "type": "postgres", "url": dest_url, "write": "merge"}],
    }, base_dir=tmp_path)
    engine = Engine(cfg)
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", engine.run(follow=True)), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(_rows(dest_url)) == 500 and _key(dest_url) == "t_pkey", 60, "the snapshot and its key", every=0.1)
        exec_sql(pg_url, "UPDATE t SET v = 'changed' WHERE id = 7", "DELETE FROM t WHERE id = 8",
                 "INSERT INTO t VALUES (501, 'new')")
        wait_until(lambda: _rows(dest_url) == _rows(pg_url), 60, "the changes", every=0.1)
    finally:
        engine.stop_event.set()
        thread.join(60)
    assert not thread.is_alive()
    assert out["r"].ok, out["r"].errors
    assert _key(dest_url) == "t_pkey"
    assert (7, "changed") in _rows(dest_url) and len(_rows(dest_url)) == 500

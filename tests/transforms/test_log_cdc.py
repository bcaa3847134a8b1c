"""Transforms before the log on a real logical-replication stream (PostgreSQL ``mode: log``):
changes are masked and filtered in the ingest path with the ``_op`` rule (an update that leaves
the filter deletes its key, a delete passes), into PostgreSQL and DuckDB; the staging log holds
no clear e-mail."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from ._pipelines import rows


def _exec(url: str, *sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        for s in sql:
            c.execute(s)


def _hash(v: str) -> str:
    return hmac.new(b"k", b"email\x00" + v.encode(), hashlib.sha256).hexdigest()


def test_log_changes_are_masked_and_filtered_before_the_log(
    tmp_path: Path, pg_url: str, dest_url: str, pipeline_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from replicant.config import parse
    from replicant.engine import Engine

    monkeypatch.setenv("REPLICANT_MASK_KEY", "k")
    _exec(pg_url, "CREATE TABLE customers (id int PRIMARY KEY, email text, status text)",
          "INSERT INTO customers VALUES (1, 'a@x.org', 'active'), (2, 'b@x.org', 'active'), (3, 'c@x.org', 'inactive')")
    cfg = parse({
        "pipeline": pipeline_name,
        "source": {"type": "postgres", "url": pg_url, "flush_interval": 0.1,
                   "streams": [{"table": "public.customers", "mode": "log"}]},
        "transforms": [{"filter": "status = 'active'"}, {"mask": {"email": "hash"}}],
        "destinations": [{"name": "pg", "type": "postgres", "url": dest_url},
                         {"name": "duck", "type": "duckdb", "path": str(tmp_path / "d.duckdb")}],
    }, base_dir=tmp_path)
    r = Engine(cfg).run()
    assert r.ok, r.errors
    _exec(pg_url, "UPDATE customers SET status = 'inactive' WHERE id = 2",
          "UPDATE customers SET status = 'active' WHERE id = 3",
          "DELETE FROM customers WHERE id = 1",
          "INSERT INTO customers VALUES (4, 'd@x.org', 'inactive'), (5, 'e@x.org', 'active')")
    r = Engine(cfg).run()
    assert r.ok, r.errors
    expected = [{"id": 3, "email": _hash("c@x.org"), "status": "active"}, {"id": 5, "email": _hash("e@x.org"), "status": "active"}]
    assert rows("postgres", tmp_path, dest_url) == expected
    assert rows("duckdb", tmp_path, None) == expected

    logged = []
    for seg in (tmp_path / ".replicant" / pipeline_name / "log").rglob("*.arrow"):
        logged += ipc.open_stream(pa.BufferReader(seg.read_bytes())).read_all().to_pylist() if seg.stat().st_size else []
    text = json.dumps(logged, default=str)
    assert logged and "x.org" not in text, "no clear e-mail in the staging log"
    assert {r["_op"] for r in logged} >= {"read", "delete"}

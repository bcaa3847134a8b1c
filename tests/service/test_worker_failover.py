"""Two worker processes; the one running a 1M-row sync is killed with SIGKILL mid-way: the other
claims the run once its lease expires (a new fencing epoch) and resumes it from the checkpoint;
the target then equals the source, with no row missing and none doubled."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg
import pytest

from .serve_proc import ServeProcess, wait_for

ROWS = 1_000_000
LEASE = 4.0

pytestmark = pytest.mark.slow


@pytest.fixture
def source(pg_server) -> Iterator[str]:
    name = f"failover_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(name)
    url = pg_server.url(name)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE accounts (aid integer PRIMARY KEY, bid integer NOT NULL, filler text)")
        c.execute("INSERT INTO accounts SELECT g, g %% 50, md5(g::text) FROM generate_series(1, %s::int) g", (ROWS,))
    try:
        yield url
    finally:
        pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def state_args(request: pytest.FixtureRequest, pg_server) -> Iterator[list[str]]:
    """The service's state store: SQLite on this machine, or PostgreSQL (claims FOR UPDATE SKIP LOCKED)."""
    if request.param == "sqlite":
        yield []
        return
    name = f"failover_state_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(name)
    try:
        yield ["--state", pg_server.url(name)]
    finally:
        pg_server.drop_database(name)


def test_a_killed_workers_run_is_resumed_by_another_within_the_lease(tmp_path: Path, source: str,
                                                                    state_args: list[str]) -> None:
    (tmp_path / "sync.yml").write_text(f"""
pipeline: big
source:
  type: postgres
  url: {source}
  batch_size: 1000  # many small batches: the run lasts long enough to be killed mid-way
  streams:
    - {{table: accounts, mode: cursor, cursor: aid}}
destinations:
  - {{name: lake, type: duckdb, path: lake.duckdb, write: append}}
schedule: {{webhook: true, secret: whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0}}
""")
    serve = ServeProcess(tmp_path, workers=2, lease=f"{LEASE}s", extra=state_args).start()
    try:
        run_id = serve.post("/api/v1/pipelines/big/runs")["id"]

        def midway() -> dict | None:
            rows = sum(s["rows"] for s in serve.get("/api/v1/pipelines/big/status")["streams"])
            run = serve.get(f"/api/v1/runs/{run_id}")
            return run if run["status"] == "running" and 0 < rows < ROWS * 8 // 10 else None

        running = wait_for(midway, timeout=300, what="the sync to be mid-way", every=0.05)
        [victim] = [w for w in serve.get("/api/v1/workers") if w["name"] == running["owner"]]
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        taken = wait_for(lambda: (r := serve.get(f"/api/v1/runs/{run_id}"))["epoch"] == 2 and r,
                         timeout=60, what="another worker to claim the run", every=0.1)
        resumed_after = time.monotonic() - killed_at
        assert taken["owner"] != running["owner"]
        assert resumed_after <= LEASE + 3, f"resumed {resumed_after:.1f} s after the kill (lease {LEASE:g} s)"
        done = serve.wait_run(run_id, timeout=600)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2 and len(done["runs"]) == 1  # the killed attempt's run record stays 'running'
    finally:
        assert serve.stop() == 0, serve.log()
    with duckdb.connect(str(tmp_path / "lake.duckdb"), read_only=True) as con:
        count, distinct, low, high = con.execute("SELECT count(*), count(DISTINCT aid), min(aid), max(aid) FROM accounts").fetchone()  # type: ignore[misc]
        mismatched = con.execute("SELECT count(*) FROM accounts WHERE filler IS DISTINCT FROM md5(aid::text) "
                                 "OR bid <> aid % 50").fetchone()[0]  # type: ignore[index]
    assert (count, distinct, low, high) == (ROWS, ROWS, 1, ROWS)
    assert mismatched == 0

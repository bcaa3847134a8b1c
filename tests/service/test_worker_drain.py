"""SIGTERM drains a worker: its run stops at a batch boundary, goes back to the queue with its
lease released (no waiting for it to expire), and another worker finishes it exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg
import pytest

from replicant.state import StateStore

from .serve_proc import SRC, wait_for

ROWS = 300_000

pytestmark = pytest.mark.slow


@pytest.fixture
def source(pg_server) -> Iterator[str]:
    name = f"drain_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(name)
    url = pg_server.url(name)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE items (id integer PRIMARY KEY, v text)")
        c.execute("INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, %s::int) g", (ROWS,))
    try:
        yield url
    finally:
        pg_server.drop_database(name)


def worker(folder: Path, state: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": SRC, "REPLICANT_STATE": state}
    with (folder / "worker.log").open("ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "replicant.cli", "worker", "--dir", str(folder), "--lease", "60s"],
                                stdout=log, stderr=log, env=env)


def test_sigterm_puts_the_run_back_and_releases_the_lease(tmp_path: Path, source: str) -> None:
    path = tmp_path / "items.yml"
    path.write_text(f"""
pipeline: items
source:
  type: postgres
  url: {source}
  batch_size: 500
  streams: [{{table: items, mode: cursor, cursor: id}}]
destinations:
  - {{name: lake, type: duckdb, path: lake.duckdb, write: append}}
""")
    state = f"sqlite:///{tmp_path / '.replicant' / 'service.db'}"
    with StateStore(state) as store:
        entry_id, _ = store.enqueue("items", str(path))
        first = worker(tmp_path, state)
        try:
            wait_for(lambda: (c := store.checkpoint("items", "items")) is not None and 0 < c.rows_total < ROWS // 2,
                     timeout=120, what="the run to be under way", every=0.05)
            first.send_signal(signal.SIGTERM)
            stopped_at = time.monotonic()
            assert first.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()
            assert time.monotonic() - stopped_at < 30
        finally:
            if first.poll() is None:
                first.kill()
        entry = store.queue_entry(entry_id)
        assert entry is not None
        assert (entry["status"], entry["owner"], entry["lease_expires"]) == ("queued", None, None)
        assert store.live_workers(60) == []  # gone from the registry
        second = worker(tmp_path, state)
        try:
            done = wait_for(lambda: (e := store.queue_entry(entry_id)) and e["status"] in ("succeeded", "failed") and e,
                            timeout=300, what="the second worker to finish the run")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=60)
        assert done["status"] == "succeeded" and done["attempts"] == 2 and done["epoch"] == 2
    with duckdb.connect(str(tmp_path / "lake.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT id) FROM items").fetchone() == (ROWS, ROWS)

"""A stalled worker that wakes after another took its run over writes nothing to the destination.

Two worker processes, a PostgreSQL source, the staging log on NATS JetStream and an ``append``
PostgreSQL destination (which would take a log range twice: merge would hide a double). The
worker running the sync is stopped with SIGSTOP mid-way, at a moment when the log holds records
it has not delivered yet and it holds no lock that would block the other worker (neither the
destination's offsets table nor the state store's write lock). Its lease expires, the other
worker claims the run (epoch 2), resumes it from the checkpoint and the destination's offset,
and finishes it. Then the stalled worker is continued (SIGCONT): its delivery goes on writing
the range it had read, from the offset it knew, and the destination refuses the write
(``DestinationFencedError``, in its run log). The destination equals the source, no row
doubled.

The lease (30 s) is longer than the NATS log's writer lock (15 s, its ``lock_ttl``): the worker
that takes over finds the stalled one's lock on the log expired.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from replicant.log import open_log
from replicant.log.nats import delete_nats_log

from .serve_proc import ServeProcess, wait_for

ROWS = 200_000
LEASE = 30.0
FENCED = "moved under this writer"

pytestmark = pytest.mark.slow


@pytest.fixture
def databases(pg_server) -> Iterator[tuple[str, str]]:
    """A source with ``accounts`` (``ROWS`` rows) and an empty destination database."""
    names = [f"fence_src_{uuid.uuid4().hex[:8]}", f"fence_dst_{uuid.uuid4().hex[:8]}"]
    for name in names:
        pg_server.create_database(name)
    source, dest = (pg_server.url(n) for n in names)
    with psycopg.connect(source, autocommit=True) as c:
        c.execute("CREATE TABLE accounts (aid integer PRIMARY KEY, bid integer NOT NULL, filler text)")
        c.execute("INSERT INTO accounts SELECT g, g %% 50, md5(g::text) FROM generate_series(1, %s::int) g", (ROWS,))
    try:
        yield source, dest
    finally:
        for name in names:
            pg_server.drop_database(name)


def _applied(dest: str) -> int:
    """The destination's committed offset of the stream (-1: none yet)."""
    with psycopg.connect(dest, autocommit=True) as c:
        if c.execute("SELECT to_regclass('public._replicant_offsets')").fetchone()[0] is None:  # type: ignore[index]
            return -1
        row = c.execute("SELECT max(log_offset) FROM _replicant_offsets WHERE pipeline = 'fenced'").fetchone()
    return -1 if row is None or row[0] is None else int(row[0])


def _offsets_locked(dest: str) -> bool:
    """Whether any session holds a lock on the destination's offsets table (a transaction that
    read or wrote it is still open)."""
    with psycopg.connect(dest, autocommit=True) as c:
        return bool(c.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class r ON r.oid = l.relation "
            "WHERE r.relname = '_replicant_offsets' AND l.pid <> pg_backend_pid()").fetchone()[0])  # type: ignore[index]


def _state_write_locked(folder: Path) -> bool:
    """Whether a process holds the service state store's write lock (SQLite)."""
    con = sqlite3.connect(folder / ".replicant" / "service.db", timeout=0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        con.close()


def _run_logs(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(folder.rglob("*.log")))


def test_a_stalled_worker_that_wakes_after_a_takeover_doubles_no_row(tmp_path: Path, databases: tuple[str, str],
                                                                      nats_url: str, unique_name: str) -> None:
    source, dest = databases
    log_url = f"{nats_url}/{unique_name}"
    (tmp_path / "sync.yml").write_text(f"""
pipeline: fenced
log: {log_url}
source:
  type: postgres
  url: {source}
  batch_size: 1000
  streams:
    - {{table: accounts, mode: cursor, cursor: aid}}
destinations:
  - {{name: wh, type: postgres, url: {dest}, write: append, batch_size: 500}}
schedule: {{webhook: true, secret: whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0}}
""")
    serve = ServeProcess(tmp_path, workers=2, lease=f"{LEASE:g}s").start()
    stopped: list[int] = []
    lg: Any = None
    try:
        run_id = serve.post("/api/v1/pipelines/fenced/runs")["id"]
        lg = wait_for(lambda: _open_log(log_url), timeout=120, what="the staging log to be created")
        name = wait_for(lambda: next(iter(lg.streams()), None), timeout=120, what="the stream's log")

        def behind() -> bool:
            """The log holds at least two destination writes more than the destination committed."""
            applied = _applied(dest)
            return 0 <= applied < ROWS * 6 // 10 and lg.end_offset(name) > applied + 1000

        def stall() -> dict[str, Any] | None:
            run = serve.get(f"/api/v1/runs/{run_id}")
            if run["status"] != "running" or not behind():
                return None
            [owner] = [w for w in serve.get("/api/v1/workers") if w["name"] == run["owner"]]
            os.kill(owner["pid"], signal.SIGSTOP)
            stopped.append(owner["pid"])
            if not _offsets_locked(dest) and not _state_write_locked(tmp_path) and behind():
                return run
            os.kill(stopped.pop(), signal.SIGCONT)  # stopped inside a transaction: try again a moment later
            return None

        running = wait_for(stall, timeout=300, what="the sync to be mid-way with the destination behind", every=0.05)
        stalled_at = _applied(dest)
        taken = wait_for(lambda: (r := serve.get(f"/api/v1/runs/{run_id}"))["epoch"] == 2 and r,
                         timeout=LEASE + 60, what="another worker to claim the run", every=0.2)
        assert taken["owner"] != running["owner"]
        done = serve.wait_run(run_id, timeout=600)
        assert done["status"] == "succeeded", (done, serve.log())
        assert _applied(dest) > stalled_at
        assert FENCED not in _run_logs(tmp_path)

        os.kill(stopped.pop(), signal.SIGCONT)
        try:
            wait_for(lambda: FENCED in _run_logs(tmp_path), timeout=120,
                     what="the woken worker's write to be refused (run logs)", every=0.2)
        except AssertionError as e:  # what the woken worker did instead
            raise AssertionError(f"{e}\n{_run_logs(tmp_path)[-6000:]}") from None
        wait_for(lambda: any(w["name"] == running["owner"] and w["entry"] is None for w in serve.get("/api/v1/workers")),
                 timeout=120, what="the woken worker to give the run up", every=0.2)
        assert serve.get(f"/api/v1/runs/{run_id}")["status"] == "succeeded"
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if lg is not None:
            lg.close()
        assert serve.stop() == 0, serve.log()
        delete_nats_log(nats_url, unique_name)
    with psycopg.connect(dest, autocommit=True) as c:
        count, distinct, low, high = c.execute("SELECT count(*), count(DISTINCT aid), min(aid), max(aid) FROM accounts").fetchone()  # type: ignore[misc]
        mismatched = c.execute("SELECT count(*) FROM accounts WHERE filler IS DISTINCT FROM md5(aid::text) "
                               "OR bid <> aid % 50").fetchone()[0]  # type: ignore[index]
    assert (count, distinct, low, high) == (ROWS, ROWS, 1, ROWS)
    assert mismatched == 0


def _open_log(url: str) -> Any:
    """The staging log, read-only, once the run created it (None before)."""
    try:
        return open_log(url, read_only=True)
    except Exception:  # noqa: BLE001 - not created yet
        return None

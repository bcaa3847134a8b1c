"""Snapshot progress over HTTP from a real ``replicant serve`` with a PostgreSQL source whose
full read is many small chunks (no sleep: the read itself is slow): the status and the run
detail show a stream mid-way with a percent and an ETA, then done at 100 %; a worker killed
with SIGKILL mid-snapshot leaves the run to another, whose progress counts on to 100 %."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from .serve_proc import ServeProcess, wait_for

ROWS = 18000  # 900 key-range chunks of 20: the read lasts seconds, past the status cache (1 s) and the recorder (1 s)
LEASE = 4.0


@pytest.fixture(scope="module")
def served(pg_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, str]]:
    name = f"progress_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(name)
    url = pg_server.url(name)
    with psycopg.connect(url, autocommit=True) as c:
        for table in ("orders", "accounts"):
            c.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, v text NOT NULL)")
            c.execute(f"INSERT INTO {table} SELECT g, md5(g::text) FROM generate_series(1, %s::int) g", (ROWS,))
            c.execute(f"ANALYZE {table}")  # the estimate: pg_class.reltuples
    folder = tmp_path_factory.mktemp("progress")
    for pipeline, table in (("snap", "orders"), ("crash", "accounts")):
        (folder / f"{pipeline}.yml").write_text(f"""
pipeline: {pipeline}
source:
  type: postgres
  url: {url}
  chunk_size: 20  # hundreds of key-range queries: the snapshot lasts seconds, whatever the machine's load
  batch_size: 20
  streams: [{{table: {table}, mode: full}}]
destinations:
  - {{name: lake, type: duckdb, path: {pipeline}.duckdb, write: replace}}
""")
    serve = ServeProcess(folder, workers=2, lease=f"{LEASE:g}s").start()
    try:
        yield serve, url
    finally:
        code = serve.stop()
        pg_server.drop_database(name)
        assert code == 0, serve.log()


def stream_progress(serve: ServeProcess, pipeline: str, stream: str) -> dict[str, Any] | None:
    status = serve.get(f"/api/v1/pipelines/{pipeline}/status")
    return next((s["progress"] for s in status["streams"] if s["name"] == stream), None)


def midway(serve: ServeProcess, pipeline: str, stream: str, run_id: int) -> Any:
    """Polls until the stream's progress is strictly between 0 and its estimate, not finished."""
    def check() -> dict[str, Any] | None:
        p = stream_progress(serve, pipeline, stream)
        if p is not None and not p["finished"] and 0 < p["rows"] < p["estimate"]:
            return p
        run = serve.get(f"/api/v1/runs/{run_id}")
        assert run["status"] in ("queued", "running"), f"the run ended before a mid-way progress was seen: {run}"
        return None

    return wait_for(check, timeout=120, what=f"{stream} mid-way", every=0.05)


def test_status_and_run_detail_show_a_snapshot_mid_way_with_an_eta_then_done(served: tuple[ServeProcess, str]) -> None:
    serve, _url = served
    run_id = serve.post("/api/v1/pipelines/snap/runs")["id"]
    p = midway(serve, "snap", "orders", run_id)
    assert p["estimate"] == ROWS and 0 <= p["percent"] <= 99 and p["percent"] == 100 * p["rows"] // ROWS
    assert p["eta_seconds"] is not None and p["eta_seconds"] > 0 and p["started_at"]
    run = serve.get(f"/api/v1/runs/{run_id}")
    [live] = run["progress"]
    assert (live["stream"], live["tenant"], live["estimate"], live["finished"]) == ("orders", None, ROWS, False)
    assert live["rows"] >= p["rows"]

    done = serve.wait_run(run_id)
    assert done["status"] == "succeeded", done
    [last] = done["progress"]
    assert (last["rows"], last["percent"], last["eta_seconds"], last["finished"]) == (ROWS, 100, 0.0, True)
    final = stream_progress(serve, "snap", "orders")
    assert final is not None and (final["rows"], final["percent"], final["finished"]) == (ROWS, 100, True)
    detail = serve.get("/api/v1/pipelines/snap")  # the pipeline page's streams carry it too
    assert [s["progress"]["percent"] for s in detail["streams"]] == [100]


def test_a_worker_killed_mid_snapshot_leaves_its_progress_to_the_next_which_counts_on_to_done(
        served: tuple[ServeProcess, str]) -> None:
    serve, _url = served
    run_id = serve.post("/api/v1/pipelines/crash/runs")["id"]
    before = midway(serve, "crash", "accounts", run_id)
    running = serve.get(f"/api/v1/runs/{run_id}")
    [victim] = [w for w in serve.get("/api/v1/workers") if w["name"] == running["owner"]]
    os.kill(victim["pid"], signal.SIGKILL)
    taken = wait_for(lambda: (r := serve.get(f"/api/v1/runs/{run_id}"))["epoch"] == 2 and r,
                     timeout=60, what="another worker to claim the run", every=0.1)
    assert taken["owner"] != running["owner"]
    done = serve.wait_run(run_id, timeout=300)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    [last] = done["progress"]
    # the resumed snapshot counted on from the killed worker's rows: its start, and at least as many rows
    assert (last["percent"], last["finished"], last["started_at"]) == (100, True, before["started_at"])
    assert before["rows"] <= last["rows"] <= ROWS

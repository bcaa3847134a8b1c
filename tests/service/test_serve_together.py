"""The service with the other issues' pieces: ``validate`` as a run (API and ``validate --server``,
``--repair`` healing through the log), ``resync`` of an ordinary stream, a pipeline with
``tenants:`` (every tenant's feed in one run), and ``schedule: {on: file}`` asking the files
source itself which files are new. ``replicant serve`` is a real process; PostgreSQL is real."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from .serve_proc import ServeProcess, wait_for
from .test_serve import SECRET, Env, _cli

HOOK = f"{{webhook: true, secret: {SECRET}}}"


@pytest.fixture(scope="module")
def env(pg_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from http_receiver import Receiver

    suffix = uuid.uuid4().hex[:8]
    names = [f"together_{x}_{suffix}" for x in ("src", "dst", "acme", "globex")]
    for n in names:
        pg_server.create_database(n)
    folder = tmp_path_factory.mktemp("together")
    (folder / "replicant.yml").write_text("rescan: 0.3\n")
    serve = ServeProcess(folder, workers=2).start()
    env = Env(serve, pg_server.url(names[0]), pg_server.url(names[1]), Receiver())
    env.tenant_urls = {"acme": pg_server.url(names[2]), "globex": pg_server.url(names[3])}  # type: ignore[attr-defined]
    try:
        yield env
    finally:
        code = serve.stop()
        for n in names:
            pg_server.drop_database(n)
        assert code == 0, serve.log()


def test_validate_as_a_run_and_from_the_cli_and_repair_heals(env: Env) -> None:
    env.table("val_t", 500)
    path = env.pipeline("val", ["val_t"], HOOK)
    env.appears("val")
    assert env.serve.wait_run(env.serve.post("/api/v1/pipelines/val/runs")["id"])["status"] == "succeeded"
    server = f"http://127.0.0.1:{env.serve.port}"

    equal = _cli("validate", str(path), "--server", server)
    assert equal.returncode == 0, equal.stdout + equal.stderr
    assert "val_t at pg: equal (500 source rows, 500 destination rows" in equal.stdout

    with psycopg.connect(env.dst, autocommit=True) as c:
        c.execute("DELETE FROM val_t WHERE id = 42")
        c.execute("UPDATE val_t SET v = 'tampered' WHERE id = 7")
    report = env.folder / "val.json"
    found = _cli("validate", str(path), "--server", server, "--report", str(report))
    assert found.returncode == 1, found.stdout + found.stderr
    assert 'missing: {"id": "42"}' in found.stdout and 'different: {"id": "7"}' in found.stdout
    data = json.loads(report.read_text())
    assert data["verdict"] == "differences" and data["streams"][0]["differences_found"] == 2

    run = env.serve.wait_run(env.serve.post("/api/v1/pipelines/val/validate", json={"repair": True})["id"])
    assert run["status"] == "succeeded", run
    assert run["result"]["exit_code"] == 0 and run["result"]["validate"]["streams"][0]["repaired"] == 2
    assert _cli("validate", str(path), "--server", server).returncode == 0
    with psycopg.connect(env.dst) as c:
        assert c.execute("SELECT v FROM val_t WHERE id = 7").fetchone()[0] != "tampered"  # type: ignore[index]
    assert env.count("val_t") == 500


def test_resync_of_an_ordinary_stream_through_the_service(env: Env) -> None:
    env.table("rs_t", 100)
    env.pipeline("rs", ["rs_t"], HOOK)
    env.appears("rs")
    assert env.serve.wait_run(env.serve.post("/api/v1/pipelines/rs/runs")["id"])["status"] == "succeeded"
    with psycopg.connect(env.src, autocommit=True) as c:
        c.execute("DELETE FROM rs_t WHERE id > 60")  # a cursor stream never sees deletes
    run = env.serve.wait_run(env.serve.post("/api/v1/pipelines/rs/streams/rs_t/resync")["id"])
    assert run["status"] == "succeeded", (run.get("error"), run.get("result"))
    assert env.count("rs_t") == 60


def test_a_tenants_pipeline_runs_every_tenants_feed(env: Env) -> None:
    urls: dict[str, str] = env.tenant_urls  # type: ignore[attr-defined]
    for i, url in enumerate(urls.values()):
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("CREATE TABLE orders (id integer PRIMARY KEY, v text NOT NULL)")
            c.execute("INSERT INTO orders SELECT g, 't' || g FROM generate_series(1, %s::int) g", (10 * (i + 1),))
            c.execute("ANALYZE orders")  # an estimate for the first read's progress
    tenants = "".join(f"\n  - {{id: {t}, url: \"{u}\"}}" for t, u in urls.items())
    (env.folder / "multi.yml").write_text(f"""
pipeline: multi
source:
  type: postgres
  streams: [{{table: orders, mode: cursor, cursor: id}}]
tenants:{tenants}
destinations:
  - {{name: pg, type: postgres, url: "{env.dst}", write: merge, tables: {{orders: all_orders}}}}
schedule: {HOOK}
""")
    env.appears("multi")
    run = env.serve.wait_run(env.serve.post("/api/v1/pipelines/multi/runs")["id"])
    assert run["status"] == "succeeded", run
    with psycopg.connect(env.dst) as c:
        assert c.execute("SELECT _tenant, count(*) FROM all_orders GROUP BY 1 ORDER BY 1").fetchall() == [
            ("acme", 10), ("globex", 20)]
    # each tenant's first read recorded its progress under its tenant (events name it tenant/stream)
    assert [(p["tenant"], p["stream"], p["rows"], p["estimate"], p["percent"]) for p in run["progress"]] == [
        ("acme", "orders", 10, 10, 100), ("globex", "orders", 20, 20, 100)]
    status = env.serve.get("/api/v1/pipelines/multi/status")
    assert sorted((s["tenant"], s["progress"]["finished"]) for s in status["streams"]) == [("acme", True), ("globex", True)]
    one = env.serve.wait_run(env.serve.post("/api/v1/pipelines/multi/runs", json={"tenant": "globex"})["id"])
    assert one["status"] == "succeeded" and one["tenant"] == "globex", one


def test_on_file_asks_the_files_source_which_files_are_new(env: Env) -> None:
    inbox = env.folder / "inbox"
    inbox.mkdir()
    (env.folder / "drop.yml").write_text(f"""
pipeline: drop
source:
  type: files
  url: ./inbox
  streams: [{{name: people, glob: "*.csv", format: csv, primary_key: [id]}}]
destinations:
  - {{name: pg, type: postgres, url: "{env.dst}", write: merge}}
schedule: {{on: file}}
""")
    env.appears("drop")
    time.sleep(1.0)  # several scheduler passes over an empty inbox: nothing to load, nothing runs
    assert env.serve.runs("drop") == []
    (inbox / "a.csv").write_text("id,name\n1,ada\n2,grace\n")
    [first] = env.serve.wait_runs("drop", 1)
    assert first["status"] == "succeeded" and first["trigger"] == "file", first
    assert env.count("people") == 2
    time.sleep(1.0)  # the file is loaded: later passes find nothing new
    assert len(env.serve.runs("drop")) == 1
    (inbox / "b.csv").write_text("id,name\n3,edsger\n")
    second = env.serve.wait_runs("drop", 2)
    assert all(r["status"] == "succeeded" for r in second)
    wait_for(lambda: env.count("people") == 3, timeout=30, what="the second file's row")
    time.sleep(1.0)
    assert len(env.serve.runs("drop")) == 2

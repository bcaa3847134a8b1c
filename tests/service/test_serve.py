"""``replicant serve`` as a real process with a real PostgreSQL source and destination, driven
over HTTP: schedules (with the scheduler's clock in a file: no long sleeps), webhooks, file
arrival, upstream triggers, pause/resume, replay, status, metrics, files added, changed and
removed, bad files reported."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from http_receiver import Receiver
from replicant.service.hooks import sign
from replicant.service.metrics import METRICS

from .serve_proc import ServeProcess, wait_for

BASE = datetime(2030, 1, 1, 10, 0, 30, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
DOCS = Path(__file__).resolve().parents[2] / "docs"


class Env:
    def __init__(self, serve: ServeProcess, src: str, dst: str, receiver: Receiver) -> None:
        self.serve, self.src, self.dst, self.receiver = serve, src, dst, receiver
        self.folder = serve.folder

    def table(self, name: str, rows: int) -> None:
        with psycopg.connect(self.src, autocommit=True) as c:
            c.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY, v text NOT NULL)")
            c.execute(f"INSERT INTO {name} SELECT g, md5(g::text) FROM generate_series(1, %s::int) g", (rows,))

    def insert(self, name: str, first: int, last: int) -> None:
        with psycopg.connect(self.src, autocommit=True) as c:
            c.execute(f"INSERT INTO {name} SELECT g, md5(g::text) FROM generate_series(%s::int, %s::int) g", (first, last))

    def count(self, name: str, url: str | None = None) -> int:
        with psycopg.connect(url or self.dst) as c:
            return int(c.execute(f"SELECT count(*) FROM {name}").fetchone()[0])  # type: ignore[index]

    def count_or_none(self, name: str) -> int | None:
        """The destination table's rows, or None while the first delivery has not created it."""
        try:
            return self.count(name)
        except psycopg.errors.UndefinedTable:
            return None

    def pipeline(self, name: str, tables: list[str], schedule: str, mode: str = "cursor") -> Path:
        streams = "".join(f"\n    - {{table: {t}, mode: {mode}, cursor: id}}" if mode == "cursor" else f"\n    - {t}"
                          for t in tables)
        path = self.folder / f"{name}.yml"
        path.write_text(f"""
pipeline: {name}
source:
  type: postgres
  url: {self.src}
  streams:{streams}
destinations:
  - {{name: pg, type: postgres, url: "{self.dst}", write: merge}}
schedule: {schedule}
""")
        return path

    def appears(self, name: str) -> dict:
        return wait_for(lambda: next((p for p in self.serve.get("/api/v1/pipelines") if p["name"] == name), None),
                        timeout=30, what=f"pipeline {name} to be picked up")


@pytest.fixture(scope="module")
def env(pg_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:8]
    src_name, dst_name = f"serve_src_{suffix}", f"serve_dst_{suffix}"
    pg_server.create_database(src_name)
    pg_server.create_database(dst_name)
    folder = tmp_path_factory.mktemp("served")
    receiver = Receiver().start()
    (folder / "replicant.yml").write_text(f"""
rescan: 0.3
log_format: json
notify:
  - {{url: "{receiver.url}", format: json, events: [failure, recovery]}}
  - {{url: "{receiver.url}?slack", format: slack}}
""")
    serve = ServeProcess(folder, workers=2)
    serve.set_clock(BASE)
    serve.start()
    try:
        yield Env(serve, pg_server.url(src_name), pg_server.url(dst_name), receiver)
    finally:
        receiver.stop()
        code = serve.stop()
        pg_server.drop_database(src_name)
        pg_server.drop_database(dst_name)
        assert code == 0, serve.log()


def test_interval_schedule_fires_on_the_clock_and_catches_up_once(env: Env) -> None:
    env.table("every_t", 1000)
    env.pipeline("every", ["every_t"], "{every: 10m}")
    env.appears("every")
    [first] = env.serve.wait_runs("every", 1)  # onboarding: at once
    assert first["status"] == "succeeded" and first["trigger"] == "schedule"
    assert env.count("every_t") == 1000
    env.insert("every_t", 1001, 1010)
    env.serve.set_clock(BASE + timedelta(minutes=9))
    time.sleep(1.0)  # several scheduler passes (tick 0.2 s) before the interval: nothing fires
    assert len(env.serve.runs("every")) == 1
    env.serve.set_clock(BASE + timedelta(minutes=10, seconds=1))
    second = env.serve.wait_runs("every", 2)[1]
    assert second["status"] == "succeeded"
    assert env.count("every_t") == 1010
    env.serve.set_clock(BASE + timedelta(hours=3))  # three hours "down": 17 ticks missed
    env.serve.wait_runs("every", 3)
    time.sleep(1.0)
    assert len(env.serve.runs("every")) == 3  # caught up once
    detail = env.serve.get("/api/v1/pipelines/every")
    assert detail["next_run"].startswith("2030-01-01T13:10:30")
    assert [s["name"] for s in detail["streams"]] == ["every_t"]
    assert detail["destinations"] == [{"name": "pg", "type": "postgres"}]


def test_cron_schedule_fires_in_its_time_zone(env: Env) -> None:
    env.table("cron_t", 10)
    env.serve.set_clock(datetime(2030, 1, 2, 7, 59, 0, tzinfo=UTC))
    env.pipeline("cron", ["cron_t"], '{cron: "0 9 * * *", timezone: Europe/Berlin}')  # 08:00 UTC in winter
    detail = env.appears("cron")
    wait_for(lambda: env.serve.get("/api/v1/pipelines/cron")["next_run"], what="next run of cron")
    assert env.serve.get("/api/v1/pipelines/cron")["next_run"].startswith("2030-01-02T08:00:00")
    assert detail["schedule"]["cron"] == "0 9 * * *"
    time.sleep(1.0)
    assert env.serve.runs("cron") == []
    env.serve.set_clock(datetime(2030, 1, 2, 8, 0, 0, tzinfo=UTC))
    [run] = env.serve.wait_runs("cron", 1)
    assert run["status"] == "succeeded" and env.count("cron_t") == 10


def _hook(env: Env, pipeline: str, body: bytes, *, msg: str, secret: str = SECRET, ts: int | None = None):
    stamp = ts if ts is not None else int(datetime.fromisoformat(env.serve.clock_file.read_text()).timestamp())
    headers = {"webhook-id": msg, "webhook-timestamp": str(stamp), "webhook-signature": sign(secret, msg, stamp, body),
               "content-type": "application/json"}
    return env.serve.http.post(f"/api/v1/hooks/{pipeline}", content=body, headers=headers)


def test_signed_webhook_triggers_bad_and_replayed_ones_are_rejected(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.table("hook_t", 5)
    path = env.pipeline("hooked", ["hook_t"], "{webhook: true, secret: \"${env:HOOK_SECRET}\"}")
    text = path.read_text()
    path.unlink()
    # the secret by reference: the serve process's environment does not have it, so give it literally
    path.write_text(text.replace("${env:HOOK_SECRET}", SECRET))
    env.appears("hooked")
    body = b'{"reason": "upload finished"}'
    r = _hook(env, "hooked", body, msg="msg_ok")
    assert r.status_code == 202, r.text
    env.serve.wait_run(r.json()["id"])
    assert env.count("hook_t") == 5
    replayed = _hook(env, "hooked", body, msg="msg_ok")
    assert replayed.status_code == 409 and replayed.json()["code"] == "replayed"
    assert replayed.headers["content-type"] == "application/problem+json"
    forged = _hook(env, "hooked", body, msg="msg_forged", secret="whsec_" + base64.b64encode(b"x" * 32).decode())
    assert forged.status_code == 401 and forged.json()["code"] == "bad_signature"
    stale = _hook(env, "hooked", body, msg="msg_stale", ts=int(BASE.timestamp()) - 3600)
    assert stale.status_code == 401 and stale.json()["code"] == "stale_timestamp"
    tampered = env.serve.http.post("/api/v1/hooks/hooked", content=b'{"reason": "other"}', headers={
        "webhook-id": "msg_t", "webhook-timestamp": r.request.headers["webhook-timestamp"],
        "webhook-signature": r.request.headers["webhook-signature"]})
    assert tampered.status_code == 401
    assert [x["trigger"] for x in env.serve.runs("hooked")] == ["webhook"]  # only the good one ran


def test_a_file_dropped_into_the_watched_folder_triggers_its_pipeline_once(env: Env) -> None:
    inbox = env.folder / "inbox"
    inbox.mkdir()
    env.table("file_t", 3)
    env.pipeline("on_file", ["file_t"], '{on: file, path: inbox, glob: "*.csv"}')
    env.appears("on_file")
    time.sleep(1.0)
    assert env.serve.runs("on_file") == []
    (inbox / "upload.csv").write_text("id\n1\n")
    [run] = env.serve.wait_runs("on_file", 1)
    assert run["trigger"] == "file" and run["status"] == "succeeded"
    time.sleep(1.5)
    assert len(env.serve.runs("on_file")) == 1  # once


def test_upstream_data_triggers_the_downstream_pipeline(env: Env) -> None:
    env.table("up_t", 20)
    env.table("down_t", 4)
    env.pipeline("upstream", ["up_t"], f"{{webhook: true, secret: {SECRET}}}")
    env.pipeline("downstream", ["down_t"], "{after: upstream}")
    env.appears("downstream")
    env.appears("upstream")
    run = env.serve.post("/api/v1/pipelines/upstream/runs")
    env.serve.wait_run(run["id"])
    [down] = env.serve.wait_runs("downstream", 1)
    assert down["trigger"] == "after" and env.count("down_t") == 4
    # a run of the upstream that appended nothing does not trigger it again
    again = env.serve.post("/api/v1/pipelines/upstream/runs")
    assert env.serve.wait_run(again["id"])["result"]["rows_read"] == {"up_t": 0}
    time.sleep(1.0)
    assert len(env.serve.runs("downstream")) == 1


def test_pause_resume_stream_pause_replay_status(env: Env) -> None:
    env.table("ops_a", 100)
    env.table("ops_b", 50)
    env.pipeline("ops", ["ops_a", "ops_b"], f"{{webhook: true, secret: {SECRET}}}")
    env.appears("ops")
    first = env.serve.wait_run(env.serve.post("/api/v1/pipelines/ops/runs")["id"])
    assert first["result"]["rows_read"] == {"ops_a": 100, "ops_b": 50}
    assert first["runs"][0]["status"] == "succeeded" and first["log"]  # the state store's run and its log lines
    assert all(json.loads(line)["run"] == first["id"] for line in first["log"])  # JSON lines with the run id

    env.serve.post("/api/v1/pipelines/ops/pause", expect=200)
    queued = env.serve.post("/api/v1/pipelines/ops/runs")
    time.sleep(1.5)
    assert env.serve.get(f"/api/v1/runs/{queued['id']}")["status"] == "queued"  # paused: not claimed
    assert env.serve.get("/api/v1/pipelines/ops")["paused"] is True
    env.serve.post("/api/v1/pipelines/ops/resume", expect=200)
    env.serve.wait_run(queued["id"])

    env.serve.post("/api/v1/pipelines/ops/streams/ops_b/pause", expect=200)
    env.insert("ops_a", 101, 110)
    env.insert("ops_b", 51, 60)
    narrowed = env.serve.wait_run(env.serve.post("/api/v1/pipelines/ops/runs")["id"])
    assert narrowed["result"]["skipped_streams"] == ["ops_b"]
    assert (env.count("ops_a"), env.count("ops_b")) == (110, 50)
    env.serve.post("/api/v1/pipelines/ops/streams/ops_b/resume", expect=200)
    env.serve.wait_run(env.serve.post("/api/v1/pipelines/ops/runs")["id"])
    assert env.count("ops_b") == 60

    with psycopg.connect(env.dst, autocommit=True) as c:
        c.execute("DELETE FROM ops_a WHERE id > 50")
    replay = env.serve.post("/api/v1/pipelines/ops/destinations/pg/replay", json={"from_start": True})
    assert env.serve.wait_run(replay["id"])["status"] == "succeeded"
    assert env.count("ops_a") == 110

    status = env.serve.get("/api/v1/pipelines/ops/status")
    assert {d["stream"]: d["lag"] for d in status["destinations"]} == {"ops_a": 0, "ops_b": 0}
    bad = env.serve.http.post("/api/v1/pipelines/ops/destinations/nope/replay", json={"from_start": True})
    assert bad.status_code == 404 and bad.json()["code"] == "not_found"
    with psycopg.connect(env.dst, autocommit=True) as c:
        c.execute("UPDATE ops_a SET v = 'damaged' WHERE id <= 5")
    resync = env.serve.wait_run(env.serve.post("/api/v1/pipelines/ops/streams/ops_a/resync")["id"])  # a fresh snapshot
    assert resync["status"] == "succeeded" and resync["command"] == "resync", resync
    with psycopg.connect(env.dst) as c:
        assert c.execute("SELECT count(*) FROM ops_a WHERE v = 'damaged'").fetchone()[0] == 0  # type: ignore[index]
    assert env.count("ops_a") == 110
    unknown = env.serve.wait_run(env.serve.post("/api/v1/pipelines/ops/streams/nope/resync")["id"])
    assert unknown["status"] == "failed" and "nope" in unknown["error"]


def test_cancel_a_queued_run(env: Env) -> None:
    env.table("cancel_t", 1)
    env.pipeline("cancelled", ["cancel_t"], f"{{webhook: true, secret: {SECRET}}}")
    env.appears("cancelled")
    env.serve.post("/api/v1/pipelines/cancelled/pause", expect=200)
    run = env.serve.post("/api/v1/pipelines/cancelled/runs")
    assert env.serve.post(f"/api/v1/runs/{run['id']}/cancel", expect=200)["status"] == "cancelled"
    env.serve.post("/api/v1/pipelines/cancelled/resume", expect=200)
    time.sleep(1.0)
    assert env.serve.get(f"/api/v1/runs/{run['id']}")["status"] == "cancelled"


def test_files_added_changed_removed_and_a_bad_file_reported(env: Env) -> None:
    bad = env.folder / "broken.yml"
    bad.write_text("pipeline: broken\nsource: {type: postgres}\ndestinations: []\n")
    entry = wait_for(lambda: next((p for p in env.serve.get("/api/v1/pipelines") if p["path"] == str(bad)), None),
                     timeout=30, what="the broken file to be reported")
    assert "destinations" in entry["error"]
    problem = env.serve.http.get("/api/v1/pipelines/broken")
    assert problem.status_code == 409 and problem.json()["code"] == "invalid_pipeline_file"
    env.table("fixed_t", 2)
    env.pipeline("broken", ["fixed_t"], f"{{webhook: true, secret: {SECRET}}}")  # the same file, fixed
    wait_for(lambda: env.serve.http.get("/api/v1/pipelines/broken").status_code == 200, timeout=30, what="the fix")
    bad.unlink()
    wait_for(lambda: env.serve.http.get("/api/v1/pipelines/broken").status_code == 404, timeout=30, what="the removal")
    assert env.serve.http.get("/api/v1/runs/999999").json()["code"] == "not_found"
    assert env.serve.get("/api/v1/status")["workers"] == 2


def test_metrics_pass_promtool_and_match_the_docs(env: Env) -> None:
    env.table("metrics_t", 7)
    env.pipeline("metered", ["metrics_t"], f"{{webhook: true, secret: {SECRET}}}")
    env.appears("metered")
    env.serve.wait_run(env.serve.post("/api/v1/pipelines/metered/runs")["id"])
    r = env.serve.http.get("/metrics")
    assert r.status_code == 200
    text = r.text
    assert 'replicant_rows_read_total{pipeline="metered",stream="metrics_t",tenant=""} 7.0' in text
    assert 'replicant_rows_written_total{destination="pg",pipeline="metered",stream="metrics_t",tenant=""} 7.0' in text
    assert 'replicant_workers 2.0' in text
    log_bytes = [line for line in text.splitlines() if line.startswith('replicant_log_bytes{pipeline="metered"')]
    assert len(log_bytes) == 1 and float(log_bytes[0].rsplit(" ", 1)[1]) > 0
    documented = (DOCS / "metrics.md").read_text()
    for name in METRICS:
        assert f"`{name}" in documented, f"{name} is not in docs/metrics.md"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    check = subprocess.run([promtool, "check", "metrics"], input=r.content, capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    from .serve_proc import SRC

    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "replicant.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_cli_verbs_talk_to_the_service_and_resync_a_derived_stream(env: Env) -> None:
    env.table("deriv_t", 30)
    upstream = env.pipeline("deriv_up", ["deriv_t"], f"{{webhook: true, secret: {SECRET}}}")
    derived = env.folder / "deriv_down.yml"
    derived.write_text("""
pipeline: deriv_down
source: {type: pipeline, pipeline: deriv_up.yml}
destinations:
  - {name: lake, type: duckdb, path: derived.duckdb, write: merge}
schedule: {after: deriv_up}
""")
    env.appears("deriv_down")
    env.appears("deriv_up")
    env.serve.wait_run(env.serve.post("/api/v1/pipelines/deriv_up/runs")["id"])
    [down] = env.serve.wait_runs("deriv_down", 1)
    assert down["status"] == "succeeded", down
    server = f"http://127.0.0.1:{env.serve.port}"

    status = _cli("status", str(upstream), "--server", server, "--json")
    assert status.returncode == 0, status.stderr
    assert {s["name"]: s["rows"] for s in json.loads(status.stdout)["streams"]} == {"deriv_t": 30}

    with psycopg.connect(env.dst, autocommit=True) as c:
        c.execute("DELETE FROM deriv_t")
    replay = _cli("replay", str(upstream), "--destination", "pg", "--from-start", "--server", server)
    assert replay.returncode == 0, replay.stderr
    assert "30 rows delivered" in replay.stdout and env.count("deriv_t") == 30

    resync = _cli("resync", str(derived), "--stream", "deriv_t", "--server", server)
    assert resync.returncode == 0, resync.stderr + resync.stdout
    assert "succeeded" in resync.stdout
    latest = env.serve.get(f"/api/v1/runs/{env.serve.runs('deriv_down', status='succeeded')[0]['id']}")
    assert latest["command"] == "resync" and latest["result"]["rows_read"] == {"deriv_t": 30}  # re-read from the start

    missing = _cli("status", str(upstream), "--server", "http://127.0.0.1:9")  # nothing listens there
    assert missing.returncode == 1 and "cannot reach the replicant service" in missing.stderr


def test_failure_and_recovery_are_notified_as_json_and_slack(env: Env) -> None:
    env.pipeline("flaky", ["flaky_t"], f"{{webhook: true, secret: {SECRET}}}")  # its table does not exist yet
    env.appears("flaky")
    failed = env.serve.wait_run(env.serve.post("/api/v1/pipelines/flaky/runs")["id"])
    assert failed["status"] == "failed" and "flaky_t" in failed["error"]

    def events(kind: str) -> list[tuple[str, dict]]:
        found = []
        for r in list(env.receiver.requests):
            body = r.json
            event = body.get("event") or body.get("text", "")
            if "flaky" in json.dumps(body) and kind in event:
                found.append(("slack" if "blocks" in body else "json", body))
        return found

    wait_for(lambda: len(events("failure")) == 2, timeout=30, what="the failure notifications")
    [(_, as_json)] = [e for e in events("failure") if e[0] == "json"]
    assert as_json["pipeline"] == "flaky" and as_json["run"] == failed["id"] and "flaky_t" in as_json["message"]
    [(_, slack)] = [e for e in events("failure") if e[0] == "slack"]
    assert slack["text"].startswith(":red_circle: replicant failure: flaky")
    env.table("flaky_t", 3)
    ok = env.serve.wait_run(env.serve.post("/api/v1/pipelines/flaky/runs")["id"])
    assert ok["status"] == "succeeded"
    wait_for(lambda: len(events("recovery")) == 2, timeout=30, what="the recovery notifications")


def test_a_mariadb_source_runs_in_the_service(env: Env, mysql_server) -> None:
    name = f"serve_maria_{uuid.uuid4().hex[:8]}"
    mysql_server.create_database(name)
    try:
        with mysql_server.connect(name) as c, c.cursor() as cur:
            cur.execute("CREATE TABLE maria_t (id INT PRIMARY KEY, v VARCHAR(40) NOT NULL)")
            cur.executemany("INSERT INTO maria_t VALUES (%s, %s)", [(i, f"v{i}") for i in range(1, 251)])
            c.commit()
        (env.folder / "maria.yml").write_text(f"""
pipeline: maria
source:
  type: mariadb
  url: {mysql_server.url(name)}
  streams: [{{table: maria_t, mode: cursor, cursor: id}}]
destinations:
  - {{name: pg, type: postgres, url: "{env.dst}", write: merge}}
schedule: {{webhook: true, secret: {SECRET}}}
""")
        env.appears("maria")
        run = env.serve.wait_run(env.serve.post("/api/v1/pipelines/maria/runs")["id"])
        assert run["status"] == "succeeded", run
        assert run["result"]["rows_read"] == {"maria_t": 250} and env.count("maria_t") == 250
    finally:
        (env.folder / "maria.yml").unlink(missing_ok=True)
        mysql_server.drop_database(name)


def test_follow_streams_continuously_and_pause_then_cancel_stops_it(env: Env) -> None:
    env.table("follow_t", 10)
    env.pipeline("follower", ["follow_t"], "{follow: true}")
    env.appears("follower")
    run = wait_for(lambda: next((r for r in env.serve.runs("follower") if r["status"] == "running"), None),
                   timeout=60, what="the follow run")
    assert run["command"] == "follow" and run["trigger"] == "follow"
    wait_for(lambda: env.count_or_none("follow_t") == 10, timeout=60, what="the initial rows")
    env.insert("follow_t", 11, 15)
    wait_for(lambda: env.count("follow_t") == 15, timeout=60, what="the new rows, streamed")
    assert env.serve.get(f"/api/v1/runs/{run['id']}")["status"] == "running"  # one run, still going
    env.serve.post("/api/v1/pipelines/follower/pause", expect=200)  # else the scheduler restarts it
    env.serve.post(f"/api/v1/runs/{run['id']}/cancel", expect=200)
    assert env.serve.wait_run(run["id"], timeout=60)["status"] == "cancelled"
    time.sleep(1.0)
    assert [r["status"] for r in env.serve.runs("follower")] == ["cancelled"]

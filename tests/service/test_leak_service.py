"""The leak test, service half: a sentinel password (``${secret:…}`` in one pipeline's URL, and
a wrong one through ``${env:…}`` in another's, whose runs fail) and a sentinel token (the admin
token every request here carries) appear nowhere in what ``replicant serve`` wrote or answered:
its log and run logs, every GET endpoint of the OpenAPI document (walked, each path parameter
filled with every value there is), ``/metrics``, the dashboard's pages and files, and every file
under the served folder (the state database included)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from access._pg import password_table
from replicant.access.keys import generate_key
from replicant.access.secret_store import EncryptedStore
from replicant.state.store import StateStore

from .access_env import make_env
from .serve_proc import ServeProcess

ROLE = "replicant_leak_srv"
SENTINEL = "Leak-sentinel-pw-9f41"
WRONG = "Leak-sentinel-wrong-pw-5d02"


def test_sentinel_password_and_token_appear_nowhere_the_service_wrote_or_answered(
        tmp_path: Path, pg_server, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = password_table(pg_server, pg_url, ROLE, SENTINEL, "items", 50)
    monkeypatch.setenv("REPLICANT_MASTER_KEY", generate_key())
    monkeypatch.delenv("REPLICANT_MASTER_KEY_FILE", raising=False)
    monkeypatch.setenv("LEAK_WRONG_PW", WRONG)
    env = make_env(tmp_path, prerun=False)
    token = env.tokens["admin"]
    store = StateStore(env.state_url).open()
    try:
        EncryptedStore(store).set("PG_PW", SENTINEL)
    finally:
        store.close()
    base = f"postgresql://{ROLE}:%s@127.0.0.1:{pg_server.port}/{db}"
    (tmp_path / "leak.yml").write_text(
        f"pipeline: leak\nstate: sqlite:///.replicant/service.db\nsource: {{type: postgres, url: '{base % '${secret:PG_PW}'}', "
        "streams: [items]}\ndestinations: [{name: out, type: duckdb, path: leak.duckdb}]\n")
    (tmp_path / "wrong.yml").write_text(
        f"pipeline: wrong\nstate: sqlite:///.replicant/service.db\nsource: {{type: postgres, url: '{base % '${env:LEAK_WRONG_PW}'}', "
        "streams: [items]}\ndestinations: [{name: out, type: duckdb, path: wrong.duckdb}]\n")
    serve = ServeProcess(tmp_path, workers=1, token=token).start()
    answered: list[str] = []
    try:
        ok = serve.wait_run(serve.post("/api/v1/pipelines/leak/runs", json={})["id"])
        assert ok["status"] == "succeeded", ok
        bad = serve.wait_run(serve.post("/api/v1/pipelines/wrong/runs", json={})["id"])
        assert bad["status"] == "failed" and bad["error"], bad
        assert ROLE in bad["error"] or "password" in bad["error"].lower()  # it says what failed, not the secret
        answered.extend(serve.http.post(path, json={} if "validate" in path else None).text for path in (
            "/api/v1/pipelines/leak/pause", "/api/v1/pipelines/leak/resume", "/api/v1/pipelines/solo/validate"))
        answered.append(serve.http.post("/api/v1/pipelines/nope/runs").text)  # an error response too

        document = serve.get("/api/openapi.json")
        values = {"name": [p["name"] for p in serve.get("/api/v1/pipelines")],
                  "run_id": [str(r["id"]) for r in serve.get("/api/v1/runs")]}
        assert {"leak", "wrong"} <= set(values["name"]) and values["run_id"]
        walked = 0
        for template, operations in document["paths"].items():
            if "get" not in operations:
                continue
            paths = [template]
            for param in re.findall(r"{(\w+)}", template):
                assert param in values, f"the leak test cannot fill {{{param}}} of GET {template}: add its values"
                paths = [p.replace(f"{{{param}}}", v) for p in paths for v in values[param]]
            for path in paths:
                r = serve.http.get(path)
                assert r.status_code < 500, (path, r.status_code)
                answered.append(f"GET {path}\n{r.headers}\n{r.text}")
                walked += 1
        assert walked >= 20
        metrics = serve.http.get("/metrics")
        assert metrics.status_code == 200 and 'pipeline="leak"' in metrics.text
        answered.append(metrics.text)

        with httpx.Client(base_url=f"http://127.0.0.1:{serve.port}", follow_redirects=True) as browser:
            answered.append(browser.get("/").text)  # the login page
            r = browser.post("/login", data={"token": token})
            assert r.status_code == 200 and "Pipelines" in r.text
            answered.append(r.text + str(r.headers) + str(dict(browser.cookies)))
            for path in ("/", "/pipelines/leak", "/pipelines/wrong", "/static/dashboard.js", "/static/dashboard.css"):
                page = browser.get(path)
                assert page.status_code == 200, path
                answered.append(page.text)
    finally:
        assert serve.stop() == 0, serve.log()

    written = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert any(p.name == "service.db" for p in written) and any(p.suffix == ".log" for p in written)
    assert len([p for p in written if "logs" in p.parts]) >= 2  # the runs' own logs
    for sentinel in (SENTINEL, WRONG, token):
        for text in answered:
            assert sentinel not in text, (sentinel, text[:500])
        for path, data in written.items():
            assert sentinel.encode() not in data, (sentinel, path)

"""The dashboard in headless Chromium (Debian's ``chromium`` driven by Playwright through its
``executable_path``; never ``playwright install``) against a real ``replicant serve``: log in,
see the pipelines, open one, trigger a run and watch its progress reach 100 %, pause and resume
a stream, retry a dead letter; a viewer sees no mutating button; a stream's snapshot bar is
determinate with a percent and ETA mid-way (a PostgreSQL source read in small chunks), then done. Screenshots are saved under the
test's ``artifacts`` folder and copied to ``$REPLICANT_ARTIFACTS`` when it is set."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .access_env import AccessEnv, make_env
from .serve_proc import ServeProcess, wait_for

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AccessEnv, ServeProcess]]:
    folder = tmp_path_factory.mktemp("dashboard")
    env = make_env(folder)
    serve = ServeProcess(folder, workers=1, token=env.tokens["admin"]).start()
    try:
        yield env, serve
    finally:
        assert serve.stop() == 0, serve.log()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot in ``tmp_path/artifacts`` (and ``$REPLICANT_ARTIFACTS``)."""
    folder = tmp_path / "artifacts"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    if os.environ.get("REPLICANT_ARTIFACTS"):
        out = Path(os.environ["REPLICANT_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / path.name)
    return path


def login(browser: Any, serve: ServeProcess, token: str) -> Any:
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"http://127.0.0.1:{serve.port}/")
    assert page.url.endswith("/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"http://127.0.0.1:{serve.port}/")
    return page


def test_operator_runs_pauses_resumes_and_retries_from_the_dashboard(site: tuple[AccessEnv, ServeProcess], browser: Any,
                                                                     tmp_path: Path) -> None:
    env, serve = site
    page = login(browser, serve, env.tokens["operator"])
    rows = page.locator("#pipelines tbody tr")
    rows.filter(has_text="solo").wait_for()
    assert rows.count() == 2 and "shop" in rows.nth(0).inner_text()
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["replicant_session"]["httpOnly"] and cookies["replicant_session"]["sameSite"] == "Strict"
    assert env.tokens["operator"] not in page.content()
    shot(page, tmp_path, "dashboard-pipelines")

    page.get_by_role("link", name="solo").click()
    page.wait_for_url("**/pipelines/solo")
    page.locator("#streams tbody tr[data-stream=orders]").wait_for()
    before = {r["id"] for r in serve.runs("solo")}
    page.get_by_role("button", name="Run now").click()
    label = page.locator("#run-label")
    page.wait_for_function("() => /succeeded · 100%/.test(document.querySelector('#run-label')?.textContent || '')")
    assert page.locator("#run-bar").get_attribute("value") == "100"
    new = [r for r in serve.runs("solo") if r["id"] not in before]
    assert len(new) == 1 and new[0]["status"] == "succeeded" and f"Run {new[0]['id']}" in label.inner_text()

    state = page.locator("#streams tbody tr[data-stream=items] td.state")
    page.get_by_role("button", name="Pause items").click()
    wait_for(lambda: state.inner_text() == "paused", timeout=30, what="items shown paused")
    assert [(c["stream"], c["tenant"]) for c in serve.get("/api/v1/pipelines/solo")["pauses"]] == [("items", None)]
    page.get_by_role("button", name="Resume items").click()
    wait_for(lambda: state.inner_text() == "ok", timeout=30, what="items shown resumed")
    assert serve.get("/api/v1/pipelines/solo")["pauses"] == []

    [letter] = serve.get("/api/v1/pipelines/solo/dead-letters")
    page.locator(f"button[data-retry='{letter['id']}']").click()
    page.wait_for_function("() => /Retry dead letter \\d+: done/.test(document.querySelector('#status').textContent)")
    retries = wait_for(lambda: [r for r in serve.runs("solo") if r["command"] == "retry"], timeout=30, what="a retry run")
    assert retries[0]["params"]["ids"] == [letter["id"]]
    page.locator("#runs tbody tr", has_text="retry").first.wait_for()
    page.locator("#lag-charts svg[role=img]").first.wait_for()
    history = serve.get("/api/v1/pipelines/solo")["lag_history"]  # the service's samples feed the chart
    assert history["lake"] and all(n >= 0 for _, n in history["lake"])
    shot(page, tmp_path, "dashboard-pipeline-operator")
    page.close()


def test_viewer_sees_no_mutating_buttons(site: tuple[AccessEnv, ServeProcess], browser: Any, tmp_path: Path) -> None:
    env, serve = site
    page = login(browser, serve, env.tokens["viewer"])
    page.goto(f"http://127.0.0.1:{serve.port}/pipelines/shop")
    page.locator("#streams tbody tr[data-stream=orders]").first.wait_for()
    page.locator("#dead-letters tbody tr").first.wait_for()
    page.wait_for_function("() => !/Loading/.test(document.querySelector('#status').textContent)")
    labels = page.locator("main button:not(.link)").all_inner_texts()
    assert labels == [], labels
    assert page.locator("#dead-letters tbody tr").count() == 2  # it reads them, without retry or discard
    shot(page, tmp_path, "dashboard-pipeline-viewer")
    page.close()


def test_bad_token_is_refused_and_csrf_is_needed_for_the_session(site: tuple[AccessEnv, ServeProcess]) -> None:
    env, serve = site
    base = f"http://127.0.0.1:{serve.port}"
    with httpx.Client(base_url=base, follow_redirects=False) as c:
        r = c.post("/login", data={"token": "rpl_wrong"})
        assert r.status_code == 401 and "not valid" in r.text and "rpl_wrong" not in r.text
        r = c.post("/login", data={"token": env.tokens["operator"]})
        assert r.status_code == 303 and "replicant_session" in c.cookies
        page = c.get("/pipelines/solo").text
        csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        assert env.tokens["operator"] not in page and len(csrf) > 20
        assert c.get("/api/v1/pipelines").status_code == 200  # reads: the cookie is enough
        assert c.post("/api/v1/pipelines/solo/pause").status_code == 403  # no CSRF header
        assert c.post("/api/v1/pipelines/solo/pause", headers={"x-csrf-token": csrf,
                                                               "origin": "http://evil.example"}).status_code == 403
        assert c.post("/api/v1/pipelines/solo/pause", headers={"x-csrf-token": csrf}).status_code == 200
        assert c.post("/api/v1/pipelines/solo/resume", headers={"x-csrf-token": csrf, "origin": base}).status_code == 200


def test_keyboard_alone_logs_in_and_opens_a_pipeline(site: tuple[AccessEnv, ServeProcess], browser: Any) -> None:
    env, serve = site
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.set_default_timeout(60_000)
    page.goto(f"http://127.0.0.1:{serve.port}/login")
    assert page.evaluate("document.activeElement.id") == "token"  # autofocus, labelled
    page.keyboard.type(env.tokens["viewer"])
    page.keyboard.press("Enter")
    page.wait_for_url(f"http://127.0.0.1:{serve.port}/")
    page.locator("#pipelines tbody a").first.wait_for()
    for _ in range(10):  # Tab to the first pipeline's link, then Enter
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "shop":
            break
    else:
        raise AssertionError("no keyboard focus reached the pipeline link")
    page.keyboard.press("Enter")
    page.wait_for_url("**/pipelines/shop")
    assert page.locator("#streams").is_visible()
    page.close()


def test_revoking_a_token_ends_its_dashboard_sessions(site: tuple[AccessEnv, ServeProcess]) -> None:
    _, serve = site
    made = serve.post("/api/v1/tokens", expect=201, json={"role": "viewer", "name": "short-lived"})
    with httpx.Client(base_url=f"http://127.0.0.1:{serve.port}") as c:
        assert c.post("/login", data={"token": made["token"]}).status_code == 303
        assert c.get("/api/v1/whoami").json()["name"] == "short-lived"
        assert c.get("/", follow_redirects=False).status_code == 200
        serve.http.delete(f"/api/v1/tokens/{made['id']}").raise_for_status()
        assert c.get("/api/v1/whoami").status_code == 401
        assert c.get("/", follow_redirects=False).headers["location"] == "/login"


SNAPSHOT_ROWS = 12_000


@pytest.fixture(scope="module")
def snapshot_site(pg_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A served PostgreSQL pipeline whose full read lasts seconds (600 key-range chunks of 20
    rows), on loopback without tokens (the dashboard is open)."""
    import uuid

    import psycopg

    name = f"dash_snap_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(name)
    url = pg_server.url(name)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id integer PRIMARY KEY, v text NOT NULL)")
        c.execute("INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, %s::int) g", (SNAPSHOT_ROWS,))
        c.execute("ANALYZE orders")  # the estimate the bar is drawn against
    folder = tmp_path_factory.mktemp("dashboard-snapshot")
    (folder / "snap.yml").write_text(f"""
pipeline: snap
source:
  type: postgres
  url: {url}
  chunk_size: 20
  batch_size: 20
  streams: [{{table: orders, mode: full}}]
destinations:
  - {{name: lake, type: duckdb, path: snap.duckdb, write: replace}}
""")
    serve = ServeProcess(folder, workers=1).start()
    try:
        yield serve
    finally:
        code = serve.stop()
        pg_server.drop_database(name)
        assert code == 0, serve.log()


def test_a_streams_snapshot_bar_is_determinate_with_percent_and_eta_then_done(snapshot_site: ServeProcess, browser: Any,
                                                                               tmp_path: Path) -> None:
    serve = snapshot_site
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.set_default_timeout(120_000)
    page.goto(f"http://127.0.0.1:{serve.port}/pipelines/snap")
    page.get_by_role("button", name="Run now").click()
    bar = page.locator("#streams tbody tr[data-stream=orders] progress")
    # mid-way: a value between 1 and 99, and the same percent with an ETA in its label and beside it
    page.wait_for_function("""() => {
      const bar = document.querySelector('#streams tr[data-stream=orders] progress');
      const m = bar && /^orders: (\\d+)% · ETA \\d+ (s|min)$/.exec(bar.getAttribute('aria-label') || '');
      return m && Number(m[1]) > 0 && Number(m[1]) < 100 && bar.getAttribute('value') === m[1];
    }""")
    label = bar.get_attribute("aria-label")
    assert label is not None
    assert label.removeprefix("orders: ") in page.locator("#streams tbody tr[data-stream=orders] .pct").inner_text()
    run_bar = page.locator("#run-bar")  # the run's bar: rows over the streams' estimates
    assert 0 < int(run_bar.get_attribute("value") or 0) < 100
    shot(page, tmp_path, "dashboard-snapshot-midway")
    page.wait_for_function("""() => {
      const bar = document.querySelector('#streams tr[data-stream=orders] progress');
      return bar && bar.getAttribute('aria-label') === 'orders: 100% · done' && bar.getAttribute('value') === '100';
    }""")
    page.wait_for_function("() => /succeeded · 100%/.test(document.querySelector('#run-label')?.textContent || '')")
    assert page.locator("#streams tbody tr[data-stream=orders] .pct").inner_text().strip() == "100% · done"
    page.close()

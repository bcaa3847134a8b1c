"""docs/dashboard.md: its pipeline file served as it is, a token made with the command it shows,
a login through the dashboard's form, and the pipeline in the page's API."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from .serve_proc import SRC, ServeProcess

ROOT = Path(__file__).resolve().parents[2]


def test_the_dashboard_example_logs_in_with_the_token_command(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "dashboard.md").read_text()
    [pipeline] = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "pipeline: shop" in b]
    [command] = [line.split("#")[0].split() for line in re.findall(r"```sh\n(.*?)```", text, re.S)[0].splitlines()
                 if line.startswith("replicant token create")]
    (tmp_path / "shop.yml").write_text(pipeline)
    with sqlite3.connect(tmp_path / "shop.db") as c:
        c.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, cents INTEGER)")
        c.execute("INSERT INTO orders VALUES (1, 100), (2, 250)")
    done = subprocess.run([sys.executable, "-m", "replicant.cli", *command[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": SRC})
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("rpl_")
    serve = ServeProcess(tmp_path, workers=1, token=token).start()
    try:
        run = serve.wait_run(serve.post("/api/v1/pipelines/shop/runs", json={})["id"])
        assert run["status"] == "succeeded", run
        with httpx.Client(base_url=f"http://127.0.0.1:{serve.port}", follow_redirects=True) as c:
            assert "/login" in str(c.get("/").url)  # tokens exist: the dashboard asks for one
            page = c.post("/login", data={"token": token})
            assert page.status_code == 200 and "dashboard (operator)" in page.text
            assert c.cookies.get("replicant_session") and token not in page.text
            assert [p["name"] for p in c.get("/api/v1/pipelines").json()] == ["shop"]
            assert "Run now" in c.get("/pipelines/shop").text
    finally:
        assert serve.stop() == 0, serve.log()

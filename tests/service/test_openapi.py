"""schemathesis against the running service's OpenAPI document: no server error (5xx) and no
response that violates the document (status codes, content types, schemas); and every route
declares its permission in the one table."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicant.service.api.permissions import PERMISSIONS

from .serve_proc import ServeProcess


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("openapi")
    chinook = Path(__file__).resolve().parents[2] / "examples" / "chinook"
    (folder / "chinook.sqlite").write_bytes((chinook / "chinook.sqlite").read_bytes())
    (folder / "chinook.yml").write_text((chinook / "pipeline.yml").read_text() + "schedule: {every: 1h}\n")
    (folder / "broken.yml").write_text("pipeline: broken\nsource: {type: nope}\n")
    serve = ServeProcess(folder, workers=1).start()
    try:
        yield serve
    finally:
        assert serve.stop() == 0, serve.log()


CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.mark.slow  # about 80 s: 25 examples per operation and the stateful phase
def test_schemathesis_finds_no_server_error_and_no_schema_violation(served: ServeProcess, tmp_path: Path) -> None:
    # the CLI, not the pytest plugin: the plugin does not run under this pytest's node API
    st = Path(sys.executable).with_name("schemathesis")
    command = [str(st), "run", f"http://127.0.0.1:{served.port}/api/openapi.json", "--checks", CHECKS,
               "--max-examples", "25", "--seed", "20261206", "--workers", "1", "--generation-deterministic",
               "--report", "junit", "--report-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)  # its cache: not in the repo
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "passed" in done.stdout.lower()


def test_every_route_declares_its_permission(served: ServeProcess) -> None:
    document = served.get("/api/openapi.json")
    operations = {op["operationId"].split("_api_v1")[0] for path in document["paths"].values() for op in path.values()}
    assert operations <= set(PERMISSIONS), operations - set(PERMISSIONS)
    assert set(PERMISSIONS) <= operations, set(PERMISSIONS) - operations  # no stale entry either
    assert all(p.startswith("/api/v1/") for p in document["paths"])

"""`replicant status` is read-only and an invalid pipeline creates nothing (issue 9 item 20):
on a fresh folder neither `status` nor a `run` stopped by a config error leaves a
`.replicant/` folder, and `status` needs only the state and the log, not the source's secrets."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path


def replicant(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "SD_NOT_SET"}
    return subprocess.run([sys.executable, "-m", "replicant.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**environ, **(env or {})}, timeout=300)


def _folder(tmp_path: Path, source_url: str = "sqlite:///src.db", write: str = "") -> Path:
    with sqlite3.connect(tmp_path / "src.db") as c:
        c.execute("CREATE TABLE keyed (id INTEGER PRIMARY KEY, name TEXT)")
        c.execute("CREATE TABLE keyless (name TEXT)")
        c.execute("INSERT INTO keyed VALUES (1, 'a')")
        c.execute("INSERT INTO keyless VALUES ('a')")
    f = tmp_path / "p.yml"
    f.write_text(f"pipeline: ro\nsource: {{type: sqlite, url: '{source_url}'}}\n"
                 f"destinations: [{{name: w, type: duckdb, path: w.duckdb{write}}}]\n")
    return f


def test_status_of_a_pipeline_that_never_ran_creates_nothing(tmp_path: Path) -> None:
    f = _folder(tmp_path)
    s = replicant("status", str(f), cwd=tmp_path)
    assert s.returncode == 0, s.stderr
    assert "no run yet" in s.stdout
    assert not (tmp_path / ".replicant").exists()


def test_status_needs_no_source_secret(tmp_path: Path) -> None:
    f = _folder(tmp_path, source_url="sqlite:///${env:SD_NOT_SET}")
    s = replicant("status", str(f), cwd=tmp_path)
    assert s.returncode == 0, s.stderr
    assert "no run yet" in s.stdout
    assert not (tmp_path / ".replicant").exists()
    r = replicant("run", str(f), cwd=tmp_path)  # a run still needs it, and says which
    assert r.returncode == 2 and "SD_NOT_SET" in r.stderr
    assert not (tmp_path / ".replicant").exists()


def test_run_refused_by_the_plan_creates_no_state_and_writes_nothing(tmp_path: Path) -> None:
    f = _folder(tmp_path, write=", write: merge")
    r = replicant("run", str(f), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "destinations[0].write" in r.stderr and "'keyless'" in r.stderr and "primary_key:" in r.stderr
    assert not (tmp_path / ".replicant").exists()
    assert not (tmp_path / "w.duckdb").exists()
    s = replicant("status", str(f), cwd=tmp_path)
    assert s.returncode == 0 and "no run yet" in s.stdout
    assert not (tmp_path / ".replicant").exists()

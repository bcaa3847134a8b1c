"""The command line: `run` and `status` on the embedded default, and short, key-naming
errors (no traceback unless --debug, never a password)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[1]


def replicant(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "replicant.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A copy of the Quickstart example."""
    shutil.copytree(REPO / "examples" / "chinook", tmp_path / "chinook", ignore=shutil.ignore_patterns("*.duckdb*", ".replicant"))
    return tmp_path / "chinook" / "pipeline.yml"


def test_quickstart_demo_runs_and_status_reports(demo: Path, chinook_counts: dict[str, int]) -> None:
    r = replicant("run", str(demo))
    assert r.returncode == 0, r.stderr
    assert "Track" in r.stdout and "3,503" in r.stdout
    with duckdb.connect(str(demo.parent / "chinook.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM Track").fetchone()[0] == chinook_counts["track"]
        assert con.execute("SELECT count(*) FROM PlaylistTrack").fetchone()[0] == chinook_counts["playlist_track"]
    s = replicant("status", str(demo))
    assert s.returncode == 0, s.stderr
    assert "succeeded" in s.stdout
    assert "InvoiceLine" in s.stdout and "warehouse" in s.stdout
    j = replicant("status", str(demo), "--json")
    assert j.returncode == 0, j.stderr
    import json

    st = json.loads(j.stdout)
    assert st["pipeline"] == "chinook" and st["last_run"]["status"] == "succeeded"
    assert {s["name"]: s["rows"] for s in st["streams"]}["Track"] == chinook_counts["track"]
    assert {(d["destination"], d["stream"]): d["lag"] for d in st["destinations"]}[("warehouse", "Track")] == 0
    assert st["capture"] is None
    # relative paths resolve against the pipeline file, not the working directory
    r2 = replicant("run", "pipeline.yml", cwd=demo.parent)
    assert r2.returncode == 0, r2.stderr


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yml"
    p.write_text(text)
    return p


def test_unknown_key_names_the_key_and_suggests(tmp_path: Path) -> None:
    p = _write(tmp_path, "pipeline: x\nsource: {type: sqlite, url: 'sqlite:///a.db', streams: all}\n"
                         "destinations: [{name: w, type: duckdb, wirte: merge}]\n")
    r = replicant("run", str(p))
    assert r.returncode == 2
    assert "destinations[0].wirte: unknown key (did you mean 'write'?)" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_url_names_the_key(tmp_path: Path) -> None:
    p = _write(tmp_path, "pipeline: x\nsource: {type: postgres, url: 'oracle://u:hunter2@h/db', streams: all}\n"
                         "destinations: [{name: w}]\n")
    r = replicant("run", str(p))
    assert r.returncode == 2
    assert "source.url" in r.stderr
    assert "hunter2" not in r.stderr + r.stdout
    assert "Traceback" not in r.stderr


def test_missing_table_names_the_key_and_suggests(tmp_path: Path, chinook_sqlite_path: Path) -> None:
    p = _write(tmp_path, f"pipeline: x\nsource: {{type: sqlite, url: 'sqlite:///{chinook_sqlite_path}', streams: [Album, Trak]}}\n"
                         "destinations: [{name: w}]\n")
    r = replicant("run", str(p))
    assert r.returncode == 2, r.stderr
    assert "source.streams[1].table" in r.stderr and "Trak" in r.stderr and "Track" in r.stderr
    assert "Traceback" not in r.stderr


def test_wrong_password_is_short_and_secret(tmp_path: Path, pg_server, pg_url: str) -> None:
    import os

    from servers import PASSWORD_ROLE

    if os.environ.get("REPLICANT_TEST_PG_URL"):
        pytest.skip("needs the throwaway server's pg_hba, which asks PASSWORD_ROLE for a password")
    with pg_server.connect(pg_url.rsplit("/", 1)[1]) as c:
        c.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 'right-one'")
    try:
        url = f"postgresql://{PASSWORD_ROLE}:wrong-s3cret@{pg_server.host}:{pg_server.port}/{pg_url.rsplit('/', 1)[1]}"
        p = _write(tmp_path, "pipeline: x\nsource: {type: postgres, url: '${env:SRC_URL}', streams: all}\n"
                             "destinations: [{name: w}]\n")
        r = replicant("run", str(p), env={"SRC_URL": url})
        out = r.stderr + r.stdout
        assert r.returncode == 1, out
        assert "wrong-s3cret" not in out
        assert "Traceback" not in out
        assert PASSWORD_ROLE in out and str(pg_server.port) in out
        d = replicant("--debug", "run", str(p), env={"SRC_URL": url})
        assert "Traceback" in d.stderr
        assert "wrong-s3cret" not in d.stderr + d.stdout
    finally:
        with pg_server.connect(pg_url.rsplit("/", 1)[1]) as c:
            c.execute(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")


def test_missing_env_reference_names_the_key(tmp_path: Path) -> None:
    p = _write(tmp_path, "pipeline: x\nsource: {type: postgres, url: 'postgresql://u:${env:NOPE_NOT_SET}@h/db'}\n"
                         "destinations: [{name: w}]\n")
    r = replicant("run", str(p), env={})
    assert r.returncode == 2
    assert "source.url: environment variable NOPE_NOT_SET is not set" in r.stderr

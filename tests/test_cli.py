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


def test_five_problems_are_reported_in_one_run(tmp_path: Path) -> None:
    """Issue 9, item 15: a repeated key, a missing and a malformed reference, a source and a
    destination setting, an unknown stream key and a repeated destination: one run says all."""
    p = _write(tmp_path, "pipeline: x\n"
                         "source:\n"
                         "  type: postgres\n"
                         "  url: 'postgresql://u:${env:NOPE_NOT_SET}@h/db'\n"
                         "  slott: s\n"
                         "  streams:\n"
                         "    - {table: a, mdoe: full}\n"
                         "destinations:\n"
                         "  - {name: w, path: '${LAKE}/w.duckdb', wirte: merge}\n"
                         "  - {name: w}\n"
                         "retention:\n"
                         "  max_age: 1d\n"
                         "  max_age: 2d\n")
    r = replicant("run", str(p), env={})
    assert r.returncode == 2, r.stderr
    for key, what in [
        ("retention.max_age", "key 'max_age' is repeated: line 12 and line 13"),
        ("source.url", "environment variable NOPE_NOT_SET is not set"),
        ("source.slott", "unknown key (did you mean 'slot'?)"),
        ("source.streams[0].mdoe", "unknown key (did you mean 'mode'?)"),
        ("destinations[0].path", "write ${env:LAKE}"),
        ("destinations[0].wirte", "unknown key (did you mean 'write'?)"),
        ("destinations", "destination names must be unique: w repeated"),
    ]:
        assert f"{key}: " in r.stderr and what in r.stderr, (key, r.stderr)
    assert "Traceback" not in r.stderr
    assert not (tmp_path / ".replicant").exists()


def test_connector_sections_are_checked_together(tmp_path: Path) -> None:
    """Problems only the connector types see (a missing SQLite file, a server without url)
    come in one report too, not one per run."""
    p = _write(tmp_path, "pipeline: x\nsource: {type: sqlite, url: 'sqlite:///missing.db'}\n"
                         "destinations: [{name: w, type: postgres}, {name: v, type: mysql}]\n")
    r = replicant("run", str(p))
    assert r.returncode == 2, r.stderr
    assert "source.url: SQLite file" in r.stderr
    assert "destinations[0].url: a postgres destination needs `url:`" in r.stderr
    assert "destinations[1].url: a mysql destination needs `url:`" in r.stderr


def _fragments(secret: str, size: int = 4) -> set[str]:
    return {secret[i:i + size] for i in range(len(secret) - size + 1)}


@pytest.mark.parametrize("password", ["hunter2@TopSecretTail", "abc/Slash9", "p@ss:w/rd#1"])
def test_a_password_with_url_characters_connects_and_never_shows(tmp_path: Path, pg_server, pg_url: str, password: str) -> None:
    """Issue 9, item 10: `${env:PW}` in a URL's user info is encoded, so the real role logs
    in with it; a wrong one fails for the real reason; no 4-character piece of either password
    is in the output or in any file of the state store (runs table included)."""
    import os
    import sqlite3

    from servers import PASSWORD_ROLE

    if os.environ.get("REPLICANT_TEST_PG_URL"):
        pytest.skip("needs the throwaway server's pg_hba, which asks PASSWORD_ROLE for a password")
    db = pg_url.rsplit("/", 1)[1]
    with pg_server.connect(db) as c:
        c.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{password}'")
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        c.execute(f"GRANT SELECT ON t TO {PASSWORD_ROLE}")
    try:
        p = _write(tmp_path, "pipeline: x\n"
                             f"source: {{type: postgres, url: 'postgresql://{PASSWORD_ROLE}:${{env:RT_PW}}@{pg_server.host}:"
                             f"{pg_server.port}/{db}', streams: [t]}}\n"
                             "destinations: [{name: w, type: duckdb}]\n")
        ok = replicant("run", str(p), env={"RT_PW": password})
        assert ok.returncode == 0, ok.stderr
        with duckdb.connect(str(tmp_path / "x.duckdb"), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 2
        wrong = password[::-1]  # same characters, wrong order
        bad = replicant("run", str(p), env={"RT_PW": wrong})
        debug = replicant("--debug", "run", str(p), env={"RT_PW": wrong})
        for r in (bad, debug):
            assert r.returncode == 1, r.stderr
            assert "wrong or missing password" in r.stderr and PASSWORD_ROLE in r.stderr
        shown = "\n".join(r.stdout + r.stderr for r in (ok, bad, debug))
        with sqlite3.connect(tmp_path / ".replicant" / "x" / "state.db") as s:
            runs = s.execute("SELECT * FROM replicant_runs").fetchall()
        assert len(runs) == 3 and any("password" in str(row) for row in runs)
        stored = "\n".join(map(str, runs))
        files = b"".join(f.read_bytes() for f in (tmp_path / ".replicant").rglob("*") if f.is_file())
        for piece in _fragments(password) | _fragments(wrong):
            assert piece not in shown, piece
            assert piece not in stored, piece
            assert piece.encode() not in files, piece
    finally:
        with pg_server.connect(db) as c:
            c.execute("DROP TABLE IF EXISTS t")  # its grant would keep the role
            c.execute(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")


def test_a_whole_url_variable_with_an_unencoded_password_is_a_config_error(tmp_path: Path) -> None:
    """Issue 9, item 10: `${env:SRC_URL}` holding `p@ss:w/rd#1` unencoded was an internal error,
    `abc/Slash9` a port error quoting `abc`, `hunter2@TopSecretTail` a host name: now each is
    exit 2 naming the key, with no piece of the password."""
    p = _write(tmp_path, "pipeline: x\nsource: {type: postgres, url: '${env:SRC_URL}', streams: all}\n"
                         "destinations: [{name: w}]\nstate: '${env:STATE_URL}'\n")
    for password in ["hunter2@TopSecretTail", "abc/Slash9", "p@ss:w/rd#1"]:
        url = f"postgresql://app:{password}@127.0.0.1:9/db"
        r = replicant("run", str(p), env={"SRC_URL": url, "STATE_URL": url.replace("/db", "/state")})
        assert r.returncode == 2, r.stderr
        assert "source.url: " in r.stderr and "state: " in r.stderr and "Traceback" not in r.stderr
        assert not _fragments(password) & _fragments(r.stdout + r.stderr), r.stderr


@pytest.mark.parametrize("password", ["hunter2@TopSecretTail", "p@ss:w/rd#1"])
def test_a_mysql_password_with_url_characters_reads_and_writes(tmp_path: Path, mysql_server, mysql_url: str, password: str) -> None:
    """Issue 9, item 10 on MariaDB: one user with such a password, referenced in the source's
    and the destination's URL, reads and writes; nothing shows a piece of it."""
    import os
    import sqlite3

    if os.environ.get("REPLICANT_TEST_MYSQL_URL"):
        pytest.skip("creates a user on the throwaway server")
    db = mysql_url.rsplit("/", 1)[1]
    user = f"rp{abs(hash(password)) % 10**6}"
    conn = mysql_server.connect(db)
    try:
        with conn.cursor() as c:
            c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            c.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
            c.execute(f"CREATE DATABASE `{db}_out`")
            c.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY %s", (password,))
            c.execute(f"GRANT ALL ON `{db}`.* TO '{user}'@'127.0.0.1'")
            c.execute(f"GRANT ALL ON `{db}_out`.* TO '{user}'@'127.0.0.1'")
        base = f"mysql://{user}:${{env:RT_MY_PW}}@{mysql_server.host}:{mysql_server.port}"
        p = _write(tmp_path, f"pipeline: x\nsource: {{type: mysql, url: '{base}/{db}', streams: [t]}}\n"
                             f"destinations: [{{name: w, type: mysql, url: '{base}/{db}_out'}}]\n")
        ok = replicant("run", str(p), env={"RT_MY_PW": password})
        assert ok.returncode == 0, ok.stderr
        with conn.cursor() as c:
            c.execute(f"SELECT count(*) FROM `{db}_out`.t")
            assert c.fetchone()[0] == 2
        bad = replicant("run", str(p), env={"RT_MY_PW": password[::-1]})
        assert bad.returncode == 1 and "access denied" in bad.stderr, bad.stderr
        with sqlite3.connect(tmp_path / ".replicant" / "x" / "state.db") as s:
            stored = "\n".join(map(str, s.execute("SELECT * FROM replicant_runs").fetchall()))
        pieces = _fragments(password) | _fragments(password[::-1])
        assert not pieces & _fragments(ok.stdout + ok.stderr + bad.stdout + bad.stderr + stored)
    finally:
        with conn.cursor() as c:
            c.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
            c.execute(f"DROP DATABASE IF EXISTS `{db}_out`")
        conn.close()

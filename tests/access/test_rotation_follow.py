"""Done-when of the secret store: the master key is rotated while a ``run --follow`` whose
PostgreSQL password is ``${secret:PG_PW}`` keeps running; no restart, nothing fails; the old
key is then removed and the pipeline still connects (after a forced reconnect). The same run
is the leak test's first half: the sentinel password appears nowhere the run wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from access._pg import password_table
from cdc._pipelines import Follow, dest_database, fingerprint, wait_until
from replicant.access.keys import generate_key, key_id

ROLE = "replicant_rotation"
SENTINEL = "Sentinel-pw-9d41!"  # user info: replicant percent-encodes it


def _cli(*args: str, stdin: str | None = None, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicant.cli", *args], input=stdin, capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.slow
def test_rotate_the_master_key_under_a_following_pipeline(tmp_path: Path, pg_server, pg_url: str, unique_name: str,
                                                          monkeypatch) -> None:
    db = password_table(pg_server, pg_url, ROLE, SENTINEL, "accounts", 200, own=True)
    old, new = generate_key(), generate_key()
    keys = tmp_path / "master.keys"
    keys.write_text(f"{old}\n")
    monkeypatch.setenv("REPLICANT_MASTER_KEY_FILE", str(keys))
    monkeypatch.delenv("REPLICANT_MASTER_KEY", raising=False)
    follow = None
    with dest_database(pg_server, f"{unique_name}_dst") as dst:
        p = tmp_path / "p.yml"
        p.write_text(f"""
pipeline: rot
source:
  type: postgres
  url: postgresql://{ROLE}:${{secret:PG_PW}}@127.0.0.1:{pg_server.port}/{db}
  streams: [{{table: accounts, mode: log}}]
destinations: [{{name: pg, type: postgres, url: '{dst}'}}]
""")
        try:
            r = _cli("secret", "set", str(p), "PG_PW", stdin=SENTINEL + "\n", cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            assert _cli("cdc", "install", str(p), cwd=tmp_path).returncode == 0
            follow = Follow(p, "rot")
            next_id = [1000]

            def same() -> bool:
                try:
                    return fingerprint(dst, "accounts", ["id", "name"]) == fingerprint(pg_url, "accounts", ["id", "name"])
                except psycopg.errors.UndefinedTable:  # the first batch is not there yet
                    return False

            def change_and_wait(what: str) -> None:
                with psycopg.connect(pg_url, autocommit=True) as c:
                    c.execute("INSERT INTO accounts SELECT g, 'x' || g FROM generate_series(%s::int, %s::int) g",
                              (next_id[0], next_id[0] + 49))
                    c.execute("UPDATE accounts SET name = name || '!' WHERE id % 17 = 0")
                next_id[0] += 50
                wait_until(lambda: not follow.alive() or same(), 120, what)
                assert follow.alive(), follow.output()[-3000:]

            change_and_wait("the snapshot and a first change")
            keys.write_text(f"# new key first; the old one still decrypts\n{new}\n{old}\n")
            change_and_wait("a change with both keys configured")
            r = _cli("secret", "rotate", str(p), cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            assert f"1 secret(s) re-encrypted under key {key_id(new)}" in r.stdout
            assert "older keys can be removed" in r.stdout
            change_and_wait("a change after re-encryption")
            keys.write_text(f"{new}\n")  # the old key removed
            with pg_server.connect(db) as c:  # force every connection of the pipeline to reconnect
                killed = c.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = %s",
                                   (ROLE,)).fetchone()[0]
            assert killed >= 1
            change_and_wait("a change after a reconnect with the new key only")
            assert "replication connection lost; reconnecting" in follow.output()
            code, _ = follow.terminate(timeout=60)
            assert code == 0, follow.output()[-3000:]
            output = follow.output()
            assert "error" not in output.lower(), output[-3000:]
            # the leak test, first half: the password is nowhere the run wrote
            assert SENTINEL not in output and SENTINEL not in r.stdout + r.stderr
            audit = _cli("audit", str(p), "--json", cwd=tmp_path)
            actions = [json.loads(line)["action"] for line in audit.stdout.splitlines()]
            assert actions == ["secret.set", "cdc.install", "secret.rotate", "run"], actions
            assert SENTINEL not in audit.stdout
            for f in (tmp_path / ".replicant").rglob("*"):
                if f.is_file():
                    data = f.read_bytes()
                    assert SENTINEL.encode() not in data and old.encode() not in data and new.encode() not in data, f
        finally:
            if follow is not None and follow.alive():
                follow.kill()
            _cli("cdc", "uninstall", str(p), cwd=tmp_path)
            with pg_server.connect(db) as c:
                c.execute("DROP TABLE IF EXISTS accounts")
                c.execute(f"DROP OWNED BY {ROLE}")
                c.execute(f"DROP ROLE IF EXISTS {ROLE}")

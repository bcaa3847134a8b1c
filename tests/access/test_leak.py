"""The leak test (the CLI half; the service's responses and HTML join it later): a sentinel
password kept in the secret store and a sentinel token appear nowhere in what the CLI
printed (but the one ``token create`` line), its logs, error messages, the state database
files, the staging log directory or the audit entries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from access._pg import password_table
from replicant.access.keys import generate_key

ROLE = "replicant_leak"
SENTINEL = "Leak-sentinel-pw-31c7"


def _cli(*args: str, stdin: str | None = None, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicant.cli", *args], input=stdin, capture_output=True, text=True,
                          cwd=cwd, timeout=120, env={**os.environ, **(env or {})})


def test_a_sentinel_password_and_token_appear_nowhere(tmp_path: Path, pg_server, pg_url: str, monkeypatch) -> None:
    db = password_table(pg_server, pg_url, ROLE, SENTINEL, "items", 50)
    monkeypatch.setenv("REPLICANT_MASTER_KEY", generate_key())
    monkeypatch.delenv("REPLICANT_MASTER_KEY_FILE", raising=False)
    p = tmp_path / "p.yml"
    p.write_text(f"pipeline: leak\nsource: {{type: postgres, url: 'postgresql://{ROLE}:${{secret:PG_PW}}@127.0.0.1:"
                 f"{pg_server.port}/{db}', streams: [items]}}\ndestinations: [{{name: out, type: duckdb}}]\n")
    shown: list[str] = []
    try:
        def cli(*args: str, stdin: str | None = None, code: int = 0, env: dict | None = None) -> str:
            r = _cli(*args, stdin=stdin, cwd=tmp_path, env=env)
            assert r.returncode == code, (args, r.stdout, r.stderr)
            return r.stdout + r.stderr

        shown.append(cli("secret", "set", str(p), "PG_PW", stdin=SENTINEL))
        created = _cli("token", "create", str(p), "--role", "admin", "--name", "leak", cwd=tmp_path)
        token = created.stdout.strip()
        assert token.startswith("rpl_") and created.stdout == token + "\n"  # printed once, on its own
        shown.append(created.stderr)
        shown.append(cli("run", str(p)))
        shown.append(cli("--debug", "run", str(p)))
        shown.append(cli("status", str(p)))
        shown.append(cli("secret", "list", str(p)))
        shown.append(cli("token", "list", str(p), "--json"))
        shown.append(cli("secret", "rotate", str(p)))
        # a wrong password: the error names the role and host, never a password
        shown.append(cli("secret", "set", str(p), "PG_PW", stdin=SENTINEL[::-1]))
        failed = cli("--debug", "run", str(p), code=1)
        assert ROLE in failed
        shown.append(failed)
        # no key that decrypts: the error names key ids only
        wrong_key = cli("run", str(p), code=2, env={"REPLICANT_MASTER_KEY": generate_key()})
        assert "cannot be decrypted" in wrong_key
        shown.append(wrong_key)
        audit = cli("audit", str(p), "--json")
        assert '"action": "token.create"' in audit and '"action": "secret.set"' in audit
        shown.append(audit)
    finally:
        with pg_server.connect(db) as c:
            c.execute("DROP TABLE IF EXISTS items")
            c.execute(f"DROP OWNED BY {ROLE}")
            c.execute(f"DROP ROLE IF EXISTS {ROLE}")
    everything = "\n".join(shown)
    files = b"".join(f.read_bytes() for f in (tmp_path / ".replicant").rglob("*") if f.is_file())
    assert len(files) > 10_000  # the state database and the staging log are there
    for sentinel in (SENTINEL, SENTINEL[::-1], token, token.removeprefix("rpl_")):
        assert sentinel not in everything
        assert sentinel.encode() not in files
    assert "Traceback" in everything  # --debug printed tracebacks, and they leak nothing either

"""The audit log: every mutating CLI action appends an entry (who, what, where, result),
nothing can alter or remove one, and ``replicant audit`` lists and exports them."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from typer.testing import CliRunner

from replicant.access.audit import cli_actor, record
from replicant.access.tokens import Principal
from replicant.state.access_tables import audit
from replicant.state.store import StateStore


@pytest.fixture
def state(tmp_path: Path):
    with StateStore(f"sqlite:///{tmp_path / 'state.db'}") as s:
        yield s


@pytest.fixture(params=["sqlite", "postgresql"])
def any_state(request: pytest.FixtureRequest, tmp_path: Path):
    """A store on SQLite, then on a fresh PostgreSQL database (each has its own triggers)."""
    url = f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    with StateStore(url) as s:
        yield s


def test_entries_are_appended_and_filtered(state) -> None:
    who = Principal("abc123", "ci", "operator", ("acme",))
    first = record(state, who, "trigger", pipeline="shop", tenant="acme", stream="orders", origin="10.0.0.7")
    second = record(state, "user:alice", "replay", result="failed", pipeline="bank", detail="token rpl_x? no: offset=3")
    assert second > first
    [e] = state.audit_entries(pipeline="shop")
    assert (e["actor"], e["action"], e["tenant"], e["stream"], e["origin"], e["result"]) == (
        "token:abc123 (ci)", "trigger", "acme", "orders", "10.0.0.7", "ok")
    assert [x["id"] for x in state.audit_entries(tenants=["acme", "globex"])] == [first]
    assert state.audit_entries(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert len(state.audit_entries()) == 2


def test_an_entry_cannot_be_altered_or_removed(any_state) -> None:
    state = any_state
    entry = record(state, "user:alice", "secret.set", detail="name=PW")
    # the API has no update or delete; even SQL through the store's own engine is refused
    for statement in (audit.update().where(audit.c.id == entry).values(result="forged"),
                      audit.delete().where(audit.c.id == entry)):
        with pytest.raises(sa_exc.DBAPIError, match="append-only"), state._engine.begin() as conn:
            conn.execute(statement)
    with pytest.raises(sa_exc.IntegrityError), state._engine.begin() as conn:  # an id is never reused
        conn.execute(audit.insert().values(id=entry, at=datetime.now(UTC), actor="x", action="y", result="ok"))
    [e] = state.audit_entries()
    assert (e["actor"], e["action"], e["result"], e["detail"]) == ("user:alice", "secret.set", "ok", "name=PW")
    assert not any(hasattr(state, name) for name in ("update_audit", "delete_audit", "remove_audit"))


def test_an_entry_cannot_be_altered_through_a_second_sqlite_connection(state, tmp_path: Path) -> None:
    record(state, "user:alice", "run", pipeline="p")
    with sqlite3.connect(tmp_path / "state.db") as c, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        c.execute("UPDATE replicant_audit SET actor = 'user:mallory'")
    assert state.audit_entries()[0]["actor"] == "user:alice"


def test_mutating_cli_actions_are_audited_and_exported_as_json_lines(tmp_path: Path, monkeypatch) -> None:
    from replicant.access.keys import generate_key
    from replicant.cli import app

    monkeypatch.setenv("REPLICANT_MASTER_KEY", generate_key())
    monkeypatch.delenv("REPLICANT_MASTER_KEY_FILE", raising=False)
    with sqlite3.connect(tmp_path / "src.db") as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, n TEXT)")
        c.execute("INSERT INTO items VALUES (1, 'a')")
    p = tmp_path / "p.yml"
    p.write_text("pipeline: shop\nsource: {type: sqlite, url: 'sqlite:///src.db', streams: [items]}\n"
                 "destinations: [{name: out, type: duckdb}]\n")
    runner = CliRunner()
    steps = [
        (["run", str(p)], 0),
        (["replay", str(p), "--destination", "out", "--from-start"], 0),
        (["replay", str(p), "--destination", "nope", "--from-start"], 2),
        (["dead-letters", "discard", str(p), "--all"], 0),
        (["secret", "set", str(p), "PW"], 0),
        (["secret", "rotate", str(p)], 0),
        (["secret", "delete", str(p), "PW"], 0),
        (["token", "create", str(p), "--role", "viewer", "--name", "dash"], 0),
    ]
    for args, code in steps:
        r = runner.invoke(app, args, input="v")
        assert r.exit_code == code, (args, r.output)
    token_id = json.loads(runner.invoke(app, ["token", "list", str(p), "--json"]).stdout)["id"]
    assert runner.invoke(app, ["token", "revoke", str(p), token_id]).exit_code == 0
    r = runner.invoke(app, ["audit", str(p), "--json"])
    assert r.exit_code == 0, r.output
    entries = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(e["action"], e["result"]) for e in entries] == [
        ("run", "ok"), ("replay", "ok"), ("replay", "exit 2"), ("dead_letters.discard", "ok"), ("secret.set", "ok"),
        ("secret.rotate", "ok"), ("secret.delete", "ok"), ("token.create", "ok"), ("token.revoke", "ok"),
    ]
    assert all(e["actor"] == cli_actor() and e["origin"].startswith("cli@") for e in entries)
    assert entries[0]["pipeline"] == "shop" and entries[1]["detail"] == "destination=out from_start=True"
    assert runner.invoke(app, ["audit", str(p), "--json", "--pipeline", "other"]).stdout == ""
    assert len(runner.invoke(app, ["audit", str(p), "--json", "--since", "1h"]).stdout.splitlines()) == 9
    r = runner.invoke(app, ["audit", str(p), "--since", "yesterday"])
    assert r.exit_code == 2 and "not a duration" in r.output

"""Tokens: random, prefixed, shown once, stored hashed, expiring, revocable; and the role ×
permission × tenant table, walked cell by cell."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replicant.access.tokens import (
    PERMISSIONS,
    AuthenticationError,
    Principal,
    allowed,
    authenticate,
    create_token,
    parse_duration,
)
from replicant.errors import ConfigError
from replicant.state.store import StateStore


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(tmp_path: Path, clock: Clock):
    with StateStore(f"sqlite:///{tmp_path / 'state.db'}", clock=clock) as s:
        yield s


def test_a_token_is_random_prefixed_stored_hashed_and_authenticates(state, tmp_path: Path, clock: Clock) -> None:
    token, who = create_token(state, role="operator", tenants=["acme", "globex"], name="ci")
    other, _ = create_token(state, role="viewer")
    assert token.startswith("rpl_") and len(token) > 40 and token != other
    assert who == Principal(who.id, "ci", "operator", ("acme", "globex"))
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))  # the file and its WAL
    assert token.encode() not in raw and hashlib.sha256(token.encode()).hexdigest().encode() in raw
    clock.now += timedelta(minutes=5)
    assert authenticate(state, token) == who
    [row] = [r for r in state.token_rows() if r["id"] == who.id]
    assert row["last_used_at"] == clock.now and "hash" not in row
    used = clock.now
    clock.now += timedelta(seconds=59)
    authenticate(state, token)  # within a minute: no write
    assert [r["last_used_at"] for r in state.token_rows() if r["id"] == who.id] == [used]
    clock.now += timedelta(seconds=1)
    authenticate(state, token)
    assert [r["last_used_at"] for r in state.token_rows() if r["id"] == who.id] == [clock.now]
    for bad in ("", "rpl_", token + "x", token[:-1], "Bearer " + token, other.replace("rpl_", "xyz_")):
        with pytest.raises(AuthenticationError, match=r"^invalid token$"):
            authenticate(state, bad)


def test_expired_and_revoked_tokens_are_refused(state, clock: Clock) -> None:
    token, who = create_token(state, role="admin", expires=parse_duration("90d"))
    clock.now += timedelta(days=90) - timedelta(seconds=1)
    assert authenticate(state, token).id == who.id
    clock.now += timedelta(seconds=1)
    with pytest.raises(AuthenticationError):
        authenticate(state, token)
    token2, who2 = create_token(state, role="admin")
    assert state.revoke_token(who2.id) and not state.revoke_token(who2.id)
    with pytest.raises(AuthenticationError):
        authenticate(state, token2)


def test_bad_role_duration_and_tenant_are_config_errors(state) -> None:
    with pytest.raises(ConfigError, match="unknown role 'root'"):
        create_token(state, role="root")
    with pytest.raises(ConfigError, match="tenant id cannot be empty"):
        create_token(state, role="viewer", tenants=[""])
    for text in ("90", "d", "0d", "1y"):
        with pytest.raises(ConfigError, match="not a duration"):
            parse_duration(text)
    assert parse_duration("12h") == timedelta(hours=12) and parse_duration("2w") == timedelta(days=14)


VIEWER = {"read"}
OPERATOR = VIEWER | {"trigger", "pause", "resume", "resync", "replay", "validate", "dead_letters.retry", "dead_letters.discard"}
ADMIN = set(PERMISSIONS)


@pytest.mark.parametrize(("role", "granted"), [("viewer", VIEWER), ("operator", OPERATOR), ("admin", ADMIN)])
@pytest.mark.parametrize("scope", [(), ("acme",)])
@pytest.mark.parametrize("tenant", [None, "acme", "globex"])
def test_role_permission_tenant_matrix(role: str, granted: set[str], scope: tuple[str, ...], tenant: str | None) -> None:
    who = Principal("id", "n", role, scope)
    for permission in PERMISSIONS:
        expected = permission in granted and (
            not scope or (tenant in scope if tenant is not None else permission == "read")
        )
        assert allowed(who, permission, tenant) is expected, (role, scope, tenant, permission)


def test_an_unknown_permission_is_a_bug_not_a_denial() -> None:
    with pytest.raises(ValueError, match="unknown permission"):
        allowed(Principal("i", "n", "admin"), "pipelines.delete")


def test_token_cli_prints_the_token_once_and_lists_without_it(tmp_path: Path) -> None:
    from replicant.cli import app

    p = tmp_path / "p.yml"
    p.write_text("pipeline: x\nsource: {type: sqlite, url: 'sqlite:///s.db', streams: all}\ndestinations: [{name: w}]\n")
    runner = CliRunner()
    r = runner.invoke(app, ["token", "create", str(p), "--role", "operator", "--tenant", "acme", "--expires", "30d",
                            "--name", "ci"])
    assert r.exit_code == 0, r.output
    token = next(line for line in r.stdout.splitlines() if line.startswith("rpl_"))
    listed = runner.invoke(app, ["token", "list", str(p), "--json"])
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert token not in listed.output
    assert (row["name"], row["role"], row["tenants"], row["revoked_at"]) == ("ci", "operator", ["acme"], None)
    with StateStore(f"sqlite:///{tmp_path / '.replicant' / 'x' / 'state.db'}") as s:
        assert authenticate(s, token).name == "ci"
    r = runner.invoke(app, ["token", "revoke", str(p), row["id"]])
    assert r.exit_code == 0
    r = runner.invoke(app, ["token", "create", str(p), "--role", "boss"])
    assert r.exit_code == 2 and "unknown role 'boss'" in r.output

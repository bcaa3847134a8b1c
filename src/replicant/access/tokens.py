"""API tokens, roles and the permission table: the one place authorization is decided.

A token is ``rpl_`` + 32 random bytes (``secrets.token_urlsafe``), shown once when created.
The state store keeps its SHA-256, never the token: a token has 256 bits of entropy, so
unlike a password it needs no slow, salted hash (no dictionary or brute force reaches it)
and a plain digest lets a lookup be one comparison: the presented token is found by its
digest with one indexed lookup (its timing can tell at most how much of a SHA-256 matched,
no help in finding a random token).

Roles (each includes the one before): ``viewer`` reads; ``operator`` also triggers runs,
pauses and resumes, resyncs, replays, validates and retries or discards dead letters;
``admin`` also edits pipeline files, secrets and tokens. A token with tenants acts only on
those tenants; without tenants, on every tenant. The service's single auth hook calls
:func:`authenticate` then :func:`allowed`.
"""

from __future__ import annotations

import hashlib
import secrets as _random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from replicant.config_values import parse_duration as parse_seconds
from replicant.errors import ConfigError, ReplicantError

__all__ = [
    "PREFIX",
    "ROLES",
    "PERMISSIONS",
    "ROLE_PERMISSIONS",
    "Principal",
    "AuthenticationError",
    "create_token",
    "authenticate",
    "allowed",
    "parse_duration",
    "digest",
]

PREFIX = "rpl_"
#: How often a token's ``last_used_at`` is stamped, at most.
LAST_USED_EVERY = timedelta(minutes=1)
ROLES = ("viewer", "operator", "admin")

#: Every permission an action may need.
PERMISSIONS = (
    "read",
    "trigger", "pause", "resume", "resync", "replay", "validate", "dead_letters.retry", "dead_letters.discard",
    "pipelines.write", "secrets", "tokens", "audit",
)

_VIEWER = frozenset({"read"})
_OPERATOR = _VIEWER | {"trigger", "pause", "resume", "resync", "replay", "validate", "dead_letters.retry",
                       "dead_letters.discard"}
_ADMIN = _OPERATOR | {"pipelines.write", "secrets", "tokens", "audit"}

#: Role → the permissions it grants: the whole authorization policy.
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {"viewer": _VIEWER, "operator": _OPERATOR, "admin": _ADMIN}


class AuthenticationError(ReplicantError):
    """No such token, or it was revoked or has expired (one message for all: no oracle)."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a token's id, name, role and tenants (empty: every tenant)."""

    id: str
    name: str
    role: str
    tenants: tuple[str, ...] = ()

    @property
    def actor(self) -> str:
        """How the audit log names it (the id and name, never the token)."""
        return f"token:{self.id} ({self.name})"


def digest(token: str) -> str:
    """The SHA-256 hex digest stored for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``2w``, ``45s`` as a timedelta: the pipeline file's durations
    (:func:`replicant.config_values.parse_duration`), with a unit and above zero.

    Raises:
        ConfigError: another form.
    """
    try:
        seconds = parse_seconds(text) if text.strip()[-1:].isalpha() else 0.0
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ConfigError(f"{text!r} is not a duration: write a number and a unit, e.g. 90d, 12h, 30m, 2w")
    return timedelta(seconds=seconds)


def create_token(store: Any, *, role: str, tenants: list[str] | tuple[str, ...] = (), name: str | None = None,
                 expires: timedelta | None = None) -> tuple[str, Principal]:
    """Creates a token: returns ``(token, principal)``. Show the token once; only its hash is kept.

    Raises:
        ConfigError: an unknown role or an empty tenant id.
    """
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if any(not t for t in tenants):
        raise ConfigError("a tenant id cannot be empty")
    token_id = _random.token_hex(6)
    token = PREFIX + _random.token_urlsafe(32)
    name = name or f"token-{token_id}"
    now: datetime = store._clock()
    store.add_token(id=token_id, name=name, role=role, tenants=list(tenants), digest=digest(token),
                    expires_at=None if expires is None else now + expires)
    return token, Principal(token_id, name, role, tuple(sorted(tenants)))


def authenticate(store: Any, token: str) -> Principal:
    """The principal of a live token; stamps its last use (at most once a minute).

    Raises:
        AuthenticationError: unknown, revoked or expired (the message never holds the token).
    """
    if not token.startswith(PREFIX):
        raise AuthenticationError("invalid token")
    # One indexed lookup by the digest: the time it takes can tell at most how much of a SHA-256
    # matched a stored one, which is no help in finding a 256-bit random token.
    found = [r for r in store.token_rows(digest=digest(token)) if r["revoked_at"] is None]
    if not found:
        raise AuthenticationError("invalid token")
    [row] = found
    match = row["id"]
    now = store._clock()
    if row["expires_at"] is not None and row["expires_at"] <= now:
        raise AuthenticationError("invalid token")
    if row["last_used_at"] is None or now - row["last_used_at"] >= LAST_USED_EVERY:
        store.token_used(match)  # at most once a minute: no write per request
    return Principal(row["id"], row["name"], row["role"], tuple(row["tenants"]))


def allowed(principal: Principal, permission: str, tenant: str | None = None) -> bool:
    """Whether ``principal`` may do ``permission`` on ``tenant`` (``None``: not tenant-specific,
    e.g. a pipeline-wide action, which a tenant-scoped token may not do unless reading).

    A tenant-scoped token is refused another tenant; the API answers that with 404, not 403,
    so the tenant's existence does not leak.

    Raises:
        ValueError: an unknown permission (a typo in an endpoint table must not grant or deny silently).
    """
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")
    if permission not in ROLE_PERMISSIONS.get(principal.role, frozenset()):
        return False
    if not principal.tenants:
        return True
    if tenant is None:
        return permission == "read"
    return tenant in principal.tenants

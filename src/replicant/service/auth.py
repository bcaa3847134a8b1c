"""Token auth of the service: who a request is (``Authorization: Bearer`` or the dashboard's
session cookie), whether its role allows the route, and which tenants it may see.

Modes (decided at start, see docs/access.md): ``--no-auth`` (loopback only) lets every request
through as an admin; otherwise tokens are enforced as soon as the state store holds one. With no
token in the store, a loopback address is open (a warning says so) and any other address
refuses every request (401) until a token is created.

A tenant-scoped token sees only pipelines that have one of its tenants; another tenant's
pipeline, run, stream or dead letters answer **404** (no existence leak), a pipeline-wide action
by a tenant-scoped token 403. List endpoints filter with :func:`scope`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets as _random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from replicant.access.tokens import ROLE_PERMISSIONS, AuthenticationError, Principal, allowed, authenticate

__all__ = ["Authorizer", "OPEN", "Session", "is_loopback", "scope", "visible", "pipeline_tenants", "principal_of"]

log = logging.getLogger(__name__)

#: The principal of a request when auth is off.
OPEN = Principal("-", "no-auth", "admin", ())
SESSION_COOKIE = "replicant_session"
CSRF_HEADER = "x-csrf-token"


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Session:
    token_id: str
    csrf: str
    created: float = field(default_factory=time.monotonic)
    #: an OIDC login: its principal, and the JWT's expiry (Unix time)
    principal: Principal | None = None
    expires: float | None = None


def pipeline_tenants(service: Any, name: str) -> set[str]:
    """The tenants of pipeline ``name``: its ``tenants:`` and every tenant its state knows."""
    found: set[str] = set()
    entry = service.catalog.pipelines.get(name)
    if entry is not None and entry.config is not None and entry.config.tenants:
        found |= {t.id for t in entry.config.tenants}
    found |= {t for t in service.store.tenants(name) if t}
    return found


def principal_of(request: Request) -> Principal:
    return getattr(request.state, "principal", OPEN)


def scope(request: Request) -> tuple[str, ...] | None:
    """The tenants the request may see (``None``: every tenant)."""
    p = principal_of(request)
    return p.tenants or None


def visible(request: Request, pipeline: str) -> bool:
    tenants = scope(request)
    return tenants is None or bool(pipeline_tenants(request.app.state.service, pipeline) & set(tenants))


class Authorizer:
    """``app.state.authorizer``: authenticates, checks the role and the tenant scope."""

    def __init__(self, service: Any, *, no_auth: bool = False, host: str = "127.0.0.1",
                 session_seconds: float = 12 * 3600) -> None:
        self.service = service
        self.no_auth = no_auth
        self.loopback = is_loopback(host)
        self.session_seconds = session_seconds
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._tokens_seen: tuple[float, bool] = (0.0, False)
        oidc = getattr(service.settings, "oidc", None)
        self.oidc: Any = None
        if oidc is not None:
            from replicant.service.oidc import OidcVerifier

            self.oidc = OidcVerifier(oidc, Path(getattr(service.settings, "base_dir", ".")))

    # -- who -------------------------------------------------------------------------------

    def enforced(self) -> bool:
        """Whether requests need a token (cached a second)."""
        if self.no_auth:
            return False
        if self.oidc is not None:
            return True
        at, has = self._tokens_seen
        if time.monotonic() - at > 1.0:
            has = bool(self.service.store.token_rows())  # any token, revoked too: never reopens
            self._tokens_seen = (time.monotonic(), has)
        return has or not self.loopback

    def login(self, token: str) -> tuple[str, Session, Principal]:
        """A new session for ``token`` (an API token, or a JWT when OIDC is configured).
        Raises AuthenticationError."""
        sid = _random.token_urlsafe(32)
        if self.oidc is not None and _is_jwt(token):
            principal, expires = self.oidc.verify(token)
            session = Session(principal.id, _random.token_urlsafe(24), principal=principal, expires=expires)
        else:
            principal = authenticate(self.service.store, token)
            session = Session(principal.id, _random.token_urlsafe(24))
        with self._lock:
            self.sessions[sid] = session
        return sid, session, principal

    def logout(self, sid: str | None) -> None:
        with self._lock:
            self.sessions.pop(sid or "", None)

    def session(self, sid: str | None) -> tuple[Session, Principal] | None:
        """The live session ``sid`` and its token's principal (a revoked or expired token ends it)."""
        with self._lock:
            session = self.sessions.get(sid or "")
        if session is None or time.monotonic() - session.created > self.session_seconds:
            return None
        if session.principal is not None:  # OIDC: valid until the JWT expires
            if session.expires is not None and time.time() >= session.expires:
                self.logout(sid)
                return None
            return session, session.principal
        rows = [r for r in self.service.store.token_rows() if r["id"] == session.token_id]
        now = self.service.store._clock()
        if not rows or rows[0].get("revoked_at") is not None or (
                rows[0]["expires_at"] is not None and rows[0]["expires_at"] <= now):
            self.logout(sid)
            return None
        r = rows[0]
        return session, Principal(r["id"], r["name"], r["role"], tuple(r["tenants"]))

    def identify(self, request: Request, *, mutating: bool) -> Principal:
        """The request's principal. Raises ApiProblem 401 (no or bad credentials) or 403 (CSRF)."""
        if not self.enforced():
            return OPEN
        header = request.headers.get("authorization", "")
        if header:
            kind, _, token = header.partition(" ")
            if kind.lower() != "bearer" or not token.strip():
                raise _problem(401, "unauthenticated", "send `Authorization: Bearer TOKEN`")
            try:
                if self.oidc is not None and _is_jwt(token.strip()):
                    return self.oidc.principal(token.strip())
                return authenticate(self.service.store, token.strip())
            except AuthenticationError:
                raise _problem(401, "unauthenticated", "invalid token") from None
        found = self.session(request.cookies.get(SESSION_COOKIE))
        if found is None:
            raise _problem(401, "unauthenticated", "send `Authorization: Bearer TOKEN` or log in")
        session, principal = found
        request.state.principal = principal
        if mutating:  # double-submit: the page's CSRF value in a header, and a same-origin Origin
            sent = request.headers.get(CSRF_HEADER, "")
            origin = request.headers.get("origin")
            if not _random.compare_digest(sent, session.csrf) or (origin and not _same_origin(request, origin)):
                raise _problem(403, "csrf", "a mutating request from the dashboard needs its CSRF header")
        return principal

    # -- the hook --------------------------------------------------------------------------

    async def __call__(self, request: Request, role: str) -> None:
        mutating = request.method not in ("GET", "HEAD", "OPTIONS")
        principal = self.identify(request, mutating=mutating)
        request.state.principal = principal
        permission: str = request.state.permission
        if principal is OPEN:
            return
        params = request.path_params
        pipeline = params.get("name")
        tenant = params.get("tenant") or request.query_params.get("tenant")
        if mutating and tenant is None:
            tenant = await _body_tenant(request)
        if "run_id" in params:  # a run: its pipeline and tenant
            entry = self.service.store.queue_entry(int(params["run_id"]))
            if entry is not None:
                pipeline, tenant = entry["pipeline"], entry["tenant"]
                if principal.tenants and tenant is None:
                    raise _problem(404, "not_found", f"no run {params['run_id']}")
        request.state.audit_target = (pipeline, tenant, params.get("stream"))
        if principal.tenants:
            if tenant is not None and tenant not in principal.tenants:
                raise _problem(404, "not_found", "not found")
            if pipeline is not None and not visible(request, pipeline):
                raise _problem(404, "not_found", f"no pipeline {pipeline!r}")
        if permission not in ROLE_PERMISSIONS.get(principal.role, frozenset()):
            raise _problem(403, "forbidden", f"role {principal.role!r} may not do {permission!r}")
        if permission == "audit" or permission == "read":
            return  # reads are filtered to the token's tenants
        if not allowed(principal, permission, tenant):
            raise _problem(403, "forbidden", f"a token of tenants {', '.join(principal.tenants)} may only act "
                                               "on one of them (name the tenant)")


def _problem(status: int, code: str, detail: str) -> Exception:
    from replicant.service.api.problems import ApiProblem  # not at import: the API package imports this module

    return ApiProblem(status, code, detail)


def _is_jwt(token: str) -> bool:
    from replicant.service.oidc import looks_like_jwt

    return looks_like_jwt(token)


def _same_origin(request: Request, origin: str) -> bool:
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/") == host


async def _body_tenant(request: Request) -> str | None:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        return None
    tenant = body.get("tenant") if isinstance(body, dict) else None
    return tenant if isinstance(tenant, str) else None


def own(tenants: tuple[str, ...] | None, tenant: str | None) -> bool:
    """Whether a row of ``tenant`` (``None``: pipeline-wide) is visible to ``tenants``."""
    return tenants is None or tenant in tenants


def filter_status(status: dict[str, Any], tenants: tuple[str, ...] | None) -> dict[str, Any]:
    """``replicant status --json`` narrowed to ``tenants``' streams, destinations and captures."""
    if tenants is None:
        return status
    out = dict(status)
    out["streams"] = [s for s in status.get("streams", []) if own(tenants, s.get("tenant"))]
    out["destinations"] = [d for d in status.get("destinations", []) if own(tenants, d.get("tenant"))]
    out["tenant_captures"] = {t: v for t, v in (status.get("tenant_captures") or {}).items() if t in tenants}
    out["capture"] = None
    out["source"] = {}
    last = status.get("last_run")
    out["last_run"] = last if last and own(tenants, last.get("tenant")) else None
    return out

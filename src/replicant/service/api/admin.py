"""Admin endpoints: ``/api/v1/tokens`` (list, create, revoke), ``/api/v1/secrets`` (names,
set), ``/api/v1/audit`` (query, export as JSON lines; a tenant admin sees its tenants'
entries) and ``/api/v1/whoami``. Tokens are shown once, in the create response only; secret
values are never returned."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from replicant.access.audit import entries_as_json_lines
from replicant.access.tokens import create_token as _create_token
from replicant.access.tokens import parse_duration
from replicant.errors import ReplicantError
from replicant.service.api.problems import ApiProblem
from replicant.service.auth import principal_of, scope

router = APIRouter(tags=["access"])


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(description="viewer, operator or admin.")
    tenants: list[str] = Field([], description="Only these tenants (empty: every tenant).")
    name: str | None = Field(None, description="A label (default: token-ID).")
    expires: str | None = Field(None, description="Lifetime such as 90d or 12h (default: never).")


class SecretRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(description="The secret's value (stored encrypted; never returned).")


def _store(request: Request) -> Any:
    return request.app.state.service.store


@router.get("/whoami", summary="The caller's token id, name, role and tenants")
def whoami(request: Request) -> dict[str, Any]:
    p = principal_of(request)
    return {"id": p.id, "name": p.name, "role": p.role, "tenants": list(p.tenants)}


@router.get("/tokens", summary="Every token (no token value, no hash)")
def list_tokens(request: Request) -> list[dict[str, Any]]:
    return _store(request).token_rows()


@router.post("/tokens", status_code=201, summary="Create a token: its value is in this response only")
def create_token(request: Request, body: TokenRequest) -> dict[str, Any]:
    try:
        token, p = _create_token(_store(request), role=body.role, tenants=body.tenants, name=body.name,
                                 expires=parse_duration(body.expires) if body.expires else None)
    except ReplicantError as e:
        raise ApiProblem(422, "invalid_request", str(e)) from None
    request.state.audit_detail = f"token {p.id} role {p.role}"
    return {"id": p.id, "name": p.name, "role": p.role, "tenants": list(p.tenants), "token": token}


@router.delete("/tokens/{token_id}", summary="Revoke a token")
def revoke_token(request: Request, token_id: str = Path(pattern=r"^[0-9a-f]{1,64}$")) -> dict[str, Any]:
    if not _store(request).revoke_token(token_id):
        raise ApiProblem(404, "not_found", f"no live token {token_id!r}")
    request.state.audit_detail = f"token {token_id}"
    return {"id": token_id, "revoked": True}


def _secrets(request: Request) -> Any:
    from replicant.access.secret_store import EncryptedStore

    return EncryptedStore(_store(request))


@router.get("/secrets", summary="Secret names and dates (never values)")
def list_secrets(request: Request) -> list[dict[str, Any]]:
    return _secrets(request).list()


@router.put("/secrets/{secret}", summary="Set a secret (encrypted under the master key)")
def set_secret(request: Request, body: SecretRequest, secret: str = Path(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")) -> dict[str, Any]:
    try:
        _secrets(request).set(secret, body.value)
    except ReplicantError as e:
        raise ApiProblem(409, "failed", str(e)) from None
    request.state.audit_detail = f"secret {secret}"
    return {"name": secret, "set": True}


def _entries(request: Request, since: datetime | None, pipeline: str | None, limit: int | None) -> list[dict[str, Any]]:
    tenants = scope(request)
    return _store(request).audit_entries(since=since, pipeline=pipeline, tenants=None if tenants is None else list(tenants),
                                         limit=limit)


@router.get("/audit", summary="Audit entries, oldest first (a tenant admin: its tenants')")
def query_audit(request: Request, since: Annotated[datetime | None, Query()] = None, pipeline: str | None = Query(None),
                limit: int = Query(1000, ge=1, le=100_000)) -> list[dict[str, Any]]:
    return _entries(request, since, pipeline, limit)


@router.get("/audit/export", summary="Audit entries as JSON lines", response_class=Response,
            responses={200: {"content": {"application/x-ndjson": {}}, "description": "One entry per line."}})
def export_audit(request: Request, since: Annotated[datetime | None, Query()] = None, pipeline: str | None = Query(None)) -> Response:
    return Response(entries_as_json_lines(_entries(request, since, pipeline, None)), media_type="application/x-ndjson")

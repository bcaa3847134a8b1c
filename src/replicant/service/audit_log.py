"""Every mutating API call (and dashboard login/logout) leaves an audit entry: who (the
token's id and name, never the token), what (the route), which pipeline/tenant/stream, when,
from where (the client address) and the result (``ok`` or the HTTP status of a refusal)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from replicant.access.audit import record
from replicant.errors import ReplicantError

__all__ = ["install", "audit"]

log = logging.getLogger(__name__)

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def audit(request: Request, action: str, status: int, *, pipeline: str | None = None, tenant: str | None = None,
          stream: str | None = None, detail: str | None = None) -> None:
    from replicant.service.auth import OPEN

    principal = getattr(request.state, "principal", None)
    who: Any = principal if principal is not None and principal is not OPEN else (
        "no-auth" if principal is OPEN else "webhook-signature" if action == "webhook" else "anonymous")
    client = request.client.host if request.client else None
    result = "ok" if status < 400 else f"refused {status}"
    try:
        record(request.app.state.service.store, who, action, result=result, pipeline=pipeline, tenant=tenant,
               stream=stream, origin=client, detail=detail)
    except ReplicantError as e:  # the state store away: the action's own answer still stands
        log.warning("audit entry of %s not written: %s", action, e)


def install(app: FastAPI) -> None:
    @app.middleware("http")
    async def _audit(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        if request.method in _MUTATING and request.url.path.startswith("/api/v1/"):
            route = request.scope.get("route")
            action = str(getattr(route, "name", None) or request.url.path)
            params: dict[str, Any] = request.scope.get("path_params") or {}
            target = getattr(request.state, "audit_target", None) or (params.get("name") or params.get("pipeline"),
                                                                       params.get("tenant"),
                                                                       params.get("stream"))
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(audit, request, action, response.status_code, pipeline=target[0],
                                    tenant=target[1], stream=target[2],
                                    detail=getattr(request.state, "audit_detail", None))
        return response

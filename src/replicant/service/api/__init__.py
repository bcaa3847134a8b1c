"""The REST API: FastAPI, OpenAPI at ``/api/openapi.json``, versioned ``/api/v1``, routes by resource.

Every ``/api/v1`` route runs :func:`~replicant.service.api.permissions.authorize` (the one auth
hook; roles in one table) and answers errors as problem+json (:mod:`.problems`).
``/metrics`` is Prometheus' text format (:mod:`replicant.service.metrics`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from replicant.service.api import admin, dead_letters, pipelines, problems, runs, system
from replicant.service.api.permissions import authorize

__all__ = ["create_app"]


def create_app(service: Any) -> FastAPI:
    """The API of ``service`` (a :class:`~replicant.service.server.Service`)."""
    from replicant import __version__

    app = FastAPI(title="replicant", version=__version__, openapi_url="/api/openapi.json", docs_url="/api/docs",
                  redoc_url=None)
    app.state.service = service
    from replicant.service.audit_log import install as install_audit
    from replicant.service.auth import Authorizer

    settings = service.settings
    app.state.authorizer = Authorizer(service, no_auth=bool(getattr(service, "no_auth", False)), host=settings.host)
    install_audit(app)
    problems.install(app)
    v1 = APIRouter(prefix="/api/v1", dependencies=[Depends(authorize)], responses=problems.PROBLEM_RESPONSES)
    for module in (pipelines, runs, dead_letters, system, admin):
        v1.include_router(module.router)
    app.include_router(v1)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        from replicant.service.metrics import scoped

        request.state.permission = "read"
        await app.state.authorizer(request, "viewer")
        from starlette.concurrency import run_in_threadpool

        body = await run_in_threadpool(service.metrics)
        return Response(scoped(request, body), media_type=CONTENT_TYPE_LATEST)

    from replicant.service.dashboard import install as install_dashboard

    install_dashboard(app)

    return app

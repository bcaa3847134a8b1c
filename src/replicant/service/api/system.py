"""``/api/v1/workers``, ``/api/v1/status`` and the webhooks ``/api/v1/hooks/{pipeline}``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from replicant.service.api.models import Accepted, ServiceStatus, Worker
from replicant.service.api.problems import ApiProblem
from replicant.service.hooks import HookRejected, verify

router = APIRouter(tags=["service"])


@router.get("/workers", response_model=list[Worker], summary="Live workers")
def list_workers(request: Request) -> list[dict[str, Any]]:
    service = request.app.state.service
    return list(service.store.live_workers(service.settings.seconds("lease")))


@router.get("/status", response_model=ServiceStatus, summary="Pipelines, queue depth and workers")
def service_status(request: Request) -> dict[str, Any]:
    service = request.app.state.service
    depth = service.store.queue_depth()
    return {"pipelines": len(service.catalog.pipelines), "broken": len(service.catalog.broken),
            "workers": len(service.store.live_workers(service.settings.seconds("lease"))), **depth}


@router.post("/hooks/{pipeline}", response_model=Accepted, status_code=202,
             summary="Trigger a run by a Standard Webhooks signed request")
async def webhook(request: Request, pipeline: str) -> dict[str, Any]:
    service = request.app.state.service
    entry = service.catalog.pipelines.get(pipeline)
    schedule = entry.config.schedule if entry is not None and entry.config is not None else None
    if schedule is None or not schedule.webhook or not schedule.secret:
        raise ApiProblem(404, "not_found", f"no pipeline {pipeline!r} with `schedule: {{webhook: true}}`")
    body = await request.body()
    try:
        message_id = verify([s.get_secret_value() for s in schedule.secret], dict(request.headers), body,
                            service.now(), tolerance=service.settings.seconds("webhook_tolerance"))
    except HookRejected as e:
        raise ApiProblem(401, e.code, e.detail) from None
    keep = 2 * service.settings.seconds("webhook_tolerance")
    if not service.store.remember_hook_id(pipeline, message_id, keep_seconds=keep):
        raise ApiProblem(409, "replayed", f"webhook id {message_id!r} was already received")
    entry_id, created = service.scheduler.trigger(pipeline, trigger="webhook")
    return {"id": entry_id, "created": created}

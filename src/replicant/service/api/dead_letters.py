"""``/api/v1/pipelines/{name}/dead-letters``: list, download, retry, discard (as ``replicant dead-letters``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response

from replicant.service.api.models import Accepted, DeadLetterFilter, DeadLetterResult
from replicant.service.api.pipelines import _config
from replicant.service.auth import own, scope
from replicant.state import ALL_TENANTS

router = APIRouter(prefix="/pipelines/{name}/dead-letters", tags=["dead letters"])


def _find(request: Request, name: str, stream: str | None, destination: str | None, tenant: str | None,
          limit: int | None) -> list[dict[str, Any]]:
    service = request.app.state.service
    _config(service, name)
    tenants = scope(request)
    found = service.store.find_dead_letters(name, stream=stream, destination=destination,
                                            tenant=ALL_TENANTS if tenant is None else tenant, limit=limit)
    return [x for x in found if own(tenants, x.get("tenant"))]


@router.get("", response_model=list[dict[str, Any]], summary="Dead letters, newest first")
def list_dead_letters(request: Request, name: str, stream: str | None = Query(None), destination: str | None = Query(None),
                      tenant: str | None = Query(None, min_length=1), limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
    return _find(request, name, stream, destination, tenant, limit)


@router.get("/download", summary="Every matching dead letter as JSON lines",
            responses={200: {"content": {"application/x-ndjson": {}}, "description": "One dead letter per line."}},
            response_class=Response)
def download_dead_letters(request: Request, name: str, stream: str | None = Query(None),
                          destination: str | None = Query(None), tenant: str | None = Query(None, min_length=1)) -> Response:
    letters = _find(request, name, stream, destination, tenant, None)
    body = "".join(json.dumps(x, default=str) + "\n" for x in letters)
    return Response(body, media_type="application/x-ndjson",
                    headers={"content-disposition": f'attachment; filename="{name}-dead-letters.jsonl"'})


@router.post("/retry", response_model=Accepted, status_code=202,
             summary="Send dead letters again, as a run (as `replicant dead-letters retry`)")
def retry_dead_letters(request: Request, name: str, body: Annotated[DeadLetterFilter | None, Body()] = None) -> dict[str, Any]:
    service = request.app.state.service
    _config(service, name)
    params = (body or DeadLetterFilter()).model_dump()
    tenant = params.pop("tenant")
    entry_id, created = service.scheduler.trigger(name, tenant=tenant, command="retry", params=params)
    return {"id": entry_id, "created": created}


@router.post("/discard", response_model=DeadLetterResult, summary="Delete dead letters (no filter: every one)")
def discard_dead_letters(request: Request, name: str, body: Annotated[DeadLetterFilter | None, Body()] = None) -> dict[str, Any]:
    service = request.app.state.service
    _config(service, name)
    f = body or DeadLetterFilter()
    n = service.store.discard_dead_letters(name, ids=f.ids, stream=f.stream, destination=f.destination,
                                           tenant=ALL_TENANTS if f.tenant is None else f.tenant)
    return {"discarded": n}

"""``/api/v1/pipelines``: list, detail, status and lag, trigger, pause/resume, resync, replay, validate."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from replicant.service.api.models import (
    Accepted,
    PipelineDetail,
    PipelineSummary,
    ReplayRequest,
    RunRequest,
    ValidateRequest,
)
from replicant.service.api.problems import ApiProblem
from replicant.service.auth import filter_status, own, scope, visible
from replicant.service.catalog import describe
from replicant.service.progress import with_progress

router = APIRouter(prefix="/pipelines", tags=["pipelines"])


def _service(request: Request) -> Any:
    return request.app.state.service


def _config(service: Any, name: str) -> Any:
    entry = service.catalog.pipelines.get(name)
    if entry is None:
        broken = [b for b in service.catalog.broken.values() if b.name == name]
        if broken:
            raise ApiProblem(409, "invalid_pipeline_file", f"{broken[0].path}: {broken[0].error}")
        raise ApiProblem(404, "not_found", f"no pipeline {name!r}")
    return entry.config


def _summary(service: Any, name: str, *, controls: list[dict[str, Any]] | None = None,
             state: dict[str, Any] | None = None, last_run: Any = ...) -> dict[str, Any]:
    """One pipeline's summary; ``controls``, ``state`` and ``last_run`` when the caller read
    them for every pipeline at once."""
    entry = service.catalog.pipelines[name]
    schedule = describe(entry.config)["schedule"]
    controls = service.store.paused_controls(name) if controls is None else controls
    state = service.store.schedule_state(name) if state is None else state
    return {
        "name": name, "path": str(entry.path), "schedule": schedule,
        "next_run": state.get("next_due") if entry.config.schedule and entry.config.schedule.timed else None,
        "paused": any(c["tenant"] is None and c["stream"] is None for c in controls),
        "last_run": service.store.last_run(name) if last_run is ... else last_run,
    }


@router.get("", response_model=list[PipelineSummary], summary="Every pipeline, and the files with errors")
def list_pipelines(request: Request) -> list[dict[str, Any]]:
    service = _service(request)
    store = service.store
    controls: dict[str, list[dict[str, Any]]] = {}
    for c in store.paused_controls():
        controls.setdefault(c["pipeline"], []).append(c)
    states = store.schedule_states()
    last = store.last_runs()
    tenants = scope(request)
    found = [_summary(service, name, controls=controls.get(name, []), state=states.get(name, {}), last_run=last.get(name))
             for name in sorted(service.catalog.pipelines) if visible(request, name)]
    if tenants is not None:  # a tenant's token: its pipelines, without pipeline-wide runs
        for s in found:
            if s["last_run"] and not own(tenants, s["last_run"].get("tenant")):
                s["last_run"] = None
        return found
    found += [{"name": b.name, "path": str(b.path), "error": b.error} for b in service.catalog.broken.values()]
    return found


@router.get("/{name}", response_model=PipelineDetail, summary="A pipeline: streams, tenants, destinations, schedule")
def get_pipeline(request: Request, name: str) -> dict[str, Any]:
    service = _service(request)
    config = _config(service, name)
    detail = {**_summary(service, name), **describe(config)}
    tenants = scope(request)
    status = with_progress(service.store, name, filter_status(service.status(config), tenants), tenants)
    detail["streams"] = [dict(s) for s in status["streams"]]
    detail["tenants"] = [t for t in service.store.tenants(name) if own(tenants, t)]
    detail["pauses"] = [c for c in service.store.paused_controls(name) if own(tenants, c["tenant"])]
    detail["runs"] = [r for r in service.store.runs(name, limit=10) if own(tenants, r.get("tenant"))]
    history = getattr(service, "lag_history", None)
    detail["lag_history"] = history.for_pipeline(name, tenants) if history is not None else {}
    if tenants is not None:
        detail["last_run"] = status["last_run"]
        if "tenant_ids" in detail:
            detail["tenant_ids"] = [t for t in detail["tenant_ids"] if t in tenants]
    return detail


@router.get("/{name}/status", response_model=dict[str, Any],
            summary="Status and lag per destination (as `replicant status --json`), each stream with its snapshot progress")
def pipeline_status(request: Request, name: str) -> dict[str, Any]:
    service = _service(request)
    tenants = scope(request)
    return with_progress(service.store, name, filter_status(service.status(_config(service, name)), tenants), tenants)


@router.post("/{name}/runs", response_model=Accepted, status_code=202, summary="Trigger a run (at most one more is queued)")
def trigger_run(request: Request, name: str, body: Annotated[RunRequest | None, Body()] = None) -> dict[str, Any]:
    service = _service(request)
    _config(service, name)
    body = body or RunRequest()
    entry_id, created = service.scheduler.trigger(name, tenant=body.tenant, command="follow" if body.follow else "run")
    return {"id": entry_id, "created": created}


def _pause(request: Request, name: str, paused: bool, tenant: str | None = None, stream: str | None = None) -> dict[str, Any]:
    service = _service(request)
    _config(service, name)
    service.store.set_paused(name, paused, tenant=tenant, stream=stream)
    return {"pipeline": name, "tenant": tenant, "stream": stream, "paused": paused}


@router.post("/{name}/pause", summary="Pause a pipeline: no run is scheduled or claimed")
def pause_pipeline(request: Request, name: str) -> dict[str, Any]:
    return _pause(request, name, True)


@router.post("/{name}/resume", summary="Resume a paused pipeline")
def resume_pipeline(request: Request, name: str) -> dict[str, Any]:
    return _pause(request, name, False)


@router.post("/{name}/tenants/{tenant}/pause", summary="Pause one tenant of a pipeline")
def pause_tenant(request: Request, name: str, tenant: str) -> dict[str, Any]:
    return _pause(request, name, True, tenant=tenant)


@router.post("/{name}/tenants/{tenant}/resume", summary="Resume one tenant")
def resume_tenant(request: Request, name: str, tenant: str) -> dict[str, Any]:
    return _pause(request, name, False, tenant=tenant)


@router.post("/{name}/streams/{stream}/pause", summary="Pause one stream: the next runs neither read nor deliver it")
def pause_stream(request: Request, name: str, stream: str, tenant: str | None = Query(None, min_length=1)) -> dict[str, Any]:
    return _pause(request, name, True, tenant=tenant, stream=stream)


@router.post("/{name}/streams/{stream}/resume", summary="Resume one stream")
def resume_stream(request: Request, name: str, stream: str, tenant: str | None = Query(None, min_length=1)) -> dict[str, Any]:
    return _pause(request, name, False, tenant=tenant, stream=stream)


@router.post("/{name}/streams/{stream}/resync", response_model=Accepted, status_code=202,
             summary="Start one stream over (as `replicant resync`), then run")
def resync_stream(request: Request, name: str, stream: str, tenant: str | None = Query(None, min_length=1)) -> dict[str, Any]:
    service = _service(request)
    _config(service, name)  # an unknown stream fails the run, naming the streams there are (replicant.resync)
    entry_id, created = service.scheduler.trigger(name, tenant=tenant, command="resync", params={"stream": stream})
    return {"id": entry_id, "created": created}


@router.post("/{name}/destinations/{destination}/replay", response_model=Accepted, status_code=202,
             summary="Re-deliver the staging log to one destination (as `replicant replay`)")
def replay_destination(request: Request, name: str, destination: str, body: ReplayRequest) -> dict[str, Any]:
    service = _service(request)
    config = _config(service, name)
    if destination not in [d.name for d in config.destinations]:
        raise ApiProblem(404, "not_found", f"pipeline {name!r} has no destination {destination!r}")
    if sum((body.from_start, body.offset is not None, body.since is not None)) != 1:
        raise ApiProblem(422, "invalid_request", "replay needs exactly one of from_start, offset or since")
    params = {"destination": destination, "offset": body.offset,
              "since": body.since.isoformat() if body.since else None}
    entry_id, created = service.scheduler.trigger(name, tenant=body.tenant, command="replay", params=params)
    return {"id": entry_id, "created": created}


@router.post("/{name}/validate", response_model=Accepted, status_code=202,
             summary="Validate destinations against the source (replicant validate), as a run")
def validate_pipeline(request: Request, name: str, body: Annotated[ValidateRequest | None, Body()] = None) -> dict[str, Any]:
    service = _service(request)
    _config(service, name)
    body = body or ValidateRequest()
    entry_id, created = service.scheduler.trigger(name, tenant=body.tenant, command="validate",
                                                  params=body.model_dump(exclude={"tenant"}))
    return {"id": entry_id, "created": created}

"""``/api/v1/runs``: list with filters, detail (per-stream rows and snapshot progress, errors, timing, log lines),
cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from replicant.service.api.models import MAX_ID, Run, RunDetail
from replicant.service.api.problems import ApiProblem
from replicant.service.auth import own, scope
from replicant.service.logs import run_log_path
from replicant.service.progress import run_progress

router = APIRouter(prefix="/runs", tags=["runs"])

RunId = Annotated[int, Path(ge=1, le=MAX_ID)]

_STATUSES = "queued|running|succeeded|failed|cancelled"


@router.get("", response_model=list[Run], summary="Runs, newest first")
def list_runs(
    request: Request,
    pipeline: str | None = Query(None),
    tenant: str | None = Query(None, min_length=1),
    status: str | None = Query(None, pattern=f"^({_STATUSES})$"),
    trigger: str | None = Query(None),
    limit: int = Query(100, ge=1, le=1000),
    before: int | None = Query(None, ge=1, le=MAX_ID, description="Only runs with a smaller id (paging)."),
) -> list[dict[str, Any]]:
    store = request.app.state.service.store
    tenants = scope(request)
    found = store.queue_entries(pipeline=pipeline, tenant=tenant, status=status, trigger=trigger, limit=limit, before=before)
    return [e for e in found if own(tenants, e["tenant"])]


@router.get("/{run_id}", response_model=RunDetail,
            summary="A run: rows per stream and destination, snapshot progress, errors, timing, log")
def get_run(request: Request, run_id: RunId, lines: int = Query(200, ge=0, le=10_000)) -> dict[str, Any]:
    service = request.app.state.service
    entry = service.store.queue_entry(run_id)
    if entry is None:
        raise ApiProblem(404, "not_found", f"no run {run_id}")
    history = [r for r in service.store.runs(entry["pipeline"], limit=200) if r["id"] in set(entry["run_ids"])]
    path = run_log_path(service.settings.logs_dir, run_id)
    log = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:] if path.exists() and lines else []
    return {**entry, "runs": history, "log": log, "progress": run_progress(service.store, entry, scope(request))}


@router.post("/{run_id}/cancel", response_model=Run, summary="Cancel a queued run, or stop a running one")
def cancel_run(request: Request, run_id: RunId) -> dict[str, Any]:
    store = request.app.state.service.store
    if store.cancel_entry(run_id) is None:
        raise ApiProblem(404, "not_found", f"no run {run_id}")
    entry = store.queue_entry(run_id)
    assert entry is not None
    return entry

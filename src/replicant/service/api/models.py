"""Response bodies of the API (the OpenAPI document's schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

__all__ = ["Accepted", "PipelineDetail", "PipelineSummary", "Run", "RunDetail", "Paused", "Worker", "ServiceStatus",
           "ReplayRequest", "RunRequest", "StreamProgress", "ValidateRequest", "DeadLetterFilter", "DeadLetterResult", "ResyncResult"]


#: The largest id or offset the API accepts (the state store's ids are 64-bit).
MAX_ID = 2**62


class Paused(BaseModel):
    tenant: str | None
    stream: str | None
    paused_at: datetime


class PipelineSummary(BaseModel):
    name: str
    path: str
    error: str | None = Field(None, description="Why the file cannot be run (it is reported, not fatal).")
    schedule: dict[str, Any] | None = None
    next_run: datetime | None = None
    paused: bool = False
    last_run: dict[str, Any] | None = None


class PipelineDetail(PipelineSummary):
    source: dict[str, Any] | None = None
    destinations: list[dict[str, Any]] = []
    tenants: list[str | None] = []
    streams: list[dict[str, Any]] = []
    pauses: list[Paused] = []
    runs: list[dict[str, Any]] = []
    lag_history: dict[str, list[tuple[str, int]]] = Field({}, description="Destination → [(time, lag)], sampled by the service.")


class Run(BaseModel):
    id: int
    pipeline: str
    tenant: str | None
    command: str
    params: dict[str, Any]
    trigger: str
    priority: int
    status: str
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    owner: str | None
    epoch: int
    attempts: int
    error: str | None


class StreamProgress(BaseModel):
    """A stream's snapshot (a read with a row estimate) as it stands; also each stream's
    ``progress`` in ``/pipelines/{name}/status`` (``null`` when there is none to show)."""

    tenant: str | None
    stream: str
    rows: int = Field(description="Rows read so far.")
    estimate: int | None = Field(description="Rows expected, from the source's table statistics (approximate).")
    percent: int | None = Field(description="0-99 while reading (estimates are approximate), 100 once done.")
    eta_seconds: float | None = Field(description="Seconds still expected at the rate so far; null while unknown.")
    started_at: datetime
    finished: bool


class RunDetail(Run):
    result: dict[str, Any] | None = None
    progress: list[StreamProgress] = Field([], description="Snapshot progress of the streams this run read last.")
    runs: list[dict[str, Any]] = Field([], description="The state store's runs of this entry (one per attempt).")
    log: list[str] = Field([], description="The run's last log lines.")


class Accepted(BaseModel):
    id: int = Field(description="The queue entry (run) id.")
    created: bool = Field(description="False when the same run was already queued (it was not queued twice).")


class RunRequest(BaseModel):
    tenant: str | None = Field(default=None, min_length=1)
    follow: bool = False


class ReplayRequest(BaseModel):
    from_start: bool = False
    offset: int | None = Field(None, ge=0, le=MAX_ID)
    since: datetime | None = None
    tenant: str | None = Field(default=None, min_length=1)


class ValidateRequest(BaseModel):
    destination: str | None = None
    stream: str | None = None
    tenant: str | None = Field(default=None, min_length=1)
    repair: bool = False


class DeadLetterFilter(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = None
    stream: str | None = None
    destination: str | None = None
    tenant: str | None = Field(default=None, min_length=1)


class DeadLetterResult(BaseModel):
    accepted: list[int] = []
    rejected: dict[str, str] = {}
    skipped: list[str] = []
    errors: list[str] = []
    discarded: int = 0


class ResyncResult(BaseModel):
    stream: str
    tenant: str | None
    start_offset: int
    run: Accepted


class Worker(BaseModel):
    name: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    entry: int | None


class ServiceStatus(BaseModel):
    pipelines: int
    broken: int
    queued: int
    running: int
    workers: int

"""The status of a pipeline: one model for ``replicant status``, ``status --json`` and the API.

:func:`collect` reads what the state store and the staging log know (no source needed), and,
when asked, the source's change-feed facts (a replication slot's lag). :meth:`PipelineStatus.
to_dict` gives the JSON form; every value in it is a plain JSON type and no secret is in it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from replicant.errors import redact
from replicant.ingest import CAPTURE_CHECKPOINT
from replicant.model import Position, log_stream_name

__all__ = ["DestinationStatus", "PipelineStatus", "StreamStatus", "collect"]


@dataclass(frozen=True)
class StreamStatus:
    """Where reading a stream stands.

    Attributes:
        name: the stream.
        tenant: its tenant, if the pipeline has tenants.
        rows: rows read so far (all runs).
        log_end_offset: the offset the stream's staging log will give its next record.
        position: the source position after the last batch durable in the log.
        updated_at: when that checkpoint was saved.
        dead_letters: records of this stream in the dead-letter store.
    """

    name: str
    tenant: str | None
    rows: int
    log_end_offset: int
    position: Position | None
    updated_at: datetime | None
    dead_letters: int = 0


@dataclass(frozen=True)
class DestinationStatus:
    """Where one destination stands with one stream.

    Attributes:
        destination: the destination's name.
        stream: the stream.
        tenant: its tenant, if any.
        applied_offset: the last log offset it applied (-1: none yet).
        lag: log offsets (rows and markers) it has still to apply.
        paused: why this destination paused the stream (schema drift, a fatal delivery
            error), or None; it stays paused until a delivery of it succeeds (a run after the
            fix, or a replay).
        paused_at: when it paused, or None.
        validated_at: when ``replicant validate`` last compared the stream there, or None.
        verdict: what it found then: ``equal``, ``differences`` (how many after ``:``) or ``error``.
    """

    destination: str
    stream: str
    tenant: str | None
    applied_offset: int
    lag: int
    paused: str | None = None
    paused_at: datetime | None = None
    validated_at: datetime | None = None
    verdict: str | None = None


@dataclass
class PipelineStatus:
    """Everything ``replicant status`` shows.

    Attributes:
        pipeline: the pipeline's name.
        last_run: the newest run (id, command, status, started_at, finished_at, rows, error), or None.
        streams: per stream (and tenant).
        destinations: per destination and stream.
        capture: the change feed's checkpoint (``position``, ``updated_at``) when the pipeline has
            ``log`` streams, else None.
        source: facts from the source (e.g. a slot's lag in bytes), when asked for and reachable.
        tenant_captures: with ``tenants:``, per tenant with ``log`` streams, its change feed's
            checkpoint (and ``source``: its facts, when asked for).
    """

    pipeline: str
    last_run: dict[str, Any] | None
    streams: list[StreamStatus] = field(default_factory=list)
    destinations: list[DestinationStatus] = field(default_factory=list)
    capture: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    tenant_captures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The status as JSON-ready data (times in ISO 8601, UTC)."""
        return json.loads(json.dumps(asdict(self), default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def collect(config: Any, *, state: Any, log: Any, source_facts: dict[str, Any] | None = None) -> PipelineStatus:
    """The pipeline's status from its state store and staging log (both open), per tenant.

    Args:
        source_facts: the source's change-feed facts, if the caller asked the source.
    """
    saved = state.pipeline_state(config.pipeline)
    status = PipelineStatus(config.pipeline, _run(saved.last_run), source=dict(source_facts or {}))
    log_names = set(log.streams())
    for tenant, ts in (saved.tenants or {None: saved.tenant(None)}).items():
        checkpoints = dict(ts.checkpoints)
        capture = checkpoints.pop(CAPTURE_CHECKPOINT, None)
        if tenant is None:  # the log streams of no tenant's
            in_log = {n for n in log_names if not any(n.startswith(f"{t}/") for t in saved.tenants if t)}
        else:
            in_log = {n.removeprefix(f"{tenant}/") for n in log_names if n.startswith(f"{tenant}/")}
        names = sorted(set(checkpoints) | in_log)
        ends = {s: log.end_offset(log_stream_name(s, tenant)) if s in in_log else 0 for s in names}
        for s in names:
            cp = checkpoints.get(s)
            status.streams.append(StreamStatus(
                name=s, tenant=tenant, rows=cp.rows_total if cp else 0, log_end_offset=ends[s],
                position=cp.position if cp else None, updated_at=cp.updated_at if cp else None,
                dead_letters=ts.dead_letters.get(s, 0),
            ))
        checked = state.last_validations(config.pipeline, tenant=tenant)
        for d in config.destinations:
            for s in names:
                if d.streams and s not in d.streams:
                    continue
                off = ts.offsets.get((d.name, s))
                applied = off.offset if off else -1
                pause = ts.paused.get((d.name, s))
                v = checked.get((s, d.name))
                status.destinations.append(DestinationStatus(
                    d.name, s, tenant, applied, max(ends[s] - 1 - applied, 0),
                    paused=redact(pause.reason) if pause else None, paused_at=pause.paused_at if pause else None,
                    validated_at=v["validated_at"] if v else None,
                    verdict=(f"{v['verdict']}: {v['differences']}" if v["verdict"] == "differences" else v["verdict"]) if v else None,
                ))
        if capture is not None and tenant is None:
            status.capture = {"position": capture.position, "updated_at": capture.updated_at}
        elif capture is not None:
            status.tenant_captures[tenant] = {"position": capture.position, "updated_at": capture.updated_at}
    return status


def _run(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    if out.get("error"):
        out["error"] = redact(str(out["error"]))
    return out

"""What the state store returns: checkpoints, destination offsets, per-tenant state.

Identity is (pipeline, tenant, stream). In every record ``tenant`` is ``None`` for "no
tenant" (a pipeline without ``tenants:``, or a run of the whole pipeline).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, NamedTuple

from replicant.model import Position

__all__ = ["ALL_TENANTS", "AllTenants", "Checkpoint", "DestinationOffset", "Pause", "TenantState", "PipelineState"]


class _All(enum.Enum):
    ALL_TENANTS = "all tenants"

    def __repr__(self) -> str:
        return "ALL_TENANTS"


#: ``tenant=ALL_TENANTS``: a listing not narrowed to one tenant (runs are listed so by default).
ALL_TENANTS: Final = _All.ALL_TENANTS
AllTenants = Literal[_All.ALL_TENANTS]


@dataclass(frozen=True)
class Checkpoint:
    """Where a stream's source reading stands.

    Attributes:
        position: the source position after the last batch durable in the staging log,
            or ``None`` to read from the start.
        rows_total: rows read from the stream so far.
        log_offset: the staging-log offset following that batch.
        updated_at: when it was saved (UTC).
    """

    position: Position | None
    rows_total: int
    log_offset: int
    updated_at: datetime


class DestinationOffset(NamedTuple):
    """The staging-log offset a destination has applied for a stream (a mirror for ``status``)."""

    offset: int
    rows_total: int
    updated_at: datetime


class Pause(NamedTuple):
    """Why and since when a destination paused a stream (see :meth:`StateStore.pause_stream`)."""

    reason: str
    paused_at: datetime


@dataclass
class TenantState:
    """One tenant's state in a pipeline (see :meth:`StateStore.pipeline_state`).

    Attributes:
        tenant: the tenant, ``None`` for no tenant.
        checkpoints: by stream name; the capture checkpoint of the tenant's source feed is
            the stream ``"(capture)"``.
        offsets: mirrored destination offsets by ``(destination, stream)``.
        dead_letters: dead-letter count by stream (streams with none are absent).
        paused: streams a destination paused, by ``(destination, stream)``.
        last_run: the latest run narrowed to this tenant (``None`` tenant: the latest run
            of the whole pipeline), as :meth:`StateStore.runs` returns it, or ``None``.
    """

    tenant: str | None
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    offsets: dict[tuple[str, str], DestinationOffset] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    paused: dict[tuple[str, str], Pause] = field(default_factory=dict)
    last_run: dict[str, Any] | None = None


@dataclass
class PipelineState:
    """Everything the state store holds for one pipeline, per tenant.

    Attributes:
        pipeline: the pipeline's name.
        tenants: by tenant (``None`` first, then by name); only tenants with some state.
        last_run: the pipeline's latest run of any tenant, or ``None``.
    """

    pipeline: str
    tenants: dict[str | None, TenantState]
    last_run: dict[str, Any] | None = None

    def tenant(self, tenant: str | None = None) -> TenantState:
        """One tenant's state; an empty one when the store has nothing for it."""
        return self.tenants.get(tenant) or TenantState(tenant=tenant)

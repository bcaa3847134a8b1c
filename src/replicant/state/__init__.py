"""The state store: checkpoints, destination offsets, runs, dead letters and leases.

Identity is (pipeline, tenant, stream): every method reading or writing keyed rows takes
a keyword ``tenant: str | None = None`` (``None``: no tenant).

SQLite by default, PostgreSQL when several machines share the state; see
:class:`~replicant.state.store.StateStore`.
"""

from replicant.state.records import ALL_TENANTS, Checkpoint, DestinationOffset, PipelineState, TenantState
from replicant.state.store import RUN_STATUSES, DeadLetter, StateStore

__all__ = [
    "ALL_TENANTS",
    "RUN_STATUSES",
    "Checkpoint",
    "DeadLetter",
    "DestinationOffset",
    "PipelineState",
    "StateStore",
    "TenantState",
]

"""The state store: checkpoints, destination offsets, runs, dead letters and leases.

SQLite by default, PostgreSQL when several machines share the state; see
:class:`~replicant.state.store.StateStore`.
"""

from replicant.state.store import RUN_STATUSES, Checkpoint, DeadLetter, DestinationOffset, StateStore

__all__ = ["RUN_STATUSES", "Checkpoint", "DeadLetter", "DestinationOffset", "StateStore"]

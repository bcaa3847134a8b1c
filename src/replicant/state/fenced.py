"""A state store whose every write is fenced by a run-queue lease (``replicant serve`` workers).

A worker that claimed queue entry ``E`` with epoch ``n`` writes checkpoints, destination
offsets, dead letters and run records through a :class:`FencedStateStore`. Each write
transaction first checks, *in the same transaction*, that ``E`` is still ``running`` under
this owner and epoch. When another worker took ``E`` over (the lease expired: the first
worker was presumed dead, or stalled), the epoch moved on and the stale worker's late write
raises :class:`~replicant.errors.FencedError` and changes nothing.

Atomic because the check and the write share one transaction: on SQLite ``BEGIN IMMEDIATE``
holds the write lock across both; on PostgreSQL the entry's row is read ``FOR SHARE``, which
waits for (and then sees) a concurrent takeover's ``UPDATE``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicant.errors import FencedError
from replicant.state.service_tables import queue
from replicant.state.store import StateStore

__all__ = ["FencedStateStore"]


class FencedStateStore(StateStore):
    """:class:`~replicant.state.store.StateStore` whose writes need queue entry ``entry_id``
    held by ``owner`` at ``epoch``.

    Raises:
        FencedError: from any write, once the entry was taken over or finished.
    """

    def __init__(self, url: Any, *, entry_id: int, owner: str, epoch: int, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.entry_id = entry_id
        self.owner = owner
        self.epoch = epoch
        self._fencing = False

    def open(self) -> FencedStateStore:
        super().open()  # migrates unfenced: the queue table may not exist before
        self._fencing = True
        return self

    @contextmanager
    def _begin(self, *, write: bool = False) -> Iterator[Connection]:
        with super()._begin(write=write) as conn:
            if write and self._fencing:
                self._check_fence(conn)
            yield conn

    def _check_fence(self, conn: Connection) -> None:
        query = sa.select(queue.c.owner, queue.c.epoch, queue.c.status).where(queue.c.id == self.entry_id)
        if self.dialect == "postgresql":
            query = query.with_for_update(read=True)
        row = conn.execute(query).first()
        if row is None or (row.owner, row.epoch, row.status) != (self.owner, self.epoch, "running"):
            held = "no longer queued" if row is None else f"{row.status}, epoch {row.epoch}"
            raise FencedError(f"run {self.entry_id}: this worker ({self.owner}, epoch {self.epoch}) lost its lease "
                              f"(the run is {held}); its write was refused")

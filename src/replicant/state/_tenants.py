"""Forgetting a tenant (:class:`~replicant.state.store.StateStore` inherits it): what
``replicant tenant drop`` removes from the state store."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicant.state.schema import checkpoints, dead_letters, offsets, paused

__all__ = ["TenantStateMixin"]


class TenantStateMixin:
    """``forget_tenant`` on the store's connections."""

    _begin: Callable[..., AbstractContextManager[Connection]]

    def forget_tenant(self, pipeline: str, tenant: str) -> dict[str, int]:
        """Deletes ``tenant``'s checkpoints (its capture feed's too), mirrored destination
        offsets, pauses and dead letters, in one transaction; its runs stay (history).

        Returns:
            Rows deleted per table.
        """
        if not isinstance(tenant, str) or not tenant:
            raise ValueError(f"tenant must be a non-empty string; not {tenant!r}")
        deleted: dict[str, Any] = {}
        with self._begin(write=True) as conn:
            for table in (checkpoints, offsets, paused, dead_letters):
                result = conn.execute(sa.delete(table).where(table.c.pipeline == pipeline, table.c.tenant == tenant))
                deleted[table.name] = result.rowcount
        return deleted

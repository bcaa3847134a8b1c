"""Leases of the state store (:class:`~replicant.state.store.StateStore` inherits them):
named, expiring, held by one owner at a time across processes and hosts."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicant.state.schema import leases

__all__ = ["LeaseMixin"]


class LeaseMixin:
    """``acquire_lease``, ``renew_lease``, ``release_lease``, ``lease_holder`` on the
    store's clock, connections and dialect-specific INSERT."""

    # the store's own (annotations only: nothing is defined here)
    _clock: Callable[[], datetime]
    _insert: Callable[[sa.Table], Any]
    _begin: Callable[..., AbstractContextManager[Connection]]

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Takes the lease ``name`` for ``ttl_seconds`` if it is free, expired or already ``owner``'s.

        Atomic across processes and hosts: one statement (an UPSERT whose update only
        happens when the held lease expired or belongs to ``owner``), inside a
        ``BEGIN IMMEDIATE`` transaction on SQLite. Re-acquiring one's own lease extends it.

        Returns:
            whether ``owner`` now holds the lease.
        """
        now = self._clock()
        expires = now + _ttl(ttl_seconds)
        insert = self._insert(leases).values(name=name, owner=owner, acquired_at=now, expires_at=expires)
        excluded = insert.excluded
        mine = leases.c.owner == excluded.owner
        statement = insert.on_conflict_do_update(
            index_elements=[leases.c.name],
            set_={
                "owner": excluded.owner,
                "acquired_at": sa.case((mine, leases.c.acquired_at), else_=excluded.acquired_at),
                "expires_at": excluded.expires_at,
            },
            where=sa.or_(mine, leases.c.expires_at <= now),
        ).returning(leases.c.owner)
        with self._begin(write=True) as conn:
            return conn.execute(statement).first() is not None

    def renew_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Extends ``owner``'s lease to ``ttl_seconds`` from now.

        Returns:
            ``False`` when ``owner`` no longer holds an unexpired lease: it must stop the
            work the lease guarded (another owner may have taken it over).
        """
        now = self._clock()
        statement = (
            sa.update(leases)
            .where(leases.c.name == name, leases.c.owner == owner, leases.c.expires_at > now)
            .values(expires_at=now + _ttl(ttl_seconds))
        )
        with self._begin(write=True) as conn:
            return conn.execute(statement).rowcount == 1

    def release_lease(self, name: str, owner: str) -> bool:
        """Gives the lease up; returns whether ``owner`` held it (expired or not)."""
        statement = sa.delete(leases).where(leases.c.name == name, leases.c.owner == owner)
        with self._begin(write=True) as conn:
            return conn.execute(statement).rowcount == 1

    def lease_holder(self, name: str) -> str | None:
        """The owner of the unexpired lease ``name``, or ``None``."""
        query = sa.select(leases.c.owner).where(leases.c.name == name, leases.c.expires_at > self._clock())
        with self._begin() as conn:
            return conn.execute(query).scalar()


def _ttl(ttl_seconds: float) -> timedelta:
    if not ttl_seconds > 0:
        raise ValueError(f"lease ttl_seconds must be positive, not {ttl_seconds!r}")
    return timedelta(seconds=ttl_seconds)

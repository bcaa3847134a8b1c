"""Validations of the state store (:class:`~replicant.state.store.StateStore` inherits them):
what ``replicant validate`` found per stream and destination, the latest shown by ``status``."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicant.state.schema import validations

__all__ = ["ValidationMixin"]


class ValidationMixin:
    """``add_validation`` and ``last_validations`` on the store's clock and connections."""

    # the store's own (annotations only: nothing is defined here)
    _clock: Callable[[], datetime]
    _begin: Callable[..., AbstractContextManager[Connection]]

    def add_validation(self, pipeline: str, destination: str, stream: str, *, verdict: str, differences: int,
                       repaired: int = 0, details: dict[str, Any] | None = None, tenant: str | None = None) -> int:
        """Records one stream's comparison at one destination; returns its id."""
        values = {
            "pipeline": pipeline, "tenant": tenant or "", "destination": destination, "stream": stream,
            "verdict": verdict, "differences": int(differences), "repaired": int(repaired),
            "details": json.dumps(details or {}, sort_keys=True, default=str), "validated_at": self._clock(),
        }
        with self._begin(write=True) as conn:
            key = conn.execute(sa.insert(validations).values(**values)).inserted_primary_key
            return int(key[0]) if key else 0

    def last_validations(self, pipeline: str, *, tenant: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """The latest validation of each ``(stream, destination)`` of one tenant (None: no tenant)."""
        v = validations.c
        latest = (sa.select(sa.func.max(v.id)).where(v.pipeline == pipeline, v.tenant == (tenant or ""))
                  .group_by(v.stream, v.destination))
        query = sa.select(validations).where(v.id.in_(latest))
        with self._begin() as conn:
            return {(r["stream"], r["destination"]): {
                "verdict": r["verdict"], "differences": r["differences"], "repaired": r["repaired"],
                "validated_at": r["validated_at"], "details": json.loads(r["details"]),
            } for r in conn.execute(query).mappings()}

"""The rows :meth:`replicant.state.store.StateStore.add_dead_letters` inserts: one per record,
reasons redacted; with ``once``, a record a destination rejected only once per destination
and origin."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from replicant.errors import redact
from replicant.model import DeadLetter
from replicant.state.schema import dead_letters

__all__ = ["letter_rows"]

_CHUNK = 500  # origins per IN list


def letter_rows(
    conn: Any, pipeline: str, tenant: str, stream: str, records: list[DeadLetter], now: datetime, *, once: bool = False
) -> list[dict[str, Any]]:
    """The table rows for ``records`` (``tenant`` as stored: ``''`` for none). ``once``: leave
    out a destination's rejection already stored (or given twice) with the same destination
    and origin (its log offset): a re-delivery after a crash, or a replay, rejects the same
    records again."""
    seen: set[tuple[str, str]] = set()
    rejected = [r for r in records if r.destination is not None] if once else []
    for start in range(0, len(rejected), _CHUNK):
        part = rejected[start:start + _CHUNK]
        found = conn.execute(sa.select(dead_letters.c.destination, dead_letters.c.origin).where(
            dead_letters.c.pipeline == pipeline, dead_letters.c.tenant == tenant, dead_letters.c.stream == stream,
            dead_letters.c.destination.in_({r.destination for r in part}),
            dead_letters.c.origin.in_([r.origin for r in part]),
        ))
        seen.update((d, o) for d, o in found)
    rows = []
    for r in records:
        if once and r.destination is not None:
            if (r.destination, r.origin) in seen:
                continue
            seen.add((r.destination, r.origin))
        rows.append({
            "pipeline": pipeline,
            "tenant": tenant,
            "stream": stream,
            "destination": r.destination,
            "origin": r.origin,
            "reason": redact(r.reason),
            "payload": json.dumps(r.payload, sort_keys=True, default=str),
            "created_at": r.created_at or now,
        })
    return rows

"""The statements behind the dead-letter methods of :class:`~replicant.state.store.StateStore`.

A dead letter is a record that could not be processed, kept with why (``reason``, redacted
before it is stored), where it came from (``origin``) and the record itself (``payload``, JSON
text). ``replicant dead-letters retry`` re-sends it: when it is rejected again it stays, with
the new reason, ``attempts`` one higher and ``retried_at`` set; when it is accepted it is deleted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from replicant.errors import redact
from replicant.model import DeadLetter
from replicant.state.records import ALL_TENANTS, AllTenants
from replicant.state.schema import dead_letters

__all__ = ["COLUMNS", "decoded", "insert_rows", "letter_rows", "matching"]

_CHUNK = 500  # origins per IN list

#: What a listing returns of each dead letter (``pipeline`` is the caller's).
COLUMNS = (
    dead_letters.c.id,
    dead_letters.c.tenant,
    dead_letters.c.stream,
    dead_letters.c.destination,
    dead_letters.c.origin,
    dead_letters.c.reason,
    dead_letters.c.payload,
    dead_letters.c.created_at,
    dead_letters.c.attempts,
    dead_letters.c.retried_at,
)


def insert_rows(pipeline: str, tenant_key: str, stream: str, records: list[DeadLetter], now: datetime) -> list[dict[str, Any]]:
    """The rows of one bulk insert; reasons redacted, payloads as sorted JSON text."""
    return [
        {
            "pipeline": pipeline,
            "tenant": tenant_key,
            "stream": stream,
            "destination": r.destination,
            "origin": r.origin,
            "reason": redact(r.reason),
            "payload": json.dumps(r.payload, sort_keys=True, default=str),
            "created_at": r.created_at or now,
        }
        for r in records
    ]


def letter_rows(
    conn: Any, pipeline: str, tenant_key: str, stream: str, records: list[DeadLetter], now: datetime, *, once: bool = False
) -> list[dict[str, Any]]:
    """:func:`insert_rows` for ``records``; with ``once``, leaving out a destination's
    rejection already stored (or given twice) with the same destination and origin (its log
    offset): a re-delivery after a crash, or a replay, rejects the same records again."""
    if not once:
        return insert_rows(pipeline, tenant_key, stream, records, now)
    seen: set[tuple[str, str]] = set()
    rejected = [r for r in records if r.destination is not None]
    for start in range(0, len(rejected), _CHUNK):
        part = rejected[start:start + _CHUNK]
        found = conn.execute(sa.select(dead_letters.c.destination, dead_letters.c.origin).where(
            dead_letters.c.pipeline == pipeline, dead_letters.c.tenant == tenant_key, dead_letters.c.stream == stream,
            dead_letters.c.destination.in_({r.destination for r in part}),
            dead_letters.c.origin.in_([r.origin for r in part]),
        ))
        seen.update((d, o) for d, o in found)
    kept = []
    for r in records:
        if r.destination is not None:
            if (r.destination, r.origin) in seen:
                continue
            seen.add((r.destination, r.origin))
        kept.append(r)
    return insert_rows(pipeline, tenant_key, stream, kept, now)


def matching(
    pipeline: str,
    *,
    ids: Sequence[int] | None = None,
    stream: str | None = None,
    destination: str | None = None,
    tenant_key: str | AllTenants = ALL_TENANTS,
) -> list[sa.ColumnElement[bool]]:
    """Conditions selecting a pipeline's dead letters: by id (when ``ids`` is given), stream,
    destination and stored tenant key (``''``: no tenant; :data:`ALL_TENANTS`: any)."""
    where = [dead_letters.c.pipeline == pipeline]
    if ids is not None:
        where.append(dead_letters.c.id.in_([int(i) for i in ids]))
    if stream is not None:
        where.append(dead_letters.c.stream == stream)
    if destination is not None:
        where.append(dead_letters.c.destination == destination)
    if tenant_key is not ALL_TENANTS:
        where.append(dead_letters.c.tenant == tenant_key)
    return where


def decoded(row: Any) -> dict[str, Any]:
    """A listed row as a dict: ``tenant`` ``None`` for no tenant, ``payload`` decoded."""
    letter = dict(row)
    letter["tenant"] = letter["tenant"] or None
    letter["payload"] = json.loads(letter["payload"])
    return letter

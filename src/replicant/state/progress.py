"""Snapshot progress per stream (:class:`~replicant.state.store.StateStore` inherits it): what a
``replicant serve`` worker reads now, so the API and the dashboard can draw a bar with an ETA.

``replicant_stream_progress`` holds one row per (pipeline, tenant, stream): the latest read of
that stream that had a row estimate (a snapshot), written by the worker's
:class:`~replicant.service.progress.ProgressRecorder` at its start, at most once a second while
it reads, and at its end; never per row. The row names the queue entry (run) that wrote it, so
a reader can tell a live snapshot from the leftover of a run that ended. Through a
:class:`~replicant.state.fenced.FencedStateStore` a worker that lost its lease cannot write it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicant.state.schema import UTCDateTime

__all__ = ["ProgressMixin", "stream_progress"]

_NAME = sa.String(255)


def _progress_table(md: sa.MetaData) -> sa.Table:
    """``replicant_stream_progress`` (frozen: as version 9 created it)."""
    return sa.Table(
        "replicant_stream_progress",
        md,
        sa.Column("pipeline", _NAME, primary_key=True),
        sa.Column("tenant", _NAME, primary_key=True, server_default=""),
        sa.Column("stream", _NAME, primary_key=True),
        sa.Column("entry", sa.BigInteger, nullable=True),  # the queue entry (run) reading it
        sa.Column("estimate", sa.BigInteger, nullable=True),  # rows expected (table statistics)
        sa.Column("rows", sa.BigInteger, nullable=False, server_default="0"),  # rows read so far
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),  # set when the read completed
    )


stream_progress = _progress_table(sa.MetaData())


def create(conn: Connection) -> None:
    """Migration 9: creates ``replicant_stream_progress``."""
    _progress_table(sa.MetaData()).create(conn)


class ProgressMixin:
    """``save_progress`` and ``progress`` on the store's clock and connections."""

    # the store's own (annotations only: nothing is defined here)
    _clock: Callable[[], datetime]
    _upsert: Callable[[sa.Table, dict[str, Any]], Any]
    _begin: Callable[..., AbstractContextManager[Connection]]

    def save_progress(self, pipeline: str, stream: str, *, tenant: str | None, entry: int | None, estimate: int | None,
                      rows: int, started_at: datetime, finished: bool = False) -> None:
        """Records where the read of ``stream`` stands (replacing its previous read's row)."""
        now = self._clock()
        values = {"pipeline": pipeline, "tenant": tenant or "", "stream": stream, "entry": entry, "estimate": estimate,
                  "rows": int(rows), "started_at": started_at, "updated_at": now, "finished_at": now if finished else None}
        with self._begin(write=True) as conn:
            conn.execute(self._upsert(stream_progress, values))

    def progress(self, pipeline: str, *, entry: int | None = None) -> list[dict[str, Any]]:
        """The progress rows of ``pipeline`` (of one queue entry when given), each with
        ``tenant`` (``None``: no tenant), ``stream``, ``entry``, ``estimate``, ``rows``,
        ``started_at``, ``updated_at`` and ``finished_at``."""
        p = stream_progress.c
        query = sa.select(stream_progress).where(p.pipeline == pipeline)
        if entry is not None:
            query = query.where(p.entry == entry)
        with self._begin() as conn:
            return [{**r, "tenant": r["tenant"] or None} for r in conn.execute(query.order_by(p.tenant, p.stream)).mappings()]

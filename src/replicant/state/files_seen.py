"""The record of every file a files source saw (:class:`~replicant.state.store.StateStore`
inherits these methods): path, size, etag (or content hash), modified time, rows, bad records,
status, the first error with its line. Unbounded: one row per (pipeline, tenant, stream, path),
kept for ever (no file-count cap, no expiry).

Statuses and the resume rule that moves them (:mod:`replicant.sources.files.source`)::

    pending   listed, not read yet (or its read was lost in a crash: read again)
    reading   being read; ``seq`` is its place in the stream's read order
    read      every row handed to the engine, not yet known durable in the staging log
    loaded    durable in the staging log (after_load may have moved or deleted it: ``note``)
    failed    could not be read (``first_error``); read again when its content changes

The staging log is the checkpoint of record: its last position names the ``seq`` of the file
being read and whether it was finished. :meth:`FilesSeenMixin.confirm_files` turns that into
statuses: every file read before it is ``loaded``, a file read after it (its rows never made
it to the log) goes back to ``pending``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicant.errors import redact
from replicant.model import DeadLetter
from replicant.state import dead_letters as dead
from replicant.state.schema import dead_letters, files_seen

__all__ = ["FILE_STATUSES", "FilesSeenMixin"]

FILE_STATUSES = ("pending", "reading", "read", "loaded", "failed")
_IN_FLIGHT = ("reading", "read")


def _key(tenant: str | None) -> str:
    return "" if tenant is None else tenant


class FilesSeenMixin:
    """``files_seen``, ``start_file``, ``finish_file``, ``confirm_files``, ``note_file``,
    ``fail_file`` on the store's clock and connections."""

    # the store's own (annotations only: nothing is defined here)
    _clock: Callable[[], datetime]
    _begin: Callable[..., AbstractContextManager[Connection]]

    def files_seen(self, pipeline: str, *, stream: str | None = None, tenant: str | None = None,
                   status: str | None = None) -> list[dict[str, Any]]:
        """The records of one tenant's files (``None``: no tenant), by stream then read order,
        optionally of one stream or status; each a dict of the table's columns."""
        where = [files_seen.c.pipeline == pipeline, files_seen.c.tenant == _key(tenant)]
        if stream is not None:
            where.append(files_seen.c.stream == stream)
        if status is not None:
            where.append(files_seen.c.status == status)
        query = sa.select(files_seen).where(*where).order_by(files_seen.c.stream, files_seen.c.seq, files_seen.c.path)
        with self._begin() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for r in rows:
            r["tenant"] = r["tenant"] or None
        return rows

    def file_records(self, pipeline: str, stream: str, *, tenant: str | None = None) -> dict[str, dict[str, Any]]:
        """One stream's records by path."""
        return {r["path"]: r for r in self.files_seen(pipeline, stream=stream, tenant=tenant)}

    def start_file(self, pipeline: str, stream: str, path: str, *, size: int | None, etag: str | None,
                   modified_at: datetime | None, tenant: str | None = None) -> int:
        """Marks ``path`` ``reading`` with this identity and the next ``seq`` of the stream;
        returns that ``seq``. Keeps what earlier versions left (``last_line``, ``loads``)."""
        key = _key(tenant)
        now = self._clock()
        with self._begin(write=True) as conn:
            top = conn.execute(sa.select(sa.func.max(files_seen.c.seq)).where(
                files_seen.c.pipeline == pipeline, files_seen.c.tenant == key, files_seen.c.stream == stream)).scalar()
            seq = int(top or 0) + 1
            values = {"size": size, "etag": etag, "modified_at": modified_at, "status": "reading", "seq": seq,
                      "rows": 0, "bad_records": 0, "first_error": None, "first_error_line": None, "note": None}
            found = conn.execute(sa.update(files_seen).where(*_one(pipeline, key, stream, path)).values(**values))
            if not found.rowcount:
                conn.execute(sa.insert(files_seen).values(pipeline=pipeline, tenant=key, stream=stream, path=path,
                                                          first_seen_at=now, **values))
        return seq

    def finish_file(self, pipeline: str, stream: str, path: str, *, rows: int, bad_records: int, last_line: int,
                    first_error: str | None = None, first_error_line: int | None = None,
                    tenant: str | None = None) -> None:
        """Every row of ``path`` was handed to the engine: status ``read`` (``loaded`` once
        :meth:`confirm_files` knows it durable). ``last_line`` only grows (a changed file's
        earlier rows are deleted up to it)."""
        with self._begin(write=True) as conn:
            conn.execute(sa.update(files_seen).where(*_one(pipeline, _key(tenant), stream, path)).values(
                status="read", rows=rows, bad_records=bad_records,
                last_line=sa.case((files_seen.c.last_line > last_line, files_seen.c.last_line), else_=last_line),
                first_error=None if first_error is None else redact(first_error), first_error_line=first_error_line,
            ))

    def fail_file(self, pipeline: str, stream: str, path: str, error: str, *, line: int | None = None,
                  tenant: str | None = None) -> None:
        """``path`` could not be read: status ``failed`` with the (redacted) error."""
        with self._begin(write=True) as conn:
            conn.execute(sa.update(files_seen).where(*_one(pipeline, _key(tenant), stream, path)).values(
                status="failed", first_error=redact(error), first_error_line=line))

    def confirm_files(self, pipeline: str, stream: str, *, seq: int, done: bool,
                      tenant: str | None = None) -> list[str]:
        """Applies the log's last position (file ``seq``, ``done`` or not) to the statuses:
        files read before it (and it, when ``done``) become ``loaded``; files read after it
        go back to ``pending``. Returns the paths that became ``loaded`` now (for after_load)."""
        key = _key(tenant)
        base = [files_seen.c.pipeline == pipeline, files_seen.c.tenant == key, files_seen.c.stream == stream,
                files_seen.c.status.in_(_IN_FLIGHT)]
        durable = files_seen.c.seq <= seq if done else files_seen.c.seq < seq
        with self._begin(write=True) as conn:
            paths = list(conn.execute(sa.select(files_seen.c.path).where(*base, durable)).scalars())
            if paths:
                conn.execute(sa.update(files_seen).where(*base, durable).values(
                    status="loaded", loaded_at=self._clock(), loads=files_seen.c.loads + 1))
            conn.execute(sa.update(files_seen).where(*base, files_seen.c.seq > seq).values(status="pending"))
        return paths

    def note_file(self, pipeline: str, stream: str, path: str, note: str, *, tenant: str | None = None) -> None:
        """Keeps what happened to ``path`` after it loaded (``moved to …``, ``deleted``)."""
        with self._begin(write=True) as conn:
            conn.execute(sa.update(files_seen).where(*_one(pipeline, _key(tenant), stream, path)).values(note=note))


    def add_read_dead_letters(self, pipeline: str, stream: str, records: list[DeadLetter], *,
                              tenant: str | None = None, skip_known: bool = False) -> int:
        """Stores records a source could not read (``destination`` None); with ``skip_known``
        (a resumed read of the same file version), those whose origin is already stored are
        left out. Returns how many were stored."""
        key = _key(tenant)
        with self._begin(write=True) as conn:
            if skip_known and records:
                known = set(conn.execute(sa.select(dead_letters.c.origin).where(
                    dead_letters.c.pipeline == pipeline, dead_letters.c.tenant == key, dead_letters.c.stream == stream,
                    dead_letters.c.destination.is_(None),
                    dead_letters.c.origin.in_([r.origin for r in records]))).scalars())
                records = [r for r in records if r.origin not in known]
            if records:
                conn.execute(sa.insert(dead_letters), dead.insert_rows(pipeline, key, stream, records, self._clock()))
        return len(records)


def _one(pipeline: str, key: str, stream: str, path: str) -> list[sa.ColumnElement[bool]]:
    return [files_seen.c.pipeline == pipeline, files_seen.c.tenant == key, files_seen.c.stream == stream,
            files_seen.c.path == path]

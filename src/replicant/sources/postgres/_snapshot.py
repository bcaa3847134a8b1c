"""The snapshot side of :class:`~replicant.sources.postgres.capture.PgLogCapture` (moved out of
:mod:`replicant.sources.postgres.capture`, whose docstring describes the whole capture).

- :class:`_Snap`: a stream to snapshot at the snapshot point ``X``, from the start or after
  a key (an interrupted snapshot), possibly after a truncate marker.
- :class:`_Snapshot`, a mixin of :class:`~replicant.sources.postgres.capture.PgLogCapture`: importing the
  exported snapshot into the source's connection (``SET TRANSACTION SNAPSHOT``), reading it
  with the source's own full read as ``_op = "read"`` change sets, and the catch-up *window*
  (changes committed before ``X`` while the slot is streamed up to it): which changes are
  kept (:meth:`_Snapshot._wanted`) and the filter that keeps only the window rows whose key
  is at or before the interrupted snapshot's ``after`` (:meth:`_Snapshot._window_filter`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from replicant.model import (
    OP_READ,
    Position,
    Stream,
    encode_position,
    strip_meta,
    utcnow,
    with_meta,
)
from replicant.sources.base import ChangeSet
from replicant.sources.types import decode_value, is_keyable

if TYPE_CHECKING:
    from ._changes import _Rows, _Target


@dataclass
class _Snap:
    """A stream to snapshot at X: from the start, or after a key (an interrupted snapshot)."""

    after: list[Any] | None = None
    truncate: bool = False  #: emit a truncate marker first (re-snapshot from scratch)


class _Snapshot:
    """The snapshot methods of :class:`~replicant.sources.postgres.capture.PgLogCapture` (uses its
    ``source``)."""

    source: Any
    _in_snapshot: bool

    def _keyed(self, s: Stream) -> bool:
        if not s.primary_key:
            return False
        by = {f.name: f for f in s.schema}
        return all(k in by and not by[k].nullable and is_keyable(by[k].type) for k in s.primary_key)

    def _begin_snapshot(self, name: str) -> None:
        conn = self.source._connect()
        cur = conn.cursor()
        try:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute(f"SET TRANSACTION SNAPSHOT '{name}'")  # a server-made name: [0-9A-F-]
        finally:
            cur.close()
        self._in_snapshot = True

    def _end_snapshot(self) -> None:
        if not self._in_snapshot:
            return
        self._in_snapshot = False
        conn = getattr(self.source, "_conn", None)
        if conn is None:
            return
        cur = conn.cursor()
        try:
            cur.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - a broken connection: drop it, the next read reconnects
            self.source.close()
        finally:
            try:
                cur.close()
            except Exception:  # noqa: BLE001
                pass

    def _snapshot(self, streams: list[Stream], snaps: dict[str, _Snap], point: int, pos: int,
                  stop: threading.Event) -> Iterator[ChangeSet]:
        todo = [s for s in streams if s.name in snaps]
        for n, s in enumerate(todo):
            snap = snaps[s.name]
            start = {"mode": "full", "snapshot": "log", "after": snap.after} if snap.after is not None else None
            first = True
            for rb in self.source.read(dataclasses.replace(s, mode="full"), start):
                if rb.final:
                    spos: Position = {"lsn": point}
                elif "after" in rb.position:
                    spos = {"lsn": point, "snapshot": {"after": rb.position["after"]}}
                else:
                    spos = {"lsn": point, "snapshot": {"rows": rb.position.get("rows", 0)}}
                last = rb.final and n == len(todo) - 1
                batch = with_meta(strip_meta(rb.data), OP_READ, encode_position(spos), utcnow())
                yield ChangeSet({s.name: batch}, {"lsn": point if last else pos}, {s.name: spos},
                                frozenset({s.name}) if first and snap.truncate else frozenset())
                first = False
                if stop.is_set() and not rb.final:
                    return

    def _wanted(self, name: str, final: int, floor: dict[str, int], window: tuple[int, dict[str, _Snap]] | None,
                truncate: bool = False) -> bool | str:
        """Whether a change of stream ``name`` in the transaction committing at ``final`` is
        kept: False (already in the log, or covered by the snapshot at X), True, or "window"
        (kept only for keys up to the interrupted snapshot's ``after``)."""
        if final < floor.get(name, 0):
            return False
        if window is not None and name in window[1] and final < window[0]:
            snap = window[1][name]
            if snap.after is None:
                return False
            return True if truncate else "window"
        return True

    def _window_filter(self, batch: pa.RecordBatch, rows: _Rows, snap: _Snap, t: _Target) -> pa.RecordBatch:
        """Drops window rows (committed before X) whose key lies after the snapshot's ``after``:
        the snapshot at X covers those keys."""
        keep = pc.invert(pa.array(rows.window, pa.bool_()))
        fields = {f.name: f for f in t.stream.schema}
        le = None
        # (k1, k2, …) <= (a1, a2, …), lexicographically, from the last key column up
        for name, raw in reversed(list(zip(t.key, snap.after or []))):
            f = fields[name]
            v = pa.scalar(decode_value(raw, f.type), f.type)
            col = batch.column(name)
            le = pc.less_equal(col, v) if le is None else pc.or_(pc.less(col, v), pc.and_(pc.equal(col, v), le))
        if le is not None:
            keep = pc.or_(keep, pc.fill_null(le, False))
        return batch.filter(keep)

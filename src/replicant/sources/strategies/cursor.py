"""``mode: cursor``: the rows after a watermark column (an audit column), in ``(cursor, key)`` order.

Position::

    {"mode": "cursor", "cursor": MAX, "after": [key at MAX], "seen": {"cursor": [...], "keys": [[...], ...]}}

``seen`` is kept only with a look-back. Rows are read in ``(cursor, key)`` order after the
position, in chunks of ``chunk_size``. With a look-back, a new read starts at
``MAX - lookback`` so rows committed late with an older cursor value are caught, and rows
re-read unchanged (same key, same cursor value, recorded in ``seen``) are not emitted
again; a row whose cursor value changed is. ``seen`` holds the rows emitted inside the
look-back window, at most ``lookback_max_keys`` (default 100,000) of the newest. Rows are
emitted with ``_op = "update"``: a cursor read cannot tell a new row from a changed one, so
destinations merge them by key. Rows whose cursor is NULL are never read. The ``_pos``
column holds the position without ``seen``. A ``soft_delete`` column turns the rows it
marks into deletes.

Needs a :class:`~.protocols.RangeReader` source.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from replicant.errors import FatalError
from replicant.model import (
    OP_DELETE,
    OP_UPDATE,
    Position,
    ReadBatch,
    Stream,
    encode_position,
    utcnow,
    with_meta,
)
from replicant.sources.strategies.protocols import RangeReader, last_values, sizes
from replicant.sources.types import decode_value, encode_column, encode_value

__all__ = ["acknowledge", "read"]

_DEFAULT_SEEN_MAX = 100_000


def read(source: Any, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
    """Reads the rows of ``stream`` changed after ``position`` (see the module docstring).

    Raises:
        FatalError: the source cannot read ranges, or the table or a column is gone.
    """
    if not isinstance(source, RangeReader):
        raise FatalError(f"stream {stream.name!r}: a {type(source).__name__} cannot read `mode: cursor`")
    return _read(source, stream, position)


def snapshot_again(position: Position) -> Position | None:
    """From the start: rows whose cursor did not move are read only so."""
    return None


def acknowledge(source: Any, stream: Stream, position: Position) -> None:
    """Nothing to release: the position is the whole state."""


def _read(source: RangeReader, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
    batch_size, chunk = sizes(source, stream)
    lookback = stream.options.get("lookback") or 0
    seen_max = int(stream.options.get("lookback_max_keys") or _DEFAULT_SEEN_MAX)
    assert stream.cursor is not None  # checked by the stream settings
    cur = stream.schema.field(stream.cursor)
    keys = [stream.schema.field(k) for k in stream.primary_key]
    order = [cur.name, *stream.primary_key]
    state = _CursorState.load(position, cur, keys)

    after: list[Any] | None
    inclusive = False
    if state.max is None:
        after = None
    elif lookback:
        after, inclusive = [_minus(state.max, lookback)], True
    else:
        after = [state.max, *state.max_key]
    while True:
        n, last = 0, None
        for b in source.read_range(stream, order, after=after, inclusive=inclusive, limit=chunk, batch_size=batch_size):
            n += b.num_rows
            last = b
            out = state.advance(b, stream, lookback, seen_max)
            if out.num_rows:
                pos = state.position(with_seen=bool(lookback))
                short = {k: v for k, v in pos.items() if k != "seen"}
                changes = with_meta(out, OP_UPDATE, encode_position(short), utcnow())
                if stream.options.get("soft_delete"):
                    changes = _soft_deletes(changes, stream.options["soft_delete"])
                yield ReadBatch(changes, pos)
        if n < chunk or last is None:
            return
        after, inclusive = last_values(last, order), False


def _soft_deletes(batch: pa.RecordBatch, column: str) -> pa.RecordBatch:
    """Rows whose soft-delete column is set (true, or any non-null value of another type)
    become deletes: ``_op`` is rewritten vectorised."""
    flag = batch.column(column)
    marked = pc.fill_null(flag, False) if pa.types.is_boolean(flag.type) else pc.is_valid(flag)
    i = batch.schema.get_field_index("_op")
    ops = pc.if_else(marked, pa.scalar(OP_DELETE, pa.string()), batch.column(i))
    return batch.set_column(i, batch.schema.field(i), ops)


def _minus(value: Any, lookback: float) -> Any:
    """``value - lookback``: seconds for dates and times, cursor units for numbers."""
    if isinstance(value, datetime):
        return value - timedelta(seconds=lookback)
    if isinstance(value, time):
        moved = datetime.combine(date(2000, 1, 2), value) - timedelta(seconds=lookback)
        return moved.time() if moved.date() == date(2000, 1, 2) else time(0)
    if isinstance(value, date):
        return value - timedelta(days=-(-lookback // 86400))
    if isinstance(value, Decimal):
        return value - Decimal(str(lookback))
    if isinstance(value, int) and isinstance(lookback, float) and not lookback.is_integer():
        return value - int(-(-lookback // 1))
    return value - type(value)(lookback)


class _CursorState:
    """The high-water mark of a cursor read, and the rows seen inside the look-back window."""

    def __init__(self, cur: pa.Field, keys: list[pa.Field]) -> None:
        self.cur, self.keys = cur, keys
        self.max: Any = None
        self.max_key: list[Any] = []
        self.seen: pa.Table | None = None  # columns c, k0, k1…

    @classmethod
    def load(cls, position: Position | None, cur: pa.Field, keys: list[pa.Field]) -> _CursorState:
        st = cls(cur, keys)
        if position and position.get("mode") == "cursor" and position.get("cursor") is not None:
            st.max = decode_value(position["cursor"], cur.type)
            st.max_key = [decode_value(v, c.type) for v, c in zip(position.get("after") or [], keys)]
            seen = position.get("seen")
            if seen and seen.get("cursor"):
                cols = {"c": pa.array([decode_value(v, cur.type) for v in seen["cursor"]], cur.type)}
                for i, (vals, c) in enumerate(zip(seen["keys"], keys)):
                    cols[f"k{i}"] = pa.array([decode_value(v, c.type) for v in vals], c.type)
                st.seen = pa.table(cols)
        return st

    def _keyed(self, batch: pa.RecordBatch) -> pa.Table:
        cols = {"c": batch.column(self.cur.name)}
        for i, c in enumerate(self.keys):
            cols[f"k{i}"] = batch.column(c.name)
        return pa.table(cols)

    def advance(self, batch: pa.RecordBatch, stream: Stream, lookback: float, seen_max: int) -> pa.RecordBatch:
        """Takes a batch read in (cursor, key) order; returns its rows not emitted before."""
        out = batch
        if lookback and self.seen is not None and self.seen.num_rows:
            keyed = self._keyed(batch).append_column("__row", pa.array(range(batch.num_rows), pa.int64()))
            fresh = keyed.join(self.seen, keys=list(self.seen.column_names), join_type="left anti")
            rows = fresh.column("__row").combine_chunks().sort() if fresh.num_rows else pa.array([], pa.int64())
            if len(rows) != batch.num_rows:
                out = batch.take(rows)
        if batch.num_rows:
            last_c = last_values(batch, [self.cur.name])[0]
            # without a look-back every batch lies after the last (database order); with one,
            # re-read rows may lie before the high-water mark (cursor is a number or a time)
            if not lookback or self.max is None or last_c >= self.max:
                self.max = last_c
                self.max_key = last_values(batch, [c.name for c in self.keys])
        if lookback and out.num_rows:
            new = self._keyed(out)
            self.seen = new if self.seen is None else pa.concat_tables([self.seen, new])
            floor = _minus(self.max, lookback)
            self.seen = self.seen.filter(pc.greater_equal(self.seen.column("c"), pa.scalar(floor, self.cur.type)))
            if self.seen.num_rows > seen_max:
                self.seen = self.seen.sort_by("c").slice(self.seen.num_rows - seen_max)
        return out

    def position(self, *, with_seen: bool) -> Position:
        pos: Position = {
            "mode": "cursor",
            "cursor": encode_value(self.max),
            "after": [encode_value(v) for v in self.max_key],
        }
        if with_seen and self.seen is not None:
            pos["seen"] = {
                "cursor": encode_column(self.seen.column("c")),
                "keys": [encode_column(self.seen.column(f"k{i}")) for i in range(len(self.keys))],
            }
        return pos

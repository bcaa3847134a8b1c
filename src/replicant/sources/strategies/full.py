"""``mode: full``: the whole table, in key order and key-range chunks, each resumable.

Positions (the resume rule of :mod:`replicant.sources.base` holds for each)::

    keyed     {"mode": "full", "snapshot": ID, "after": [last key values]}
    unkeyed   {"mode": "full", "snapshot": ID, "rows": N}          resumable=False
    finished  {"mode": "full", "snapshot": ID, "done": true}       on the final, empty batch

A source that implements :class:`~.protocols.RangeReader` is read here: when its
``capabilities.chunked`` is set, in chunks of ``chunk_size`` rows
(``WHERE (k1, k2) > (:a, :b) ORDER BY k1, k2 LIMIT n``), else in one ordered query; each
streamed in batches of ``batch_size``. Resuming from ``after`` continues where it stopped.
The snapshot ends with an empty batch marked ``final`` (no batch is held back to learn which
one is last: one batch less in memory). Reading from a ``done`` position (or None) starts a
new snapshot. A table whose key is missing or nullable is read in one unordered query whose
positions cannot be resumed.

Any other source reads in full on its own: ``source.read_full(stream, position)`` (the same
position rules; a source without keys may return ``resumable=False`` positions).

Values in positions are JSON-safe (:func:`replicant.sources.types.encode_value`) and go back
to the database as parameters of the column's own type.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from replicant.model import (
    OP_READ,
    Position,
    ReadBatch,
    Stream,
    encode_position,
    utcnow,
    with_meta,
)
from replicant.sources.strategies.protocols import RangeReader, last_values, sizes
from replicant.sources.types import decode_value, encode_value, is_keyable

__all__ = ["acknowledge", "empty", "read"]


def read(source: Any, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
    """Reads ``stream`` after ``position`` (see the module docstring)."""
    if isinstance(source, RangeReader):
        return _keyset(source, stream, position)
    return iter(source.read_full(stream, position))


def snapshot_again(position: Position) -> Position | None:
    """A ``full`` stream reads every row at each run anyway: from the start."""
    return None


def acknowledge(source: Any, stream: Stream, position: Position) -> None:
    """Nothing to release: a full read keeps no state at the source."""


def empty(stream: Stream) -> pa.RecordBatch:
    """A batch of ``stream.schema`` with no rows."""
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in stream.schema], schema=stream.schema)


def _keyset(source: RangeReader, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
    batch_size, chunk_size = sizes(source, stream)
    chunk = chunk_size if source.capabilities.chunked else None
    keys = [stream.schema.field(k) for k in stream.primary_key]
    keyed = bool(keys) and all(not f.nullable and is_keyable(f.type) for f in keys)
    resume = position if position and position.get("mode") == "full" and not position.get("done") else None
    snapshot = str(resume["snapshot"]) if resume and resume.get("snapshot") else uuid.uuid4().hex[:16]
    after = resume.get("after") if resume and keyed else None
    done = {"mode": "full", "snapshot": snapshot, "done": True}

    def emit(batch: pa.RecordBatch, pos: Position, **kw: Any) -> ReadBatch:
        # each row's _pos names the key after its batch; the snapshot id stays in the log's
        # position only: the text is repeated on every row (a third of a narrow batch)
        row_pos = {k: v for k, v in pos.items() if k != "snapshot"}
        return ReadBatch(with_meta(batch, OP_READ, encode_position(row_pos), utcnow()), pos, **kw)

    if not keyed:
        rows = 0
        for b in source.read_range(stream, (), batch_size=batch_size):
            rows += b.num_rows
            yield emit(b, {"mode": "full", "snapshot": snapshot, "rows": rows}, resumable=False)
        yield emit(empty(stream), done, final=True)
        return

    names = list(stream.primary_key)
    values = [decode_value(v, f.type) for v, f in zip(after, keys)] if after else None
    while True:
        n, last = 0, None
        for b in source.read_range(stream, names, after=values, limit=chunk, batch_size=batch_size):
            n += b.num_rows
            last = b
            pos = {"mode": "full", "snapshot": snapshot, "after": [encode_value(v) for v in last_values(b, names)]}
            yield emit(b, pos)
        if last is None or chunk is None or n < chunk:  # the table ends in this chunk
            yield emit(empty(stream), done, final=True)
            return
        values = last_values(last, names)

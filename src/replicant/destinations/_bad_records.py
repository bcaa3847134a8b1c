"""Records a destination rejects for their values: found, set aside as dead letters, the rest written.

A poison record must never wedge a stream. When a write fails with
:class:`~replicant.errors.RecordError` (the dialect's ``is_content_error``: a data exception,
a constraint; a value the encoder cannot convert), :func:`set_aside`:

1. finds the rejected rows by bisection (:func:`find_rejected`): halves of the batch are
   applied by ``probe`` in transactions that are rolled back, down to single rows. Halves
   are probed on their own first (cheap); if the rows left still fail together (two rows
   that only collide with each other, such as a duplicate of a user's unique index), the
   caller probes again *cumulatively* (each half with every row accepted before it), which
   rejects the later row of such a pair;
2. stores each rejected row as a :class:`~replicant.model.DeadLetter` through the
   destination's dead-letter sink: ``reason`` the database's own message (redacted by the
   store), ``payload`` the change record as the HTTP push sends it (``{"op", "key", "data",
   "position", "ts"}``, values as the source had them, see
   :func:`replicant.destinations.records.record_json`), ``origin`` ``log offset N, position
   P``, ``destination`` the destination's name;
3. returns the other rows, which the caller writes *with the offset* in one transaction.

Exactly once: the dead letters are stored *before* the transaction that moves the offset
past them commits. A crash in between re-delivers the same log records, which finds the same
rows; the state store keeps one dead letter per destination, stream and origin
(:meth:`replicant.state.store.StateStore.add_dead_letters`), so nothing is doubled or lost.

Without a dead-letter store, or with ``on_bad_record: fail`` on the destination, the write
fails with :class:`~replicant.errors.FatalError` (the stream pauses with the database's
message), as before dead letters existed. More than :data:`MOST_REJECTED` rejected rows in
one write are not a poison record but a problem with the table: also a ``FatalError``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from replicant.errors import FatalError, RecordError
from replicant.model import DeadLetter, Stream

__all__ = ["MOST_REJECTED", "RolledBack", "find_rejected", "letters_for", "set_aside", "set_aside_refused"]

log = logging.getLogger(__name__)

#: Rejected rows in one write beyond which the write fails instead (a wrong table, not a record).
MOST_REJECTED = 1_000


class RolledBack(Exception):
    """Ends a probe's transaction by rolling it back (a signal, never seen by users)."""


def find_rejected(
    rows: pa.Table, probe: Callable[[pa.Table], None], reason: str, *, cumulative: bool, most: int = MOST_REJECTED
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Bisects ``rows`` (which failed as a whole with ``reason``) into accepted and rejected rows.

    Args:
        probe: applies rows and rolls back; raises :class:`RecordError` if a value is rejected.
        cumulative: probe each half together with every row accepted before it (finds rows
            rejected only next to others); otherwise each half alone.

    Returns:
        The indexes of the accepted rows (ascending) and ``(index, reason)`` per rejected row.

    Raises:
        FatalError: more than ``most`` rows are rejected.
    """
    accepted: list[np.ndarray] = []
    rejected: list[tuple[int, str]] = []

    def attempt(start: int, length: int) -> str | None:
        part = np.arange(start, start + length, dtype=np.int64)
        try:
            probe(rows.take(np.concatenate([*accepted, part]) if cumulative else part))
        except RecordError as e:
            return e.message
        accepted.append(part)
        return None

    def visit(start: int, length: int, why: str) -> None:
        if length == 1:
            rejected.append((start, why))
            if len(rejected) > most:
                raise FatalError(
                    f"{why}; more than {most:,} records of one write were rejected: this looks like a problem with "
                    f"the table rather than with some records; fix the table (or the source), then run again"
                )
            return
        half = length // 2
        left = attempt(start, half)
        if left is not None:
            visit(start, half, left)
        if cumulative and left is None:
            visit(start + half, length - half, why)  # accepted rows + left pass, so the right half fails
            return
        right = attempt(start + half, length - half)
        if right is not None:
            visit(start + half, length - half, right)

    visit(0, rows.num_rows, reason)
    keep = np.sort(np.concatenate(accepted)) if accepted else np.zeros(0, dtype=np.int64)
    return keep, rejected


def letters_for(dest: Any, stream: Stream, rows: pa.Table, offsets: np.ndarray, reasons: list[str]) -> list[DeadLetter]:
    """One dead letter per row of ``rows`` (a change table), at log ``offsets``, for ``reasons``."""
    from replicant.destinations.records import record_json

    letters = []
    # the rejection path only: per-record Python is fine here
    for text, offset, why in zip(record_json(rows, stream.primary_key).to_pylist(), offsets.tolist(), reasons, strict=True):
        record = json.loads(text)
        origin = f"log offset {offset}, position {json.dumps(record.get('position'), sort_keys=True)}"
        letters.append(DeadLetter(reason=why, payload=record, origin=origin, destination=dest.name))
    return letters


def row_offsets(rows: pa.Table, offsets: pa.Array | np.ndarray | None, last_offset: int) -> np.ndarray:
    """The log offset of each row: ``offsets`` as given, else the contiguous run ending at ``last_offset``."""
    if offsets is None:
        return np.arange(last_offset - rows.num_rows + 1, last_offset + 1, dtype=np.int64)
    return np.asarray(offsets, dtype=np.int64)


def set_aside(
    dest: Any,
    stream: Stream,
    rows: pa.Table,
    offsets: np.ndarray,
    error: RecordError,
    probe: Callable[[pa.Table], None],
    *,
    cumulative: bool,
) -> tuple[pa.Table, np.ndarray]:
    """Dead-letters the rows of ``rows`` the destination rejects (see the module docstring);
    returns the other rows and their log offsets, for the caller to write with its offset.

    Raises:
        FatalError: no dead-letter store, ``on_bad_record: fail``, or too many rejected rows.
    """
    if getattr(dest.config, "on_bad_record", "dead_letter") == "fail":
        raise FatalError(
            f"{error}; destination {dest.name!r} has `on_bad_record: fail`: fix the value at the source or the "
            f"destination's table, then run again (or set `on_bad_record: dead_letter` to set such records aside)"
        ) from error
    if dest.dead_letter is None:
        raise FatalError(f"{error}; there is no dead-letter store to set the rejected record aside") from error
    keep, rejected = find_rejected(rows, probe, error.message, cumulative=cumulative)
    if not rejected:
        return rows, offsets
    index = np.array([i for i, _ in rejected], dtype=np.int64)
    letters = letters_for(dest, stream, rows.take(index), offsets[index], [why for _, why in rejected])
    log.warning(
        "destination %r, stream %r: %d record(s) rejected, sent to dead letters; first: %s",
        dest.name, stream.name, len(letters), letters[0].reason,
    )
    dest.dead_letter(stream, letters)
    return rows.take(keep), offsets[keep]


def set_aside_refused(
    dest: Any, stream: Stream, rows: pa.Table, offsets: np.ndarray, refused: dict[int, str], *, where: str
) -> tuple[pa.Table, np.ndarray]:
    """Dead-letters the rows a type mapper knows up front the dialect cannot hold
    (``refused``: row index → reason, :meth:`TypeMapper.refused`) and returns the others with
    their log offsets. ``where`` names the target table in messages. Per-row Python runs
    over the refused rows only.

    Raises:
        FatalError: there are such rows and no dead-letter store, or ``on_bad_record: fail``.
    """
    if not refused:
        return rows, offsets
    first = refused[min(refused)]
    if getattr(dest.config, "on_bad_record", "dead_letter") == "fail":
        raise FatalError(
            f"destination {dest.name!r}, stream {stream.name!r}, table {where}: {len(refused)} records hold values it "
            f"cannot store and it has `on_bad_record: fail`; first: {first}"
        )
    if dest.dead_letter is None:
        raise FatalError(
            f"destination {dest.name!r}, stream {stream.name!r}, table {where}: {len(refused)} records hold values it "
            f"cannot store and there is no dead-letter store; first: {first}"
        )
    index = np.array(sorted(refused), dtype=np.int64)
    letters = letters_for(dest, stream, rows.take(index), offsets[index], [refused[int(i)] for i in index])
    log.warning("destination %r, stream %r: %d records hold values it cannot store, sent to dead letters; first: %s",
                dest.name, stream.name, len(letters), first)
    dest.dead_letter(stream, letters)
    keep = np.ones(rows.num_rows, dtype=bool)
    keep[index] = False
    return rows.filter(pa.array(keep)), offsets[keep]

"""Rows a SQL dialect cannot hold at all, set aside as dead letters before a write.

A :class:`~replicant.destinations._sql_base.TypeMapper` that knows up front that some
values have no representation in its dialect (MariaDB: a date before year 1 or after 9999,
``±infinity``, a ``NaN`` double) names those rows in :meth:`TypeMapper.refused`. The write
then stores each such row in the dead-letter store, with the reason and its origin (the
stream's log offset and the row's source position), and applies the rest of the batch.

Without a dead-letter store the write fails with a :class:`FatalError` naming the first
such value, and nothing of the batch is written (a clear error, never silent loss).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa

from replicant.destinations.base import Destination
from replicant.errors import FatalError
from replicant.model import DeadLetter, Stream

__all__ = ["set_aside"]

log = logging.getLogger(__name__)


def set_aside(dest: Destination, stream: Stream, data: pa.Table, refused: dict[int, str], *, last_offset: int,
              where: str) -> pa.Table:
    """Dead-letters the rows of ``data`` named in ``refused`` (row index → reason) and
    returns the others. Row ``i`` of ``data`` has log offset ``last_offset - len(data) + 1 + i``.
    ``where`` names the target table in messages.

    Per-row Python runs over the refused rows only (rare by nature).

    Raises:
        FatalError: there are such rows and no dead-letter store.
    """
    if not refused:
        return data
    if dest.dead_letter is None:
        raise FatalError(
            f"destination {dest.name!r}, stream {stream.name!r}, table {where}: {len(refused)} records hold values it "
            f"cannot store and there is no dead-letter store; first: {refused[min(refused)]}"
        )
    from replicant.destinations.records import row_json  # records imports the type mappers, which import this

    rows = sorted(refused)
    first = last_offset - data.num_rows + 1
    texts = row_json(data.take(pa.array(rows, pa.int64()))).to_pylist()
    letters = []
    for i, text in zip(rows, texts):
        record = json.loads(text)
        origin = f"log offset {first + i}, position {record.get('_pos')}"
        letters.append(DeadLetter(reason=refused[i], payload=record, origin=origin, destination=dest.name))
    log.warning("destination %r, stream %r: %d records hold values it cannot store, sent to dead letters",
                dest.name, stream.name, len(letters))
    dest.dead_letter(stream, letters)
    keep = np.ones(data.num_rows, dtype=bool)
    keep[rows] = False
    return data.filter(pa.array(keep))

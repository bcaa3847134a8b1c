"""The source contract.

A source lists its streams and reads one stream from a saved position as an iterator of
:class:`ReadBatch`. The resume rule, where resume bugs live:

    Each ``ReadBatch.position`` is the position *after the last row of that batch*.
    ``read(stream, position)`` must yield exactly the rows that come after ``position``:
    none of the rows already returned up to that batch, and none skipped.
    ``read(stream, None)`` starts from the beginning (a new snapshot in ``full`` mode,
    the first cursor value in ``cursor`` mode).

A source that cannot resume in the middle of a stream (a table without a key in ``full``
mode) returns ``resumable=False`` positions; the engine then restarts that stream from
``None`` after a crash and marks the interrupted snapshot as aborted in the log.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from replicant.model import Position, Stream

__all__ = ["Capabilities", "ReadBatch", "Source"]


@dataclass(frozen=True)
class Capabilities:
    """What a source can do; checked by the engine instead of ``isinstance``."""

    modes: frozenset[str] = frozenset({"full"})
    chunked: bool = False  #: full reads resume at the chunk where they stopped


@dataclass(frozen=True)
class ReadBatch:
    """One batch from a source.

    Attributes:
        data: a change batch (data columns plus ``_op``, ``_pos``, ``_ts``; see
            :mod:`replicant.model`). May have zero rows (e.g. the last, empty page).
        position: where to resume to get the rows after this batch.
        resumable: False when ``position`` cannot be resumed from (mid-way through an
            unkeyed full read); the stream must then restart from ``None``.
        final: True on the last batch of a ``full`` snapshot (marks the snapshot complete).
    """

    data: pa.RecordBatch
    position: Position
    resumable: bool = True
    final: bool = False


class Source(ABC):
    """Base of all sources. Subclasses set :attr:`capabilities` and implement three methods.

    Construction must not connect; :meth:`discover` and :meth:`read` connect lazily, and
    :meth:`close` releases everything. Driver errors are translated at this boundary into
    :mod:`replicant.errors` (wrong password → ``ConnectionError`` naming host and user).
    """

    capabilities: Capabilities = Capabilities()

    @abstractmethod
    def discover(self) -> list[Stream]:
        """Every table (or file set…) this source can read, with columns, types and keys.

        The returned streams have ``mode="full"``; the engine applies the pipeline's per
        stream settings (mode, cursor, primary_key, include/exclude) on top.
        """

    @abstractmethod
    def read(self, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        """Reads ``stream`` after ``position`` until caught up, then returns.

        The batches' data follows ``stream.change_schema`` exactly (same names, types and
        order), so every batch of a stream can go in one Arrow IPC stream.
        """

    def estimate_rows(self, stream: Stream) -> int | None:
        """A cheap estimate of the rows a full read returns (table statistics), for progress
        bars; None when unknown. Must not scan the table."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Releases connections. Idempotent."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

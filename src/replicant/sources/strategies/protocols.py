"""What read strategies need of a source: small protocols with public names.

A strategy never touches a source's private members; a source that implements one of these
gets the strategies that need it (and declares them in ``capabilities.modes``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pyarrow as pa

from replicant.errors import FatalError
from replicant.model import Position, ReadBatch, Stream

if TYPE_CHECKING:
    from replicant.config import SourceConfig
    from replicant.sources.base import Capabilities
    from replicant.sources.strategies.trigger_sql import TriggerSQL
    from replicant.sources.types import Column

__all__ = ["RangeReader", "ReadStrategy", "TriggerSource", "last_values", "sizes"]


class ReadStrategy(Protocol):
    """A strategy module (:mod:`replicant.sources.strategies`)."""

    def read(self, source: Any, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        """Reads ``stream`` after ``position`` (the resume rule of :mod:`replicant.sources.base`)."""
        ...

    def acknowledge(self, source: Any, stream: Stream, position: Position) -> None:
        """``position`` is durable in the staging log (idempotent; see ``Source.acknowledge``)."""
        ...

    def snapshot_again(self, position: Position) -> Position | None:
        """The position from which a stream at ``position`` reads every row again (an added
        column filled the existing rows, see ``Source.filled_columns``), changes after it
        included; None: from the start."""
        ...


@runtime_checkable
class RangeReader(Protocol):
    """Ordered range reads of a table: what ``full`` (keyset chunks) and ``cursor`` need."""

    config: SourceConfig
    capabilities: Capabilities

    def read_range(
        self,
        stream: Stream,
        order: Sequence[str],
        *,
        after: Sequence[Any] | None = None,
        inclusive: bool = False,
        limit: int | None = None,
        batch_size: int,
    ) -> Iterator[pa.RecordBatch]:
        """The rows of ``stream`` in ``order`` (column names), as batches of exactly ``batch_size``
        rows (the last may be shorter) following ``stream.schema``.

        Args:
            order: the sort columns; empty: the table's own order (an unkeyed snapshot).
            after: only rows whose first ``len(after)`` order columns compare greater than
                these Python values (``>=`` with ``inclusive``); values are bound as
                parameters of each column's own type. None: from the start, skipping rows
                whose first order column is NULL.
            limit: at most this many rows (one key-range chunk); None: all.

        Raises:
            FatalError: the table or a column is gone, or a value does not fit its type.
            ConnectionError, RetriableError: the database cannot be reached.
        """
        ...


@runtime_checkable
class TriggerSource(RangeReader, Protocol):
    """What ``mode: trigger`` needs: range reads, plain SQL, the catalog's columns and the
    dialect's trigger DDL (a full read for the first snapshot goes through ``Source.read``)."""

    def quote(self, name: str) -> str:
        """``name`` as a quoted identifier."""
        ...

    def display(self, table: tuple[str, ...]) -> str:
        """A table's quoted, qualified name (used by the dialect's :class:`TriggerSQL`)."""
        ...

    def fetchall(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Runs one statement; its rows. Driver errors as :mod:`replicant.errors`."""
        ...

    def columns(self, stream: Stream) -> list[Column]:
        """The catalog's columns of ``stream.schema``, in that order (their SQL types and the
        select expression each is read with).

        Raises:
            FatalError: the table or a column is gone.
        """
        ...

    def query_batches(self, stream: Stream, sql: str, columns: list[Column], batch_size: int) -> Iterator[pa.RecordBatch]:
        """Runs a SELECT of ``stream``'s table whose result columns are ``columns`` (each read
        with its ``select`` expression); batches of exactly ``batch_size`` rows."""
        ...

    def trigger_sql(self, stream: Stream) -> TriggerSQL:
        """The dialect's shadow table and triggers of ``stream``."""
        ...

    def read(self, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        """The source contract's read (a ``full`` one for the first snapshot)."""
        ...


def sizes(source: Any, stream: Stream) -> tuple[int, int]:
    """``(batch_size, chunk_size)`` of ``stream``: its own options, else the source's."""
    cfg = source.config
    return (int(stream.options.get("batch_size") or cfg.batch_size),
            int(stream.options.get("chunk_size") or cfg.chunk_size))


def last_values(batch: pa.RecordBatch, names: Sequence[str], row: int = -1) -> list[Any]:
    """The values of ``names`` in one row (the last by default) as Python values.

    Raises:
        FatalError: a value has no Python form that can order a keyset (PostgreSQL ±infinity).
    """
    i = row if row >= 0 else batch.num_rows + row
    out = []
    for n in names:
        scalar = batch.column(n)[i]
        try:
            out.append(scalar.as_py())
        except (OverflowError, ValueError):
            raise FatalError(
                f"key or cursor column {n!r} holds {scalar.cast(pa.int64()) if scalar.is_valid else scalar} "
                "(±infinity?), which cannot be kept in a position; choose another key or cursor column"
            ) from None
    return out

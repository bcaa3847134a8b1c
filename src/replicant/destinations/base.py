"""The destination contract.

A destination applies change batches read from the staging log and remembers, per stream,
the last log offset it applied. The exactly-once rule:

    A transactional destination records ``last_offset`` in its own ``_replicant_offsets``
    table *in the same transaction* as the rows of that write. After a crash,
    :meth:`Destination.applied_offset` returns the last offset whose rows are committed,
    and the engine re-delivers from the offset after it: nothing lost, nothing doubled.

Writes, chosen per destination with ``write:``:

``append``
    Insert every row (deletes are inserted too only if the table keeps ``_op``; by
    default rows whose ``_op`` is ``delete`` are skipped).
``merge``
    Upsert by the stream's key: within one write the last change per key wins; rows
    whose ``_op`` is ``delete`` delete the key.
``replace``
    Rows of a snapshot go into a pending table (:meth:`begin_replace`); the visible table
    stays readable and unchanged until :meth:`commit_replace` swaps it in atomically.

Tables are created from the stream's Arrow schema (see each module's type mapping; a
field's ``replicant.sql_type`` metadata is used when source and destination share a
dialect). Identifiers are always quoted by the dialect; values are always parameters or
bulk-loaded, never spliced into SQL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import pyarrow as pa

from replicant.model import Stream

__all__ = ["Capabilities", "Destination", "OFFSETS_TABLE", "WRITE_MODES"]

WRITE_MODES = ("append", "merge", "replace")
OFFSETS_TABLE = "_replicant_offsets"


@dataclass(frozen=True)
class Capabilities:
    """What a destination can do; checked by the engine instead of ``isinstance``."""

    transactional: bool = True  #: data and offset commit together
    merge: bool = True
    deletes: bool = True
    replace: bool = True
    bulk_load: bool = True


class Destination(ABC):
    """Base of all destinations.

    Args:
        config: the destination's :class:`replicant.config.DestinationConfig` (name, type,
            write, url/path, schema…), with secrets already resolved.
        pipeline: the pipeline name, part of the offsets table key.

    Construction must not connect; :meth:`open` does. Driver errors are translated here
    into :mod:`replicant.errors`.
    """

    capabilities: Capabilities = Capabilities()

    def __init__(self, config, *, pipeline: str) -> None:
        self.config = config
        self.name: str = config.name
        self.pipeline = pipeline

    @abstractmethod
    def open(self) -> None:
        """Connects and creates the offsets table if missing."""

    @abstractmethod
    def applied_offset(self, stream: Stream) -> int:
        """The last log offset applied for ``stream`` (inclusive), or -1 if none."""

    @abstractmethod
    def prepare(self, stream: Stream) -> None:
        """Creates the stream's table from ``stream.schema`` if missing (idempotent).

        The destination table name is ``stream.table_name`` in the configured schema.
        A table that exists with the same columns is used as it is.
        """

    @abstractmethod
    def write(self, stream: Stream, data: pa.Table, *, last_offset: int) -> None:
        """Applies ``data`` (a change batch table) by the configured write mode and records
        ``last_offset`` in the same transaction (except under ``replace``, where rows go to
        the pending table and the offset is recorded by :meth:`commit_replace`)."""

    @abstractmethod
    def begin_replace(self, stream: Stream) -> None:
        """Starts a new, empty pending table for ``stream`` (dropping a leftover one)."""

    @abstractmethod
    def commit_replace(self, stream: Stream, *, last_offset: int) -> None:
        """Atomically swaps the pending table in and records ``last_offset``."""

    def require_key(self, stream: Stream) -> None:
        """Raises ``FatalError`` if ``write: merge`` meets a stream without key columns."""
        if self.config.write == "merge" and not stream.primary_key:
            from replicant.errors import FatalError

            raise FatalError(
                f"destination {self.name!r}, stream {stream.name!r}: `write: merge` needs a key and the table has "
                f"none; set `primary_key:` for this stream in the pipeline file"
            )

    def record_offset(self, stream: Stream, last_offset: int) -> None:
        """Records ``last_offset`` with no data (markers, empty batches). Default: an empty write."""
        self.write(stream, stream.change_schema.empty_table(), last_offset=last_offset)

    def close(self) -> None:  # noqa: B027
        """Releases connections. Idempotent."""

    def __enter__(self) -> "Destination":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

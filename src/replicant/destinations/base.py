"""The destination contract.

A destination applies change batches read from the staging log and remembers, per stream,
the last log offset it applied. The exactly-once rule:

    A transactional destination records ``last_offset`` in its own ``_replicant_offsets``
    table *in the same transaction* as the rows of that write. After a crash,
    :meth:`Destination.applied_offset` returns the last offset whose rows are committed,
    and the engine re-delivers from the offset after it: nothing lost, nothing doubled.
    The offset row is fenced: a write whose idea of the previous offset is stale (another
    writer delivered the stream meanwhile) is refused whole with
    :class:`~replicant.errors.DestinationFencedError`.

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

Non-transactional destinations (``Capabilities.transactional`` False: HTTP, files, NATS)
cannot store an offset with the data. For them the engine keeps the applied offset in the
state store, written after :meth:`Destination.write` returns, and calls ``write`` once per
*log record*: the rows of a call are exactly the offsets ``last_offset - num_rows + 1 ..
last_offset``, the same on every retry, restart and replay. Cut requests or files from that
first offset (``batch_size`` rows each) and name them after their range. ``applied_offset``
of such a destination returns -1 (the engine does not ask it).

Tables are named by :meth:`Destination.target_table` (the destination's ``tables:``, by
default the source table's name) and created from the stream's Arrow schema by the
dialect's :class:`~replicant.destinations._sql_base.TypeMapper` (a field's
``replicant.sql_type`` metadata is used when source and destination share a dialect). The
SQL destinations share one implementation of this contract,
:class:`~replicant.destinations._sql_base.SQLDestination`. Identifiers are always quoted by
the dialect; values are always parameters or bulk-loaded, never spliced into SQL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel

from replicant.model import ConnectorContext, DeadLetterSink, Stream

__all__ = ["OFFSETS_TABLE", "WRITE_MODES", "Capabilities", "Destination", "positive_seconds"]

WRITE_MODES = ("append", "merge", "replace")
OFFSETS_TABLE = "_replicant_offsets"


def positive_seconds(value: float | str) -> float:
    """A settings duration (seconds, or ``'90s'``, ``'5m'``…) that must be more than zero.

    Raises:
        ValueError: not a duration, or not more than 0 seconds (pydantic reports it with the key path).
    """
    from replicant.config import parse_duration

    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be more than 0 seconds")
    return seconds


@dataclass(frozen=True)
class Capabilities:
    """What a destination can do; read instead of ``isinstance`` or method-override checks.

    Readers: ``transactional`` by the engine and :mod:`replicant.delivery` (where the applied
    offset is kept); ``concurrent_writers`` (how many delivery workers) and
    ``in_process_engine`` (Arrow's allocator) by the engine; ``full_writes`` by delivery;
    ``merge`` and ``replace`` by :class:`Destination` at construction (a
    ``write:`` the destination cannot do is a :class:`~replicant.errors.ConfigError`);
    ``truncate`` by delivery (a non-transactional destination that cannot truncate skips
    the marker). The conformance suite (tests/destinations/test_conformance.py) picks its
    checks by these flags. ``merge``/``replace`` are also checked when the pipeline file is
    parsed (:mod:`replicant.config`), with the key path.
    """

    transactional: bool = True  #: data and offset commit together (:meth:`Destination.applied_offset` is exact)
    merge: bool = True  #: ``write: merge`` (upsert by key, deletes applied)
    replace: bool = True  #: ``write: replace`` (pending table + atomic swap)
    truncate: bool = False  #: :meth:`Destination.truncate` applies a source TRUNCATE
    #: several objects of it (each its own connection) may write different streams at once: a
    #: server database. The engine then delivers up to ``parallelism`` streams at once, each
    #: stream by exactly one object (its order and its offset row's fence unchanged).
    concurrent_writers: bool = False
    #: a database engine running inside this process (DuckDB), whose memory shares the run's
    #: budget: the engine has Arrow return freed pages at once
    #: (:func:`replicant.memory.return_freed_pages_at_once`) instead of after a short decay.
    in_process_engine: bool = False
    #: a write shorter than its ``batch_rows`` costs more than waiting for the rows: while a
    #: stream is read, delivery holds its snapshot rows for a full write (DuckDB: a row group
    #: written whole, not through the WAL and again at the checkpoint). Off elsewhere: the rows
    #: held cost memory (PostgreSQL wide 1M: 219–236 → 248–269 MB peak RSS) for no measured gain.
    full_writes: bool = False


class Destination(ABC):
    """Base of all destinations.

    Args:
        config: the destination's :class:`replicant.config.DestinationConfig` (name, type,
            write, url/path, schema…), with secrets already resolved.
        context: where it runs (:class:`replicant.model.ConnectorContext`): the pipeline name
            (part of the offsets table key) and the dead-letter sink. Nothing is set on a
            destination from outside after construction.

    Construction must not connect; :meth:`open` does. Driver errors are translated here
    into :mod:`replicant.errors`.
    """

    capabilities: Capabilities = Capabilities()

    #: A pydantic model (``extra="forbid"``) of this type's own keys in the pipeline file
    #: (``method``, ``headers``, ``format``…), or None when it has none. Validated at load
    #: time with key paths; the validated instance is :attr:`options`.
    settings: ClassVar[type[BaseModel] | None] = None

    def __init__(self, config: Any, context: ConnectorContext) -> None:
        self.config = config
        self.name: str = config.name
        self._check_write(config)
        self.context = context
        self.pipeline = context.pipeline
        extras = dict(getattr(config, "model_extra", None) or {})
        settings = type(self).settings
        self.options: Any = settings.model_validate(extras) if settings is not None else None
        #: ``dead_letter(stream, records)`` stores rejected records
        #: (:class:`replicant.model.DeadLetter`) and counts them; None when the context
        #: gives no sink (a destination that rejects a record then raises instead).
        self.dead_letter: DeadLetterSink | None = context.dead_letter

    def _check_write(self, config: Any) -> None:
        allowed = ["append"] + [m for m in ("merge", "replace") if getattr(self.capabilities, m)]
        if config.write is not None and config.write not in allowed:
            from replicant.errors import ConfigError

            raise ConfigError(
                "invalid destination",
                [(f"destinations.{self.name}.write", f"a {config.type} destination cannot `{config.write}`; use {' or '.join(allowed)}")],
            )

    @classmethod
    def resolve_config(cls, config: Any, *, base_dir: Path, pipeline: str, key: str) -> Any:
        """Completes this type's config before construction, without connecting: what a
        relative path means, a default file name, a required key. Errors name ``key``
        (``destinations[1]``). Default: a relative local ``path`` is made absolute against
        ``base_dir`` (the pipeline file's folder)."""
        path = getattr(config, "path", None)
        if path and "://" not in path and not Path(path).is_absolute():
            return config.model_copy(update={"path": str((base_dir / path).resolve())})
        return config

    @abstractmethod
    def open(self) -> None:
        """Connects and creates the offsets table if missing."""

    @abstractmethod
    def applied_offset(self, stream: Stream) -> int:
        """The last log offset applied for ``stream`` (inclusive), or -1 if none."""

    @abstractmethod
    def prepare(self, stream: Stream) -> None:
        """Creates the stream's table from ``stream.schema`` if missing (idempotent).

        The destination table name is :meth:`target_table` in the configured schema.
        A table that exists with the same columns is used as it is.
        """

    @abstractmethod
    def write(self, stream: Stream, data: pa.Table, *, last_offset: int, offsets: pa.Array | None = None) -> None:
        """Applies ``data`` (a change batch table) by the configured write mode and records
        ``last_offset`` in the same transaction (except under ``replace``, where rows go to
        the pending table and the offset is recorded by :meth:`commit_replace`).

        ``offsets``: the log offset of each row, given to transactional destinations (whose
        writes batch several log records); None: the rows are ``last_offset - n + 1 ..
        last_offset`` (always so for a non-transactional destination).

        A record the destination rejects for its content goes to :attr:`dead_letter` with
        the destination's message, the record and its origin (``log offset N, …``), and the
        other rows are written: a poison record never blocks a stream. Without a dead-letter
        sink, or with ``on_bad_record: fail``, the write raises
        :class:`~replicant.errors.FatalError` instead."""

    @abstractmethod
    def begin_replace(self, stream: Stream) -> None:
        """Starts a new, empty pending table for ``stream`` (dropping a leftover one)."""

    @abstractmethod
    def commit_replace(self, stream: Stream, *, last_offset: int) -> None:
        """Atomically swaps the pending table in and records ``last_offset``."""

    def target_table(self, stream: Stream) -> str:
        """The name of the table (or the files' folder name) ``stream`` is written to: the
        destination's ``tables:`` mapping or template applied to it, by default the source
        table's own name (``stream.table_name``)."""
        table_for = getattr(self.config, "table_for", None)
        return table_for(stream.name, stream.table) if table_for is not None else stream.table_name

    def write_mode(self, stream: Stream) -> str:
        """How ``stream`` is written here: ``write:`` of the pipeline file, or when it is not
        set ``merge`` for a keyed stream (if this destination can merge) and ``append`` for a
        keyless one (:meth:`replicant.config.DestinationConfig.write_for`)."""
        write_for = getattr(self.config, "write_for", None)
        if write_for is None:  # a config object without the default rule (tests, the Python API)
            return self.config.write or "append"
        return write_for(stream.primary_key, can_merge=self.capabilities.merge)

    def require_key(self, stream: Stream) -> None:
        """Raises ``FatalError`` if ``write: merge`` meets a stream without key columns."""
        if self.write_mode(stream) == "merge" and not stream.primary_key:
            from replicant.errors import FatalError

            raise FatalError(
                f"destination {self.name!r}, stream {stream.name!r}: `write: merge` needs a key and the table has "
                f"none; set `primary_key:` for this stream in the pipeline file"
            )

    def evolve(self, stream: Stream, old: Stream) -> None:
        """Schema drift while capturing: ``stream.schema`` is the new version of ``old.schema``.
        Adds new nullable columns and widens widened types; raises
        :class:`replicant.errors.SchemaDriftError` saying what to do for anything else.
        Default: refuse every change."""
        from replicant.errors import SchemaDriftError

        raise SchemaDriftError(f"destination {self.name!r} cannot change the table of {stream.name!r}")

    def begin_snapshot(self, stream: Stream, snapshot: str) -> None:  # noqa: B027 - optional hook
        """Delivery reached the start of snapshot ``snapshot`` (the ``snapshot_start`` marker's
        id) of ``stream``; every row before it is written. Rows after it may repeat keys the
        table already holds: a destination with a shortcut for rows into an empty table
        (the SQL fast path) must stop taking it once an earlier snapshot's rows went in.
        Not called under ``write: replace`` (:meth:`begin_replace` is). Default: nothing."""

    def end_snapshot(self, stream: Stream) -> None:  # noqa: B027 - optional hook
        """Delivery wrote the last row of a snapshot of ``stream`` and the offset of its end:
        a destination that put work off during the snapshot's bulk load (PostgreSQL's deferred
        primary key) does it now. Not called under ``write: replace`` (:meth:`commit_replace`
        is). Default: nothing."""

    def truncate(self, stream: Stream, *, last_offset: int) -> None:
        """The source table was truncated (a ``truncate`` log marker at ``last_offset``): remove
        every row of the stream's table and record the offset, in one transaction.
        Only called when ``capabilities.truncate``; the default refuses."""
        from replicant.errors import FatalError

        raise FatalError(f"destination {self.name!r} cannot apply a TRUNCATE of {stream.name!r}")

    def redeliver(self, stream: Stream, data: pa.Table, *, retry_id: str) -> None:
        """Sends dead-lettered records again (``replicant dead-letters retry``): ``data`` is a
        change table rebuilt from their payloads, outside the log's offsets. Records rejected
        again go to :attr:`dead_letter`, as in :meth:`write`. ``retry_id`` names this attempt
        (the same on a repeat of it), for a destination that keys requests or files by it.

        The applied offset must neither move back nor forward. Default: a transactional
        destination applies ``data`` by its write mode and records, in the same transaction,
        the offset it has already applied (the caller holds the staging log's writer lock, so
        no delivery moves it meanwhile); under ``replace`` it refuses (the next snapshot
        rewrites the table). A non-transactional destination refuses unless it overrides this
        (its :meth:`write` names requests, files or messages by log offsets).

        Raises:
            FatalError: this destination cannot re-send records.
        """
        from replicant.errors import FatalError

        if not self.capabilities.transactional:
            raise FatalError(f"destination {self.name!r} cannot re-send dead letters yet; discard them once handled")
        if self.write_mode(stream) == "replace":
            raise FatalError(
                f"destination {self.name!r} writes {stream.name!r} with `replace`: the next snapshot rewrites the table; "
                "discard these dead letters once it has"
            )
        self.write(stream, data, last_offset=self.applied_offset(stream))

    def record_offset(self, stream: Stream, last_offset: int) -> None:
        """Records ``last_offset`` with no data (markers, empty batches). Default: an empty write."""
        self.write(stream, stream.change_schema.empty_table(), last_offset=last_offset)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Releases connections. Idempotent."""

    def __enter__(self) -> Destination:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

The contract, all a new source needs (tests/sources/toy.py is one in 70 lines):

* ``__init__(config, context)``: the ``source:`` section and a
  :class:`~replicant.model.ConnectorContext` (pipeline, tenant, work dir, dead-letter
  sink). Must not connect. The type's own keys are declared by :attr:`Source.settings` and
  arrive validated as :attr:`Source.options`.
* :attr:`Source.capabilities`: the modes it reads (read, not decorative: :meth:`Source.read`
  refuses others, the engine checks stream settings against them).
* :meth:`Source.discover`, :meth:`Source.check`, :meth:`Source.close`.
* for each mode, the protocol its read strategy needs (:mod:`replicant.sources.strategies`):
  ``full`` → :meth:`Source.read_full` or a range reader; ``snapshot_diff`` → nothing more
  than ``full``; ``cursor`` → a range reader; ``trigger`` → a trigger source; ``log`` →
  :meth:`Source.capture` and :meth:`Source.acknowledge_capture`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from replicant.config import SourceConfig, settings_problems
from replicant.errors import ConfigError, FatalError
from replicant.model import ChangeSet, ConnectorContext, Position, ReadBatch, Stream

__all__ = ["Capabilities", "ChangeSet", "ReadBatch", "Source"]


@dataclass(frozen=True)
class Capabilities:
    """What a source can do; checked by the engine instead of ``isinstance``."""

    modes: frozenset[str] = frozenset({"full"})
    #: ``full`` reads of a range reader go in key-range chunks of ``chunk_size`` rows (one
    #: bounded query each) instead of one ordered query (read by ``strategies.full``)
    chunked: bool = False


class Source(ABC):
    """Base of all sources. Subclasses set :attr:`capabilities` and implement :meth:`discover`,
    the protocol of each mode they read (:mod:`replicant.sources.strategies`) and :meth:`close`.

    Construction must not connect; :meth:`discover` and :meth:`read` connect lazily, and
    :meth:`close` releases everything. Driver errors are translated at this boundary into
    :mod:`replicant.errors` (wrong password → ``ConnectionError`` naming host and user).

    Args:
        config: the pipeline file's ``source:`` section (secrets already resolved).
        context: where the source runs: pipeline name, tenant, work dir, dead-letter sink.
            Nothing is set on a source from outside after construction.
    """

    capabilities: Capabilities = Capabilities()

    #: A pydantic model (``extra="forbid"``) of this type's own keys in ``source:`` (``slot``,
    #: ``server_id``, a files source's ``glob``…), or None when it has none. Validated at load
    #: time with key paths (``source.slot: …``) and again at construction; the validated
    #: instance is :attr:`options`.
    settings: ClassVar[type[BaseModel] | None] = None

    def __init__(self, config: SourceConfig, context: ConnectorContext) -> None:
        self.config = config
        self.context = context
        extras = config.options
        model = type(self).settings
        if model is None:
            problems = [(f"source.{k}", f"unknown key for a {config.type} source") for k in extras]
        else:
            problems = settings_problems(model, extras, "source", list(SourceConfig.model_fields))
        if problems:
            raise ConfigError("invalid source", problems)
        #: The validated :attr:`settings` (None without a settings model).
        self.options: Any = model.model_validate(extras) if model is not None else None

    @classmethod
    def resolve_config(cls, config: SourceConfig, *, base_dir: Path) -> SourceConfig:
        """Completes this type's ``source:`` section before construction, without connecting:
        what a relative path means, a required key (errors name ``source.<key>``). Default:
        unchanged."""
        return config

    @property
    def workdir(self) -> Path | None:
        """A private folder for this source's own files (``snapshot_diff`` keeps its previous
        snapshot here), from the context; None when the context gives none."""
        return self.context.workdir

    @abstractmethod
    def discover(self) -> list[Stream]:
        """Every table (or file set…) this source can read, with columns, types and keys.

        The returned streams have ``mode="full"``; the engine applies the pipeline's per
        stream settings (mode, cursor, primary_key, include/exclude) on top.
        """

    def read(self, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        """Reads ``stream`` after ``position`` until caught up, then returns.

        Dispatches to the read strategy registered for ``stream.mode``
        (:mod:`replicant.sources.strategies`); a source declares the modes it can read in
        :attr:`capabilities` and implements the protocol each needs (``full``: :meth:`read_full`
        or a range reader; ``snapshot_diff``: nothing more than ``full``).

        The batches' data follows ``stream.change_schema`` exactly (same names, types and
        order), so every batch of a stream can go in one Arrow IPC stream.

        Raises:
            FatalError: the source cannot read ``stream.mode`` (``log`` is read by :meth:`capture`).
        """
        from replicant.sources.strategies import strategy

        if stream.mode not in self.capabilities.modes:
            raise FatalError(f"stream {stream.name!r}: a {self.config.type} source cannot read mode {stream.mode!r} "
                             f"(it reads {', '.join(sorted(self.capabilities.modes))})")
        return strategy(stream.mode).read(self, stream, position)

    def read_full(self, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        """A ``full`` read of ``stream`` after ``position``, for a source that reads in full on its
        own rather than through a range reader: ``_op`` ``read`` rows, the last batch empty and
        ``final``; positions follow the resume rule (``resumable=False`` when a crash must
        restart the stream)."""
        raise NotImplementedError(f"{type(self).__name__} has no full read")

    def check(self) -> list[str]:
        """Connects and checks what a run of the configured streams needs, without reading data.

        Returns:
            What was checked, one line each (for a CLI or the API).

        Raises:
            ConnectionError: the source cannot be reached, says precisely why (host and port
                unreachable, wrong password for a named user, missing database); never shows
                a password.
            ConfigError: a configured stream's table is missing or not readable (privileges),
                or the source is not set up for a stream's mode; with the key path.
        """
        streams = self.discover()
        return [f"{len(streams)} stream(s) found"]

    def estimate_rows(self, stream: Stream) -> int | None:
        """A cheap estimate of the rows a full read returns (table statistics), for progress
        bars; None when unknown. Must not scan the table."""
        return None

    def filled_columns(self, stream: Stream, names: list[str]) -> dict[str, str]:
        """Of ``names`` (columns of ``stream`` that appeared since it was last read), those that
        can hold a value in rows that existed before they were added, each with why (``DEFAULT
        7``, ``NOT NULL``, ``GENERATED …``): an ``ADD COLUMN … DEFAULT`` fills existing rows
        without a change any incremental read would see, so the engine reads such a stream
        again in full. The default, for sources whose rows are never rewritten (files, APIs):
        none."""
        return {}

    # ------------------------------------------------------------------ change data capture

    def acknowledge(self, stream: Stream, position: Position) -> None:
        """Called by the engine once the batch :meth:`read` returned with ``position`` is durable
        in the staging log; passed on to the stream's read strategy. ``trigger`` purges shadow
        rows up to it; ``snapshot_diff`` promotes the snapshot it just compared. Must be
        idempotent: after a crash it may be called again for an older position, or never for
        the last one."""
        from replicant.sources.strategies import STRATEGIES, strategy

        if stream.mode in STRATEGIES:
            strategy(stream.mode).acknowledge(self, stream, position)

    def capture(
        self,
        streams: list[Stream],
        positions: dict[str, Position | None],
        *,
        resume: Position | None,
        follow: bool,
        stop: threading.Event,
    ) -> Iterator[ChangeSet]:
        """Reads every ``mode: log`` stream through one change feed (a replication slot, a binlog
        connection), snapshotting first the streams whose position is None.

        Args:
            streams: the ``log`` streams.
            positions: per stream, the last position durable in the staging log (None: that
                stream needs its initial snapshot). A change at or before a stream's position
                is already in the log and must not be yielded again for it. A position whose
                ``snapshot`` is ``{"after": None}`` asks for a new snapshot of that stream from
                scratch, after a truncate marker (``ChangeSet.truncated``), its changes up to
                that snapshot skipped: the capture records it itself when a stream must start
                over, and the engine asks it when a column added since the stream was last read
                fills existing rows (:meth:`filled_columns`).
            resume: the last capture position the engine acknowledged (None on the first run).
                Restart the feed from here; everything after it is re-read and filtered per
                stream by ``positions``.
            follow: False: return once caught up with the source's current end. True: keep
                going until ``stop`` is set, yielding by size or after a short time.
            stop: set on shutdown; return promptly (within about a second) without splitting a
                transaction.
        """
        raise NotImplementedError(f"{type(self).__name__} has no log-based capture")

    def acknowledge_capture(self, position: Position) -> None:  # noqa: B027 - optional hook
        """Called once every batch of the change set ending at ``position`` is durable in the log;
        the source may now let the server forget it (confirm a slot's flush LSN). The engine
        stores ``position`` too, and passes it back as ``capture(resume=…)``."""

    def watch(self, streams: list[Stream], stop: threading.Event, on_change: Callable[[list[str]], None]) -> bool:
        """``run --follow``: blocks until ``stop``, calling ``on_change`` with the names of the
        ``streams`` that have something new to read (a file dropped in a watched folder), so they
        are read at once rather than at the next ``poll_interval``. Returns False at once when
        this source cannot watch (the default): the streams are polled as usual."""
        return False

    def current_position(self, stream: Stream) -> Position | None:
        """Where the source is *now* for ``stream`` (``log``: the server's current WAL LSN or
        binlog coordinate; ``trigger``: the shadow table's highest change), compared with saved
        positions by :func:`replicant.sources.positions.reached`; None when the source cannot
        tell (the default), and ``validate`` then pins to the log alone."""
        return None

    def install(self, streams: list[Stream]) -> list[str]:
        """``replicant cdc install``: creates what ``trigger``/``log`` streams need at the source
        (triggers and shadow tables, publication and slot). Idempotent. Returns what it did,
        one line each, for the CLI."""
        return []

    def uninstall(self, streams: list[Stream]) -> list[str]:
        """``replicant cdc uninstall``: removes everything :meth:`install` or a run created."""
        return []

    def cdc_status(self, streams: list[Stream]) -> dict[str, Any]:
        """Extra facts for ``replicant status`` (e.g. ``{"slot lag bytes": 1234}``)."""
        return {}

    def cdc_objects(self) -> dict[str, Any]:
        """``replicant cdc list``: what replicant keeps at the source's server for change capture
        (replication slots, publications, shadow tables), JSON-able, each with its owner
        (``this pipeline`` or not); a ``note`` where the source keeps nothing of the kind.
        Default: such a note."""
        return {"note": f"a {self.config.type} source keeps no replication slots or publications"}

    def drop_slot(self, slot: str | None, publication: str | None, *, force: bool) -> list[str]:
        """``replicant cdc drop-slot``: drops an orphaned replication slot and/or publication;
        returns one line per object dropped. Never an active slot; this pipeline's own only
        with ``force``. Default: refuses (nothing of the kind here)."""
        from replicant.errors import FatalError

        raise FatalError(f"a {self.config.type} source has no replication slots or publications to drop")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Releases connections. Idempotent."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The SQL destination base: one write/replace/truncate/evolve state machine for every dialect.

:class:`SQLDestination` implements the whole :class:`~replicant.destinations.base.Destination`
contract once — which statement runs in which transaction, the fast path, the pending table
of ``replace``, schema drift, the ``_replicant_offsets`` row written *in the same transaction*
as the data, and the error handling (:meth:`SQLDestination.transaction`) — and a dialect is a
small class that supplies primitives: connect, quote, bulk-load rows into a table, merge a
batch of last changes per key, catalog look-ups and DDL, with a :class:`TypeMapper` for Arrow
↔ its types. Adding a dialect means writing those primitives, nothing of the state machine.

The state machine (``write:`` is the configured write mode):

* :meth:`~SQLDestination.prepare` creates the target table (key constraint unless ``append``)
  or adds the stream's new columns, and notes whether it was empty (``fresh``).
* :meth:`~SQLDestination.write`:

  - ``append``: one transaction: :meth:`~SQLDestination.insert` of the rows that are not
    deletes, then :meth:`~SQLDestination.store_offset`.
  - ``merge``: the last change per key is picked (Arrow). **Fast path**: a batch of snapshot
    reads into a ``fresh`` table (empty when prepared, written since only by this object
    with reads of *one* snapshot: :meth:`~SQLDestination.begin_snapshot` of a second one
    after rows went in, or any other write, ends it; the batch is de-duplicated by key first,
    as one write may hold a key twice), or — where the dialect sets :attr:`~SQLDestination.insert_first`
    and the table has a unique key — a batch of distinct new keys without deletes, is
    bulk-inserted with ``new_keys=True``; a dialect that then meets an existing key raises
    :class:`KeyExists`, the transaction is rolled back, the table leaves the fast path for
    good, and the batch is merged. Otherwise one transaction: :meth:`~SQLDestination.merge`
    then the offset.
  - **Deferred key** (where the dialect sets :attr:`~SQLDestination.defer_key`): a ``merge``
    table this object creates for a keyed stream (not a tenant's: tenants share tables) is
    created without its primary key (:meth:`~SQLDestination.create_deferred`, which marks
    it), so the fast path's bulk load does not maintain an index row by row; the key is
    built (:meth:`~SQLDestination.build_key`: duplicate keys a resumed, overlapping chunk
    appended are removed first, the row written last kept) when the fast path ends — a batch
    that is not all reads, :meth:`~SQLDestination.begin_snapshot` after rows went in,
    :meth:`~SQLDestination.evolve`, :meth:`~SQLDestination.end_snapshot`,
    :meth:`~SQLDestination.settle_keys` (the dialect's ``close``) — and before anything else is written to a marked table that is not empty
    when prepared: a crash between the load and the key leaves exactly that.
  - ``replace``: rows go into the pending table (committed without an offset).

* :meth:`~SQLDestination.begin_replace` (re)creates the pending table;
  :meth:`~SQLDestination.commit_replace` swaps it in and records the offset, in one
  transaction where the dialect's DDL is transactional.
* :meth:`~SQLDestination.truncate` empties the table (and a pending one) with the offset.
* :meth:`~SQLDestination.evolve` follows schema drift (rules in
  :mod:`replicant.destinations.drift`) on the table and a pending one, then re-prepares.

The offset row is fenced: every write that records an offset (all modes, ``commit_replace``,
``truncate``) goes through :meth:`~SQLDestination.store_offset`, a compare-and-set against the
offset this object last read (:meth:`~SQLDestination.applied_offset`) or stored. In the write
transaction, after the data statements, it locks the stream's row (``SELECT … FOR UPDATE``
where the dialect locks rows; SQLite's ``BEGIN IMMEDIATE`` holds the database's write lock;
DuckDB fails the later of two concurrent writes of the row) and compares:
a writer whose idea of the previous offset is stale — a worker whose lease was taken over and
another worker delivered the same log range, a second run of the same pipeline — raises
:class:`~replicant.errors.DestinationFencedError` and its whole transaction, rows included,
is rolled back, so an ``append`` table never takes a range twice. Before a stream's first
write the row is inserted with offset -1 unless it exists (``ON CONFLICT DO NOTHING``; MariaDB:
``ON DUPLICATE KEY UPDATE`` a no-op) so there is a row to lock: a concurrent first writer waits for it, then finds the
offset moved. Row counts are never read (they differ by driver: MariaDB counts *changed*
rows). A deliberate reset (``replicant tenant drop``) sets the row with
:meth:`~SQLDestination.reset_offset`; a replay moves it back through ``store_offset``, from
the offset it read.

Adding a dialect: subclass :class:`SQLDestination`, set ``kind`` (and ``quote_char``,
``nullable``, ``table_options``, ``merge_needs_unique_key``, ``insert_first`` where the
defaults do not fit), write a :class:`TypeMapper`, and implement ``connected``, ``connect``,
``close``, ``begin``/``commit``/``rollback``, ``translate``, ``execute``/``query``,
``columns``, ``has_unique_key``, ``insert``, ``merge`` and ``apply_evolution``; override
``swap``, ``delete_all``, ``pending_name``, ``fold`` or ``create_table`` only for a dialect
quirk; with ``defer_key``, ``create_deferred``, ``key_deferred`` and ``build_key`` too (and
call :meth:`~SQLDestination.settle_keys` from ``close``). Register it in :mod:`replicant.registry` and add its line to the conformance suite
(tests/destinations/test_conformance.py).

Errors: every statement runs inside :meth:`~SQLDestination.transaction`, which commits, or
rolls back and translates: driver errors through the dialect's :meth:`~SQLDestination.translate`
(connection lost, deadlock → :class:`~replicant.errors.RetriableError`, the rest
:class:`~replicant.errors.FatalError`), except those the dialect's
:meth:`~SQLDestination.is_content_error` calls the rows' fault (and Arrow's ``ArrowInvalid``,
a value the encoder cannot convert), raised as :class:`~replicant.errors.RecordError`; each
names the destination, stream, table and step; interrupts and bugs are rolled back and
re-raised. :meth:`~SQLDestination.write` turns a ``RecordError`` into dead letters and
writes the other rows (:mod:`replicant.destinations._bad_records`).
"""

from __future__ import annotations

import contextlib
import logging
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from replicant.config import normalize_url
from replicant.destinations import _bad_records
from replicant.destinations._changes import (
    all_reads,
    delete_mask,
    last_change_per_key,
    without_deletes,
)
from replicant.destinations._sql_parts import ColumnInfo, Encoded, KeyExists, Table, TypeMapper
from replicant.destinations._tenant_rows import ddl_lock, delete_tenant_rows, tenant_where
from replicant.destinations.base import Capabilities, Destination
from replicant.destinations.drift import Plan, plan
from replicant.errors import ConfigError, DestinationFencedError, FatalError, RecordError, ReplicantError
from replicant.model import ConnectorContext, Stream
from replicant.tenants.config import TENANT_COLUMN

__all__ = ["EXCLUDE_HINT", "PENDING_SUFFIX", "ColumnInfo", "Encoded", "KeyExists", "SQLDestination", "Table", "TypeMapper"]

PENDING_SUFFIX = "__replicant_pending"

log = logging.getLogger(__name__)


class SQLDestination(Destination):
    """A transactional SQL destination; subclasses supply the dialect primitives below.

    Class attributes a dialect sets: :attr:`types` (built in ``__init__``/``connect``),
    :attr:`merge_needs_unique_key` (merge statements need a key constraint: an existing
    table without one is refused) and :attr:`insert_first` (see the module docstring).
    """

    capabilities = Capabilities(transactional=True, merge=True, replace=True, truncate=True)
    #: Merging needs a primary key or unique index on the key (ON CONFLICT, ON DUPLICATE KEY).
    merge_needs_unique_key: ClassVar[bool] = False
    #: Try a plain bulk insert of batches of new keys into a table with a unique key.
    insert_first: ClassVar[bool] = False
    #: Create a new ``merge`` table without its primary key and build the key when the fast
    #: path's bulk load ends (the module docstring: deferred key).
    defer_key: ClassVar[bool] = False
    #: A word for messages: ``PostgreSQL``, ``SQLite``…
    kind: ClassVar[str] = "SQL"
    #: The file suffix of an embedded database (DuckDB, SQLite), whose ``path`` defaults to
    #: ``<pipeline>.<suffix>`` beside the pipeline file; None for a server reached by ``url``.
    embedded_suffix: ClassVar[str | None] = None
    #: What a nullable column's DDL ends with (MySQL spells ``NULL`` out: some types default
    #: to ``NOT NULL`` there), and what follows a ``CREATE TABLE``'s column list.
    nullable: ClassVar[str] = ""
    table_options: ClassVar[str] = ""

    #: How :meth:`fold` compares column names, for messages.
    name_rule: ClassVar[str] = "ignoring case"
    #: The identifier quote (MySQL: a backtick), and a query parameter's marker (``%s``, ``$1``).
    quote_char: ClassVar[str] = '"'
    param_marker: ClassVar[str] = "?"

    types: TypeMapper
    #: The schema (MySQL: database) holding the tables; set by ``__init__`` or :meth:`connect`.
    schema: str = ""

    @classmethod
    def resolve_config(cls, config: Any, *, base_dir: Path, pipeline: str, key: str) -> Any:
        """An embedded database gets an absolute ``path`` (from ``path``, a ``sqlite:///`` style
        ``url``, or ``<pipeline>.<suffix>``); a server needs a supported ``url``."""
        if cls.embedded_suffix is not None:
            path = config.path
            if path is None and config.url is not None:
                path = config.url.get_secret_value().partition(":///")[2] or None
            p = Path(path or f"{pipeline}.{cls.embedded_suffix}")
            return config.model_copy(update={"path": str(p if p.is_absolute() else (base_dir / p).resolve())})
        if config.url is None:
            raise ConfigError("invalid pipeline file", [(f"{key}.url", f"a {config.type} destination needs `url:`")])
        try:
            normalize_url(config.url.get_secret_value())
        except ConfigError as e:
            raise ConfigError("invalid pipeline file", [(f"{key}.{k}", m) for k, m in e.problems]) from None
        return config

    def __init__(self, config: Any, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self._tables: dict[str, Table] = {}
        self._pending: dict[str, Table] = {}
        #: ``SELECT log_offset …``, the same locking the row (``… FOR UPDATE`` where the dialect
        #: locks rows), the offset upsert, and the insert of a stream's row with offset -1 unless
        #: it exists, with parameters (pipeline, stream[, offset]) in the driver's style; set by
        #: :meth:`connect`.
        self.offset_select = ""
        self.offset_lock = ""
        self.offset_upsert = ""
        self.offset_insert = ""
        #: optional: the update of a stream's row that :meth:`store_offset` has just locked, with
        #: the upsert's parameters, where the dialect's upsert costs more (DuckDB)
        self.offset_update = ""
        #: Per log stream, the offset this object last read or stored (committed), which
        #: :meth:`store_offset` expects to find; and what the open transaction stores.
        self._offsets: dict[str, int] = {}
        self._staged: dict[str, int] = {}

    # ------------------------------------------------------------------ dialect primitives

    @property
    @abstractmethod
    def connected(self) -> bool:
        """Whether a connection is open."""

    @abstractmethod
    def connect(self) -> None:
        """Connects, sets the session up, creates the schema and the offsets table if
        missing, and sets :attr:`offset_select`, :attr:`offset_lock`, :attr:`offset_upsert`
        and :attr:`offset_insert`.

        Raises:
            ConnectionError: naming host (or file), never the password.
        """

    @abstractmethod
    def begin(self) -> None:
        """Starts a transaction (a no-op for drivers that are never in autocommit)."""

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None:
        """Rolls back; closes the connection if that fails (the next call reconnects)."""

    @abstractmethod
    def translate(self, error: Exception, where: str) -> ReplicantError | None:
        """The replicant error for a driver error (``where`` names destination, stream,
        table and step), or None when ``error`` is not the driver's. May close the
        connection (lost, killed) so that the next call reconnects."""

    def is_content_error(self, error: Exception) -> bool:
        """Whether the driver error ``error`` rejects the written *values* (a data exception,
        a constraint): the dialect's one classification seam for dead letters. Default: never."""
        return False

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Runs a statement that returns no rows."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Runs a statement and returns its rows."""

    def quote(self, name: str) -> str:
        """The identifier ``name`` in :attr:`quote_char` (the character inside doubled)."""
        q = self.quote_char
        return q + name.replace(q, q + q) + q

    def qualified(self, table: str) -> str:
        """The quoted name of ``table`` in :attr:`schema`."""
        return f"{self.quote(self.schema)}.{self.quote(table)}"

    @abstractmethod
    def columns(self, table: str) -> dict[str, ColumnInfo] | None:
        """The table's columns by folded name, in table order, or None if it does not exist."""

    @abstractmethod
    def has_unique_key(self, table: str, key: Sequence[str]) -> bool:
        """Whether a primary key or unique index covers exactly ``key``."""

    def create_table(self, table: str, stream: Stream, key: Sequence[str]) -> None:
        """``CREATE TABLE`` from ``stream.schema`` (types by :attr:`types`; the stream's key
        columns ``NOT NULL``, the others :attr:`nullable`), with a primary key on ``key``
        when given (empty: none), and :attr:`table_options`."""
        keys = {self.fold(k) for k in stream.primary_key}
        cols = []
        for f in stream.schema:
            is_key = self.fold(f.name) in keys
            ddl = self.types.ddl_type(f, stream.schema, key=is_key)
            cols.append(f"{self.quote(f.name)} {ddl}{' NOT NULL' if is_key else self.nullable}")
        if key:
            cols.append(f"PRIMARY KEY ({', '.join(self.quote(k) for k in key)})")
        self.execute(f"CREATE TABLE {self.qualified(table)} ({', '.join(cols)}){self.table_options}")

    def create_deferred(self, table: str, stream: Stream, key: Sequence[str]) -> None:
        """Like :meth:`create_table` with the ``key`` columns ``NOT NULL`` but no key
        constraint, and marks the table as one whose key :meth:`build_key` is to build (the
        mark commits with the table). Only called where :attr:`defer_key` is set."""
        raise NotImplementedError

    def key_deferred(self, table: str) -> bool:
        """Whether ``table`` carries the mark of :meth:`create_deferred` and has no primary
        key yet (a table made without a key by hand is never one). Default: never."""
        return False

    def build_key(self, table: str, key: Sequence[str], *, dedupe: bool) -> None:
        """In the open transaction: adds the primary key on ``key`` as :meth:`create_table`
        declares it and removes the mark. ``dedupe``: first removes the rows whose ``key`` a
        row written later also holds (a resumed chunk appended over the fast path); without
        it, a key held twice raises :class:`KeyExists` (the caller then dedupes: the common
        case pays no self-join)."""
        raise NotImplementedError

    @abstractmethod
    def insert(self, table: Table, rows: pa.Table, *, new_keys: bool = False) -> None:
        """Bulk-loads ``rows`` (data columns only, no deletes) into ``table``, in the open
        transaction. ``new_keys``: the caller expects none of the keys to exist; raise
        :class:`KeyExists` if one does (or overwrite it, where the loader can)."""

    @abstractmethod
    def merge(self, table: Table, changes: pa.Table) -> None:
        """Applies ``changes`` (a change table holding at most one change per key of
        ``table.key``, at least one row) in the open transaction: rows whose ``_op`` is
        ``delete`` delete their key, the others upsert it (columns of :meth:`Table.nulls`
        set to NULL)."""

    @abstractmethod
    def apply_evolution(self, table: str, columns: dict[str, ColumnInfo], change: Plan, stream: Stream, old: Stream) -> None:
        """Applies ``change`` (new columns, widened ones) to ``table`` in the open transaction;
        a widened column whose current type is neither the old nor the new one (changed by
        hand) is left as it is.

        Raises:
            SchemaDriftError: the table cannot follow (nothing is changed).
        """

    def label(self, table: str) -> str:
        """``table`` as messages name it (default: :meth:`qualified`)."""
        return self.qualified(table)

    def fold(self, name: str) -> str:
        """How the dialect compares column names (default: case-insensitively)."""
        return name.lower()

    def table_name(self, stream: Stream) -> str:
        """The stored name of the stream's table (:meth:`target_table` as the dialect keeps it)."""
        return self.target_table(stream)

    def pending_name(self, table: str) -> str:
        """The pending table of ``replace`` for ``table``; a dialect with a name length limit
        shortens it so that it never clips back to the table's own name."""
        return table + PENDING_SUFFIX

    def check_types(self, schema: pa.Schema) -> None:
        """Called outside any transaction before DDL for ``schema`` (PostgreSQL asks the
        server which declared types exist)."""

    def add_column(self, table: str, f: pa.Field, schema: pa.Schema) -> None:
        """``ALTER TABLE … ADD COLUMN`` (nullable)."""
        self.execute(f"ALTER TABLE {self.qualified(table)} ADD COLUMN {self.quote(f.name)} {self.types.ddl_type(f, schema)}{self.nullable}")

    def delete_all(self, tables: Sequence[str]) -> None:
        """Empties ``tables`` in the open transaction (``DELETE``: transactional everywhere)."""
        for t in tables:
            self.execute(f"DELETE FROM {self.qualified(t)}")

    def swap(self, pending: str, table: str) -> None:
        """Puts ``pending`` in the place of ``table`` (which may not exist), in the open transaction."""
        self.execute(f"DROP TABLE IF EXISTS {self.qualified(table)}")
        self.execute(f"ALTER TABLE {self.qualified(pending)} RENAME TO {self.quote(table)}")

    # ------------------------------------------------------------------ transaction

    @contextlib.contextmanager
    def transaction(self, step: str, stream: Stream | None = None, table: str | None = None) -> Iterator[None]:
        """Runs the body in one transaction: commit on success; on any error roll back, then
        raise a replicant error naming destination, stream, table and ``step`` (driver
        errors through :meth:`translate`, content errors and ``ArrowInvalid`` as RecordError,
        other Arrow conversion errors as FatalError); anything else (an interrupt, a bug,
        :class:`KeyExists`) is rolled back and re-raised as it is. The offsets the body
        stored become this object's expectation once committed."""
        self.open()
        try:
            self.begin()
            yield
            self.commit()
        except BaseException as e:
            self._staged.clear()
            self.rollback()
            if not isinstance(e, Exception) or isinstance(e, (KeyExists, _bad_records.RolledBack)):
                raise
            where = self._where(step, stream, table)
            if isinstance(e, (FatalError, RecordError)):
                raise type(e)(f"{where}: {e}") from e
            if isinstance(e, ReplicantError):
                raise
            translated = self.translate(e, where)
            if translated is not None:
                if self.is_content_error(e):
                    raise RecordError(translated.message) from e
                raise translated from e
            if isinstance(e, pa.ArrowInvalid):  # a value the dialect's encoder cannot convert
                raise RecordError(f"{where}: {type(e).__name__}: {e}") from e
            if isinstance(e, (pa.ArrowException, TypeError, ValueError, OSError)):  # a value Arrow cannot convert
                raise FatalError(f"{where}: {type(e).__name__}: {e}") from e
            raise
        self._offsets.update(self._staged)
        self._staged.clear()

    def _where(self, step: str, stream: Stream | None, table: str | None) -> str:
        parts = [f"{self.kind} destination {self.name!r}"]
        if stream is not None:
            parts.append(f"stream {stream.name!r}")
        if table is not None:
            parts.append(f"table {self.label(table)}")
        return ", ".join(parts) + f" ({step})"

    # ------------------------------------------------------------------ the contract

    def open(self) -> None:
        """Connects (see :meth:`connect`); a no-op when connected."""
        if not self.connected:
            with ddl_lock(self.name):  # it creates the offsets table if missing
                self.connect()

    def applied_offset(self, stream: Stream) -> int:
        """The stream's offset row (-1: none), which also becomes what this object's next
        :meth:`store_offset` of the stream expects to find."""
        with self.transaction("read offset", stream):
            rows = self.query(self.offset_select, (self.pipeline, stream.log_name))
        applied = int(rows[0][0]) if rows else -1
        self._offsets[stream.log_name] = applied
        return applied

    def store_offset(self, stream: Stream, last_offset: int) -> None:
        """Moves the stream's row of ``_replicant_offsets`` to ``last_offset`` if it still
        holds the offset this object last read or stored (the module docstring: the fence).
        Called inside the write transaction after the data statements (the crash point the
        conformance suite injects a failure at, by wrapping this method). An object that has
        not read the stream's offset yet has no expectation: it takes the row as it finds it.

        Raises:
            DestinationFencedError: another writer moved the row; the caller's transaction,
                rows included, is rolled back.
        """
        self._check_offset(stream)  # the row exists from here on
        self.execute(self.offset_update or self.offset_upsert, (self.pipeline, stream.log_name, int(last_offset)))
        self._staged[stream.log_name] = int(last_offset)

    def reset_offset(self, stream: Stream, last_offset: int) -> None:
        """Sets the stream's offset row to ``last_offset`` whatever it holds, in the open
        transaction: a deliberate reset (``replicant tenant drop``), never a delivery's
        write (:meth:`store_offset` fences those)."""
        self.execute(self.offset_upsert, (self.pipeline, stream.log_name, int(last_offset)))
        self._staged[stream.log_name] = int(last_offset)

    def _check_offset(self, stream: Stream) -> None:
        """Locks the stream's offset row in the open transaction and compares it with the
        offset this object expects (see :meth:`store_offset`)."""
        name = stream.log_name
        expected = self._offsets.get(name)
        if expected is None or expected < 0:
            self.execute(self.offset_insert, (self.pipeline, name))  # a row to lock, even before the first write
        rows = self.query(self.offset_lock, (self.pipeline, name))
        found = int(rows[0][0]) if rows else -1
        if expected is not None and found != expected:
            raise DestinationFencedError(
                f"the offset of log stream {name!r} moved under this writer: it expected log offset {expected}, found "
                f"{found}. Another writer delivered the stream meanwhile (a worker that took over this run, or a second "
                "run of the pipeline at the same time); this write was rolled back, rows included, and the next run "
                f"goes on from offset {found + 1}"
            )

    def prepare(self, stream: Stream) -> None:
        """Creates the table if missing, else adds the stream's new columns (nullable).

        Raises:
            FatalError: key columns missing from the stream; ``merge`` into an existing
                table without a unique key where the dialect's merge needs one.
        """
        self._check_key(stream)
        self._check_names(stream)
        name = self.table_name(stream)
        key = tuple(stream.primary_key)
        try:
            self.check_types(stream.schema)
            with ddl_lock(self.name):  # tenants' feeds in one process create the shared table once
                self._prepare(stream, name, key)
        except (RecordError, FatalError) as e:
            if isinstance(e.__cause__, ReplicantError) or e.__cause__ is None:  # our own refusal says what to do
                raise e if f"stream {stream.name!r}" in str(e) else FatalError(f"stream {stream.name!r}: {e}") from e
            raise FatalError(f"{e}; {EXCLUDE_HINT}") from e

    def _prepare(self, stream: Stream, name: str, key: tuple[str, ...]) -> None:
        known = self._tables.get(stream.name)
        deferring = self._defers_key(stream, key)
        with self.transaction("prepare", stream, name):
            columns = self.columns(name)
            if columns is None:
                if deferring:
                    self.create_deferred(name, stream, key)
                else:
                    self.create_table(name, stream, key if self.write_mode(stream) != "append" else ())
                empty = True
            else:
                for f in stream.schema:
                    if self.fold(f.name) not in columns:
                        self.add_column(name, f, stream.schema)
                where, params = tenant_where(self, columns, stream.tenant)  # fresh while it has no row of this tenant
                empty = not self.query(f"SELECT 1 FROM {self.qualified(name)}{where} LIMIT 1", params)
                deferring = deferring and self.key_deferred(name)
            fresh = empty if known is None else known.fresh and empty
            unique = bool(key) and self.has_unique_key(name, key)
            if self.write_mode(stream) == "merge" and key and not unique and self.merge_needs_unique_key:
                raise FatalError(
                    f"table {self.qualified(name)} has no primary key or unique index on ({', '.join(key)}), which "
                    f"`merge` of stream {stream.name!r} needs; add one, or drop the table to have it created"
                )
            columns = self.columns(name) or {}
        table = self._tables[stream.name] = Table(
            name, columns, fresh=fresh, loaded=known is not None and known.loaded, unique=unique,
            insert_first=self.insert_first and unique, key=key, key_pending=deferring,
        )
        if not fresh:  # a load that ended (a crash before the key, a retry): the key before any write
            self._settle_key(stream, table)

    def _defers_key(self, stream: Stream, key: tuple[str, ...]) -> bool:
        """Whether ``stream``'s table is (or would be created) without its key for the fast path:
        :attr:`defer_key`, ``merge`` with a key, and no tenant (tenants' feeds share one table,
        which one tenant's load must not leave keyless for the others)."""
        if not (self.defer_key and key and self.write_mode(stream) == "merge") or stream.tenant is not None:
            return False
        return self.fold(TENANT_COLUMN) not in {self.fold(k) for k in key}

    def _settle_key(self, stream: Stream | None, table: Table) -> None:
        """Builds ``table``'s deferred key (:meth:`build_key`) in its own transaction; from
        then on it is a keyed table (``insert_first`` where the dialect sets it)."""
        if not table.key_pending:
            return
        try:
            with ddl_lock(self.name), self.transaction("build key", stream, table.name):
                self.build_key(table.name, table.key, dedupe=False)
        except KeyExists:
            with ddl_lock(self.name), self.transaction("build key", stream, table.name):
                self.build_key(table.name, table.key, dedupe=True)
        table.key_pending = False
        table.unique = True
        table.insert_first = self.insert_first

    def settle_keys(self) -> None:
        """Builds every deferred key this object still holds, while connected (a dialect with
        :attr:`defer_key` calls it from ``close``: the run's delivery ended). A failure is
        logged, not raised: the table keeps its mark, and the next :meth:`prepare` builds the
        key before writing."""
        for table in self._tables.values():
            if table.key_pending and self.connected:
                try:
                    self._settle_key(None, table)
                except ReplicantError as e:
                    log.warning("%s: the primary key is built when the table is next prepared", e)

    def _check_names(self, stream: Stream) -> None:
        """Refuses column names that are one name here (:meth:`fold`: ``Name`` and ``name``
        where names are case-insensitive), naming them and what to do."""
        seen: dict[str, list[str]] = {}
        for f in stream.schema:
            seen.setdefault(self.fold(f.name), []).append(f.name)
        clashes = [names for names in seen.values() if len(names) > 1]
        if clashes:
            listed = "; ".join(" and ".join(repr(n) for n in names) for names in clashes)
            raise FatalError(
                f"{self.kind} destination {self.name!r}, stream {stream.name!r}: columns {listed} are one column name "
                f"in {self.kind} (which compares names {self.name_rule}); {EXCLUDE_HINT}"
            )

    def _table(self, stream: Stream) -> Table:
        if stream.name not in self._tables:
            self.prepare(stream)
        return self._tables[stream.name]

    def _check_key(self, stream: Stream) -> None:
        names = {self.fold(f.name) for f in stream.schema}
        missing = [k for k in stream.primary_key if self.fold(k) not in names]
        if missing:
            raise FatalError(
                f"destination {self.name!r}, stream {stream.name!r}: key column(s) {', '.join(missing)} are not columns of the stream"
            )

    def write(self, stream: Stream, data: pa.Table, *, last_offset: int, offsets: pa.Array | None = None) -> None:
        """Applies ``data`` by the write mode and records ``last_offset`` in the same
        transaction (under ``replace``: into the pending table, without an offset).

        Rows :meth:`TypeMapper.refused` names (values the dialect cannot hold at all) go to
        the dead letters first. Rows the database rejects for their values (:meth:`is_content_error`) are found by
        bisection in rolled-back transactions, stored as dead letters, and the other rows are
        then written with ``last_offset`` in one transaction
        (:func:`replicant.destinations._bad_records.set_aside`: the rules, and without a
        dead-letter store or with ``on_bad_record: fail``, a FatalError).

        Args:
            offsets: the log offset of each row (a transactional delivery batches several
                log records, with markers between them); None: ``last_offset - n + 1 ..
                last_offset``.
        """
        rows, at = data, _bad_records.row_offsets(data, offsets, last_offset)
        refused = self.types.refused(rows)
        if refused:
            where = self.qualified(self.table_name(stream))
            rows, at = _bad_records.set_aside_refused(self, stream, rows, at, refused, where=where)
        for cumulative in (False, True):  # the second round: rows rejected only next to others
            try:
                self._apply(stream, rows, last_offset)
                return
            except RecordError as e:
                rows, at = _bad_records.set_aside(
                    self, stream, rows, at, e, lambda part: self._probe(stream, part), cumulative=cumulative
                )
        try:
            self._apply(stream, rows, last_offset)
        except RecordError as e:
            raise FatalError(f"{e} (the rows left after setting the rejected ones aside still fail)") from e

    def _probe(self, stream: Stream, rows: pa.Table) -> None:
        """Applies ``rows`` as :meth:`write` would, without the offset, and rolls back.

        Raises:
            RecordError: the database rejects a value of ``rows``.
        """
        mode = self.write_mode(stream)
        target = self._pending[stream.name] if mode == "replace" and stream.name in self._pending else self._table(stream)
        try:
            with self.transaction("write", stream, target.name):
                if mode == "merge":
                    changes = last_change_per_key(rows, target.key)
                    if changes.num_rows:
                        self.merge(target, changes)
                else:
                    self.insert(target, without_deletes(rows))
                raise _bad_records.RolledBack
        except _bad_records.RolledBack:
            return

    def _apply(self, stream: Stream, data: pa.Table, last_offset: int) -> None:
        mode = self.write_mode(stream)
        if mode == "replace":
            pending = self._pending.get(stream.name)
            if pending is None:
                raise FatalError(f"destination {self.name!r}, stream {stream.name!r}: write under `replace` before begin_replace")
            with self.transaction("write", stream, pending.name):
                self.insert(pending, without_deletes(data))
            return
        self.require_key(stream)
        table = self._table(stream)
        if mode == "append":
            with self.transaction("write", stream, table.name):
                self.insert(table, without_deletes(data))
                self.store_offset(stream, last_offset)
            return
        fast = table.fresh and all_reads(data)
        if table.key_pending and not fast:
            self._settle_key(stream, table)
        if fast or (table.insert_first and _new_keys_only(data, table.key)):
            # two snapshots' rows (or an overlapping chunk) may hold a key twice: last one wins
            rows = without_deletes(last_change_per_key(data, table.key) if fast else data)
            try:
                with self.transaction("write", stream, table.name):
                    self.insert(table, rows, new_keys=True)
                    self.store_offset(stream, last_offset)
                table.loaded = table.loaded or (fast and rows.num_rows > 0)
                return
            except KeyExists:
                table.insert_first = False
        table.fresh = False
        with self.transaction("merge", stream, table.name):
            changes = last_change_per_key(data, table.key)
            if changes.num_rows:
                self.merge(table, changes)
            self.store_offset(stream, last_offset)

    def begin_snapshot(self, stream: Stream, snapshot: str) -> None:
        """A new snapshot of ``stream`` starts: a table that took rows through the fast path
        leaves it for good (the new snapshot's keys are mostly there already), and gets its
        deferred key now."""
        table = self._tables.get(stream.name)
        if table is not None and table.loaded:
            table.fresh = False
            self._settle_key(stream, table)

    def end_snapshot(self, stream: Stream) -> None:
        """The snapshot's rows are written: a deferred key is built now."""
        table = self._tables.get(stream.name)
        if table is not None:
            self._settle_key(stream, table)

    def begin_replace(self, stream: Stream) -> None:
        """Creates an empty pending table (dropping a leftover one from a crash)."""
        self._check_key(stream)
        self.check_types(stream.schema)
        name = self.pending_name(self.table_name(stream))
        with self.transaction("begin replace", stream, name):
            self.execute(f"DROP TABLE IF EXISTS {self.qualified(name)}")
            self.create_table(name, stream, tuple(stream.primary_key))
            columns = self.columns(name) or {}
        self._pending[stream.name] = Table(name, columns, fresh=True, key=tuple(stream.primary_key))

    def commit_replace(self, stream: Stream, *, last_offset: int) -> None:
        """Swaps the pending table in and records the offset, in one transaction (readers
        see the old table until the commit; see each dialect's :meth:`swap`)."""
        pending = self._pending.get(stream.name)
        if pending is None:
            raise FatalError(f"destination {self.name!r}, stream {stream.name!r}: commit_replace without begin_replace")
        name = self.table_name(stream)
        with self.transaction("commit replace", stream, name):
            self._check_offset(stream)  # before the swap too: MariaDB's RENAME commits on its own
            self.swap(pending.name, name)
            self.store_offset(stream, last_offset)
            columns = self.columns(name) or {}
            unique = bool(pending.key) and self.has_unique_key(name, pending.key)
        del self._pending[stream.name]
        self._tables[stream.name] = Table(
            name, columns, fresh=False, unique=unique, insert_first=self.insert_first and unique, key=pending.key
        )

    def truncate(self, stream: Stream, *, last_offset: int) -> None:
        """Empties the stream's table (and its pending ``replace`` table; of a tenant's stream,
        only that tenant's rows) and records ``last_offset``, in one transaction."""
        table = self._table(stream)
        pending = self._pending.get(stream.name)
        with self.transaction("truncate", stream, table.name):
            if stream.tenant is not None and tenant_where(self, table.columns, stream.tenant)[0]:
                delete_tenant_rows(self, table.name, stream.tenant)
            else:
                self.delete_all([table.name] + ([pending.name] if pending is not None else []))
            self.store_offset(stream, last_offset)

    def evolve(self, stream: Stream, old: Stream) -> None:
        """Follows the stream from ``old`` to ``stream`` (rules in
        :mod:`replicant.destinations.drift`) on the table and on a pending ``replace``
        table, in one transaction, then re-reads the columns the writes use.

        A column gone from the stream stays in the table; rows written from then on hold
        NULL in it. Idempotent: what the table already has is skipped (a dialect whose DDL
        commits implicitly may be left half-way by a crash; the engine calls it again).

        Raises:
            SchemaDriftError: a change the table cannot follow (nothing is changed).
        """
        # the key is checked by the drift rules (which say what to do) and then by prepare()
        self.check_types(stream.schema)
        self.check_types(old.schema)
        known = self._tables.get(stream.name)
        if known is not None:  # before a rewrite (ALTER … TYPE) makes every row look written at once
            self._settle_key(stream, known)
        name = self.table_name(stream)
        pending = self._pending.get(stream.name)
        with ddl_lock(self.name), self.transaction("evolve", stream, name):
            for table in [name] + ([pending.name] if pending is not None else []):
                columns = self.columns(table)
                if columns is None:
                    if table == name:
                        self.create_table(name, stream, tuple(stream.primary_key) if self.write_mode(stream) != "append" else ())
                    continue
                change = plan(self.name, stream, old, [c.name for c in columns.values()], dialect=self.types.dialect, fold=self.fold)
                self.apply_evolution(table, columns, change, stream, old)
            if pending is not None:
                pending.columns = self.columns(pending.name) or {}
        self.prepare(stream)


#: What to do about columns a destination cannot hold (only options that exist).
EXCLUDE_HINT = (
    "leave such columns out with `exclude:` on the stream in the pipeline file (source.streams[…].exclude), or this "
    "stream out of this destination with its `streams:`; the other streams are delivered meanwhile"
)


def _new_keys_only(data: pa.Table, key: tuple[str, ...]) -> bool:
    """No deletes and no key twice: a plain insert applies the batch if none of its keys exists."""
    if data.num_rows == 0 or pc.any(delete_mask(data)).as_py():
        return False
    return last_change_per_key(data, key).num_rows == data.num_rows



"""SQLite destination: ADBC bulk ingest of Arrow tables (``adbc-driver-sqlite``).

Rows are bound from Arrow buffers by the ADBC SQLite driver (C), never converted row by
row in Python. Columns are first rewritten, with Arrow kernels, into the four types SQLite
stores (see :mod:`replicant.destinations._sqlite_types`): integers, ``REAL``, ``TEXT``, ``BLOB``.

``append``
    Ingest straight into the table (rows whose ``_op`` is ``delete`` skipped).
``merge``
    The last change per key (Arrow ``group_by``) is ingested into a ``TEMP`` staging table,
    then ``DELETE FROM t WHERE (keys) IN (SELECT keys FROM stage WHERE _op = 'delete')``
    and ``INSERT INTO t SELECT … FROM stage WHERE _op <> 'delete' ON CONFLICT (keys) DO
    UPDATE SET c = excluded.c``. Fast path: a write of snapshot reads only, into a table
    that was empty when this object prepared it and that only this object has written
    since, is ingested straight into the table.
``replace``
    Rows go into ``<table>__replicant_pending``; :meth:`SQLiteDestination.commit_replace`
    drops the table and renames the pending one in the same transaction as the offset
    (SQLite DDL is transactional; readers see the old table until the commit, WAL mode).

Every write is one ``BEGIN IMMEDIATE`` … ``COMMIT`` holding the rows and the upsert of
``_replicant_offsets``. The database runs in WAL mode with a 30 s busy timeout. Statements
that return no rows run through ADBC's ``execute_update`` (:meth:`SQLiteDestination.execute`).

One SQLite per file per process: the ADBC driver links its own copy of SQLite (3.53 here;
Python's ``sqlite3`` module uses the system's 3.40). POSIX file locks belong to the process,
and each copy tracks only its own, so while this destination has a file open, the *same
process* must not open that file with another SQLite library (``sqlite3``, SQLAlchemy,
DuckDB's sqlite scanner): reads see stale pages and closing that other connection drops
this one's locks (`How To Corrupt An SQLite Database File, 2.2.1
<https://sqlite.org/howtocorrupt.html#multiple_copies_of_sqlite_linked_into_the_same_application>`_).
Other processes (a BI tool, ``sqlite3`` in a shell) are unaffected, and so is any file
other than the destination's.

Rows are inserted with ADBC's ``adbc_ingest``, about twice ``sqlite3``'s ``executemany``;
docs/measurements.md (SQLite) has the figures.

The write/replace/truncate/evolve state machine is :mod:`replicant.destinations._sql_base`;
this module supplies SQLite's primitives. Types: :mod:`replicant.destinations._sqlite_types`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from replicant.config import normalize_url
from replicant.destinations._changes import data_names, delete_mask
from replicant.destinations._sql_base import SQLDestination, Table
from replicant.destinations._sqlite_types import DIALECT, SQLiteTypes, affinity
from replicant.destinations.base import OFFSETS_TABLE
from replicant.destinations.drift import Plan, recreate_hint
from replicant.errors import (
    ConfigError,
    ConnectionError,
    FatalError,
    ReplicantError,
    RetriableError,
    SchemaDriftError,
)
from replicant.model import OP_DELETE, ConnectorContext, Stream

__all__ = ["BUSY_TIMEOUT_MS", "SQLiteDestination"]

_STAGE = "_replicant_stage"
#: How long a write waits for another writer's lock before failing with RetriableError.
BUSY_TIMEOUT_MS = 30_000
#: Messages of SQLITE_BUSY and SQLITE_LOCKED, after which a retry may succeed (the ADBC
#: driver reports no SQLite result code, only its message).
_BUSY_MESSAGES = ("database is locked", "database table is locked", "database schema is locked")


def quote(name: str) -> str:
    """An SQLite identifier in double quotes (a double quote inside is doubled)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class _Column:
    name: str
    type_sql: str
    nullable: bool
    has_default: bool


class SQLiteDestination(SQLDestination):
    """Writes change batches into an SQLite file (see the module docstring).

    Config: ``path`` (or ``url: sqlite:///path``), ``write``; ``schema`` may only be
    ``main``.

    Raises (from any method): :class:`~replicant.errors.ConnectionError` when the file
    cannot be opened; :class:`~replicant.errors.RetriableError` when the database stays
    locked by another writer past the busy timeout (``busy_timeout_ms``, default
    :data:`BUSY_TIMEOUT_MS`); :class:`~replicant.errors.FatalError` otherwise, naming the
    table and stream.
    """

    kind = "SQLite"
    embedded_suffix = "db"
    types: SQLiteTypes
    merge_needs_unique_key = True

    def __init__(self, config: Any, context: ConnectorContext, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        super().__init__(config, context)
        self.types = SQLiteTypes()
        self.schema = "main"
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: Any = None
        self._cur: Any = None
        self._path = ""

    # ------------------------------------------------------------------ connection

    def _file(self) -> str:
        if self.config.schema_name not in (None, "main"):
            raise ConfigError(
                f"destination {self.name!r}: SQLite has one schema", [("schema", "leave it out, or set it to `main`")]
            )
        if self.config.path:
            return str(self.config.path)
        if self.config.url is not None:
            dialect, url = normalize_url(self.config.url.get_secret_value())
            if dialect == DIALECT and url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
                return url[len("sqlite:///") :]  # sqlite:///rel/path, sqlite:////abs/path
        raise ConfigError(f"destination {self.name!r} needs `path:`", [("path", "the SQLite file to write (or url: sqlite:///path)")])

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connect(self) -> None:
        """Opens (creating) the file in WAL mode and creates the offsets table.

        ``legacy_alter_table`` is on for the whole session: the only rename is the swap of
        ``replace``, and views and triggers naming the table must not be re-checked between
        its DROP and RENAME (https://sqlite.org/lang_altertable.html).
        """
        import adbc_driver_sqlite.dbapi as adbc  # lazy: importing replicant loads no driver

        self._path = self._file()
        parent = Path(self._path).parent
        if not parent.is_dir():
            raise ConnectionError(f"cannot open SQLite destination {self.name!r} at {self._path}: folder {parent} does not exist")
        try:
            self._conn = adbc.connect(self._path, autocommit=True)
            self._cur = self._conn.cursor()
            self.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            self.query("PRAGMA journal_mode = WAL")
            self.execute("PRAGMA legacy_alter_table = ON")
            self.execute(
                f"CREATE TABLE IF NOT EXISTS {self.qualified(OFFSETS_TABLE)} (pipeline TEXT NOT NULL, stream TEXT NOT NULL, "
                "log_offset INTEGER NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (pipeline, stream))"
            )
        except _driver_errors() as e:
            self.close()
            raise ConnectionError(f"cannot open SQLite destination {self.name!r} at {self._path}: {e}") from None
        self.offset_select = f"SELECT log_offset FROM {self.qualified(OFFSETS_TABLE)} WHERE pipeline = ? AND stream = ?"
        self.offset_upsert = (
            f"INSERT INTO {self.qualified(OFFSETS_TABLE)} (pipeline, stream, log_offset, updated_at) "
            "VALUES (?, ?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now')) "
            "ON CONFLICT (pipeline, stream) DO UPDATE SET log_offset = excluded.log_offset, updated_at = excluded.updated_at"
        )
        self.offset_lock = self.offset_select  # BEGIN IMMEDIATE holds the database's write lock
        self.offset_insert = (
            f"INSERT INTO {self.qualified(OFFSETS_TABLE)} (pipeline, stream, log_offset, updated_at) "
            "VALUES (?, ?, -1, strftime('%Y-%m-%d %H:%M:%f', 'now')) ON CONFLICT (pipeline, stream) DO NOTHING"
        )

    def close(self) -> None:
        cur, conn = self._cur, self._conn
        self._cur = self._conn = None
        for obj in (cur, conn):
            if obj is not None:
                try:
                    obj.close()
                except _driver_errors():
                    pass  # closing must not fail

    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn is None:
            return
        try:
            self.execute("ROLLBACK")
        except _driver_errors():
            pass  # no transaction was open

    def translate(self, error: Exception, where: str) -> ReplicantError | None:
        if not isinstance(error, _driver_errors()):
            return None
        if any(m in str(error) for m in _BUSY_MESSAGES):
            return RetriableError(f"{where}: the database is locked ({error}); retry")
        return FatalError(f"{where} failed: {type(error).__name__}: {error}")

    def is_content_error(self, error: Exception) -> bool:
        """A constraint (``NOT NULL``, ``CHECK``, ``UNIQUE``, foreign key), a ``STRICT``
        table's type check or a value over the size limit."""
        import adbc_driver_manager

        if isinstance(error, (adbc_driver_manager.IntegrityError, adbc_driver_manager.DataError)):
            return True
        text = str(error)
        return isinstance(error, _driver_errors()) and any(m in text for m in _CONTENT_MESSAGES)

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Runs a statement that returns no rows, to completion: through ADBC's
        ``execute_update`` (``executemany`` with one parameter row, or none), which steps
        the statement eagerly; ``Cursor.execute`` would build a result stream for it."""
        self._cur.executemany(sql, [tuple(params)] if params is not None else None)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        self._cur.execute(sql, tuple(params) if params is not None else None)
        return [tuple(r) for r in self._cur.fetchall()]

    # ------------------------------------------------------------------ names and catalog

    def columns(self, table: str) -> dict[str, Any] | None:
        rows = self.query("SELECT name, type, \"notnull\", dflt_value FROM pragma_table_info(?, 'main')", (table,))
        if not rows:
            return None
        return {r[0].lower(): _Column(r[0], r[1], not r[2], r[3] is not None) for r in rows}

    def has_unique_key(self, table: str, key: Sequence[str]) -> bool:
        wanted = {k.lower() for k in key}
        pk = {r[0].lower() for r in self.query("SELECT name FROM pragma_table_info(?, 'main') WHERE pk > 0", (table,))}
        if pk == wanted:
            return True
        indexes = self.query("SELECT name FROM pragma_index_list(?, 'main') WHERE \"unique\" = 1 AND partial = 0", (table,))
        for (index,) in indexes:
            names = {r[0].lower() for r in self.query("SELECT name FROM pragma_index_info(?, 'main')", (index,)) if r[0] is not None}
            if names == wanted:
                return True
        return False

    # ------------------------------------------------------------------ rows

    def _ingest(self, table: str, rows: pa.Table, *, temporary: bool = False) -> None:
        """Bulk-inserts ``rows`` through ADBC, in the open transaction. A cursor of its own:
        the ADBC statement keeps its ingest options and bound data, which must not leak
        into the next statement."""
        if rows.num_rows:
            encoded = self.types.encode(rows, {}).data
            with self._conn.cursor() as ingest:
                ingest.adbc_ingest(table, encoded, mode="create" if temporary else "append", temporary=temporary)

    def insert(self, table: Table, rows: pa.Table, *, new_keys: bool = False) -> None:
        self._ingest(table.name, rows)

    def merge(self, table: Table, changes: pa.Table) -> None:
        """Stages ``changes`` in a TEMP table, then ``DELETE … WHERE (keys) IN (…)`` and
        ``INSERT … SELECT … ON CONFLICT (keys) DO UPDATE``."""
        names = data_names(changes)
        unknown = [n for n in names if n.lower() not in table.columns]
        if unknown:
            raise FatalError(f"columns {', '.join(unknown)} are not in {quote(table.name)}; prepare the stream first")
        self.execute(f"DROP TABLE IF EXISTS temp.{quote(_STAGE)}")
        self._ingest(_STAGE, changes.select([*names, "_op"]), temporary=True)
        deletes = int(pc.sum(delete_mask(changes).cast(pa.int64())).as_py() or 0)
        t, s = self.qualified(table.name), f"temp.{quote(_STAGE)}"
        key_list = ", ".join(quote(k) for k in table.key)
        if deletes:
            self.execute(f"DELETE FROM {t} WHERE ({key_list}) IN (SELECT {key_list} FROM {s} WHERE \"_op\" = '{OP_DELETE}')")
        if deletes < changes.num_rows:
            nulls = [c.name for c in table.nulls(names, self.fold)]
            cols = ", ".join(quote(n) for n in names + nulls)
            values = ", ".join([quote(n) for n in names] + ["NULL"] * len(nulls))
            key_names = {k.lower() for k in table.key}
            updates = [f"{quote(n)} = excluded.{quote(n)}" for n in names + nulls if n.lower() not in key_names]
            action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
            self.execute(
                f"INSERT INTO {t} ({cols}) SELECT {values} FROM {s} WHERE \"_op\" <> '{OP_DELETE}' "
                f"ON CONFLICT ({key_list}) {action}"
            )
        self.execute(f"DROP TABLE {s}")

    # ------------------------------------------------------------------ schema drift

    def apply_evolution(self, table: str, columns: dict[str, Any], change: Plan, stream: Stream, old: Stream) -> None:
        """``ADD COLUMN`` for new columns. A widened type needs no change: SQLite stores values
        by the column's affinity (``INTEGER`` holds 64-bit integers, ``TEXT`` any length,
        decimals are exact text), so declared type names keep their old precision; a
        widening that would change the affinity is refused."""
        for before, f in change.widened:
            current, wanted = columns[f.name.lower()].type_sql, self.types.ddl_type(f, stream.schema)
            if affinity(current) != affinity(wanted):
                raise SchemaDriftError(
                    f"destination {self.name!r}, stream {stream.name!r}: column {f.name} changed from "
                    f"{self.types.ddl_type(before, old.schema)} to {wanted}, which needs {affinity(wanted)} affinity where "
                    f"table {quote(table)} has {affinity(current)} (SQLite cannot change a column's type in place); "
                    + recreate_hint(self.name)
                )
        for f in change.added:
            self.add_column(table, f, stream.schema)


_CONTENT_MESSAGES = ("constraint failed", "cannot store", "datatype mismatch", "string or blob too big")


def _driver_errors() -> tuple[type[BaseException], ...]:
    from adbc_driver_manager import dbapi

    return (dbapi.Error,)

"""DuckDB destination: the embedded default warehouse.

One DuckDB connection per destination object (the engine calls :meth:`write` from one
thread per destination). Each write registers the Arrow table as a view (zero copy) and
runs plain SQL over it in one transaction with the ``_replicant_offsets`` upsert:

``append``
    ``INSERT INTO t (cols) SELECT … FROM batch`` for the rows whose ``_op`` is not delete.
``merge``
    The last change per key is picked in Arrow, then ``DELETE FROM t USING batch`` for
    every key of the batch and ``INSERT … SELECT`` of the rows that are not deletes. A
    batch of one snapshot's reads into a table that was empty when this object prepared it
    (and has taken no earlier snapshot's rows) skips the ``DELETE`` (the fast path; rules in
    :mod:`replicant.destinations._sql_base`).
``replace``
    Rows go into ``<table>__replicant_pending``; :meth:`commit_replace` drops the table
    and renames the pending one in its place, with the offset, in one transaction.

Tables are created **without a PRIMARY KEY constraint**: measured on 5M narrow rows in
100k batches, DuckDB loads an unkeyed table about 1.7× faster than a keyed one, and the
key's ART index costs memory; merge does not need it (delete + insert by key, above). A
table that already has a key constraint works as well.

Memory: DuckDB's ``memory_limit`` is set (default ``24MB``; the ``memory_limit`` argument
or ``REPLICANT_DUCKDB_MEMORY_LIMIT``) so that the whole engine stays within its budget;
DuckDB spills to disk beyond it. bench/files (5M CSV rows, keyed, Arrow's pool jemalloc
returning freed pages: replicant/memory.py) peaked at 307 MB RSS with 64MB and 200k-row writes,
~269 MB with 32MB, ~258 MB with 32MB and 100k-row writes and ~240 MB with 24MB and 50k-row
writes, at the same speed (of which ~105 MB is shared library code and ~60 MB Python and DuckDB
before the first row). Writes are now 122,880 rows (:attr:`DuckDBDestination.default_batch_rows`;
a destination's ``batch_size`` overrides it): one row group, so DuckDB writes a transaction's
rows optimistically into the database file rather than into the WAL and again at the
checkpoint. Measured 2026-12-06 (5M narrow rows from PostgreSQL, 2 vCPUs): 5.7 → 4.4–4.8 s, peak
RSS 256–263 → 270–273 MB; a 3M-row CSV load is as fast either way (its reader bounds it) and
peaks 6 MB higher (246 → 252 MB). The session time zone is UTC.

The write/replace/truncate/evolve state machine is :mod:`replicant.destinations._sql_base`;
this module supplies DuckDB's primitives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from replicant.destinations._changes import data_names, delete_mask
from replicant.destinations._duckdb_types import DuckDBTypes, quote
from replicant.destinations._sql_base import SQLDestination, Table
from replicant.destinations.base import OFFSETS_TABLE
from replicant.destinations.drift import Plan
from replicant.errors import ConnectionError, FatalError, ReplicantError, RetriableError
from replicant.model import ConnectorContext, Stream

__all__ = ["DEFAULT_MEMORY_LIMIT", "DuckDBDestination", "default_threads"]

DEFAULT_MEMORY_LIMIT = "24MB"
#: rows per ``DELETE … USING`` of a merge: a whole 122,880-row write's keys against a loaded
#: 5M-row table ran out of the 24MB ``memory_limit``; 50,000 did not (measured 2026-12-06)
MERGE_SLICE_ROWS = 50_000
_BATCH = "_replicant_batch"
_DELETE_FLAG = "__replicant_delete"


def default_threads() -> int:
    """DuckDB's worker threads beside a pipeline: one fewer than the cores this process may use
    (at least one). DuckDB's own default, one per core, competes with the pipeline's reader and
    staging log and the source server for the same cores. Measured 2026-12-06 on 2 vCPUs
    (5M narrow rows from PostgreSQL, three alternating runs each): append 5.96 → 5.50 s with
    one thread instead of two, merge 5.57 → 5.60 s, merge into the loaded table within noise,
    0.5–1 CPU-s less in each, peak RSS 3–5 MB lower. Larger machines were not measured."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


@dataclass(frozen=True)
class _Column:
    name: str
    type_sql: str
    nullable: bool = True
    has_default: bool = False


class DuckDBDestination(SQLDestination):
    """Writes change batches into a DuckDB file (``type: duckdb``).

    Config: ``path`` (default ``<pipeline>.duckdb``; the engine resolves a relative path
    against the pipeline file), ``schema`` (default ``main``, created if missing),
    ``write`` (``append`` | ``merge`` | ``replace``).

    Args:
        memory_limit: DuckDB ``memory_limit`` (default: ``REPLICANT_DUCKDB_MEMORY_LIMIT`` or 24MB).
        threads: DuckDB worker threads (default :func:`default_threads`: one fewer than the cores).

    Errors: a file that cannot be opened (locked by another process, missing folder)
    raises :class:`~replicant.errors.ConnectionError` naming the path; a transaction
    conflict raises :class:`~replicant.errors.RetriableError`; anything else
    :class:`~replicant.errors.FatalError` naming the stream and table.
    """

    kind = "DuckDB"
    embedded_suffix = "duckdb"
    types: DuckDBTypes
    dialect = "duckdb"
    #: rows per write when the destination sets no ``batch_size`` (delivery's default is 200k
    #: for databases): one DuckDB row group, the least a transaction needs for DuckDB to write
    #: its rows straight into the database file instead of into the WAL first (module docstring)
    default_batch_rows = 122_880
    capabilities = dataclasses.replace(SQLDestination.capabilities, in_process_engine=True, full_writes=True)

    def __init__(
        self, config: Any, context: ConnectorContext, *, memory_limit: str | None = None, threads: int | None = None
    ) -> None:
        super().__init__(config, context)
        self.types = DuckDBTypes()
        self.path: str = config.path or f"{self.pipeline}.duckdb"
        self.schema: str = config.schema_name or "main"
        self.memory_limit = memory_limit or os.environ.get("REPLICANT_DUCKDB_MEMORY_LIMIT") or DEFAULT_MEMORY_LIMIT
        self.threads = threads or default_threads()
        self.connection: Any = None  #: the open ``duckdb`` connection (None when closed)

    # ------------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def connect(self) -> None:
        """Opens (creating if needed) the DuckDB file and creates the schema and offsets table."""
        import duckdb

        settings: dict[str, str | bool | int | float | list[str]] = {"memory_limit": self.memory_limit,
                                                                    "threads": self.threads}
        try:
            self.connection = duckdb.connect(self.path, config=settings)
        except duckdb.Error as e:
            raise ConnectionError(f"destination {self.name!r}: cannot open DuckDB file {self.path!r}: {e}") from None
        offsets = self.qualified(OFFSETS_TABLE)
        self.offset_select = f"SELECT log_offset FROM {offsets} WHERE pipeline = ? AND stream = ?"
        self.offset_upsert = (
            f"INSERT INTO {offsets} VALUES (?, ?, ?, now()) ON CONFLICT (pipeline, stream) "
            "DO UPDATE SET log_offset = EXCLUDED.log_offset, updated_at = EXCLUDED.updated_at"
        )
        # no row locks (and one process per file): of two concurrent transactions writing the row, DuckDB fails
        # the later ("Conflict on update", or a duplicate key at commit of two first inserts)
        self.offset_lock = self.offset_select
        self.offset_insert = f"INSERT INTO {offsets} VALUES (?, ?, -1, now()) ON CONFLICT (pipeline, stream) DO NOTHING"
        # ON CONFLICT builds a hash table per statement: 5 ms a write against 3 ms (measured 2026-12-07)
        self.offset_update = f"UPDATE {offsets} SET log_offset = $3, updated_at = now() WHERE pipeline = $1 AND stream = $2"
        with self.transaction("open"):
            self.execute("SET TimeZone = 'UTC'")
            self.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.schema)}")
            self.execute(
                f"CREATE TABLE IF NOT EXISTS {offsets} (pipeline VARCHAR NOT NULL, stream VARCHAR NOT NULL, "
                "log_offset BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (pipeline, stream))"
            )

    def close(self) -> None:
        con, self.connection = self.connection, None
        if con is not None:
            with contextlib.suppress(Exception):  # closing after a failure must not hide it
                con.close()

    def begin(self) -> None:
        self.connection.begin()

    def commit(self) -> None:
        self.connection.commit()

    def rollback(self) -> None:
        import duckdb

        if self.connection is not None:
            with contextlib.suppress(duckdb.Error):
                self.connection.rollback()

    def translate(self, error: Exception, where: str) -> ReplicantError | None:
        import duckdb

        if not isinstance(error, duckdb.Error):
            return None
        if isinstance(error, duckdb.TransactionException) and "conflict" in str(error).lower():
            return RetriableError(f"{where}: transaction conflict, retry: {error}")
        return FatalError(f"{where}: {error}")

    def is_content_error(self, error: Exception) -> bool:
        """A constraint (``IntegrityError``) or a value that does not convert or fit (``DataError``)."""
        import duckdb

        return isinstance(error, (duckdb.IntegrityError, duckdb.DataError))

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self.connection.execute(sql, list(params) if params is not None else None)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, list(params) if params is not None else None).fetchall()

    # ------------------------------------------------------------------ names and catalog

    def fold(self, name: str) -> str:
        return name.casefold()

    def label(self, table: str) -> str:
        return f"{self.schema}.{table}"

    def columns(self, table: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT column_name, data_type, is_nullable, column_default IS NOT NULL FROM duckdb_columns() "
            "WHERE database_name = current_database() AND lower(schema_name) = lower(?) AND lower(table_name) = lower(?) "
            "ORDER BY column_index",
            [self.schema, table],
        )
        if not rows:
            return None
        return {r[0].casefold(): _Column(r[0], r[1], bool(r[2]), bool(r[3])) for r in rows}

    def has_unique_key(self, table: str, key: Sequence[str]) -> bool:
        """Always False: merge deletes by key and inserts, with or without a key constraint."""
        return False

    def create_table(self, table: str, stream: Stream, key: Sequence[str]) -> None:
        """Without a PRIMARY KEY constraint (see the module docstring): ``key`` is not used."""
        cols = ", ".join(f"{quote(f.name)} {self.types.ddl_type(f, stream.schema)}" for f in stream.schema)
        self.execute(f"CREATE TABLE {self.qualified(table)} ({cols})")

    # ------------------------------------------------------------------ rows

    def _exprs(self, table: Table, rows: pa.Table) -> tuple[pa.Table, dict[str, str]]:
        """The rows encoded and, per target column, its ``SELECT`` expression over the batch ``b``."""
        unknown = [n for n in rows.column_names if n.casefold() not in table.columns]
        if unknown:
            raise FatalError(f"column {unknown[0]!r} is not in table {self.schema}.{table.name}; the stream was not prepared")
        encoded = self.types.encode(rows, {k: c.type_sql for k, c in table.columns.items()})
        exprs = {}
        for f, expr in zip(encoded.data.schema, encoded.exprs):
            ref = f"b.{quote(f.name)}"
            exprs[table.columns[f.name.casefold()].name] = ref if expr is None else expr.replace("{v}", ref)
        return encoded.data, exprs

    @contextlib.contextmanager
    def _registered(self, rows: pa.Table) -> Iterator[None]:
        import duckdb

        self.connection.register(_BATCH, rows)
        try:
            yield
        finally:
            # after a failed statement the transaction is aborted; the next register replaces the view
            with contextlib.suppress(duckdb.Error):
                self.connection.unregister(_BATCH)

    def _insert_sql(self, table: Table, exprs: dict[str, str], where: str = "") -> str:
        cols = ", ".join(quote(c) for c in exprs)
        sql = f"INSERT INTO {self.qualified(table.name)} ({cols}) SELECT {', '.join(exprs.values())} FROM {_BATCH} AS b"
        return sql + (f" WHERE {where}" if where else "")

    def insert(self, table: Table, rows: pa.Table, *, new_keys: bool = False) -> None:
        """``INSERT … SELECT`` from the Arrow table registered as a view (zero copy)."""
        if rows.num_rows == 0:
            return
        rows, exprs = self._exprs(table, rows)
        with self._registered(rows):
            self.execute(self._insert_sql(table, exprs))

    def merge(self, table: Table, changes: pa.Table) -> None:
        """``DELETE … USING`` every key of the batch, then ``INSERT … SELECT`` of the rows
        that are not deletes."""
        deletes = delete_mask(changes)
        rows, exprs = self._exprs(table, changes.select(data_names(changes)))
        rows = rows.append_column(_DELETE_FLAG, deletes)
        keys = [table.columns[k.casefold()].name for k in table.key]
        match = " AND ".join(f"t.{quote(k)} = {exprs[k]}" for k in keys)
        # in slices: one key appears once in ``changes``, so slices touch disjoint rows
        for start in range(0, rows.num_rows, MERGE_SLICE_ROWS):
            part = rows.slice(start, MERGE_SLICE_ROWS)
            with self._registered(part):
                self.execute(f"DELETE FROM {self.qualified(table.name)} AS t USING {_BATCH} AS b WHERE {match}")
                if pc.sum(part.column(_DELETE_FLAG).cast(pa.int64())).as_py() < part.num_rows:
                    self.execute(self._insert_sql(table, exprs, where=f"NOT b.{quote(_DELETE_FLAG)}"))

    # ------------------------------------------------------------------ schema drift

    def apply_evolution(self, table: str, columns: dict[str, Any], change: Plan, stream: Stream, old: Stream) -> None:
        """``ADD COLUMN`` for new columns and ``ALTER COLUMN … SET DATA TYPE`` for widened ones."""
        for f in change.added:
            self.add_column(table, f, stream.schema)
        for before, f in change.widened:
            column = columns[f.name.casefold()]
            wanted = self.types.ddl_type(f, stream.schema)
            current, new, was = (
                column.type_sql.upper(),
                self._canonical(wanted).upper(),
                self._canonical(self.types.ddl_type(before, old.schema)).upper(),
            )
            if current != new and current == was:
                self.execute(f"ALTER TABLE {self.qualified(table)} ALTER COLUMN {quote(column.name)} SET DATA TYPE {wanted}")

    def _canonical(self, type_sql: str) -> str:
        """DuckDB's own name of a type we generated (``TIMESTAMPTZ`` → ``TIMESTAMP WITH TIME ZONE``)."""
        return str(self.query(f"SELECT typeof(CAST(NULL AS {type_sql}))")[0][0])

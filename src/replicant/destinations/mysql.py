"""MariaDB/MySQL destination: ``LOAD DATA LOCAL INFILE`` of CSV written by Arrow.

Every write turns the Arrow table into CSV with ``pyarrow.csv`` (C++, no per-row Python;
see :mod:`replicant.destinations._mysql_types` for how NULL, ``""``, backslashes, quotes,
binary, time zones and JSON survive the trip) in a temporary file, and the server loads it:

``append``
    ``LOAD DATA`` straight into the table (rows whose ``_op`` is ``delete`` skipped).
``merge``
    The last change per key (Arrow ``group_by``) is loaded into a ``TEMPORARY`` staging
    table, then ``DELETE d FROM t d JOIN stage s ON keys WHERE s._op = 'delete'`` and
    ``INSERT INTO t SELECT … FROM stage WHERE _op <> 'delete' ON DUPLICATE KEY UPDATE``.
    Fast path: a write of snapshot reads only, into a table that was empty when this object
    prepared it and that only this object has written since, is loaded straight into the
    table with ``LOAD DATA … REPLACE``.
``replace``
    Rows go into ``<table>__replicant_pending``; :meth:`MySQLDestination.commit_replace`
    swaps it in with one atomic ``RENAME TABLE t TO old, pending TO t``, drops ``old`` and
    records the offset. DDL is not transactional in MariaDB: a crash between the rename and
    the offset leaves the new table with the old offset, and the engine replays the snapshot
    from the log, which converges.

The log offset is upserted into ``_replicant_offsets`` (InnoDB) in the same transaction as
the rows (``LOAD DATA`` and the staging table are transactional; ``CREATE/DROP TEMPORARY
TABLE`` do not commit implicitly).

``LOAD DATA LOCAL`` turns errors into warnings (it implies ``IGNORE``), so every load is
followed by ``SHOW WARNINGS``: any warning (a truncated string, an out-of-range value, a
duplicate key under ``append``) fails the write and rolls it back, rather than losing data
silently. The session runs with ``sql_mode`` ``STRICT_ALL_TABLES`` (the ``INSERT … SELECT``
of a merge fails instead of truncating), ``time_zone = '+00:00'`` and ``READ COMMITTED``.
``NO_BACKSLASH_ESCAPES`` is not needed: values never appear in SQL text (``LOAD DATA`` reads
them with ``ESCAPED BY ''``; the few scalars are PyMySQL parameters).

Security note: with ``local_infile`` on, PyMySQL sends the file the *server* names; only
point a destination at a server you trust (as with any MySQL client that enables it).

Rows are loaded with ``LOAD DATA LOCAL`` of a CSV that pyarrow writes, 4-5× a multi-row
``INSERT`` of Python values; docs/measurements.md (MariaDB / MySQL) has the figures.

The write/replace/truncate/evolve state machine is :mod:`replicant.destinations._sql_base`;
this module supplies MariaDB/MySQL's primitives.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pymysql

from replicant.config import normalize_url
from replicant.destinations._changes import data_names, delete_mask
from replicant.destinations._mysql_types import (
    MySQLTypes,
    aux_name,
    binary_collation,
    canonical_type,
    is_text_type,
    quote,
)
from replicant.destinations._sql_base import EXCLUDE_HINT as _EXCLUDE_HINT
from replicant.destinations._sql_base import PENDING_SUFFIX, SQLDestination, Table
from replicant.destinations.base import OFFSETS_TABLE
from replicant.destinations.drift import Plan
from replicant.errors import (
    ConfigError,
    ConnectionError,
    FatalError,
    RecordError,
    ReplicantError,
    RetriableError,
)
from replicant.model import OP_DELETE, ConnectorContext, Stream
from replicant.timeouts import pymysql_timeouts, set_pymysql_read_timeout, timed_out, timeout_hint

__all__ = ["MySQLDestination"]

#: Server error codes after which the same work may succeed: lock wait timeout, deadlock,
#: server gone away, lost connection, connection killed, client idle timeout.
_RETRIABLE = frozenset({1205, 1213, 2006, 2013, 2014, 1927, 4031})
#: Errors about the rows' values (strict mode; https://mariadb.com/kb/en/mariadb-error-codes/):
#: 1048 column cannot be null, 1062 duplicate entry, 1264 out of range, 1265 data truncated,
#: 1292 incorrect date/time value, 1300 invalid character string, 1366 incorrect value for a
#: column, 1367 illegal double, 1406 data too long, 1411 incorrect value for a function,
#: 1416 cannot get a geometry object, 1451/1452 foreign key, 1690 value out of range,
#: 3140 invalid JSON (MySQL), 3819 (MySQL) and 4025 (MariaDB) check constraint violated,
#: 4038 a JSON syntax error (MariaDB).
_CONTENT = frozenset({1048, 1062, 1264, 1265, 1292, 1300, 1366, 1367, 1406, 1411, 1416, 1451, 1452, 1690, 3140, 3819, 4025, 4038})
_SQL_MODE = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO,ERROR_FOR_DIVISION_BY_ZERO"
_STAGE = "_replicant_stage"
_OLD = "__replicant_old"
_CSV = pcsv.WriteOptions(include_header=False, null_string="NULL", quoting_style="all_valid", batch_size=8192)


def _escaped(name: str) -> str:
    """A quoted identifier for a statement that also has ``%s`` parameters (``%`` doubled)."""
    return quote(name).replace("%", "%%")


@dataclass(frozen=True)
class _Column:
    name: str
    type_sql: str  #: ``COLUMN_TYPE`` (``varchar(40)``, ``decimal(10,2)``)
    charset: str | None
    collation: str | None
    nullable: bool = True
    default: str | None = None  #: ``COLUMN_DEFAULT`` (an expression), None when there is none

    @property
    def has_default(self) -> bool:
        return self.default is not None

    def ddl(self) -> str:
        """The column for the staging table: same type and collation, always nullable."""
        extra = f" CHARACTER SET {self.charset} COLLATE {self.collation}" if self.collation else ""
        return f"{quote(self.name)} {self.type_sql}{extra} NULL"


class MySQLDestination(SQLDestination):
    """Writes change batches into MariaDB/MySQL tables (see the module docstring).

    Config: ``url`` (``mysql://user:password@host:port/database``; ``mysql+pymysql://`` and
    ``mariadb://`` too; ``?unix_socket=/path`` optional), ``schema`` (a database to use
    instead of the URL's; created if missing), ``write``.

    Raises (from any method): :class:`~replicant.errors.ConnectionError` when the server
    cannot be reached or refuses the login (host, port, database and user named, never the
    password); :class:`~replicant.errors.RetriableError` for deadlocks, lock wait timeouts and
    lost connections (the next call reconnects); :class:`~replicant.errors.FatalError`
    otherwise, naming the table and stream.
    """

    kind = "MySQL"
    types: MySQLTypes
    merge_needs_unique_key = True
    nullable = " NULL"
    quote_char = "`"
    param_marker = "%s"
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"

    def __init__(self, config: Any, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.types = MySQLTypes()
        self._conn: pymysql.connections.Connection | None = None

    # ------------------------------------------------------------------ connection

    def _params(self) -> dict[str, Any]:
        if self.config.url is None:
            raise ConfigError(f"destination {self.name!r} needs `url:`", [("url", "required for type mysql")])
        _, url = normalize_url(self.config.url.get_secret_value())
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        database = unquote(parts.path.lstrip("/"))
        params: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "database": database or None,
        }
        if "unix_socket" in query:
            params["unix_socket"] = query["unix_socket"]
        return params

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connect(self) -> None:
        """Connects, sets the session up (strict ``sql_mode``, UTC, ``READ COMMITTED``) and
        creates the configured database (``schema:``) and the offsets table if missing."""
        params = self._params()
        self.schema = self.config.schema_name or params["database"] or ""
        if not self.schema:
            raise ConfigError(
                f"destination {self.name!r} has no database",
                [("url", "name a database in the URL (mysql://user@host/db) or set `schema:`")],
            )
        where = (
            f"MySQL destination {self.name!r} at {params['host']}:{params['port']}, "
            f"database {params['database'] or ''!r}, user {params['user']!r}"
        )
        try:
            seconds = float(self.config.connect_timeout)
            conn = pymysql.connect(**params, charset="utf8mb4", local_infile=True, autocommit=False, **pymysql_timeouts(seconds))
            set_pymysql_read_timeout(conn, None)  # logged in: a long load may take its time
        except pymysql.MySQLError as e:
            code, msg = _code(e)
            if timed_out(msg):
                msg = timeout_hint(seconds, f"destinations.{self.name}.connect_timeout")
            raise ConnectionError(f"cannot connect to {where}: [{code}] {msg}") from None
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET SESSION sql_mode = '{_SQL_MODE}', time_zone = '+00:00'")
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                cur.execute("SELECT VERSION()")
                version = cur.fetchone()[0]
            conn.commit()
        except pymysql.MySQLError as e:
            conn.close()
            code, msg = _code(e)
            raise ConnectionError(f"cannot set up the session of {where}: [{code}] {msg}") from None
        self._conn = conn
        self.types = MySQLTypes(binary_collation(version))
        offsets = f"{_escaped(self.schema)}.{_escaped(OFFSETS_TABLE)}"
        self.offset_select = f"SELECT log_offset FROM {offsets} WHERE pipeline = %s AND stream = %s"
        self.offset_upsert = (
            f"INSERT INTO {offsets} (pipeline, stream, log_offset, updated_at) VALUES (%s, %s, %s, UTC_TIMESTAMP(6)) "
            "ON DUPLICATE KEY UPDATE log_offset = VALUES(log_offset), updated_at = VALUES(updated_at)"
        )
        # a locking read sees the latest commit of the row (https://mariadb.com/kb/en/select/#for-update).
        # The -1 row's insert locks an existing row exclusively (ON DUPLICATE KEY UPDATE; INSERT IGNORE's
        # shared lock would deadlock two writers upgrading it for FOR UPDATE). No row counts are read:
        # without the FOUND_ROWS client flag MariaDB counts changed rows, not matched ones.
        self.offset_lock = self.offset_select + " FOR UPDATE"
        self.offset_insert = (
            f"INSERT INTO {offsets} (pipeline, stream, log_offset, updated_at) VALUES (%s, %s, -1, UTC_TIMESTAMP(6)) "
            "ON DUPLICATE KEY UPDATE log_offset = log_offset"
        )
        key = f"VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {self.types.key_collation} NOT NULL"
        with self.transaction("open"):
            self.execute(f"CREATE DATABASE IF NOT EXISTS {quote(self.schema)} CHARACTER SET utf8mb4")
            self.execute(
                f"CREATE TABLE IF NOT EXISTS {self.qualified(OFFSETS_TABLE)} (pipeline {key}, stream {key}, "
                "log_offset BIGINT NOT NULL, updated_at DATETIME(6) NOT NULL, PRIMARY KEY (pipeline, stream)) "
                "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            )

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except pymysql.MySQLError:
                pass  # already gone; closing must not fail

    def begin(self) -> None:
        """Nothing to do: the session is never in autocommit."""

    def commit(self) -> None:
        assert self._conn is not None
        self._conn.commit()

    def rollback(self) -> None:
        if self._conn is not None:
            try:
                self._conn.rollback()
            except pymysql.MySQLError:
                self.close()

    def translate(self, error: Exception, where: str) -> ReplicantError | None:
        if not isinstance(error, pymysql.MySQLError):
            return None
        code, msg = _code(error)
        if code in _RETRIABLE or isinstance(error, pymysql.err.InterfaceError):
            self.close()  # the next call reconnects
            return RetriableError(f"{where}: [{code}] {msg}; retry")
        return FatalError(f"{where} failed: [{code}] {msg}")

    def is_content_error(self, error: Exception) -> bool:
        return isinstance(error, pymysql.MySQLError) and _code(error)[0] in _CONTENT

    def _cursor(self) -> Any:
        assert self._conn is not None
        return self._conn.cursor()

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        with self._cursor() as cur:
            cur.execute(sql, tuple(params) if params is not None else None)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self._cursor() as cur:
            cur.execute(sql, tuple(params) if params is not None else None)
            return list(cur.fetchall())

    # ------------------------------------------------------------------ names and catalog

    def check_types(self, schema: pa.Schema) -> None:
        """Refuses column names MariaDB/MySQL cannot hold: characters outside the Basic
        Multilingual Plane (emoji; https://mariadb.com/kb/en/identifier-names/), naming them."""
        refused = [f.name for f in schema if any(ord(ch) > 0xFFFF for ch in f.name)]
        if refused:
            raise FatalError(
                f"MySQL destination {self.name!r}: column name(s) {', '.join(repr(n) for n in refused)} hold characters "
                f"beyond U+FFFF (such as emoji), which MariaDB and MySQL identifiers cannot; {_EXCLUDE_HINT}"
            )

    def pending_name(self, table: str) -> str:
        return aux_name(table, PENDING_SUFFIX)

    def columns(self, table: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, CHARACTER_SET_NAME, COLLATION_NAME, IS_NULLABLE, "
            "COLUMN_DEFAULT FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (self.schema, table),
        )
        # information_schema compares names case-insensitively; table names are not.
        rows = [r for r in rows if r[0] == self.schema and r[1] == table]
        if not rows:
            return None
        # MariaDB reports a column without a default as COLUMN_DEFAULT 'NULL' (10.2.7+), MySQL as NULL
        return {
            r[2].lower(): _Column(r[2], r[3], r[4], r[5], r[6] == "YES", None if r[7] in (None, "NULL") else r[7])
            for r in rows
        }

    def has_unique_key(self, table: str, key: Sequence[str]) -> bool:
        keys: dict[str, set[str]] = {}
        for row in self.query(f"SHOW KEYS FROM {self.qualified(table)} WHERE Non_unique = 0"):
            keys.setdefault(row[2], set()).add(row[4].lower())
        return {k.lower() for k in key} in keys.values()

    def swap(self, pending: str, table: str) -> None:
        """One atomic ``RENAME TABLE t TO old, pending TO t``, then ``DROP old``. DDL is not
        transactional in MariaDB: a crash before the offset is stored leaves the new table
        with the old offset, and the engine replays the snapshot from the log, which converges."""
        old = aux_name(table, _OLD)
        self.execute(f"DROP TABLE IF EXISTS {self.qualified(old)}")
        if self.columns(table) is None:
            self.execute(f"RENAME TABLE {self.qualified(pending)} TO {self.qualified(table)}")
            return
        self.execute(f"RENAME TABLE {self.qualified(table)} TO {self.qualified(old)}, {self.qualified(pending)} TO {self.qualified(table)}")
        self.execute(f"DROP TABLE {self.qualified(old)}")

    # ------------------------------------------------------------------ rows

    def insert(self, table: Table, rows: pa.Table, *, new_keys: bool = False) -> None:
        """``LOAD DATA`` into the table; ``new_keys``: ``LOAD DATA … REPLACE``."""
        with self._cursor() as cur:
            self._load(cur, table.name, rows, table.columns, replace=new_keys)

    def _load(self, cur: Any, table: str, rows: pa.Table, columns: dict[str, Any], *, replace: bool = False) -> None:
        """``LOAD DATA LOCAL INFILE`` of ``rows`` into ``table``; fails on any warning."""
        if rows.num_rows == 0:
            return
        assert self._conn is not None
        encoded = self.types.encode(rows, {name: c.type_sql for name, c in columns.items()})
        exprs = encoded.exprs
        targets, sets = [], []
        for i, (name, expr) in enumerate(zip(rows.column_names, exprs)):
            if expr is None:
                targets.append(quote(name))
            else:
                targets.append(f"@v{i}")
                sets.append(f"{quote(name)} = {expr.replace('{v}', f'@v{i}')}")
        fd, path = tempfile.mkstemp(prefix="replicant-", suffix=".csv")
        os.close(fd)
        try:
            pcsv.write_csv(encoded.data, path, _CSV)  # by path: Arrow's own C++ file, no Python writes
            # '\n' below is a newline: our session's sql_mode keeps backslash escapes in literals.
            sql = (
                f"LOAD DATA LOCAL INFILE {self._conn.escape(path)} {'REPLACE ' if replace else ''}"
                f"INTO TABLE {self.qualified(table)} CHARACTER SET utf8mb4 "
                "FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' LINES TERMINATED BY '\\n' "
                f"({', '.join(targets)})" + (f" SET {', '.join(sets)}" if sets else "")
            )
            loaded = cur.execute(sql)
        finally:
            os.unlink(path)
        cur.execute("SHOW WARNINGS LIMIT 5")
        warnings = cur.fetchall()
        if warnings or (not replace and loaded != rows.num_rows):
            detail = "; ".join(f"{w[0]} {w[1]}: {w[2]}" for w in warnings) or f"{loaded} of {rows.num_rows} rows loaded"
            if warnings and all(int(w[1]) in _CONTENT for w in warnings):  # LOAD DATA's rejected values: warnings
                raise RecordError(f"the server rejects a value: {detail}")
            raise FatalError(
                f"loading {rows.num_rows} rows into {self.qualified(table)} would change data ({detail}); "
                "nothing was written"
            )

    def merge(self, table: Table, changes: pa.Table) -> None:
        """Loads ``changes`` into a ``TEMPORARY`` staging table, then ``DELETE … JOIN`` and
        ``INSERT … SELECT … ON DUPLICATE KEY UPDATE``."""
        names = data_names(changes)
        unknown = [n for n in names if n.lower() not in table.columns]
        if unknown:
            raise FatalError(f"columns {', '.join(unknown)} are not in {self.qualified(table.name)}; prepare the stream first")
        stage_cols = [table.columns[n.lower()].ddl() for n in names] + [f"{quote('_op')} VARCHAR(8) CHARACTER SET ascii"]
        t, s = self.qualified(table.name), self.qualified(_STAGE)
        keys = table.key
        with self._cursor() as cur:
            cur.execute(f"DROP TEMPORARY TABLE IF EXISTS {s}")
            cur.execute(f"CREATE TEMPORARY TABLE {s} ({', '.join(stage_cols)}) ENGINE=InnoDB")
            self._load(cur, _STAGE, changes.select([*names, "_op"]), table.columns)
            deletes = int(pc.sum(delete_mask(changes).cast(pa.int64())).as_py() or 0)
            if deletes:
                on = " AND ".join(f"d.{quote(k)} = s.{quote(k)}" for k in keys)
                cur.execute(f"DELETE d FROM {t} AS d JOIN {s} AS s ON {on} WHERE s.`_op` = '{OP_DELETE}'")
            if deletes < changes.num_rows:
                nulls = [c.name for c in table.nulls(names, self.fold)]
                cols = ", ".join(quote(n) for n in names + nulls)
                values = ", ".join([quote(n) for n in names] + ["NULL"] * len(nulls))
                key_names = {k.lower() for k in keys}
                updates = [f"{quote(n)} = VALUES({quote(n)})" for n in names + nulls if n.lower() not in key_names]
                # a table of key columns only: a no-op update (VALUES() is unambiguous, a bare name is not)
                updates = updates or [f"{quote(keys[0])} = VALUES({quote(keys[0])})"]
                cur.execute(
                    f"INSERT INTO {t} ({cols}) SELECT {values} FROM {s} WHERE `_op` <> '{OP_DELETE}' "
                    f"ON DUPLICATE KEY UPDATE {', '.join(updates)}"
                )
            cur.execute(f"DROP TEMPORARY TABLE {s}")

    # ------------------------------------------------------------------ schema drift

    def apply_evolution(self, table: str, columns: dict[str, Any], change: Plan, stream: Stream, old: Stream) -> None:
        """One ``ALTER TABLE … ADD COLUMN …, MODIFY COLUMN …``: new nullable columns, widened
        types (character set, collation, nullability and default kept). DDL commits
        implicitly in MariaDB, so a crash may leave part of it applied; the base's evolve is
        idempotent and the engine calls it again."""
        keys = {k.lower() for k in stream.primary_key}
        alters = [f"ADD COLUMN {quote(f.name)} {self.types.ddl_type(f, stream.schema)} NULL" for f in change.added]
        for before, f in change.widened:
            column = columns[f.name.lower()]
            key = f.name.lower() in keys
            wanted = self.types.ddl_type(f, stream.schema, key=key)
            was = self.types.ddl_type(before, old.schema, key=key)
            current = canonical_type(column.type_sql)
            if current == canonical_type(wanted) or current != canonical_type(was):
                continue
            extra = ""
            if column.collation and is_text_type(wanted) and "character set" not in wanted.lower():
                extra += f" CHARACTER SET {column.charset} COLLATE {column.collation}"
            extra += " NULL" if column.nullable else " NOT NULL"
            if column.default is not None:
                extra += f" DEFAULT {column.default}"  # the server's own expression text
            alters.append(f"MODIFY COLUMN {quote(column.name)} {wanted}{extra}")
        if alters:
            self.execute(f"ALTER TABLE {self.qualified(table)} {', '.join(alters)}")


def _code(e: BaseException) -> tuple[int | None, str]:
    args: tuple[Any, ...] = tuple(getattr(e, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        return args[0], str(args[1])
    return None, str(e)

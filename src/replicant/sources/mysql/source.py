"""MySQL/MariaDB source: ``full`` and ``cursor`` reads through connectorx, catalog through PyMySQL.

docs/measurements.md (MySQL / MariaDB) has the read rates and memory of connectorx and
PyMySQL measured side by side, behind this choice.

connectorx (Rust, Arrow-native) is chosen: 6-10× PyMySQL, which decodes every value in
Python. Its conversions are made exact in the select list (:func:`.types.mysql_column`):

* ``DECIMAL`` as ``CAST(… AS CHAR)`` → ``decimal128/256(p,s)`` in Arrow (connectorx's own
  decimal is 28 digits, scale 10, and panics beyond);
* ``DATE``/``DATETIME``/``TIME`` as integers (days, microseconds) computed by the server,
  so zero dates (``0000-00-00``) read as NULL instead of aborting, and ``TIME`` outside a
  day is reported rather than wrapped;
* ``TIMESTAMP`` as ``UNIX_TIMESTAMP`` microseconds: exact UTC whatever the time zone of
  connectorx's session (which cannot be set);
* ``BIT`` as ``CAST(… AS UNSIGNED)``.

connectorx takes no bind parameters, so key values in a keyset ``WHERE`` are rendered as
literals by :meth:`MySQLSource._bind` from typed Python values only: integers and decimals
as digits, strings and bytes as hex literals (``_utf8mb4 X'…' COLLATE …``, in the column's
own character set and collation so the index is used), dates and times as ISO digits.
No value text ever reaches SQL unencoded, and ``sql_mode`` (``NO_BACKSLASH_ESCAPES``) does
not matter. MariaDB does not use an index for ``(a, b) > (x, y)``: composite keys are
expanded to ``a >= x AND (a > x OR (a = x AND b > y))``. A ``TIMESTAMP`` cursor is compared
through ``FROM_UNIXTIME`` in the server's time zone; inside a daylight-saving fall-back hour
that comparison is ambiguous, which a one-hour look-back absorbs.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import quote as urlquote

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from replicant.config import SourceConfig
from replicant.errors import ConfigError, ConnectionError, FatalError, RetriableError
from replicant.model import ConnectorContext, Stream
from replicant.sources.base import Capabilities
from replicant.sources.select import split_name
from replicant.sources.sql import Plan, SQLSource, Table
from replicant.sources.types import Column, conform, mysql_column
from replicant.timeouts import pymysql_timeouts, set_pymysql_read_timeout, timed_out, timeout_hint

if TYPE_CHECKING:
    from replicant.sources.mysql.triggers import MySQLTriggers

__all__ = ["MySQLSource"]

log = logging.getLogger(__name__)

_CATALOG = """
SELECT c.TABLE_SCHEMA, c.TABLE_NAME, t.TABLE_TYPE, c.COLUMN_NAME, c.IS_NULLABLE, c.DATA_TYPE,
       c.COLUMN_TYPE, c.NUMERIC_PRECISION, c.NUMERIC_SCALE, c.CHARACTER_SET_NAME, c.COLLATION_NAME,
       k.SEQ_IN_INDEX
FROM information_schema.COLUMNS c
JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME
LEFT JOIN information_schema.STATISTICS k ON k.TABLE_SCHEMA = c.TABLE_SCHEMA AND k.TABLE_NAME = c.TABLE_NAME
     AND k.INDEX_NAME = 'PRIMARY' AND k.COLUMN_NAME = c.COLUMN_NAME
WHERE t.TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED', 'VIEW') AND c.TABLE_SCHEMA IN ({schemas})
"""
_ORDER = " ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION"
#: connectorx batch rows (re-assembled to ``batch_size``): lower peak memory, same speed.
_CX_BATCH_ROWS = 32_768
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
#: PyMySQL error codes that mean "cannot connect or log in" (the mapping table).
#: What a connection failure's error code means (the mapping table).
_CONNECT_MEANING = {
    2002: "nothing answers there (is the server running, is the socket right?)",
    2003: "nothing answers there (is the server running, are host and port right?)",
    2005: "unknown host",
    1045: "access denied for user {user!r} (wrong password, or no such user from this host)",
    1049: "database {db!r} does not exist",
    1044: "user {user!r} may not use database {db!r}",
}
_CONNECT_CODES = {1044, 1045, 1049, 1698, 2002, 2003, 2005, 2006, 2013, 1040, 1129, 1130}


class MySQLSettings(BaseModel):
    """The keys of a MySQL/MariaDB ``source:`` beyond the common ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_id: int | None = Field(
        None, gt=0, lt=2**32,
        description="`mode: log`: the replica server id to use (default: derived from the pipeline and tenant).",
    )


class MySQLSource(SQLSource):
    """Reads MySQL/MariaDB tables (``mysql://``, ``mysql+pymysql://``, ``mariadb://``).

    The URL must name a database: it is the default schema for bare table names. Tables of
    other databases are found when a stream names them (``other_db.table``) or
    ``source.schema`` names the database.
    """

    dialect = "mysql"
    capabilities = Capabilities(modes=frozenset({"full", "cursor", "snapshot_diff", "trigger", "log"}), chunked=True)
    log_capture = "replicant.sources.mysql.binlog:BinlogCapture"
    settings = MySQLSettings
    row_values = False

    def __init__(self, config: SourceConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        from sqlalchemy.engine import make_url

        u = make_url(self._url)
        if not u.database:
            raise ConfigError("invalid source", [("source.url", "a MySQL/MariaDB URL needs a database: mysql://user@host/db")])
        self._u = u
        self._conn: Any = None
        #: The replica id the binlog reader registers with: ``server_id``, or one derived from
        #: the source feed (stable across runs; two feeds reading one server must not share
        #: it, or the server drops the older connection).
        self.server_id: int = self.options.server_id or (
            1_000_000 + zlib.crc32(f"replicant:{context.feed}".encode()) % 4_000_000_000)

    # ------------------------------------------------------------------ connection

    def quote(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def location(self) -> str:
        u = self._u
        return f"MySQL at {u.host or 'localhost'}:{u.port or 3306} as user {u.username or ''!r}, database {u.database!r}"

    def cdc_objects(self) -> dict[str, Any]:
        return {"server": self.location(), "note": (
            "MariaDB/MySQL binlog capture keeps no replication slots or publications: the server keeps its binlogs "
            "for binlog_expire_logs_seconds (expire_logs_days) whatever replicant does; nothing to drop")}

    def scrub(self, text: str) -> str:
        pw = self._u.password
        return text.replace(pw, "***") if pw else text

    def _connect(self) -> Any:
        if self._conn is None:
            import pymysql

            u = self._u
            kw: dict[str, Any] = {
                "host": u.host or "localhost", "port": u.port or 3306, "user": u.username or "",
                "password": u.password or "", "database": u.database, "charset": "utf8mb4",
                "autocommit": True, **pymysql_timeouts(self.connect_timeout),
            }
            if "unix_socket" in u.query:
                kw["unix_socket"] = u.query["unix_socket"]
            try:
                self._conn = pymysql.connect(**kw)
                set_pymysql_read_timeout(self._conn, None)  # a long query may take its time once logged in
            except pymysql.MySQLError as e:
                why = _CONNECT_MEANING.get(e.args[0] if e.args else None, "").format(user=u.username or "", db=u.database)
                if timed_out(str(e.args[-1]) if e.args else ""):
                    why = timeout_hint(self.connect_timeout, "source.connect_timeout")
                raise ConnectionError(
                    f"cannot connect to {self.location()}: {why + ': ' if why else ''}{self.scrub(str(e.args[-1]))}"
                ) from None
        return self._conn

    def close(self) -> None:
        self._close_capture()
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken: nothing left to release
                log.debug("closing the MySQL connection failed", exc_info=True)
            finally:
                self._conn = None

    def fetchall(self, sql: str, params: tuple = ()) -> list[tuple]:
        import pymysql

        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        except pymysql.MySQLError as e:
            code = e.args[0] if e.args else None
            self.close()
            if code in _CONNECT_CODES:
                raise RetriableError(f"lost the connection to {self.location()}: {self.scrub(str(e.args[-1]))}") from None
            raise FatalError(f"reading the catalog of {self.location()}: {self.scrub(str(e.args[-1]))}") from None

    def _cx_url(self) -> str:
        u = self._u
        auth = urlquote(u.username or "", safe="")
        if u.password:
            auth += ":" + urlquote(u.password, safe="")
        return f"mysql://{auth}@{u.host or 'localhost'}:{u.port or 3306}/{urlquote(u.database, safe='')}?prefer_socket=false"

    def filled_columns(self, stream: Stream, names: list[str]) -> dict[str, str]:
        """See :meth:`Source.filled_columns`: from ``information_schema.COLUMNS``, a column
        filled at existing rows has a default other than NULL, a generation expression or
        ``auto_increment``, or is ``NOT NULL`` (existing rows then get the type's implicit
        default)."""
        wanted = set(names)
        found = {}
        for name, default, generated, extra, nullable in self.fetchall(
                "SELECT COLUMN_NAME, COLUMN_DEFAULT, GENERATION_EXPRESSION, EXTRA, IS_NULLABLE "
                "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                (stream.table[0], stream.table[-1])):
            if name not in wanted:
                continue
            if generated:
                found[name] = f"GENERATED ALWAYS AS ({generated})"
            elif "auto_increment" in (extra or "").lower():
                found[name] = "AUTO_INCREMENT"
            elif default is not None and str(default).upper() != "NULL":
                found[name] = f"DEFAULT {default}"
            elif nullable == "NO":
                found[name] = "NOT NULL"
        return found

    # ------------------------------------------------------------------ catalog

    def _default_schema(self) -> str:
        return self._u.database

    def _schemas(self) -> list[str]:
        names = [self._u.database]
        if self.config.schema_name:
            names.append(self.config.schema_name)
        if self.config.streams != "all":
            for sc in self.config.streams:
                parts = split_name(sc.table)
                if parts and len(parts) == 2:
                    names.append(parts[0])
        return list(dict.fromkeys(names))

    def _tables(self, only: tuple[str, ...] | None = None) -> list[Table]:
        if only is None:
            schemas = self._schemas()
            rows = self.fetchall(_CATALOG.format(schemas=", ".join(["%s"] * len(schemas))) + _ORDER, tuple(schemas))
        else:
            rows = self.fetchall(_CATALOG.format(schemas="%s") + " AND c.TABLE_NAME = %s" + _ORDER, (only[0], only[-1]))
        tables: dict[tuple[str, str], Table] = {}
        pks: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for schema, name, ttype, col, nullable, dtype, ctype, prec, scale, charset, collation, seq in rows:
            key = (schema, name)
            if only is not None and key != (only[0], only[-1]):  # case-insensitive collations of the catalog
                continue
            t = tables.get(key)
            if t is None:
                t = tables[key] = Table(key, "view" if ttype == "VIEW" else "table", [])
            t.columns.append(mysql_column(
                col, dtype, ctype, prec, scale, nullable=(nullable == "YES" and seq is None),
                charset=charset, collation=collation,
            ))
            if seq is not None:
                pks.setdefault(key, []).append((int(seq), col))
        for key, cols in pks.items():
            tables[key].primary_key = tuple(c for _, c in sorted(cols))
        return list(tables.values())

    def estimate_rows(self, stream: Any) -> int | None:
        try:
            rows = self.fetchall(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                (stream.table[0], stream.table[-1]))
        except (FatalError, RetriableError):
            return None
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    # ------------------------------------------------------------------ reading

    def trigger_sql(self, stream: Stream) -> MySQLTriggers:
        from replicant.sources.mysql.triggers import MySQLTriggers

        return MySQLTriggers(self, stream)

    def _bind(self, value: Any, column: Column, params: list[Any]) -> str:
        """A literal for ``value``, built only from digits, ISO dates and hex (see the module docstring)."""
        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, int):
            return str(int(value))
        if isinstance(value, float):
            return repr(float(value))
        if isinstance(value, Decimal):
            return format(Decimal(value), "f")
        if isinstance(value, str):
            hexed = value.encode("utf-8").hex()
            cs, coll = column.charset, column.collation
            if cs and coll and _NAME.match(cs) and _NAME.match(coll):
                return f"CONVERT(_utf8mb4 X'{hexed}' USING {cs}) COLLATE {coll}"
            return f"_utf8mb4 X'{hexed}'"
        if isinstance(value, (bytes, bytearray)):
            return f"X'{bytes(value).hex()}'"
        if isinstance(value, datetime):
            if value.tzinfo is not None:  # a TIMESTAMP: compare as the instant it is
                us = round((value - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e6)
                return f"FROM_UNIXTIME({us // 1_000_000}.{us % 1_000_000:06d})"
            return "'" + value.isoformat(" ", "microseconds") + "'"
        if isinstance(value, (date, time)):
            return "'" + value.isoformat() + "'"
        raise FatalError(f"cannot compare column {column.name!r} with a {type(value).__name__} value")

    def _batches(self, sql: str, params: list[Any], plan: Plan, batch_size: int) -> Iterator[pa.RecordBatch]:
        import connectorx

        self._connect()  # a fast, clear login error (connectorx retries for 30 s)
        what = f"reading {self.display(plan.stream.table)}"
        schema = plan.stream.schema
        try:
            reader = connectorx.read_sql(
                self._cx_url(), sql, return_type="arrow_stream", batch_size=min(batch_size, _CX_BATCH_ROWS)
            )
            for b in reader:
                yield conform(b, schema)
        except ValueError as e:
            raise FatalError(f"{what}: {e}") from None
        except BaseException as e:  # connectorx: RuntimeError, or a Rust panic (pyo3 PanicException)
            if isinstance(e, (GeneratorExit, KeyboardInterrupt, SystemExit, FatalError)):
                raise
            msg = self.scrub(str(e)).strip()
            if "1146" in msg:
                raise FatalError(f"{what}: table {self.display(plan.stream.table)} does not exist") from None
            if "timed out waiting for connection" in msg or "os error" in msg:
                raise RetriableError(f"{what}: cannot reach {self.location()}: {msg}") from None
            raise FatalError(f"{what}: {msg}") from None

"""PostgreSQL source: ``full`` and ``cursor`` reads through ADBC's binary ``COPY``.

docs/measurements.md (PostgreSQL) has the read rates and memory of ADBC, ADBC with a bind
parameter and connectorx measured side by side, behind this choice.

ADBC streams a query through ``COPY (…) TO STDOUT (FORMAT binary)`` only when it has no
bind parameters; with one it buffers the whole result (see the memory figures). So the
key values of a keyset chunk are bound as parameters of a ``set_config`` call first, and
the chunk query reads them back with ``current_setting('replicant.pN')`` cast to the key
column's own type: values stay parameters, the index is used (``current_setting`` is
stable), and the chunk streams in bounded memory. connectorx widens ``integer`` to
``int64``, reads every numeric as ``decimal(38,10)`` and takes no parameters.

``numeric(p,s)`` is read as the server's text (``::text``) and cast in Arrow to
``decimal128(p,s)``/``decimal256(p,s)`` (unconstrained numeric stays exact text): ADBC would
decode the binary form into text itself, at 2.4× the client CPU; ``json``
and ``jsonb`` arrive as the ``arrow.json`` extension (its string storage is kept);
``uuid``, ``timetz``, ``money`` and types ADBC does not know are read as ``::text``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from replicant.errors import ConnectionError, FatalError, RetriableError
from replicant.model import ConnectorContext, Stream
from replicant.sources.base import Capabilities
from replicant.sources.sql import Plan, SQLSource, Table
from replicant.sources.types import Column, conform, pg_column
from replicant.timeouts import libpq_url, timed_out, timeout_hint

if TYPE_CHECKING:
    from replicant.sources.postgres.triggers import PostgresTriggers

__all__ = ["PostgresSource"]

# One row per column of every table, view and partition outside the system schemas. Domains
# are resolved to their base type (a destination cannot be assumed to have the domain).
_CATALOG = """
SELECT n.nspname, c.relname, c.relkind, c.relispartition, has_table_privilege(c.oid, 'SELECT'),
       a.attname, a.attnotnull,
       format_type(bt.oid, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END),
       bt.typname, bt.typtype, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
       et.typname, et.typtype,
       (SELECT k.ord FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
         WHERE i.indrelid = c.oid AND i.indisprimary AND k.attnum = a.attnum) AS pk_ord
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""
_ORDER = " ORDER BY n.nspname, c.relname, a.attnum"

#: ADBC cuts COPY into Arrow batches of about this many bytes (its default: 16 MB), divided by
#: the readers running at once (ConnectorContext.readers), down to ``_COPY_BATCH_MIN``. 4 MB
#: keeps one read's peak low at the same speed (96 MB vs 157 MB RSS, 5M rows, against 16 MB).
#: 12 tables × 500k rows PG→PG at parallelism 2 (2026-12-07, local PostgreSQL 15, 3 runs
#: each): 4 MB per reader peaked at 270–280 MB RSS, 2 MB at 251–254 MB for 3% more client CPU
#: (6.98 → 7.20 s) at the same wall time, 1 MB at 247–253 MB for 5% more.
_COPY_BATCH_BYTES = 4 << 20
_COPY_BATCH_MIN = 1 << 20

_KINDS = {"r": "table", "p": "partitioned", "v": "view", "m": "view", "f": "foreign"}


def _text(value: Any) -> str:
    """A Python key value as PostgreSQL input text for its own type (exact)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return str(value)


# ADBC adds the 2000→1970 epoch offset to PostgreSQL's ±infinity sentinels (and to the few
# valid timestamps past Arrow's year 294247) and the integer wraps. Real values are never
# that low (PostgreSQL starts at 4713 BC), so the wrapped sentinels are recognised and
# re-encoded as DuckDB's ±infinity (±max of the integer); anything else that low is an error.
_WRAPPED = {  # Arrow bit width: (wrapped +infinity, wrapped -infinity, lowest real value)
    64: (-9222425352054775809, -9222425352054775808, -(10**18)),
    32: (-2147472692, -2147472691, -(10**9)),
}


def _infinities(arr: pa.Array, name: str) -> pa.Array:
    """``arr`` (timestamp or date32) with PostgreSQL's ±infinity as ±max of the integer."""
    bits = 64 if pa.types.is_timestamp(arr.type) else 32
    ints = arr.view(pa.int64() if bits == 64 else pa.int32())
    lowest = pc.min(ints).as_py()
    if lowest is None or lowest >= _WRAPPED[bits][2]:
        return arr
    inf, ninf, floor = _WRAPPED[bits]
    top = 2 ** (bits - 1) - 1
    is_inf, is_ninf = pc.equal(ints, inf), pc.equal(ints, ninf)
    fixed = pc.if_else(is_inf, top, pc.if_else(is_ninf, -top, ints))
    if pc.min(pc.if_else(pc.or_(is_inf, is_ninf), 0, ints)).as_py() < floor:
        raise ValueError(f"column {name!r} holds a timestamp past the year 294247, beyond Arrow's range")
    return fixed.cast(ints.type).view(arr.type)


def _fix_infinities(batch: pa.RecordBatch) -> pa.RecordBatch:
    cols = batch.columns
    for i, f in enumerate(batch.schema):
        if pa.types.is_timestamp(f.type) or pa.types.is_date32(f.type):
            fixed = _infinities(cols[i], f.name)
            if fixed is not cols[i]:
                batch = batch.set_column(i, f, fixed)
    return batch


#: libpq's and the server's words for a connection that is gone (a COPY's error carries no SQLSTATE):
#: the server ended the backend (57P01 "terminating connection due to administrator command",
#: a shutdown), the socket closed, or libpq has no connection left.
_CONNECTION_LOST = ("terminating connection", "server closed the connection", "no connection",
                    "could not receive data from server", "could not send data to server", "SSL SYSCALL error")


class PostgresSettings(BaseModel):
    """The keys of a PostgreSQL ``source:`` beyond the common ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slot: str | None = Field(
        None, pattern=r"^[a-z0-9_]{1,63}$",
        description="`mode: log`: replication slot name, 1-63 lower-case letters, digits and underscores "
        "(default replicant_<pipeline>, with the tenant appended when there is one).",
    )
    publication: str | None = Field(
        None, description="`mode: log`: publication name (default replicant_<pipeline>, with the tenant appended "
        "when there is one).",
    )


def feed_names(context: ConnectorContext) -> tuple[str, str]:
    """The default ``(slot, publication)`` of a source feed: ``replicant_<pipeline>``, or
    ``replicant_<pipeline>_<tenant>`` with the tenant made a valid identifier."""
    base = f"replicant_{context.pipeline}"
    if context.tenant is not None:
        base += "_" + re.sub(r"[^A-Za-z0-9_]", "_", context.tenant)
    return re.sub(r"[^a-z0-9_]", "_", base.lower())[:63], base


class PostgresSource(SQLSource):
    """Reads PostgreSQL tables (``postgresql://``, ``postgres://``, ``postgresql+psycopg://``).

    Uses one ADBC connection in autocommit mode (no transaction is held between chunks).
    A ``full`` read is consistent per chunk, not across chunks.
    """

    dialect = "postgresql"
    capabilities = Capabilities(modes=frozenset({"full", "cursor", "snapshot_diff", "trigger", "log"}), chunked=True)
    log_capture = "replicant.sources.postgres.capture:PgLogCapture"
    settings = PostgresSettings

    def __init__(self, config: Any, context: ConnectorContext) -> None:
        super().__init__(config, context)
        slot, publication = feed_names(context)
        #: The replication slot and publication of ``mode: log`` (settings, else from the feed).
        self.slot: str = self.options.slot or slot
        self.publication: str = self.options.publication or publication
        self._conn: Any = None
        self._schema: str | None = None

    # ------------------------------------------------------------------ connection

    def location(self) -> str:
        from sqlalchemy.engine import make_url

        u = make_url(self._url)
        host = u.host or u.query.get("host") or "localhost"
        return f"PostgreSQL at {host}:{u.port or 5432} as user {u.username or '(default)'!r}, database {u.database!r}"

    def cdc_objects(self) -> dict[str, Any]:
        """Slots, publications and shadow tables on this server (:mod:`.slots`)."""
        from .slots import list_objects

        return list_objects(self._url, slot=self.slot, publication=self.publication, where=self.location(), scrub=self.scrub)

    def drop_slot(self, slot: str | None, publication: str | None, *, force: bool) -> list[str]:
        from .slots import drop

        return drop(self._url, slot=slot, publication=publication, own_slot=self.slot, own_publication=self.publication,
                    force=force, where=self.location(), scrub=self.scrub)

    def scrub(self, text: str) -> str:
        from sqlalchemy.engine import make_url

        pw = make_url(self._url).password
        return text.replace(pw, "***") if pw else text

    def _connect(self) -> Any:
        if self._conn is None:
            import adbc_driver_manager
            import adbc_driver_postgresql.dbapi as adbc

            try:
                self._conn = adbc.connect(libpq_url(self._url, self.connect_timeout), autocommit=True)
            except adbc_driver_manager.Error as e:
                reason = self.scrub(str(e)).split("Failed to connect:", 1)[-1].strip()
                raise ConnectionError(f"cannot connect to {self.location()}: {self._why(reason)}{reason}") from None
        return self._conn

    def _why(self, reason: str) -> str:
        """What libpq's connection failure means, in a few words (the mapping table), or ""."""
        from sqlalchemy.engine import make_url

        u = make_url(self._url)
        if timed_out(reason):
            return timeout_hint(self.connect_timeout, "source.connect_timeout") + ": "
        for marks, meaning in [
            (("Connection refused", "could not translate host name", "timeout expired", "No route to host",
              "Network is unreachable", "No such file or directory"),
             "nothing answers there (is the server running, are host and port right?)"),
            (("password authentication failed", "no password supplied"), f"wrong or missing password for user {u.username!r}"),
            ((f'role "{u.username}" does not exist',), f"user {u.username!r} does not exist"),
            ((f'database "{u.database}" does not exist',), f"database {u.database!r} does not exist"),
            (("no pg_hba.conf entry",), "the server's pg_hba.conf does not let this user connect from here"),
        ]:
            if any(m in reason for m in marks):
                return meaning + ": "
        return ""

    def close(self) -> None:
        self._close_capture()
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _error(self, e: Exception, what: str) -> Exception:
        """A driver error as a replicant error (the mapping table)."""
        state = getattr(e, "sqlstate", None) or ""
        msg = self.scrub(str(e)).split("Query was:", 1)[0].strip()
        if state.startswith("08") or any(m in msg for m in _CONNECTION_LOST):
            self.close()
            return RetriableError(f"lost the connection to {self.location()} while {what}: {msg}")
        if state in ("42P01", "3F000"):
            return FatalError(f"{what}: {msg}")
        if state.startswith("57"):  # cancelled, admin shutdown
            self.close()
            return RetriableError(f"{what}: {msg}")
        return FatalError(f"{what}: {msg}")

    def fetchall(self, sql: str, params: tuple = ()) -> list[tuple]:
        import adbc_driver_manager

        cur = self._connect().cursor()
        try:
            cur.execute(sql, params or None)
            return cur.fetchall()
        except adbc_driver_manager.Error as e:
            raise self._error(e, "reading the catalog") from None
        finally:
            cur.close()

    # ------------------------------------------------------------------ catalog

    def _default_schema(self) -> str:
        if self._schema is None:
            self._schema = self.fetchall("SELECT current_schema()")[0][0] or "public"
        return self._schema

    def _tables(self, only: tuple[str, ...] | None = None) -> list[Table]:
        if only is None:
            rows = self.fetchall(_CATALOG + _ORDER)
        else:
            rows = self.fetchall(_CATALOG + " AND n.nspname = $1 AND c.relname = $2" + _ORDER, (only[0], only[-1]))
        tables: dict[tuple[str, str], Table] = {}
        pks: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for (nsp, rel, kind, is_part, readable, att, notnull, sql_type, typname, typtype, typmod,
             etypname, etyptype, pk_ord) in rows:
            key = (nsp, rel)
            t = tables.get(key)
            if t is None:
                t = tables[key] = Table((nsp, rel), "partition" if is_part else _KINDS[kind], [])
                if not readable:
                    t.options["readable"] = False
            t.columns.append(pg_column(att, sql_type, typname, typtype, int(typmod), etypname, etyptype,
                                       nullable=not notnull and pk_ord is None))
            if pk_ord is not None:
                pks.setdefault(key, []).append((int(pk_ord), att))
        for key, cols in pks.items():
            tables[key].primary_key = tuple(a for _, a in sorted(cols))
        return list(tables.values())

    def estimate_rows(self, stream: Any) -> int | None:
        try:
            rows = self.fetchall(
                "SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relname = $2", (stream.table[0], stream.table[-1]))
        except (FatalError, RetriableError):
            return None
        return int(rows[0][0]) if rows and rows[0][0] is not None and rows[0][0] >= 0 else None

    def filled_columns(self, stream: Stream, names: list[str]) -> dict[str, str]:
        """See :meth:`Source.filled_columns`: from the catalog, a column filled at existing rows
        has a default (``pg_attrdef``; a constant one is ``attmissingval`` since PostgreSQL 11,
        a volatile one rewrote the table), is an identity or generated column, or is ``NOT
        NULL`` (a table with rows can only get such a column with a value)."""
        wanted = set(names)
        found = {}
        for att, default, identity, generated, notnull in self.fetchall(
                "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, "
                "COALESCE(to_jsonb(a) ->> 'attgenerated', ''), a.attnotnull "
                "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                "WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                (stream.table[0], stream.table[-1])):
            if att not in wanted:
                continue
            if generated:
                found[att] = f"GENERATED ALWAYS AS ({default})"
            elif identity:
                found[att] = "GENERATED AS IDENTITY"
            elif default is not None and not default.upper().startswith("NULL"):
                found[att] = f"DEFAULT {default}"
            elif notnull:
                found[att] = "NOT NULL"
        return found

    # ------------------------------------------------------------------ reading

    def trigger_sql(self, stream: Stream) -> PostgresTriggers:
        from replicant.sources.postgres.triggers import PostgresTriggers

        return PostgresTriggers(self, stream)

    def _bind(self, value: Any, column: Column, params: list[Any]) -> str:
        params.append(_text(value))
        return f"CAST(current_setting('replicant.p{len(params) - 1}') AS {column.sql_type})"

    def _batches(self, sql: str, params: list[Any], plan: Plan, batch_size: int) -> Iterator[pa.RecordBatch]:
        import adbc_driver_manager

        schema = plan.stream.schema
        what = f"reading {self.display(plan.stream.table)}"
        conn = self._connect()
        cur = conn.cursor()
        hint = max(_COPY_BATCH_BYTES // max(self.context.readers, 1), _COPY_BATCH_MIN)
        cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(hint)})
        reader = None
        try:
            try:
                if params:  # bound here so the query itself has none and streams (see the docstring)
                    sets = ", ".join(f"set_config('replicant.p{i}', ${i + 1}, false)" for i in range(len(params)))
                    cur.execute(f"SELECT {sets}", tuple(params))
                    cur.fetchall()
                cur.execute(sql)
                reader = cur.fetch_record_batch()
                for b in reader:
                    yield _fix_infinities(conform(b, schema))
            except (adbc_driver_manager.Error, OSError, ValueError) as e:
                # the COPY stream's own failures come through Arrow's reader without a SQLSTATE:
                # OSError (driver 1.13) or ValueError (1.8, and a value that does not fit its
                # type); _error tells a lost connection by its words
                raise self._error(e, what) from None
        finally:
            if reader is not None:
                try:
                    reader.close()
                except Exception:  # noqa: BLE001 - an abandoned COPY: drop the connection instead
                    self.close()
            try:
                cur.close()
            except Exception:  # noqa: BLE001
                self.close()

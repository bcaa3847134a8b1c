"""One side of a comparison: a connection to the database that holds a stream's rows, the
relation (table, or a view folding files), the columns to compare and how to read each.

Every query a comparison runs is built here from the dialect's canonical encoding
(:mod:`replicant.validate.canon`) and runs inside that database: counts and checksums per
bucket, and the rows of the buckets that differ. A side is used from one thread.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote as urlquote

import pyarrow as pa

from replicant.errors import ConnectionError, FatalError, redact
from replicant.validate.canon import DIALECTS, Dialect

_U64 = (1 << 64) - 1
#: PostgreSQL types without a hash function: compared by their canonical text
_UNHASHABLE = {"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"}
_K, _R = "__replicant_k", "__replicant_r"  # a StreamSide's kept hashes, beside the key columns

__all__ = ["Column", "Side", "StreamSide", "agree", "duckdb_connection", "mysql_connection", "pg_connection", "sqlite_connection"]


@dataclass(frozen=True)
class Column:
    """A compared column: its name in the log (``name``), its Arrow field there, and the SQL
    that reads it on this side (a quoted column, perhaps qualified)."""

    name: str
    field: pa.Field
    sql: str


@dataclass
class Side:
    """One database holding a stream's rows.

    Args:
        label: for messages and the report (``source``, ``destination warehouse``).
        dialect_name: the canonical encoding's dialect name.
        execute: runs a query and returns its rows.
        relation: what the rows are read from (a quoted table or a parenthesised query).
        keys, values: the key columns and the other compared columns.
        where: filters (a tenant's rows).
        close: releases the connection.
        hash_sql: set by :func:`agree`: the cheap text hash (a format with ``{}``), when both
            sides are of this dialect.
        typed: set by :func:`agree`: hash the typed values (both sides' columns have the same types).
    """

    label: str
    dialect_name: str
    execute: Callable[[str], list[tuple[Any, ...]]]
    relation: str
    keys: list[Column]
    values: list[Column]
    where: list[str] = field(default_factory=list)
    close: Callable[[], None] = lambda: None
    hash_sql: str | None = None
    typed: bool = False

    @property
    def dialect(self) -> Dialect:
        return DIALECTS[self.dialect_name]

    def _hash(self, text: str) -> str:
        return self.hash_sql.format(text) if self.hash_sql else self.dialect.hash64(text)

    def key_text(self) -> str:
        d = self.dialect
        return d.row_text([str(d.wrapped(c.sql, c.field)) for c in self.keys])

    def row_text(self) -> str:
        d = self.dialect
        return d.row_text([str(d.wrapped(c.sql, c.field)) for c in self.keys + self.values])

    def key_hash(self) -> str:
        typed = self.dialect.typed_hash([c.sql for c in self.keys]) if self.typed else None
        return typed or self._hash(self.key_text())

    def row_hash(self) -> str:
        typed = self.dialect.typed_hash([c.sql for c in self.keys + self.values]) if self.typed else None
        return typed or self._hash(self.row_text())

    def _filtered(self, extra: list[str]) -> str:
        conds = self.where + extra
        return f" WHERE {' AND '.join(conds)}" if conds else ""

    def column_types(self) -> list[str] | None:
        """The compared columns' types as the dialect names them (None: no row to ask, or the
        dialect cannot say)."""
        type_of = getattr(self.dialect, "type_of", None)
        if type_of is None:
            return None
        if self.dialect_name == "duckdb":  # the declared types, rows or not
            select = ", ".join(c.sql for c in self.keys + self.values)
            return [str(r[1]) for r in self.execute(f"DESCRIBE SELECT {select} FROM {self.relation}")]
        cols = ", ".join(type_of(c.sql) for c in self.keys + self.values)
        rows = self.execute(f"SELECT {cols} FROM {self.relation}{self._filtered([])} LIMIT 1")
        return [str(t) for t in rows[0]] if rows else None

    def total(self) -> tuple[int, int, int]:
        """``(rows, sum of high halves, sum of low halves)`` of every row's hash: one scan, no
        grouping (the cheapest question: are the tables equal?)."""
        d = self.dialect
        sql = (f"SELECT COUNT(*), SUM({d.high('r')}), SUM({d.low('r')}) FROM "
               f"(SELECT {self.row_hash()} AS r FROM {self.relation}{self._filtered([])}) s")
        (c, h, lo), = self.execute(sql)
        return int(c), int(h or 0), int(lo or 0)

    def buckets(self, n: int, parent: int = 0, parents: Sequence[int] = ()) -> dict[int, tuple[int, int, int]]:
        """Per bucket of ``n`` (by key hash), ``(rows, sum of high halves, sum of low halves)``
        of the row hashes; only the buckets inside ``parents`` of ``parent`` buckets when given."""
        d = self.dialect
        inside = f" WHERE {d.bucket('k', parent)} IN ({', '.join(map(str, parents))})" if parent else ""
        inner = f"SELECT {self.key_hash()} AS k, {self.row_hash()} AS r FROM {self.relation}{self._filtered([])}"
        sql = (f"SELECT {d.bucket('k', n)} AS b, COUNT(*), SUM({d.high('r')}), SUM({d.low('r')}) "
               f"FROM ({inner}) s{inside} GROUP BY 1")
        return {int(b): (int(c), int(h or 0), int(lo or 0)) for b, c, h, lo in self.execute(sql)}

    def rows(self, n: int, buckets: Sequence[int]) -> dict[str, tuple[int, tuple[Any, ...]]]:
        """The rows of ``buckets`` (of ``n``): key text → (row hash, the key's values)."""
        d = self.dialect
        raw = ", ".join(c.sql for c in self.keys)
        cond = f"{d.bucket(self.key_hash(), n)} IN ({', '.join(map(str, buckets))})"
        sql = f"SELECT {self.key_text()}, {self.row_hash()}, {raw} FROM {self.relation}{self._filtered([cond])}"
        return {str(row[0]): (int(row[1]) & _U64, tuple(row[2:])) for row in self.execute(sql)}  # signed or not, by dialect


    def rows_by_keys(self, keys: Sequence[tuple[Any, ...]]) -> dict[str, tuple[int, tuple[Any, ...]]] | None:
        """The rows of these keys (values as :meth:`rows` returned them), found through the
        key (an index where there is one); None when a key column is neither integer nor text."""
        from replicant.validate.canon import kind

        if not keys or any(kind(c.field.type) not in ("integer", "text") for c in self.keys):
            return None if keys else {}
        if any(v is None for key in keys for v in key):
            return None
        d = self.dialect

        def lit(v: Any) -> str:
            return str(int(v)) if isinstance(v, int) else d.literal(str(v))

        cols = [c.sql for c in self.keys]
        out: dict[str, tuple[int, tuple[Any, ...]]] = {}
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            if len(cols) == 1:
                cond = f"{cols[0]} IN ({', '.join(lit(k[0]) for k in chunk)})"
            else:
                cond = f"({', '.join(cols)}) IN ({', '.join('(' + ', '.join(lit(v) for v in k) + ')' for k in chunk)})"
            sql = f"SELECT {self.key_text()}, {self.row_hash()}, {', '.join(cols)} FROM {self.relation}{self._filtered([cond])}"
            out.update({str(row[0]): (int(row[1]) & _U64, tuple(row[2:])) for row in self.execute(sql)})
        return out


@dataclass
class StreamSide(Side):
    """A side whose rows arrive as Arrow batches (read by the pipeline's own source, perhaps
    through its transforms), hashed by DuckDB in memory as ``relation``, one batch at a time.

    The first pass (:meth:`total`) keeps each row's key hash and row hash (16 bytes a row) in
    DuckDB, so the bucket passes read no rows again; fetching the rows of differing buckets
    reads the source once more."""

    batches: Callable[[], Iterator[pa.RecordBatch]] = lambda: iter(())
    schema: pa.Schema | None = None
    #: reads only the rows of some keys (values as :meth:`rows` returns them), by the key's index
    lookup: Callable[[Sequence[tuple[Any, ...]]], Iterator[pa.RecordBatch]] | None = None
    _conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            import duckdb

            self._conn = duckdb.connect()
            self._conn.execute("SET TimeZone = 'UTC'")
            conn = self._conn
            self.execute = lambda sql: list(conn.execute(sql).fetchall())
            self.close = conn.close
        return self._conn

    def _each(self, ask: Callable[[], Any], batches: Iterator[pa.RecordBatch] | None = None) -> Iterator[Any]:
        conn = self._connection()
        seen = False
        for batch in self.batches() if batches is None else batches:
            seen = True
            conn.register(self.relation, pa.Table.from_batches([batch]))
            try:
                yield ask()
            finally:
                conn.unregister(self.relation)
        if not seen and self.schema is not None:
            conn.register(self.relation, self.schema.empty_table())
            try:
                yield ask()
            finally:
                conn.unregister(self.relation)

    def column_types(self) -> list[str] | None:
        if self.schema is None:
            return None
        conn = self._connection()
        conn.register(self.relation, self.schema.empty_table())  # the batches' types, without reading any
        try:
            return Side.column_types(self)
        finally:
            conn.unregister(self.relation)

    def total(self) -> tuple[int, int, int]:
        conn = self._connection()
        keys = ", ".join(c.sql for c in self.keys)
        first = True

        def keep() -> None:  # the hashes, and the keys to look rows up by
            nonlocal first
            select = (f"SELECT {self.key_hash()} AS {_K}, {self.row_hash()} AS {_R}, {keys} "
                      f"FROM {self.relation}{self._filtered([])}")
            conn.execute(f"CREATE OR REPLACE TEMP TABLE replicant_hashes AS {select}" if first else
                         f"INSERT INTO replicant_hashes {select}")
            first = False

        for _ in self._each(keep):
            pass
        d = self.dialect
        (c, h, lo), = self.execute(f"SELECT COUNT(*), SUM({d.high(_R)}), SUM({d.low(_R)}) FROM replicant_hashes")
        return int(c), int(h or 0), int(lo or 0)

    def buckets(self, n: int, parent: int = 0, parents: Sequence[int] = ()) -> dict[int, tuple[int, int, int]]:
        d = self.dialect
        inside = f" WHERE {d.bucket(_K, parent)} IN ({', '.join(map(str, parents))})" if parent else ""
        sql = (f"SELECT {d.bucket(_K, n)} AS b, COUNT(*), SUM({d.high(_R)}), SUM({d.low(_R)}) "
               f"FROM replicant_hashes{inside} GROUP BY 1")
        return {int(b): (int(c), int(h or 0), int(lo or 0)) for b, c, h, lo in self.execute(sql)}

    def rows(self, n: int, buckets: Sequence[int]) -> dict[str, tuple[int, tuple[Any, ...]]]:
        if self.lookup is not None and Side.rows_by_keys(self, []) is not None:  # the keys are kept: look them up
            d = self.dialect
            keys = ", ".join(c.sql for c in self.keys)
            found = self.execute(f"SELECT {keys} FROM replicant_hashes WHERE {d.bucket(_K, n)} IN ({', '.join(map(str, buckets))})")
            got = self.rows_by_keys([tuple(k) for k in found])
            if got is not None:
                return got
        out: dict[str, tuple[int, tuple[Any, ...]]] = {}
        for part in self._each(lambda: Side.rows(self, n, buckets)):
            out.update(part)
        return out

    def rows_by_keys(self, keys: Sequence[tuple[Any, ...]]) -> dict[str, tuple[int, tuple[Any, ...]]] | None:
        if Side.rows_by_keys(self, []) is None:
            return None
        out: dict[str, tuple[int, tuple[Any, ...]]] = {}
        for i in range(0, max(len(keys), 1), 5000):
            chunk = keys[i:i + 5000]
            for part in self._each(lambda chunk=chunk: Side.rows_by_keys(self, chunk),  # type: ignore[misc]
                                   self.lookup(chunk) if self.lookup is not None else None):
                if part is None:
                    return None
                out.update(part)
        return out


def agree(a: Side, b: Side) -> None:
    """Chooses the hash both sides use: MD5 of the canonical text across dialects; within one
    dialect its typed hash when the columns' types match, else its cheap text hash."""
    if a.dialect_name != b.dialect_name or a.dialect.cheap_hash is None:
        return
    a.hash_sql = b.hash_sql = a.dialect.cheap_hash
    ta, tb = a.column_types(), b.column_types()
    if ta is not None and ta == tb and not set(ta) & _UNHASHABLE:
        a.typed = b.typed = True


# ------------------------------------------------------------------------------ connections


Execute = Callable[[str], list[tuple[Any, ...]]]


def _wrap(label: str, run: Execute, errors: tuple[type[BaseException], ...]) -> Execute:
    def execute(sql: str) -> list[tuple[Any, ...]]:
        try:
            return run(sql)
        except errors as e:
            raise FatalError(f"{label}: {redact(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)}") from None

    return execute


def pg_connection(url: str, label: str) -> tuple[Execute, Callable[[], None]]:
    import psycopg

    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        conn.execute("SET jit = off")  # compiling one scan's expressions costs more than it saves here (measured: 0.3 s of 3.8)
    except psycopg.Error as e:
        raise ConnectionError(f"{label}: cannot connect to PostgreSQL: {redact(str(e).strip().splitlines()[0])}") from None

    def run(sql: str) -> list[tuple[Any, ...]]:
        with conn.cursor() as cur:
            cur.execute(sql.encode())  # built from quoted names and literals only: no parameters
            return list(cur.fetchall())

    return _wrap(label, run, (psycopg.Error,)), conn.close


def mysql_connection(url: str, label: str) -> tuple[Execute, Callable[[], None]]:
    import pymysql
    from sqlalchemy.engine import make_url

    u = make_url(url)
    try:
        conn = pymysql.connect(host=u.host or "localhost", port=u.port or 3306, user=u.username or "", password=u.password or "",
                               database=u.database, charset="utf8mb4", autocommit=True, connect_timeout=10,
                               init_command="SET time_zone = '+00:00'")
    except pymysql.Error as e:
        raise ConnectionError(f"{label}: cannot connect to MySQL: {redact(str(e))}") from None

    def run(sql: str) -> list[tuple[Any, ...]]:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())

    return _wrap(label, run, (pymysql.Error,)), conn.close


def _md5_64(text: str | None) -> int | None:
    if text is None:
        return None
    return int.from_bytes(hashlib.md5(text.encode("utf-8", "surrogatepass")).digest()[:8], "big", signed=True)


def sqlite_connection(path: str, label: str) -> tuple[Execute, Callable[[], None]]:
    try:
        conn = sqlite3.connect(f"file:{urlquote(path)}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as e:
        raise ConnectionError(f"{label}: cannot open SQLite database {path!r}: {e}") from None
    # SQLite has no MD5; the canonical hash of every other dialect, computed by hashlib
    conn.create_function("replicant_md5_64", 1, _md5_64, deterministic=True)

    def run(sql: str) -> list[tuple[Any, ...]]:
        return list(conn.execute(sql).fetchall())

    return _wrap(label, run, (sqlite3.Error,)), conn.close


def duckdb_connection(path: str | None, label: str, *, tables: dict[str, Any] | None = None) -> tuple[Execute, Callable[[], None]]:
    """A DuckDB connection (read-only on a file; in memory when ``path`` is None, with
    ``tables`` registered: Arrow tables by name), zoned values in UTC."""
    import duckdb

    try:
        conn = duckdb.connect(path, read_only=True) if path else duckdb.connect()
    except duckdb.Error as e:
        raise ConnectionError(f"{label}: cannot open DuckDB file {path!r}: {str(e).splitlines()[0]}") from None
    conn.execute("SET TimeZone = 'UTC'")
    for name, table in (tables or {}).items():
        conn.register(name, table)
    lock = __import__("threading").Lock()

    def run(sql: str) -> list[tuple[Any, ...]]:
        with lock:
            return list(conn.execute(sql).fetchall())

    return _wrap(label, run, (duckdb.Error,)), conn.close

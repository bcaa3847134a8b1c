"""Per-dialect DDL, catalog checks and writes of the ``trigger`` strategy (see :mod:`.triggers`).

Objects created for a table ``T`` (names cut to 63 bytes with a hash suffix when longer):

=============  =========================================  =====================================
dialect        shadow table (same schema as ``T``)        triggers
=============  =========================================  =====================================
PostgreSQL     ``_replicant_changes_T`` + index on txid   ``_replicant_capture`` on ``T``, calling
                                                          function ``_replicant_capture_T()``
MariaDB/MySQL  ``_replicant_changes_T`` (InnoDB)          ``_replicant_T_ins``/``_upd``/``_del``
SQLite         ``_replicant_changes_T`` (AUTOINCREMENT)   ``_replicant_T_ins``/``_upd``/``_del``
=============  =========================================  =====================================

Shadow columns: ``_replicant_seq`` (auto-increment, never reused), ``_replicant_op`` (``I``,
``U``, ``D``), the key columns with the table's own types, ``_replicant_at`` (write time,
microseconds since the Unix epoch, UTC) and, on PostgreSQL, ``_replicant_txid`` (the writing
transaction, ``txid_current()``). The shadow table's comment (in SQLite: a comment inside
its ``CREATE TABLE`` text) holds an install id; positions carry it, so a re-installed
shadow table (whose history is unknown) is detected instead of silently trusted.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from replicant.errors import FatalError
from replicant.model import Stream
from replicant.sources.types import Column

__all__ = ["Dialect", "dialect_for", "SEQ", "OP", "AT", "TXID"]

SEQ, OP, AT, TXID = "_replicant_seq", "_replicant_op", "_replicant_at", "_replicant_txid"
_SHADOW = "_replicant_changes_"
_MAX_NAME = 63  # bytes: PostgreSQL's limit (MySQL: 64 characters)
_COMMENT = "replicant trigger capture "
_INSTALL_ID = re.compile(r"replicant trigger capture ([0-9a-f]{12})")


def safe_name(prefix: str, table: str, suffix: str = "") -> str:
    """``prefix + table + suffix``, cut to 63 bytes with a hash of ``table`` when longer."""
    name = prefix + table + suffix
    if len(name.encode()) <= _MAX_NAME:
        return name
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    room = _MAX_NAME - len(prefix.encode()) - len(suffix.encode()) - 9
    cut = table.encode()[:room].decode("utf-8", "ignore")
    return f"{prefix}{cut}_{digest}{suffix}"


class Dialect:
    """The names and statements of one stream's capture objects in one dialect."""

    def __init__(self, source: Any, stream: Stream) -> None:
        self.src = source
        self.stream = stream
        self.table = stream.table[-1]
        self.base = source._display(stream.table)
        self.shadow_name = safe_name(_SHADOW, self.table)
        self.shadow = self.qualified(self.shadow_name)

    def qualified(self, name: str) -> str:
        return ".".join(self.src.quote(p) for p in (*self.stream.table[:-1], name))

    def q(self, name: str) -> str:
        return self.src.quote(name)

    # -------------------------------------------------------------- hooks

    def installed(self) -> tuple[str | None, bool]:
        """``(install id or None without a shadow table, whether every trigger exists)``."""
        raise NotImplementedError

    def create(self, keys: list[Column]) -> list[str]:
        """Creates what is missing; returns one line per object, created or found."""
        raise NotImplementedError

    def drop(self) -> list[str]:
        raise NotImplementedError

    def execute(self, statements: list[str]) -> None:
        """Runs write statements (DDL, purges) on a connection that may write."""
        raise NotImplementedError

    def purge(self, where: str) -> None:
        """Deletes the committed shadow rows matching ``where`` without waiting for writers."""
        self.execute([f"DELETE FROM {self.shadow} WHERE {where}"])

    @staticmethod
    def _new_id() -> str:
        return uuid.uuid4().hex[:12]

    def _key_defs(self, keys: list[Column]) -> str:
        return ", ".join(f"{self.q(c.name)} {c.sql_type}" for c in keys)


# ---------------------------------------------------------------------------- PostgreSQL


class PostgresDialect(Dialect):
    trigger = "_replicant_capture"

    def __init__(self, source: Any, stream: Stream) -> None:
        super().__init__(source, stream)
        self.function = self.qualified(safe_name("_replicant_capture_", self.table))

    def installed(self) -> tuple[str | None, bool]:
        schema = self.stream.table[0]
        rows = self.src._fetchall(
            "SELECT obj_description(c.oid, 'pg_class') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = $2", (schema, self.shadow_name))
        if not rows:
            return None, False
        m = _INSTALL_ID.search(rows[0][0] or "")
        trig = self.src._fetchall(
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 "
            "AND t.tgname = $3 AND t.tgenabled <> 'D'", (schema, self.table, self.trigger))
        return (m[1] if m else ""), bool(trig[0][0])

    def create(self, keys: list[Column]) -> list[str]:
        q = self.q
        done = []
        install_id, has_trigger = self.installed()
        stmts = []
        if install_id is None:
            stmts += [
                f"CREATE TABLE {self.shadow} ({q(SEQ)} bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                f"{q(OP)} text NOT NULL, {self._key_defs(keys)}, "
                f"{q(AT)} bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, "
                f"{q(TXID)} bigint NOT NULL DEFAULT txid_current())",
                f"CREATE INDEX {q(safe_name('_replicant_txid_', self.table))} ON {self.shadow} ({q(TXID)}, {q(SEQ)})",
                f"COMMENT ON TABLE {self.shadow} IS '{_COMMENT}{self._new_id()}'",
            ]
            done.append(f"created table {self.shadow}")
        else:
            done.append(f"table {self.shadow} already exists")
        if not has_trigger:
            cols = ", ".join(q(c.name) for c in keys)
            new = ", ".join(f"NEW.{q(c.name)}" for c in keys)
            old = ", ".join(f"OLD.{q(c.name)}" for c in keys)
            ins = f"INSERT INTO {self.shadow} ({q(OP)}, {cols}) VALUES"
            stmts += [
                f"""CREATE OR REPLACE FUNCTION {self.function}() RETURNS trigger LANGUAGE plpgsql AS $replicant$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {ins} ('I', {new});
  ELSIF TG_OP = 'DELETE' THEN
    {ins} ('D', {old});
  ELSIF ROW({old}) IS DISTINCT FROM ROW({new}) THEN
    {ins} ('D', {old}), ('I', {new});
  ELSE
    {ins} ('U', {new});
  END IF;
  RETURN NULL;
END $replicant$""",
                f"DROP TRIGGER IF EXISTS {q(self.trigger)} ON {self.base}",
                f"CREATE TRIGGER {q(self.trigger)} AFTER INSERT OR UPDATE OR DELETE ON {self.base} "
                f"FOR EACH ROW EXECUTE FUNCTION {self.function}()",
            ]
            done.append(f"created trigger {q(self.trigger)} on {self.base}")
        else:
            done.append(f"trigger {q(self.trigger)} on {self.base} already exists")
        self.execute(stmts)
        return done

    def drop(self) -> list[str]:
        install_id, has_trigger = self.installed()
        exists = self.src._fetchall(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = $2", (self.stream.table[0], self.table))[0][0]
        stmts, done = [], []
        if exists:
            stmts.append(f"DROP TRIGGER IF EXISTS {self.q(self.trigger)} ON {self.base}")
            if has_trigger:
                done.append(f"dropped trigger {self.q(self.trigger)} on {self.base}")
        stmts += [f"DROP FUNCTION IF EXISTS {self.function}()", f"DROP TABLE IF EXISTS {self.shadow}"]
        if install_id is not None:
            done.append(f"dropped table {self.shadow}")
        self.execute(stmts)
        return done

    def execute(self, statements: list[str]) -> None:
        if not statements:
            return
        import psycopg

        try:
            with psycopg.connect(self.src._url, connect_timeout=10) as conn, conn.transaction():
                for s in statements:
                    conn.execute(s)
        except psycopg.Error as e:
            raise FatalError(f"{self.base}: {self.src.scrub(str(e)).strip()}") from None


# ---------------------------------------------------------------------------- MySQL / MariaDB


class MySQLDialect(Dialect):
    def __init__(self, source: Any, stream: Stream) -> None:
        super().__init__(source, stream)
        self.triggers = {ev: safe_name("_replicant_", self.table, "_" + ev[:3].lower()) for ev in ("INSERT", "UPDATE", "DELETE")}

    def _key_defs(self, keys: list[Column]) -> str:
        out = []
        for c in keys:
            d = f"{self.q(c.name)} {c.sql_type}"
            if c.charset and c.collation:
                d += f" CHARACTER SET {c.charset} COLLATE {c.collation}"
            out.append(d)
        return ", ".join(out)

    def installed(self) -> tuple[str | None, bool]:
        schema = self.stream.table[0]
        rows = self.src._fetchall(
            "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (schema, self.shadow_name))
        rows = [r for r in rows]
        if not rows:
            return None, False
        m = _INSTALL_ID.search(rows[0][0] or "")
        names = list(self.triggers.values())
        found = self.src._fetchall(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s AND EVENT_OBJECT_TABLE = %s "
            "AND TRIGGER_NAME IN (%s, %s, %s)", (schema, self.table, *names))
        return (m[1] if m else ""), {r[0] for r in found} == set(names)

    def _existing_triggers(self) -> set[str]:
        rows = self.src._fetchall(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s AND TRIGGER_NAME IN (%s, %s, %s)",
            (self.stream.table[0], *self.triggers.values()))
        return {r[0] for r in rows}

    def create(self, keys: list[Column]) -> list[str]:
        q = self.q
        install_id, _ = self.installed()
        stmts, done = [], []
        if install_id is None:
            stmts.append(
                f"CREATE TABLE IF NOT EXISTS {self.shadow} ({q(SEQ)} BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "
                f"{q(OP)} CHAR(1) NOT NULL, {self._key_defs(keys)}, {q(AT)} BIGINT NOT NULL) "
                f"ENGINE=InnoDB COMMENT='{_COMMENT}{self._new_id()}'")
            done.append(f"created table {self.shadow}")
        else:
            done.append(f"table {self.shadow} already exists")
        cols = ", ".join(q(c.name) for c in keys)
        now = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6))"
        row = lambda op, rec: f"('{op}', {', '.join(f'{rec}.{q(c.name)}' for c in keys)}, {now})"
        ins = f"INSERT INTO {self.shadow} ({q(OP)}, {cols}, {q(AT)}) VALUES"
        same = " AND ".join(f"OLD.{q(c.name)} <=> NEW.{q(c.name)}" for c in keys)
        bodies = {
            "INSERT": f"{ins} {row('I', 'NEW')}",
            "UPDATE": f"BEGIN IF NOT ({same}) THEN {ins} {row('D', 'OLD')}, {row('I', 'NEW')}; "
                      f"ELSE {ins} {row('U', 'NEW')}; END IF; END",
            "DELETE": f"{ins} {row('D', 'OLD')}",
        }
        have = self._existing_triggers()
        for ev, name in self.triggers.items():
            if name in have:
                done.append(f"trigger {q(name)} on {self.base} already exists")
                continue
            stmts.append(f"CREATE TRIGGER {self.qualified(name)} AFTER {ev} ON {self.base} FOR EACH ROW {bodies[ev]}")
            done.append(f"created trigger {q(name)} on {self.base}")
        self.execute(stmts)
        return done

    def drop(self) -> list[str]:
        install_id, _ = self.installed()
        have = self._existing_triggers()
        stmts, done = [], []
        for name in self.triggers.values():
            stmts.append(f"DROP TRIGGER IF EXISTS {self.qualified(name)}")
            if name in have:
                done.append(f"dropped trigger {self.q(name)} on {self.base}")
        stmts.append(f"DROP TABLE IF EXISTS {self.shadow}")
        if install_id is not None:
            done.append(f"dropped table {self.shadow}")
        self.execute(stmts)
        return done

    def purge(self, where: str) -> None:
        # A range DELETE locks the record after its range, and waits when that record is a
        # writer's uncommitted shadow row (even in READ COMMITTED; measured on MariaDB 10.11),
        # while holding locks that block other writers. So: read the committed rows
        # (non-locking), then delete them by primary key, which locks only those rows.
        seqs = [int(r[0]) for r in self.src._fetchall(
            f"SELECT {self.q(SEQ)} FROM {self.shadow} WHERE {where} ORDER BY {self.q(SEQ)}")]
        step = 5000
        self.execute([
            f"DELETE FROM {self.shadow} WHERE {self.q(SEQ)} IN ({', '.join(map(str, seqs[i:i + step]))})"
            for i in range(0, len(seqs), step)
        ])

    def execute(self, statements: list[str]) -> None:
        import pymysql

        try:
            with self.src._connect().cursor() as cur:
                for s in statements:
                    cur.execute(s)
        except pymysql.MySQLError as e:
            self.src.close()
            raise FatalError(f"{self.base}: {self.src.scrub(str(e.args[-1]))}") from None


# ---------------------------------------------------------------------------- SQLite


class SQLiteDialect(Dialect):
    #: write time, microseconds since the epoch (julianday('now') has millisecond precision)
    NOW = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000000.0) AS INTEGER)"

    def __init__(self, source: Any, stream: Stream) -> None:
        super().__init__(source, stream)
        self.triggers = [safe_name("_replicant_", self.table, "_" + ev) for ev in ("ins", "upd", "del")]

    def installed(self) -> tuple[str | None, bool]:
        rows = self.src._fetchall("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (self.shadow_name,))
        if not rows:
            return None, False
        m = _INSTALL_ID.search(rows[0][0] or "")
        found = self.src._fetchall(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name IN (?, ?, ?)", tuple(self.triggers))
        return (m[1] if m else ""), found[0][0] == len(self.triggers)

    def create(self, keys: list[Column]) -> list[str]:
        q = self.q
        install_id, _ = self.installed()
        stmts, done = [], []
        if install_id is None:
            # AUTOINCREMENT: sequence numbers are never reused once purged rows are gone
            stmts.append(
                f"CREATE TABLE IF NOT EXISTS {self.shadow} ( -- {_COMMENT}{self._new_id()}\n"
                f"  {q(SEQ)} INTEGER PRIMARY KEY AUTOINCREMENT, {q(OP)} TEXT NOT NULL, {self._key_defs(keys)}, "
                f"{q(AT)} INTEGER NOT NULL)")
            done.append(f"created table {self.shadow}")
        else:
            done.append(f"table {self.shadow} already exists")
        cols = ", ".join(q(c.name) for c in keys)
        ins = f"INSERT INTO {q(self.shadow_name)} ({q(OP)}, {cols}, {q(AT)})"  # unqualified inside triggers
        sel = lambda op, rec: f"SELECT '{op}', {', '.join(f'{rec}.{q(c.name)}' for c in keys)}, {self.NOW}"
        changed = " OR ".join(f"OLD.{q(c.name)} IS NOT NEW.{q(c.name)}" for c in keys)
        bodies = [
            f"AFTER INSERT ON {q(self.table)} BEGIN {ins} {sel('I', 'NEW')}; END",
            f"AFTER UPDATE ON {q(self.table)} BEGIN "
            f"{ins} {sel('D', 'OLD')} WHERE {changed}; {ins} {sel('I', 'NEW')} WHERE {changed}; "
            f"{ins} {sel('U', 'NEW')} WHERE NOT ({changed}); END",
            f"AFTER DELETE ON {q(self.table)} BEGIN {ins} {sel('D', 'OLD')}; END",
        ]
        have = {r[0] for r in self.src._fetchall(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name IN (?, ?, ?)", tuple(self.triggers))}
        for name, body in zip(self.triggers, bodies):
            if name in have:
                done.append(f"trigger {q(name)} on {self.base} already exists")
                continue
            stmts.append(f"CREATE TRIGGER {self.qualified(name)} {body}")
            done.append(f"created trigger {q(name)} on {self.base}")
        self.execute(stmts)
        return done

    def drop(self) -> list[str]:
        install_id, _ = self.installed()
        have = {r[0] for r in self.src._fetchall(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name IN (?, ?, ?)", tuple(self.triggers))}
        stmts = [f"DROP TRIGGER IF EXISTS {self.qualified(n)}" for n in self.triggers]
        stmts.append(f"DROP TABLE IF EXISTS {self.shadow}")
        done = [f"dropped trigger {self.q(n)} on {self.base}" for n in self.triggers if n in have]
        if install_id is not None:
            done.append(f"dropped table {self.shadow}")
        self.execute(stmts)
        return done

    def execute(self, statements: list[str]) -> None:
        if not statements:
            return
        with self._writer() as conn:
            try:
                with conn:  # one transaction
                    for s in statements:
                        conn.execute(s)
            except sqlite3.Error as e:
                raise FatalError(f"{self.base}: {e}") from None

    @contextmanager
    def _writer(self) -> Iterator[sqlite3.Connection]:
        """A short-lived read-write connection (the source's own is read-only)."""
        path = self.src._path.resolve()
        if not path.is_file():
            raise FatalError(f"SQLite database {str(path)!r} does not exist")
        conn = sqlite3.connect(str(path), timeout=30)
        try:
            yield conn
        finally:
            conn.close()


_DIALECTS = {"postgresql": PostgresDialect, "mysql": MySQLDialect, "sqlite": SQLiteDialect}


def dialect_for(source: Any, stream: Stream) -> Dialect:
    cls = _DIALECTS.get(getattr(source, "dialect", ""))
    if cls is None:
        raise FatalError(f"stream {stream.name!r}: a {type(source).__name__} has no `mode: trigger`")
    return cls(source, stream)

"""PostgreSQL's objects of the ``trigger`` strategy: a shadow table (with the writing
transaction's ``txid``), a row trigger and its function (see
:mod:`replicant.sources.strategies.trigger_sql` for the layout and
:mod:`replicant.sources.strategies.trigger` for how they are read)."""

from __future__ import annotations

from typing import Any

from replicant.errors import FatalError
from replicant.model import Stream
from replicant.sources.strategies.trigger_sql import (
    AT,
    COMMENT,
    INSTALL_ID,
    OP,
    SEQ,
    TXID,
    TriggerSQL,
    safe_name,
)
from replicant.sources.types import Column
from replicant.timeouts import libpq_seconds

__all__ = ["PostgresTriggers"]

class PostgresTriggers(TriggerSQL):
    late_commits = "txid"
    trigger = "_replicant_capture"

    def __init__(self, source: Any, stream: Stream) -> None:
        super().__init__(source, stream)
        self.function = self.qualified(safe_name("_replicant_capture_", self.table))

    def installed(self) -> tuple[str | None, bool]:
        schema = self.stream.table[0]
        rows = self.src.fetchall(
            "SELECT obj_description(c.oid, 'pg_class') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = $2", (schema, self.shadow_name))
        if not rows:
            return None, False
        m = INSTALL_ID.search(rows[0][0] or "")
        trig = self.src.fetchall(
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 "
            "AND t.tgname = $3 AND t.tgenabled <> 'D'", (schema, self.table, self.trigger))
        return (m[1] if m else ""), bool(trig[0][0])

    def has_owner_table(self) -> bool:
        return bool(self.src.fetchall(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            (self.stream.table[0], self.owner_name)))

    def create(self, keys: list[Column]) -> list[str]:
        q = self.q
        done = []
        install_id, has_trigger = self.installed()
        stmts = []
        if install_id is None:
            stmts += [
                (f"CREATE TABLE {self.shadow} ({q(SEQ)} bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                 f"{q(OP)} text NOT NULL, {self._key_defs(keys)}, "
                 f"{q(AT)} bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, "
                 f"{q(TXID)} bigint NOT NULL DEFAULT txid_current())"),
                f"CREATE INDEX {q(safe_name('_replicant_txid_', self.table))} ON {self.shadow} ({q(TXID)}, {q(SEQ)})",
                f"COMMENT ON TABLE {self.shadow} IS '{COMMENT}{self._new_id()}'",
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
                (f"CREATE TRIGGER {q(self.trigger)} AFTER INSERT OR UPDATE OR DELETE ON {self.base} "
                 f"FOR EACH ROW EXECUTE FUNCTION {self.function}()"),
            ]
            done.append(f"created trigger {q(self.trigger)} on {self.base}")
        else:
            done.append(f"trigger {q(self.trigger)} on {self.base} already exists")
        self.execute(stmts)
        return done

    def drop(self) -> list[str]:
        install_id, has_trigger = self.installed()
        exists = self.src.fetchall(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = $2", (self.stream.table[0], self.table))[0][0]
        stmts, done = [], []
        if exists:
            stmts.append(f"DROP TRIGGER IF EXISTS {self.q(self.trigger)} ON {self.base}")
            if has_trigger:
                done.append(f"dropped trigger {self.q(self.trigger)} on {self.base}")
        stmts += [f"DROP FUNCTION IF EXISTS {self.function}()", f"DROP TABLE IF EXISTS {self.shadow}",
                  f"DROP TABLE IF EXISTS {self.owner_table}"]
        if install_id is not None:
            done.append(f"dropped table {self.shadow}")
        self.execute(stmts)
        return done

    def execute(self, statements: list[str]) -> None:
        if not statements:
            return
        import psycopg

        try:
            with psycopg.connect(self.src._url, connect_timeout=libpq_seconds(self.src.connect_timeout)) as conn, conn.transaction():
                for s in statements:
                    conn.execute(s)
        except psycopg.Error as e:
            raise FatalError(f"{self.base}: {self.src.scrub(str(e)).strip()}") from None

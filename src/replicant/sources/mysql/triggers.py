"""MySQL/MariaDB's objects of the ``trigger`` strategy: an InnoDB shadow table and three row
triggers (see :mod:`replicant.sources.strategies.trigger_sql` for the layout and
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
    TriggerSQL,
    safe_name,
)
from replicant.sources.types import Column

__all__ = ["MySQLTriggers"]

class MySQLTriggers(TriggerSQL):
    late_commits = "gaps"
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
        rows = self.src.fetchall(
            "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (schema, self.shadow_name))
        rows = list(rows)
        if not rows:
            return None, False
        m = INSTALL_ID.search(rows[0][0] or "")
        names = list(self.triggers.values())
        found = self.src.fetchall(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s AND EVENT_OBJECT_TABLE = %s "
            "AND TRIGGER_NAME IN (%s, %s, %s)", (schema, self.table, *names))
        return (m[1] if m else ""), {r[0] for r in found} == set(names)

    def has_owner_table(self) -> bool:
        return bool(list(self.src.fetchall(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (self.stream.table[0], self.owner_name))))

    def _existing_triggers(self) -> set[str]:
        rows = self.src.fetchall(
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
                f"ENGINE=InnoDB COMMENT='{COMMENT}{self._new_id()}'")
            done.append(f"created table {self.shadow}")
        else:
            done.append(f"table {self.shadow} already exists")
        cols = ", ".join(q(c.name) for c in keys)
        now = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6))"
        def row(op: str, rec: str) -> str:
            return f"('{op}', {', '.join(f'{rec}.{q(c.name)}' for c in keys)}, {now})"

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
        stmts += [f"DROP TABLE IF EXISTS {self.shadow}", f"DROP TABLE IF EXISTS {self.owner_table}"]
        if install_id is not None:
            done.append(f"dropped table {self.shadow}")
        self.execute(stmts)
        return done

    def purge(self, where: str) -> None:
        # A range DELETE locks the record after its range, and waits when that record is a
        # writer's uncommitted shadow row (even in READ COMMITTED; measured on MariaDB 10.11),
        # while holding locks that block other writers. So: read the committed rows
        # (non-locking), then delete them by primary key, which locks only those rows.
        seqs = [int(r[0]) for r in self.src.fetchall(
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

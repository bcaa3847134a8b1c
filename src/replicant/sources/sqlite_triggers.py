"""SQLite's objects of the ``trigger`` strategy: an AUTOINCREMENT shadow table and three row
triggers, written through a second connection that may write (see
:mod:`replicant.sources.strategies.trigger_sql` for the layout and
:mod:`replicant.sources.strategies.trigger` for how they are read)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
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

__all__ = ["SQLiteTriggers"]

class SQLiteTriggers(TriggerSQL):
    #: write time, microseconds since the epoch (julianday('now') has millisecond precision)
    NOW = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000000.0) AS INTEGER)"

    def __init__(self, source: Any, stream: Stream) -> None:
        super().__init__(source, stream)
        self.triggers = [safe_name("_replicant_", self.table, "_" + ev) for ev in ("ins", "upd", "del")]

    def installed(self) -> tuple[str | None, bool]:
        rows = self.src.fetchall("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (self.shadow_name,))
        if not rows:
            return None, False
        m = INSTALL_ID.search(rows[0][0] or "")
        found = self.src.fetchall(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name IN (?, ?, ?)", tuple(self.triggers))
        return (m[1] if m else ""), found[0][0] == len(self.triggers)

    def has_owner_table(self) -> bool:
        return bool(self.src.fetchall("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (self.owner_name,)))

    def create(self, keys: list[Column]) -> list[str]:
        q = self.q
        install_id, _ = self.installed()
        stmts, done = [], []
        if install_id is None:
            # AUTOINCREMENT: sequence numbers are never reused once purged rows are gone
            stmts.append(
                f"CREATE TABLE IF NOT EXISTS {self.shadow} ( -- {COMMENT}{self._new_id()}\n"
                f"  {q(SEQ)} INTEGER PRIMARY KEY AUTOINCREMENT, {q(OP)} TEXT NOT NULL, {self._key_defs(keys)}, "
                f"{q(AT)} INTEGER NOT NULL)")
            done.append(f"created table {self.shadow}")
        else:
            done.append(f"table {self.shadow} already exists")
        cols = ", ".join(q(c.name) for c in keys)
        ins = f"INSERT INTO {q(self.shadow_name)} ({q(OP)}, {cols}, {q(AT)})"  # unqualified inside triggers
        def sel(op: str, rec: str) -> str:
            return f"SELECT '{op}', {', '.join(f'{rec}.{q(c.name)}' for c in keys)}, {self.NOW}"

        changed = " OR ".join(f"OLD.{q(c.name)} IS NOT NEW.{q(c.name)}" for c in keys)
        bodies = [
            f"AFTER INSERT ON {q(self.table)} BEGIN {ins} {sel('I', 'NEW')}; END",
            (f"AFTER UPDATE ON {q(self.table)} BEGIN "
             f"{ins} {sel('D', 'OLD')} WHERE {changed}; {ins} {sel('I', 'NEW')} WHERE {changed}; "
             f"{ins} {sel('U', 'NEW')} WHERE NOT ({changed}); END"),
            f"AFTER DELETE ON {q(self.table)} BEGIN {ins} {sel('D', 'OLD')}; END",
        ]
        have = {r[0] for r in self.src.fetchall(
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
        have = {r[0] for r in self.src.fetchall(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name IN (?, ?, ?)", tuple(self.triggers))}
        stmts = [f"DROP TRIGGER IF EXISTS {self.qualified(n)}" for n in self.triggers]
        stmts += [f"DROP TABLE IF EXISTS {self.shadow}", f"DROP TABLE IF EXISTS {self.owner_table}"]
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

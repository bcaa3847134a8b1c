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

Beside it, ``_replicant_owner_T`` (one row) names the pipeline that reads the shadow table:
the reader purges what it acknowledged, so a second pipeline on the same table (a copy of
the pipeline file in another folder, with its own state) would delete rows the first has
not read. The id lives in the reader's positions (so in its log); see
:func:`replicant.sources.strategies.trigger.read` for how it is claimed and checked.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any, ClassVar

from replicant.model import Stream
from replicant.sources.types import Column

__all__ = ["AT", "COMMENT", "INSTALL_ID", "OP", "OWNER", "SEQ", "SHADOW", "TXID", "TriggerSQL", "safe_name"]

SEQ, OP, AT, TXID = "_replicant_seq", "_replicant_op", "_replicant_at", "_replicant_txid"
SHADOW = "_replicant_changes_"
OWNER = "_replicant_owner_"  #: the one-row table naming the pipeline that reads (and purges) a shadow table
_MAX_NAME = 63  # bytes: PostgreSQL's limit (MySQL: 64 characters)
COMMENT = "replicant trigger capture "
INSTALL_ID = re.compile(r"replicant trigger capture ([0-9a-f]{12})")


def safe_name(prefix: str, table: str, suffix: str = "") -> str:
    """``prefix + table + suffix``, cut to 63 bytes with a hash of ``table`` when longer."""
    name = prefix + table + suffix
    if len(name.encode()) <= _MAX_NAME:
        return name
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    room = _MAX_NAME - len(prefix.encode()) - len(suffix.encode()) - 9
    cut = table.encode()[:room].decode("utf-8", "ignore")
    return f"{prefix}{cut}_{digest}{suffix}"


class TriggerSQL:
    """The names and statements of one stream's capture objects in one dialect; each dialect
    subclasses it next to its source (``sources/postgres/triggers.py``…)."""

    #: How the reader knows no earlier change can still commit (the late-commit rule of
    #: :mod:`replicant.sources.strategies.trigger`): ``"txid"`` (transaction ids, PostgreSQL),
    #: ``"gaps"`` (sequence gaps and running transactions, MySQL/MariaDB) or ``"seq"`` (one
    #: writer at a time: the sequence alone, SQLite).
    late_commits: ClassVar[str] = "seq"

    def __init__(self, source: Any, stream: Stream) -> None:
        self.src = source
        self.stream = stream
        self.table = stream.table[-1]
        self.base = source.display(stream.table)
        self.shadow_name = safe_name(SHADOW, self.table)
        self.shadow = self.qualified(self.shadow_name)
        self.owner_name = safe_name(OWNER, self.table)
        self.owner_table = self.qualified(self.owner_name)

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

    # -------------------------------------------------------------- the reading pipeline

    def has_owner_table(self) -> bool:
        """Whether ``_replicant_owner_T`` exists (a catalog query: no privilege needed)."""
        raise NotImplementedError

    def create_owner_table(self) -> None:
        """Creates ``_replicant_owner_T`` (``cdc install``; a read does when an install made
        before it existed lacks it)."""
        self.execute([f"CREATE TABLE IF NOT EXISTS {self.owner_table} ({self.q('owner')} VARCHAR(64) NOT NULL)"])

    def owner(self) -> str | None:
        """The id of the pipeline that reads this shadow table (None: none claimed it yet).
        Creates the owner table when missing."""
        if not self.has_owner_table():
            self.create_owner_table()
        rows = self.src.fetchall(f"SELECT {self.q('owner')} FROM {self.owner_table}")
        return str(rows[0][0]) if rows else None

    def claim(self, owner: str) -> None:
        """Makes ``owner`` the pipeline that reads (and purges) this shadow table, unless
        another pipeline already is (one statement: two first purges cannot both win)."""
        self.execute([
            f"INSERT INTO {self.owner_table} ({self.q('owner')}) SELECT '{_hex(owner)}' FROM (SELECT 1 AS one) x "
            f"WHERE NOT EXISTS (SELECT 1 FROM {self.owner_table})",
        ])

    def owned_by(self, owner: str) -> str:
        """A condition true only while ``owner`` reads this shadow table (added to a purge, so
        a pipeline that lost the table deletes nothing, even if it acknowledges meanwhile)."""
        return f"EXISTS (SELECT 1 FROM {self.owner_table} WHERE {self.q('owner')} = '{_hex(owner)}')"

    @staticmethod
    def _new_id() -> str:
        return uuid.uuid4().hex[:12]

    def _key_defs(self, keys: list[Column]) -> str:
        return ", ".join(f"{self.q(c.name)} {c.sql_type}" for c in keys)




def _hex(owner: str) -> str:
    """An owner id checked to be what :meth:`TriggerSQL._new_id` makes (it is spliced into SQL)."""
    if not re.fullmatch(r"[0-9a-f]{1,64}", owner):
        raise ValueError(f"not an owner id: {owner!r}")
    return owner

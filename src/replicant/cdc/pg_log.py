"""PostgreSQL ``mode: log``: one logical replication slot (pgoutput) for every ``log`` stream.

How it runs (:meth:`PgLogCapture.capture`):

1. Checks that the server can do it (``wal_level = logical``, a role with ``REPLICATION`` or
   superuser) and says what to change otherwise; creates the publication (``FOR TABLE`` the
   log streams) or adds the missing tables to it.
2. **Snapshot point.** Streams without a position (or with an interrupted snapshot) are read
   from an *exported snapshot* that meets the log exactly at an LSN ``X``: on the first run it
   is the slot's own (``CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT``; ``X`` is its consistent
   point); when the slot already exists (a stream added later, a snapshot interrupted by a
   crash, whose exported snapshot died with the connection) a *temporary* slot is created
   just to export a new snapshot at a new ``X``. The snapshot is imported into a
   ``REPEATABLE READ`` transaction of the source's ADBC connection (``SET TRANSACTION
   SNAPSHOT``) and read in key-range chunks by the source's own full read, so its rows have
   exactly the types of a full read.
3. **Up to X.** When the slot is behind ``X`` (existing slot), the slot is streamed from the
   resume position up to ``X`` first. Streams being snapshotted skip those changes, except,
   for a snapshot resumed after key ``k``, changes to keys ``<= k`` (the rows already in the
   log) and truncates, which are kept: the log then holds the state at ``X`` for keys ``<= k``,
   and the rows ``> k`` come from the snapshot at ``X``. A stream whose snapshot cannot resume
   (no usable key) or whose slot was lost is snapshotted again from the start after a
   truncate marker (``ChangeSet.truncated``), so what the log held before is replaced.
4. **Snapshot**, emitted as ``_op = "read"`` change sets with per stream positions
   ``{"lsn": X, "snapshot": {"after": [key]}}`` (``{"rows": n}`` without a key), then
   ``{"lsn": X}`` when the stream is complete.
5. **Stream** from ``X`` (or from the resume position): whole transactions, batched by
   ``batch_size`` rows or ``flush_interval`` seconds; a transaction is never split, so one
   very large transaction is held in memory until its commit.

Positions: ``{"lsn": N}`` where ``N`` is the end LSN of the last transaction included (an
integer; ``_pos`` holds the same JSON per row). Resuming at ``N`` re-reads transactions that
commit at or after ``N``; per stream, a transaction that committed before the stream's own
``lsn`` is skipped (``begin.final_lsn < lsn``), so streams ahead of the capture position get
no duplicates.

The slot is confirmed (``flush_lsn`` of the standby status update) only up to positions the
engine acknowledged (:meth:`PgLogCapture.acknowledge`). When idle, a heartbeat change set
with no batches carries the walsender's ``wal_end`` so an idle database (or one whose other
databases write) does not retain WAL without bound; ``follow=False`` ends with one too.

Schema changes: pgoutput sends a ``Relation`` message before a table's first change in a
session and again after its columns changed, describing the table as of that point of the
log. When its columns, types or type modifiers differ from the ones the stream was last
described from, the table is described again by the source's own discovery (so types and
``replicant.sql_type`` metadata are those a fresh ``discover()`` gives; a column whose type
in the catalog has moved on since is described from the message's type instead), keeping
the stream's key, options, ``include``/``exclude`` and schema metadata, and the table's
following changes are emitted in that schema: a new column appears, a dropped one is gone
(destinations keep it and write NULL), a changed type has its new type. Whether a
destination can follow is its ``evolve``'s decision. Change sets never split a
transaction, and a stream has one schema per change set, so at a change the committed
transactions read so far are yielded first (their rows keep the old schema); rows of the
*same* transaction that came before the change are emitted in the new schema (a new
column null, values read as the column's new type). The current schema of every stream is
kept for the whole capture; a restart starts from the streams the engine discovered, and
the first ``Relation`` of each table is checked against them (a restart re-reading changes
from before an ``ALTER`` emits them in the schema they had). Not carried by the log: a
default of an added column (rows written before the ``ALTER`` stay NULL in it at the
destination), and renames (a drop and an add, which destinations refuse to guess).

Values: see :mod:`replicant.cdc.pgoutput`. Deletes under ``REPLICA IDENTITY DEFAULT`` carry
the key columns only (others null); under ``FULL`` every column. An update whose TOASTed
values did not change carries them as "unchanged": under ``FULL`` they are taken from the old
row; otherwise the rows are re-read by key (current values; a row gone since is dropped from
the batch, its delete follows in the log). An update that changes the key is emitted as a
delete of the old key followed by the update. Tables without a primary key need
``REPLICA IDENTITY FULL`` (or ``USING INDEX``): without it PostgreSQL would reject their
updates once published.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import re
import select
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from replicant.errors import ConfigError, ConnectionError, FatalError, RetriableError
from replicant.model import (
    OP_DELETE,
    OP_INSERT,
    OP_READ,
    OP_UPDATE,
    SQL_TYPE_KEY,
    Position,
    Stream,
    encode_position,
    strip_meta,
    utcnow,
    with_meta,
)
from replicant.sources.base import ChangeSet
from replicant.sources.types import decode_value, is_keyable

from .pgoutput import SESSION_OPTIONS, UNCHANGED, Decoder, Relation, lsn_text, parse_lsn, to_arrow

__all__ = ["PgLogCapture"]

_log = logging.getLogger(__name__)

_STATUS_EVERY = 10.0  # seconds between standby status updates (wal_sender_timeout is 60 s)
_TICK = 0.2  # longest wait on the socket, so `stop` is seen promptly
_PG_EPOCH_US = 946_684_800_000_000
_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


@dataclass
class _Snap:
    """A stream to snapshot at X: from the start, or after a key (an interrupted snapshot)."""

    after: list[Any] | None = None
    truncate: bool = False  #: emit a truncate marker first (re-snapshot from scratch)


@dataclass
class _Target:
    """How one stream is decoded: its relation's column indexes, per stream column."""

    stream: Stream
    key: tuple[str, ...]
    index: list[int] = field(default_factory=list)
    key_index: list[int] = field(default_factory=list)
    relation: Relation | None = None
    shape: tuple | None = None  #: the :attr:`Relation.shape` ``stream`` was last described from


@dataclass
class _Rows:
    """One stream's pending rows: raw column values, op, transaction number, window flag."""

    cols: list[list[Any]]
    ops: list[str] = field(default_factory=list)
    txn: list[int] = field(default_factory=list)
    window: list[bool] = field(default_factory=list)
    unchanged: bool = False


class _Pending:
    """Whole transactions read but not yet yielded."""

    def __init__(self) -> None:
        self.rows: dict[str, _Rows] = {}
        self.ends: list[int] = []
        self.stamps: list[int] = []
        self.truncated: set[str] = set()
        self.truncated_in: dict[str, int] = {}  # stream → transaction number of its (last) truncate
        self.count = 0
        self.since: float | None = None
        self.last_end = 0

    def __bool__(self) -> bool:
        return bool(self.count or self.truncated)

    def add(self, t: _Target, op: str, values: list[Any], window: bool) -> None:
        r = self.rows.get(t.stream.name)
        if r is None:
            r = self.rows[t.stream.name] = _Rows([[] for _ in t.index])
        for col, i in zip(r.cols, t.index):
            v = values[i]
            if v is UNCHANGED:
                r.unchanged = True
            col.append(v)
        r.ops.append(op)
        r.txn.append(len(self.ends))
        r.window.append(window)
        self.count += 1
        if self.since is None:
            self.since = time.monotonic()

    def truncate(self, name: str) -> None:
        r = self.rows.pop(name, None)
        if r is not None:
            self.count -= len(r.ops)
        self.truncated.add(name)
        self.truncated_in[name] = len(self.ends)
        if self.since is None:
            self.since = time.monotonic()

    def commit(self, end: int, ts_us: int) -> None:
        self.ends.append(end)
        self.stamps.append(ts_us)
        self.last_end = end

    def has_committed(self, name: str) -> bool:
        """Whether stream ``name`` has rows of committed transactions (not only of the open one)."""
        r = self.rows.get(name)
        return r is not None and bool(r.txn) and r.txn[0] < len(self.ends)

    def split(self) -> tuple[_Pending, _Pending]:
        """(the committed transactions, the open one): rows are in arrival order, so the open
        transaction's rows are the tail of every stream's rows."""
        n = len(self.ends)
        done, rest = _Pending(), _Pending()
        done.ends, done.stamps, done.last_end, done.since = self.ends, self.stamps, self.last_end, self.since
        rest.last_end = self.last_end
        for name, r in self.rows.items():
            cut = bisect.bisect_left(r.txn, n)
            if cut:
                done.rows[name] = _Rows([c[:cut] for c in r.cols], r.ops[:cut], r.txn[:cut], r.window[:cut], r.unchanged)
                done.count += cut
            if cut < len(r.ops):
                k = len(r.ops) - cut
                rest.rows[name] = _Rows([c[cut:] for c in r.cols], r.ops[cut:], [0] * k, r.window[cut:], r.unchanged)
                rest.count += k
        for name in self.truncated:
            into = rest if self.truncated_in[name] == n else done
            into.truncated.add(name)
            into.truncated_in[name] = 0 if into is rest else self.truncated_in[name]
        if rest:
            rest.since = time.monotonic()
        return done, rest

    def reshape(self, name: str, old: list[str], new: list[str]) -> None:
        """Stream ``name``'s pending rows (of the open transaction) laid out for its new
        columns: a column kept keeps its values (read as its new type when flushed), a new
        one is null, a dropped one goes."""
        r = self.rows.get(name)
        if r is None:
            return
        by = dict(zip(old, r.cols))
        r.cols = [by[c] if c in by else [None] * len(r.ops) for c in new]


class PgLogCapture:
    """The ``log`` change feed of a :class:`~replicant.sources.postgres.PostgresSource`.

    Construction does not connect. One capture runs at a time per source.
    """

    def __init__(self, source: Any) -> None:
        self.source = source
        self.config = source.config
        self._ctl: Any = None
        self._repl: Any = None
        self._io = threading.Lock()
        self._acked = 0  # highest acknowledged LSN
        self._sent_flush = 0
        self._last_status = 0.0
        self._in_snapshot = False

    # ------------------------------------------------------------------ names

    @property
    def _pipeline(self) -> str:
        return getattr(self.source, "pipeline", None) or "replicant"

    @property
    def slot(self) -> str:
        if self.config.slot:
            if not _SLOT_NAME.match(self.config.slot):
                raise ConfigError("invalid source", [("source.slot", f"{self.config.slot!r} is not a valid slot name: "
                                                      "use 1-63 lower-case letters, digits and underscores")])
            return self.config.slot
        return re.sub(r"[^a-z0-9_]", "_", f"replicant_{self._pipeline}".lower())[:63]

    @property
    def publication(self) -> str:
        return self.config.publication or f"replicant_{self._pipeline}"

    def _qi(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def _table(self, s: Stream) -> str:
        return ".".join(self._qi(p) for p in s.table)

    # ------------------------------------------------------------------ connections

    def _control(self) -> Any:
        if self._ctl is None or self._ctl.closed:
            import psycopg

            try:
                self._ctl = psycopg.connect(self.source._url, autocommit=True, connect_timeout=10)
            except psycopg.Error as e:
                raise ConnectionError(f"cannot connect to {self.source._where_am_i()}: {self.source._scrub(str(e)).strip()}") from None
        return self._ctl

    def _sql(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        try:
            cur = self._control().execute(sql, params)
            return cur.fetchall() if cur.description else []
        except psycopg.Error as e:
            msg = self.source._scrub(str(e)).strip()
            if (e.sqlstate or "").startswith("08") or self._ctl is None or self._ctl.closed or self._ctl.broken:
                self._close_control()
                raise RetriableError(f"lost the connection to {self.source._where_am_i()}: {msg}") from None
            if isinstance(e, psycopg.errors.InsufficientPrivilege):
                raise
            raise FatalError(f"{self.source._where_am_i()}: {msg}") from None

    def _close_control(self) -> None:
        if self._ctl is not None:
            try:
                self._ctl.close()
            finally:
                self._ctl = None

    def _open_repl(self) -> Any:
        from psycopg import pq
        from psycopg.conninfo import make_conninfo

        info = make_conninfo(self.source._url, replication="database", options=SESSION_OPTIONS,
                             connect_timeout="10", application_name=f"replicant {self.slot}")
        conn = pq.PGconn.connect(info.encode())
        if conn.status != pq.ConnStatus.OK:
            msg = self.source._scrub(conn.error_message.decode(errors="replace"))
            conn.finish()
            raise ConnectionError(f"cannot open a replication connection to {self.source._where_am_i()}: {msg.strip()}")
        return conn

    def _repl_exec(self, conn: Any, sql: str) -> Any:
        from psycopg import pq

        res = conn.exec_(sql.encode())
        if res.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COPY_BOTH):
            msg = (res.error_message or conn.error_message).decode(errors="replace").strip()
            raise FatalError(f"replication command failed on {self.source._where_am_i()}: {msg}")
        return res

    def _finish(self, conn: Any) -> None:
        if conn is not None:
            try:
                conn.finish()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def close(self) -> None:
        """Closes the replication and control connections. Idempotent."""
        with self._io:
            self._finish(self._repl)
            self._repl = None
        self._close_control()

    # ------------------------------------------------------------------ checks and setup

    def _check_ready(self) -> None:
        (wal_level, can_replicate, is_super, user), = self._sql(
            "SELECT current_setting('wal_level'), r.rolreplication, r.rolsuper, current_user "
            "FROM pg_roles r WHERE r.rolname = current_user")
        problems = []
        if wal_level != "logical":
            problems.append(("source.url", f"wal_level is {wal_level!r} on {self.source._where_am_i()}: set "
                             "wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) "
                             "and restart the server"))
        if not (can_replicate or is_super):
            problems.append(("source.url", f"role {user!r} may not use replication: run "
                             f"ALTER ROLE {self._qi(user)} REPLICATION (as a superuser), or connect as a role that has it"))
        if problems:
            raise ConfigError("PostgreSQL is not ready for `mode: log`", problems)

    def _check_tables(self, streams: list[Stream]) -> None:
        problems = []
        for s in streams:
            rows = self._sql(
                "SELECT c.relreplident, c.relkind, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                (s.table[0], s.table[-1]))
            if not rows:
                raise FatalError(f"table {self._table(s)} does not exist (dropped or renamed?); fix `table:` of stream {s.name!r}")
            ident, kind, has_pk = rows[0]
            if kind not in ("r", "p"):
                problems.append((f"source.streams: {s.name}", f"{self._table(s)} is not a table; `mode: log` reads tables only"))
            elif ident == "n" or (ident == "d" and not has_pk):
                problems.append((f"source.streams: {s.name}", f"{self._table(s)} has no primary key and no replica identity: "
                                 f"run ALTER TABLE {self._table(s)} REPLICA IDENTITY FULL (or add a primary key)"))
        if problems:
            raise ConfigError("tables cannot be read with `mode: log`", problems)

    def _ensure_publication(self, streams: list[Stream]) -> list[str]:
        import psycopg

        pub = self.publication
        done = []
        try:
            row = self._sql("SELECT puballtables FROM pg_publication WHERE pubname = %s", (pub,))
            if not row:
                tables = ", ".join(self._table(s) for s in streams)
                # a partitioned table's changes arrive under its own name, not its partitions' (PG 13+)
                version = int(self._sql("SELECT current_setting('server_version_num')")[0][0])
                opts = " WITH (publish_via_partition_root = true)" if version >= 130000 else ""
                self._sql(f"CREATE PUBLICATION {self._qi(pub)} FOR TABLE {tables}{opts}")
                return [f"created publication {pub}"]
            if row[0][0]:
                return []
            have = {(n, t) for n, t in self._sql(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (pub,))}
            for s in streams:
                if (s.table[0], s.table[-1]) not in have:
                    self._sql(f"ALTER PUBLICATION {self._qi(pub)} ADD TABLE {self._table(s)}")
                    done.append(f"added {self._table(s)} to publication {pub}")
        except psycopg.errors.InsufficientPrivilege as e:
            raise ConfigError("cannot create the publication for `mode: log`", [(
                "source.publication",
                f"{self.source._scrub(str(e)).strip()}: create it as the tables' owner (CREATE PUBLICATION "
                f"{self._qi(pub)} FOR TABLE {', '.join(self._table(s) for s in streams)}) or set `publication:` "
                "to an existing one")]) from None
        return done

    def _slot_row(self) -> tuple | None:
        rows = self._sql(
            "SELECT plugin, d.datname = current_database(), confirmed_flush_lsn::text, active_pid "
            "FROM pg_replication_slots s LEFT JOIN pg_database d ON d.oid = s.datoid WHERE slot_name = %s", (self.slot,))
        if not rows:
            return None
        plugin, same_db, confirmed, pid = rows[0]
        if plugin != "pgoutput" or not same_db:
            raise FatalError(f"replication slot {self.slot!r} exists but is not a pgoutput slot of this database; "
                             "set `slot:` to another name or drop it (SELECT pg_drop_replication_slot(...))")
        if pid is not None:
            raise RetriableError(f"replication slot {self.slot!r} is in use by process {pid} (another replicant run?)")
        return rows[0]

    def _wal_lsn(self) -> int:
        return parse_lsn(self._sql("SELECT pg_current_wal_lsn()::text")[0][0])

    def _create_slot(self, conn: Any, name: str, *, temporary: bool) -> tuple[int, str]:
        temp = " TEMPORARY" if temporary else ""
        res = self._repl_exec(conn, f"CREATE_REPLICATION_SLOT {self._qi(name)}{temp} LOGICAL pgoutput EXPORT_SNAPSHOT")
        return parse_lsn(res.get_value(0, 1).decode()), res.get_value(0, 2).decode()

    # ------------------------------------------------------------------ install / status

    def install(self, streams: list[Stream]) -> list[str]:
        """Creates the publication (or adds tables to it) and the slot when missing."""
        self._check_ready()
        self._check_tables(streams)
        done = self._ensure_publication(streams)
        if self._slot_row() is None:
            self._sql("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot,))
            done.append(f"created replication slot {self.slot}")
        return done

    def uninstall(self, streams: list[Stream]) -> list[str]:
        """Drops the slot and the publication (both only if they exist)."""
        done = []
        with self._io:  # our own feed, if one is open, lets go of the slot first
            self._finish(self._repl)
            self._repl = None
        deadline = time.monotonic() + 10
        while True:
            row = self._sql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
            if not row:
                break
            if row[0][0] is None or time.monotonic() > deadline:  # a walsender ends a moment after its client
                self._sql("SELECT pg_drop_replication_slot(%s)", (self.slot,))
                done.append(f"dropped replication slot {self.slot}")
                break
            time.sleep(0.05)
        if self._sql("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)):
            self._sql(f"DROP PUBLICATION {self._qi(self.publication)}")
            done.append(f"dropped publication {self.publication}")
        return done

    def status(self, streams: list[Stream]) -> dict[str, Any]:
        rows = self._sql(
            "SELECT confirmed_flush_lsn::text, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, active "
            "FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
        if not rows:
            return {"slot": self.slot, "slot state": "missing (created by the next run)"}
        confirmed, lag, active = rows[0]
        return {"slot": self.slot, "slot lag bytes": int(lag or 0), "confirmed lsn": confirmed, "slot active": bool(active)}

    # ------------------------------------------------------------------ acknowledge

    def acknowledge(self, position: Position) -> None:
        """The engine made everything up to ``position`` durable: confirm the slot up to it
        (now if the feed is idle, else with the next status update)."""
        lsn = int((position or {}).get("lsn") or 0)
        if lsn <= self._acked:
            return
        self._acked = lsn
        if self._io.acquire(blocking=False):
            try:
                if self._repl is not None:
                    self._status(self._repl, reply=False)
                    return
            except Exception:  # noqa: BLE001 - the feed notices a broken connection itself
                return
            finally:
                self._io.release()
        if self._repl is None:  # no feed open (snapshot, or after capture): move the slot itself
            self._sql("SELECT pg_replication_slot_advance(%s, %s::pg_lsn) FROM pg_replication_slots "
                      "WHERE slot_name = %s AND active_pid IS NULL AND confirmed_flush_lsn < %s::pg_lsn",
                      (self.slot, lsn_text(lsn), self.slot, lsn_text(lsn)))

    def _status(self, conn: Any, *, reply: bool, received: int = 0) -> None:
        """A standby status update: flush = the acknowledged LSN (0: none, ignored by the server)."""
        flush = self._acked
        now_us = int(time.time() * 1e6) - _PG_EPOCH_US
        msg = b"r" + struct.pack(">QQQqB", max(received, flush), flush, flush, now_us, 1 if reply else 0)
        if conn.put_copy_data(msg) != 1 or conn.flush() != 0:
            raise RetriableError(f"lost the replication connection to {self.source._where_am_i()}")
        self._sent_flush = flush
        self._last_status = time.monotonic()

    # ------------------------------------------------------------------ capture

    def capture(self, streams: list[Stream], positions: dict[str, Position | None], *, resume: Position | None,
                follow: bool, stop: threading.Event) -> Iterator[ChangeSet]:
        """See :meth:`replicant.sources.base.Source.capture` and the module docstring."""
        positions = dict(positions)
        if not streams:
            return
        self._check_ready()
        self._check_tables(streams)
        for line in self._ensure_publication(streams):
            _log.info("%s", line)
        targets = {s.name: _Target(s, s.primary_key) for s in streams}
        target_lsn = self._wal_lsn()
        slot = self._slot_row()
        snaps: dict[str, _Snap] = {}
        point, snapshot_name, exporter = 0, None, None
        try:
            if slot is None:
                for s in streams:
                    if positions.get(s.name) is not None:
                        _log.warning("stream %s: replication slot %s is missing; snapshotting again", s.name, self.slot)
                    snaps[s.name] = _Snap(truncate=positions.get(s.name) is not None)
                exporter = self._open_repl()
                point, snapshot_name = self._create_slot(exporter, self.slot, temporary=False)
                start = point
            else:
                start = max(int((resume or {}).get("lsn") or 0), parse_lsn(slot[2]) if slot[2] else 0)
                for s in streams:
                    pos = positions.get(s.name)
                    if pos is None:
                        snaps[s.name] = _Snap()
                    elif "snapshot" in pos:
                        after = (pos["snapshot"] or {}).get("after")
                        snaps[s.name] = _Snap(after=after) if after is not None and self._keyed(s) else _Snap(truncate=True)
                if snaps:
                    exporter = self._open_repl()
                    point, snapshot_name = self._create_slot(exporter, f"replicant_tmp_{uuid.uuid4().hex[:12]}", temporary=True)
            if snaps:
                self._begin_snapshot(snapshot_name)
        finally:
            # the imported snapshot lives on in the reading transaction; a temporary slot goes
            self._finish(exporter)
        try:
            pos = start
            if snaps and start < point:
                for cs in self._stream(targets, positions, start, until=point, follow=False, stop=stop,
                                       window=(point, snaps)):
                    pos = cs.position["lsn"]
                    yield cs
                if stop.is_set():
                    return
            if snaps:
                for cs in self._snapshot(streams, snaps, point, pos, stop):
                    yield cs
                if stop.is_set():
                    return
                for name in snaps:
                    positions[name] = {"lsn": point}
                pos = point
        finally:
            self._end_snapshot()
        if not follow and target_lsn <= pos:
            return
        yield from self._stream(targets, positions, pos, until=None if follow else target_lsn, follow=follow,
                                stop=stop, window=None)

    # ------------------------------------------------------------------ snapshot

    def _keyed(self, s: Stream) -> bool:
        if not s.primary_key:
            return False
        by = {f.name: f for f in s.schema}
        return all(k in by and not by[k].nullable and is_keyable(by[k].type) for k in s.primary_key)

    def _begin_snapshot(self, name: str) -> None:
        conn = self.source._connect()
        cur = conn.cursor()
        try:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute(f"SET TRANSACTION SNAPSHOT '{name}'")  # a server-made name: [0-9A-F-]
        finally:
            cur.close()
        self._in_snapshot = True

    def _end_snapshot(self) -> None:
        if not self._in_snapshot:
            return
        self._in_snapshot = False
        conn = getattr(self.source, "_conn", None)
        if conn is None:
            return
        cur = conn.cursor()
        try:
            cur.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - a broken connection: drop it, the next read reconnects
            self.source.close()
        finally:
            try:
                cur.close()
            except Exception:  # noqa: BLE001
                pass

    def _snapshot(self, streams: list[Stream], snaps: dict[str, _Snap], point: int, pos: int,
                  stop: threading.Event) -> Iterator[ChangeSet]:
        todo = [s for s in streams if s.name in snaps]
        for n, s in enumerate(todo):
            snap = snaps[s.name]
            plan = self.source._plan(s)
            start = {"mode": "full", "snapshot": "log", "after": snap.after} if snap.after is not None else None
            first = True
            for rb in self.source._read_full(plan, start):
                if rb.final:
                    spos: Position = {"lsn": point}
                elif "after" in rb.position:
                    spos = {"lsn": point, "snapshot": {"after": rb.position["after"]}}
                else:
                    spos = {"lsn": point, "snapshot": {"rows": rb.position.get("rows", 0)}}
                last = rb.final and n == len(todo) - 1
                batch = with_meta(strip_meta(rb.data), OP_READ, encode_position(spos), utcnow())
                yield ChangeSet({s.name: batch}, {"lsn": point if last else pos}, {s.name: spos},
                                frozenset({s.name}) if first and snap.truncate else frozenset())
                first = False
                if stop.is_set() and not rb.final:
                    return

    # ------------------------------------------------------------------ streaming

    def _stream(self, targets: dict[str, _Target], positions: dict[str, Position | None], start: int, *,
                until: int | None, follow: bool, stop: threading.Event,
                window: tuple[int, dict[str, _Snap]] | None) -> Iterator[ChangeSet]:
        """Streams the slot from ``start``; returns at ``until`` (a transaction committing at or
        after it, or the walsender idle past it), or, following, when ``stop`` is set."""
        cfg = self.config
        from psycopg import pq

        batch_size = int(cfg.batch_size)
        flush_every = float(cfg.flush_interval)
        heartbeat = float(cfg.heartbeat)
        by_table = {(t.stream.table[0], t.stream.table[-1]): t for t in targets.values()}
        floor = {n: int((p or {}).get("lsn") or 0) for n, p in positions.items()}
        decoder = Decoder()
        by_oid: dict[int, _Target | None] = {}
        pending = _Pending()
        yielded = start  # position of the last change set yielded (or the start)
        wal_end = start
        retries = 0
        last_beat = time.monotonic()

        while True:
            conn = self._start(max(start, yielded))
            in_txn, final, ts = False, 0, 0
            skip: dict[str, bool] = {}
            try:
                while True:
                    if stop.is_set() and not in_txn:
                        break
                    with self._io:
                        n, data = conn.get_copy_data(1)
                        if n == 0:
                            now = time.monotonic()
                            if now - self._last_status >= _STATUS_EVERY or self._acked > self._sent_flush:
                                self._status(conn, reply=False, received=wal_end)
                    if n == 0:
                        # idle: flush by time, notice the end, keep the slot moving
                        if pending and not in_txn and (not follow or time.monotonic() - (pending.since or 0) >= flush_every):
                            cs = self._flush(pending, targets, window)
                            yielded = pending.last_end
                            pending = _Pending()
                            yield cs
                            continue
                        if not in_txn and until is not None and wal_end >= until:
                            break
                        if (not in_txn and follow and not pending and wal_end > yielded
                                and time.monotonic() - last_beat >= heartbeat):
                            yielded = wal_end
                            last_beat = time.monotonic()
                            yield ChangeSet({}, {"lsn": wal_end})
                            continue
                        with self._io:
                            if time.monotonic() - self._last_status >= 0.5:
                                self._status(conn, reply=True, received=wal_end)
                        r, _, _ = select.select([conn.socket], [], [], _TICK)
                        with self._io:
                            try:
                                conn.consume_input()
                            except pq.PQerror as e:
                                raise RetriableError(f"lost the replication connection to {self.source._where_am_i()}: {e}") from None
                        continue
                    if n < 0:
                        res = conn.get_result()
                        msg = (res.error_message if res is not None else conn.error_message).decode(errors="replace").strip()
                        raise RetriableError(f"the replication stream of slot {self.slot!r} ended: {msg or 'server closed it'}")
                    retries = 0
                    buf = bytes(data)
                    if buf[:1] == b"k":
                        wal_end = max(wal_end, struct.unpack_from(">Q", buf, 1)[0])
                        if buf[17]:
                            with self._io:
                                self._status(conn, reply=False, received=wal_end)
                        continue
                    if buf[:1] != b"w":
                        continue
                    wal_end = max(wal_end, struct.unpack_from(">Q", buf, 9)[0])
                    msg = decoder.decode(buf[25:])
                    kind = msg[0]
                    if kind == "B":
                        _, final, ts, _xid = msg
                        if until is not None and final >= until:
                            wal_end = max(wal_end, final)
                            break
                        in_txn = True
                        skip = {}
                    elif kind == "C":
                        in_txn = False
                        pending.commit(msg[2], ts)
                        if pending.count >= batch_size or (
                                follow and pending and time.monotonic() - (pending.since or 0) >= flush_every):
                            cs = self._flush(pending, targets, window)
                            yielded = pending.last_end
                            pending = _Pending()
                            yield cs
                    elif kind == "R":
                        rel = msg[1]
                        t = by_table.get((rel.namespace, rel.name))
                        by_oid[rel.oid] = t
                        if t is None:
                            continue
                        if rel.shape != t.shape:
                            new = self._describe(t, rel)
                            t.shape = rel.shape
                            if not new.schema.equals(t.stream.schema, check_metadata=True):
                                name = t.stream.name
                                if pending.has_committed(name):
                                    # the rows read so far keep the schema they were read with
                                    done, pending = pending.split()
                                    cs = self._flush(done, targets, window)
                                    yielded = done.last_end
                                    yield cs
                                pending.reshape(name, t.stream.schema.names, new.schema.names)
                                _log.info("stream %s: the table changed (%s); following it", name,
                                          _changes(t.stream.schema, new.schema))
                                t.stream = new
                        self._bind(t, rel)
                    elif kind in ("I", "U", "D"):
                        t = by_oid.get(msg[1])
                        if t is None:
                            continue
                        name = t.stream.name
                        use = skip.get(name)
                        if use is None:
                            use = skip[name] = self._wanted(name, final, floor, window)
                        if use is False:
                            continue
                        in_window = use == "window"
                        self._row(pending, t, msg, in_window)
                    elif kind == "T":
                        for oid in msg[1]:
                            t = by_oid.get(oid)
                            if t is None:
                                continue
                            use = self._wanted(t.stream.name, final, floor, window, truncate=True)
                            if use is not False:
                                pending.truncate(t.stream.name)
            except BaseException as e:
                with self._io:
                    self._finish(conn)
                    self._repl = None
                if not isinstance(e, RetriableError):
                    raise
                retries += 1
                if stop.is_set() or retries > 3:
                    raise
                _log.warning("replication connection lost; reconnecting from %s", lsn_text(yielded))
                pending = _Pending()
                time.sleep(min(2.0, 0.2 * retries))
                continue
            # stopped, or reached `until`: the open transaction (if any) is dropped, re-read next
            # time; the connection stays open while the last change sets are acknowledged
            try:
                if pending:
                    cs = self._flush(pending, targets, window)
                    yielded = pending.last_end
                    yield cs
                if not follow and window is None and wal_end > yielded:
                    yield ChangeSet({}, {"lsn": wal_end})  # caught up: the next run starts here
            finally:
                with self._io:
                    self._finish(conn)
                    self._repl = None
            return

    def _start(self, lsn: int) -> Any:
        conn = self._open_repl()
        pub = self.publication.replace('"', '""').replace("'", "''")
        try:
            self._repl_exec(conn, f"START_REPLICATION SLOT {self._qi(self.slot)} LOGICAL {lsn_text(lsn)} "
                            f"(proto_version '1', publication_names '\"{pub}\"')")
        except BaseException:
            conn.finish()
            raise
        conn.nonblocking = 1
        with self._io:
            self._repl = conn
            self._last_status = 0.0
        return conn

    def _wanted(self, name: str, final: int, floor: dict[str, int], window: tuple[int, dict[str, _Snap]] | None,
                truncate: bool = False) -> bool | str:
        """Whether a change of stream ``name`` in the transaction committing at ``final`` is
        kept: False (already in the log, or covered by the snapshot at X), True, or "window"
        (kept only for keys up to the interrupted snapshot's ``after``)."""
        if final < floor.get(name, 0):
            return False
        if window is not None and name in window[1] and final < window[0]:
            snap = window[1][name]
            if snap.after is None:
                return False
            return True if truncate else "window"
        return True

    def _describe(self, t: _Target, rel: Relation) -> Stream:
        """``t.stream`` as of ``rel`` (the table at this point of the log): the columns ``rel``
        lists, each described by the source's own discovery (so types and field metadata are
        those a fresh ``discover()`` gives) — from the catalog as it is now when the column
        has the same type there, else from ``rel``'s type (the catalog moved on since) —
        filtered by the stream's ``include``/``exclude``; key, options and schema metadata
        stay the stream's."""
        s = t.stream
        found = self.source._tables(only=s.table)
        if not found:
            raise FatalError(f"table {self._table(s)} does not exist (dropped or renamed?); fix `table:` of stream {s.name!r}")
        table = found[0]
        now = {c.name: c for c in table.columns}
        current, generated = {}, set()
        for name, typ, mod, gen in self._sql(
                "SELECT attname, atttypid::bigint, atttypmod, COALESCE(to_jsonb(a) ->> 'attgenerated', '') <> '' "
                "FROM pg_attribute a WHERE attrelid = %s::oid AND attnum > 0 AND NOT attisdropped", (str(rel.oid),)):
            current[name] = (typ, mod)
            if gen:
                generated.add(name)
        lost = [f.name for f in s.schema if f.name in generated and f.name not in rel.columns]
        if lost:  # pgoutput never sends generated columns
            raise FatalError(f"stream {s.name!r}: column(s) {', '.join(map(repr, lost))} of {self._table(s)} are generated, "
                             "and logical replication does not carry generated columns; exclude them (`exclude:`) "
                             "or read the stream in another mode")
        columns = []
        for name, typ, mod in zip(rel.columns, rel.types, rel.typmods):
            c = now.get(name)
            if c is None or current.get(name) != (typ, mod):
                c = self._column(name, typ, mod, nullable=c.nullable if c is not None else True)
            columns.append(c)
        described = self.source._stream(dataclasses.replace(table, columns=columns), self.source._default_schema())
        fields = list(described.schema)
        sc = self._stream_config(s)
        if sc is not None and sc.include:
            wanted = set(sc.include) | set(s.primary_key) | ({s.cursor} if s.cursor else set())
            fields = [f for f in fields if f.name in wanted]
        elif sc is not None and sc.exclude:
            fields = [f for f in fields if f.name not in set(sc.exclude)]
        return dataclasses.replace(s, schema=pa.schema(fields, metadata=s.schema.metadata))

    def _column(self, name: str, typ: int, typmod: int, *, nullable: bool) -> Any:
        """A column of type oid ``typ`` (``typmod``) as the source's catalog query would
        describe it (domains resolved to their base type)."""
        from replicant.sources.types import pg_column

        rows = self._sql(
            "SELECT format_type(bt.oid, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE %s::int END), bt.typname, "
            "bt.typtype, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE %s::int END, et.typname, et.typtype "
            "FROM pg_type t JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END "
            "LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A' WHERE t.oid = %s::oid",
            (typmod, typmod, str(typ)))
        if not rows:
            raise FatalError(f"column {name!r}: its type (oid {typ}) no longer exists; rediscover the stream (restart)")
        sql_type, typname, typtype, mod, etypname, etyptype = rows[0]
        return pg_column(name, sql_type, typname, typtype, int(mod), etypname, etyptype, nullable=nullable)

    def _stream_config(self, s: Stream) -> Any:
        streams = self.config.streams
        if not isinstance(streams, list):
            return None
        return next((sc for sc in streams if sc.table == s.name), None)

    def _bind(self, t: _Target, rel: Relation) -> None:
        idx = {c: i for i, c in enumerate(rel.columns)}
        missing = [f.name for f in t.stream.schema if f.name not in idx]
        if missing:
            raise FatalError(f"stream {t.stream.name!r}: column(s) {', '.join(map(repr, missing))} no longer exist in "
                             f"{self._table(t.stream)}; exclude them or restore them")
        t.relation = rel
        t.index = [idx[f.name] for f in t.stream.schema]
        t.key_index = [idx[k] for k in t.key if k in idx]

    def _row(self, pending: _Pending, t: _Target, msg: tuple, window: bool) -> None:
        kind = msg[0]
        if kind == "I":
            pending.add(t, OP_INSERT, msg[2], window)
        elif kind == "D":
            pending.add(t, OP_DELETE, msg[3], window)
        else:
            _, _, old_kind, old, new = msg
            if old is not None:
                if old_kind == "O" and UNCHANGED in new:  # REPLICA IDENTITY FULL: the old row has them
                    new = [o if v is UNCHANGED else v for v, o in zip(new, old)]
                if t.key_index and any(old[i] != new[i] for i in t.key_index):
                    pending.add(t, OP_DELETE, old, window)
            pending.add(t, OP_UPDATE, new, window)

    # ------------------------------------------------------------------ pending → Arrow

    def _flush(self, pending: _Pending, targets: dict[str, _Target],
               window: tuple[int, dict[str, _Snap]] | None) -> ChangeSet:
        ends = np.array(pending.ends, dtype=np.int64)
        stamps = np.array(pending.stamps, dtype=np.int64)
        batches = {}
        for name, rows in pending.rows.items():
            t = targets[name]
            batch = self._batch(t, rows, ends, stamps)
            if window is not None and name in window[1] and any(rows.window):
                batch = self._window_filter(batch, rows, window[1][name], t)
            batches[name] = batch
        for name in pending.truncated:
            if name not in batches:
                batches[name] = pa.RecordBatch.from_pylist([], schema=targets[name].stream.change_schema)
        return ChangeSet(batches, {"lsn": pending.last_end}, None, frozenset(pending.truncated))

    def _batch(self, t: _Target, rows: _Rows, ends: np.ndarray, stamps: np.ndarray) -> pa.RecordBatch:
        s = t.stream
        arrays = []
        unchanged_masks: dict[int, np.ndarray] = {}
        for i, (f, col) in enumerate(zip(s.schema, rows.cols)):
            if rows.unchanged and any(v is UNCHANGED for v in col):
                unchanged_masks[i] = np.array([v is UNCHANGED for v in col])
                col = [None if v is UNCHANGED else v for v in col]
            try:
                arrays.append(to_arrow(pa.array(col, pa.binary()), f))
            except ValueError as e:
                raise FatalError(f"stream {s.name!r}: {e}; exclude the column or fix the value") from None
        txn = np.array(rows.txn, dtype=np.int64)
        lsn = pa.array(ends[txn])
        pos = pc.binary_join_element_wise('{"lsn":', lsn.cast(pa.string()), "}", "")
        ts = pa.array(stamps[txn], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        arrays += [pa.array(rows.ops, pa.string()), pos, ts]
        batch = pa.RecordBatch.from_arrays(arrays, schema=s.change_schema)
        if unchanged_masks:
            batch = self._refetch(t, batch, unchanged_masks)
        return batch

    def _window_filter(self, batch: pa.RecordBatch, rows: _Rows, snap: _Snap, t: _Target) -> pa.RecordBatch:
        """Drops window rows (committed before X) whose key lies after the snapshot's ``after``:
        the snapshot at X covers those keys."""
        keep = pc.invert(pa.array(rows.window, pa.bool_()))
        fields = {f.name: f for f in t.stream.schema}
        le = None
        # (k1, k2, …) <= (a1, a2, …), lexicographically, from the last key column up
        for name, raw in reversed(list(zip(t.key, snap.after or []))):
            f = fields[name]
            v = pa.scalar(decode_value(raw, f.type), f.type)
            col = batch.column(name)
            le = pc.less_equal(col, v) if le is None else pc.or_(pc.less(col, v), pc.and_(pc.equal(col, v), le))
        if le is not None:
            keep = pc.or_(keep, pc.fill_null(le, False))
        return batch.filter(keep)

    def _refetch(self, t: _Target, batch: pa.RecordBatch, masks: dict[int, np.ndarray]) -> pa.RecordBatch:
        """Fills TOASTed values an update did not change (REPLICA IDENTITY DEFAULT) with the
        row's current values, read by key; rows gone since are dropped (their delete follows)."""
        s = t.stream
        if not s.primary_key:
            raise FatalError(f"stream {s.name!r}: an update left TOASTed values out and the table has no key to re-read "
                             f"them by; run ALTER TABLE {self._table(s)} REPLICA IDENTITY FULL")
        need = np.zeros(batch.num_rows, dtype=bool)
        for m in masks.values():
            need |= m
        rows = np.nonzero(need)[0]
        keys = batch.select(list(s.primary_key)).take(pa.array(rows))
        plan = self.source._plan(s)
        params: list[Any] = []
        kcols = plan.cols(s.primary_key)
        arrays = []
        for c in kcols:
            texts = keys.column(c.name).cast(pa.string()).to_pylist() if not pa.types.is_binary(c.arrow) else \
                ["\\x" + v.hex() for v in keys.column(c.name).to_pylist()]
            params.append("{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in texts) + "}")
            arrays.append(f"CAST(current_setting('replicant.p{len(params) - 1}') AS {c.sql_type}[])")
        names = ", ".join(f"t.{self._qi(c.name)}" for c in kcols)
        where = f"({names}) IN (SELECT * FROM unnest({', '.join(arrays)}))"
        sql = self.source._query(plan, [where], [], None)
        fetched = pa.Table.from_batches(list(self.source._batches(sql, params, plan, 10_000)), schema=s.schema)
        idx = pa.table({**{k: batch.column(k) for k in s.primary_key}, "__row": pa.array(np.arange(batch.num_rows))})
        found = fetched.append_column("__found", pa.repeat(True, fetched.num_rows))
        joined = idx.join(found, keys=list(s.primary_key), join_type="left outer").sort_by("__row")
        cols = list(batch.columns)
        gone = np.zeros(batch.num_rows, dtype=bool)
        hit = pc.fill_null(joined.column("__found"), False).to_numpy(zero_copy_only=False)
        gone |= need & ~hit
        for i, m in masks.items():
            name = s.schema.field(i).name
            cols[i] = pc.if_else(pa.array(m), joined.column(name).combine_chunks(), cols[i])
        out = pa.RecordBatch.from_arrays(cols, schema=batch.schema)
        return out.filter(pa.array(~gone)) if gone.any() else out


def _changes(old: pa.Schema, new: pa.Schema) -> str:
    """What changed between two versions of a stream's columns, for the log."""
    before = {f.name: f for f in old}
    after = {f.name: f for f in new}
    out = [f"added {n}" for n in after if n not in before]
    out += [f"dropped {n}" for n in before if n not in after]
    for n, f in after.items():
        b = before.get(n)
        if b is not None and not b.equals(f, check_metadata=True):
            was = (b.metadata or {}).get(SQL_TYPE_KEY, b"").decode() or str(b.type)
            now = (f.metadata or {}).get(SQL_TYPE_KEY, b"").decode() or str(f.type)
            out.append(f"{n}: {was} -> {now}" if was != now else f"{n}: nullable {b.nullable} -> {f.nullable}")
    return ", ".join(out) or "column order"

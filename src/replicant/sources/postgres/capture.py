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
session and again after its columns changed. When columns, types or type modifiers differ
from the ones the stream was last described from, the table is described again by the
source's own discovery (keeping the stream's key, options, ``include``/``exclude``), and its
following changes are emitted in that schema: a new column appears, a dropped one is gone
(destinations keep it and write NULL), a changed type has its new type; whether a destination
can follow is its ``evolve``'s decision. Change sets never split a transaction and a stream
has one schema per change set, so at a change the transactions read so far are yielded first;
rows of the *same* transaction before the change are emitted in the new schema. A restart
checks each table's first ``Relation`` against the discovered streams. An added column that
gives existing rows a value (a default, identity or ``NOT NULL``: the log has no change for
those rows) makes the stream be snapshotted again, as below for a lost TOASTed value (one
added while not capturing is found by the engine, against the log's last schema). Not
carried by the log: renames (a drop and an add, which destinations refuse to guess).

Values: see :mod:`replicant.sources.postgres.pgoutput`. Deletes under ``REPLICA IDENTITY DEFAULT`` carry
the key columns only (others null); under ``FULL`` every column. An update whose TOASTed
values did not change carries them as "unchanged": under ``FULL`` they are taken from the old
row; otherwise the rows are re-read by key (current values; a row gone since is dropped from
the batch, its delete follows in the log). When such a column was dropped or renamed since,
its value is in no place the capture can read: that stream alone gets an empty batch whose
position asks for a new snapshot (``{"lsn": N, "snapshot": {"after": None}}``), its later
changes are skipped, and it is snapshotted again (after a truncate marker, as its table is
now) by the next capture — at once when following (the capture ends with a
``RetriableError`` and is restarted), else by the next run; other streams go on. An update
that changes the key is emitted as a delete of the old key followed by the update. Tables without a primary key need
``REPLICA IDENTITY FULL`` (or ``USING INDEX``): without it PostgreSQL would reject their
updates once published.

Modules: this one holds the capture itself (checks and setup, install/status, acknowledge,
the capture's plan and the streaming loop); :mod:`._replication` the control and
replication-protocol connections (slot creation, ``START_REPLICATION``, standby status
updates); :mod:`._snapshot` the snapshot at ``X`` and the catch-up window;
:mod:`._changes` the pending transactions and their conversion to change sets (schema
changes, TOASTed values). ``_Pending``, ``_Rows``, ``_Snap`` and ``_Target`` stay
importable from here.
"""

from __future__ import annotations

import dataclasses
import logging
import select
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from replicant.errors import ConfigError, FatalError, RetriableError
from replicant.model import Position, Stream
from replicant.sources.base import ChangeSet

from ._changes import _Changes, _changes, _Pending, _Target
from ._replication import _Replication
from ._snapshot import _Snap, _Snapshot
from .pgoutput import Decoder, lsn_text, parse_lsn

__all__ = ["PgLogCapture"]

_log = logging.getLogger(__name__)

_STATUS_EVERY = 10.0  # seconds between standby status updates (wal_sender_timeout is 60 s)
_TICK = 0.2  # longest wait on the socket, so `stop` is seen promptly
_SLOT_RELEASE_SECONDS = 10.0  # how long a slot still held by a closing walsender is waited for


class PgLogCapture(_Replication, _Snapshot, _Changes):
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
        self._again: set[str] = set()

    # ------------------------------------------------------------------ names

    @property
    def slot(self) -> str:
        return str(self.source.slot)

    @property
    def publication(self) -> str:
        return str(self.source.publication)

    def _qi(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def _table(self, s: Stream) -> str:
        return ".".join(self._qi(p) for p in s.table)

    # ------------------------------------------------------------------ connections

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
            problems.append(("source.url", f"wal_level is {wal_level!r} on {self.source.location()}: set "
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
                f"{self.source.scrub(str(e)).strip()}: create it as the tables' owner (CREATE PUBLICATION "
                f"{self._qi(pub)} FOR TABLE {', '.join(self._table(s) for s in streams)}) or set `publication:` "
                "to an existing one")]) from None
        return done

    def _slot_row(self) -> tuple | None:
        rows = self._sql(
            "SELECT plugin, d.datname = current_database(), confirmed_flush_lsn::text, active_pid "
            "FROM pg_replication_slots s LEFT JOIN pg_database d ON d.oid = s.datoid WHERE slot_name = %s", (self.slot,))
        if not rows:
            return None
        plugin, same_db, _confirmed, pid = rows[0]
        if plugin != "pgoutput" or not same_db:
            raise FatalError(f"replication slot {self.slot!r} exists but is not a pgoutput slot of this database; "
                             "set `slot:` to another name or drop it (SELECT pg_drop_replication_slot(...))")
        if pid is not None:
            # the walsender of a connection that just closed (ours, or a killed run's) releases
            # the slot a moment after the client is gone: wait for that, bounded
            deadline = time.monotonic() + _SLOT_RELEASE_SECONDS
            while pid is not None and time.monotonic() < deadline:
                time.sleep(0.1)
                found = self._sql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
                pid = found[0][0] if found else None
            if pid is not None:
                raise RetriableError(f"replication slot {self.slot!r} is in use by process {pid} (another replicant run?)")
        return rows[0]

    def _check_owner(self, resume: Position | None, confirmed: int) -> None:
        """Refuses a slot confirmed beyond this pipeline's own ``(capture)`` checkpoint.

        The engine confirms the slot only up to a position it saved as that checkpoint first
        (:mod:`replicant.ingest`: log, checkpoint, then acknowledge), so for the pipeline whose
        state store owns the slot ``confirmed_flush_lsn <= checkpoint`` always holds, a crash
        or a lost acknowledgement included (the slot then lags, never leads). A slot ahead of
        it was confirmed by another consumer, typically a copy of this pipeline file run from
        another folder (same ``pipeline:``, so same slot name, its own state store): the
        changes in between were delivered there, PostgreSQL has discarded them, and resuming
        would silently skip them. Without a checkpoint (first run, or a crash before the first
        one) every stream is snapshotted anyway, so nothing is lost to this pipeline.

        Why no owner id: a slot has nowhere to carry one (no comment, no options), and keeping
        it in a source table would need write access there; the LSN test detects exactly the
        harmful case, for either copy, whichever runs second.
        """
        if resume is None or resume.get("lsn") is None:
            return
        own = int(resume["lsn"])
        if confirmed <= own:
            return
        raise FatalError(
            f"replication slot {self.slot!r} was confirmed up to {lsn_text(confirmed)}, beyond this pipeline's "
            f"checkpoint {lsn_text(own)}: another consumer of the slot (a copy of this pipeline with its own "
            "state folder, or another tool) took the changes in between, and PostgreSQL no longer has them for this pipeline. "
            "Give each copy its own `slot:` and `publication:` in its source settings; then re-snapshot this "
            "pipeline: `replicant cdc uninstall <pipeline file>` drops the slot and the publication, and the next "
            "`replicant run` creates them again and snapshots every `mode: log` stream")

    # ------------------------------------------------------------------ install / status

    def check(self, streams: list[Stream]) -> list[str]:
        """Checks the server (wal_level), the role (REPLICATION) and the tables (a key or a
        replica identity) without changing anything; ``ConfigError`` says what to do."""
        self._check_ready()
        self._check_tables(streams)
        return ["wal_level is logical, the role may replicate",
                f"{len(streams)} table(s) can be read with `mode: log` (slot {self.slot}, publication {self.publication})"]

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

    def current_position(self) -> Position:
        """The server's WAL insert position now (``pg_current_wal_lsn()``), as ``{"lsn": N}``:
        a change committed before this call ends at or before it."""
        return {"lsn": self._wal_lsn()}

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

    # ------------------------------------------------------------------ capture

    def capture(self, streams: list[Stream], positions: dict[str, Position | None], *, resume: Position | None,
                follow: bool, stop: threading.Event) -> Iterator[ChangeSet]:
        """See :meth:`replicant.sources.base.Source.capture` and the module docstring."""
        positions = dict(positions)
        self._again = set()
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
                self._check_owner(resume, parse_lsn(slot[2]) if slot[2] else 0)
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
                # a stream snapshotted again (its column dropped, say) is read as its table is now
                streams = [self._as_now(s) if snaps.get(s.name, _Snap()).truncate else s for s in streams]
                targets = {s.name: _Target(s, s.primary_key) for s in streams}
        finally:
            # the imported snapshot lives on in the reading transaction; a temporary slot goes
            self._finish(exporter)
        try:
            pos = start
            if snaps and start < point:
                for cs in self._stream(targets, positions, start, until=point, follow=False, stop=stop,
                                       window=(point, snaps)):
                    pos = cs.position["lsn"]
                    yield _with_snapshot_progress(cs, snaps)
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
        if self._again and follow and not stop.is_set():
            # the caller starts the capture again from what is durable: it snapshots them
            raise RetriableError(f"stream(s) {', '.join(sorted(self._again))} must be snapshotted again; "
                                 "restarting the capture")

    # ------------------------------------------------------------------ streaming

    def _stream(self, targets: dict[str, _Target], positions: dict[str, Position | None], start: int, *,
                until: int | None, follow: bool, stop: threading.Event,
                window: tuple[int, dict[str, _Snap]] | None) -> Iterator[ChangeSet]:
        """Streams the slot from ``start``; returns at ``until`` (a transaction committing at or
        after it, or the walsender idle past it), or, following, when ``stop`` is set."""
        cfg = self.config
        import psycopg

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
                    if self._again and follow and not in_txn and not pending:
                        break  # a stream must be snapshotted again: `capture` restarts
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
                        _r, _, _ = select.select([conn.socket], [], [], _TICK)
                        with self._io:
                            try:
                                conn.consume_input()
                            except psycopg.OperationalError as e:  # what PGconn.consume_input raises
                                raise RetriableError(f"lost the replication connection to {self.source.location()}: {e}") from None
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
                                old, t.stream = t.stream.schema, new
                                self._refill(t, old, pending, window)
                        self._bind(t, rel)
                    elif kind in ("I", "U", "D"):
                        t = by_oid.get(msg[1])
                        if t is None or t.stream.name in self._again:  # skipped until snapshotted again
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
                            if t is None or t.stream.name in self._again:
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


def _with_snapshot_progress(cs: ChangeSet, snaps: dict[str, _Snap]) -> ChangeSet:
    """A catch-up window's change set, whose streams still being snapshotted keep their
    snapshot progress in their positions: the rest of their snapshot (keys after ``after``)
    is read only after the window, and a crash before then must resume it, not take the
    stream for snapshotted (rows after ``after`` would never be read)."""
    touched = [n for n in (*cs.batches, *cs.truncated) if n in snaps]
    if not touched:
        return cs
    positions = dict(cs.stream_positions or {})
    for name in touched:
        positions[name] = {**cs.position_of(name), "snapshot": {"after": snaps[name].after}}
    return dataclasses.replace(cs, stream_positions=positions)

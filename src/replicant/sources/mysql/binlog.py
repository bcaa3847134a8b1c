"""``mode: log`` on MySQL/MariaDB: the row binlog, read as a replica with ``mysql-replication``.

One binlog connection (``BinLogStreamReader``, registered with ``server_id``) serves every
``log`` stream of the source. :meth:`BinlogCapture.capture` follows
:meth:`replicant.sources.base.Source.capture`.

Positions (JSON)::

    capture, and a stream's position once it is streaming
        {"file": "binlog.000003", "pos": 1234}
    a stream in the middle of its initial snapshot
        {"file": F, "pos": P, "snapshot": {"after": [last key values]}}

``file``/``pos`` is the binlog coordinate *after* the last whole transaction (the end of its
XID event, or of a DDL statement); positions compare as (file number, pos). A change belongs
to a stream when its transaction ends *after* the stream's position; changes at or before
it are skipped for that stream (they are in the log already). The binlog is read from the
engine's ``resume`` position (the last acknowledged one); a stream that was ahead of it
simply skips what it already has.

Initial snapshot (streams whose position is None), without a global lock on MariaDB:
``START TRANSACTION WITH CONSISTENT SNAPSHOT`` then ``SHOW STATUS LIKE 'binlog_snapshot_%'``
gives the binlog coordinate S that matches the snapshot exactly (on MySQL: a brief
``FLUSH TABLES WITH READ LOCK`` around ``SHOW MASTER STATUS``). Every pending table is read
in that transaction (PyMySQL ``SSCursor``, key order, the same select expressions as a
``full`` read, converted by :func:`replicant.sources.types.conform` to exactly the same Arrow
types), ``_op = "read"``, each batch with the stream position
``{"file": S.file, "pos": S.pos, "snapshot": {"after": key}}`` and the last batch with
``{"file": S.file, "pos": S.pos}``; then the binlog is read from S (or from ``resume`` if
that is older).

The snapshot transaction keeps a metadata lock on each table it has read until the last
table is read, so an ``ALTER TABLE`` of a captured table waits for the snapshot to end (as
with ``mysqldump --single-transaction``); row writes do not wait.

A crash in the middle of a snapshot: the stream's position still holds S and the last key
read. The next capture opens a *new* consistent snapshot S2 >= S, reads the keys after the
last one, and streams the binlog from S for that stream. Every change after S is replayed
with its full row image, in order, on top of rows read at S or S2, so a merge destination
converges to the table exactly (a row changed between S and S2 is overwritten by the same
or a later image). A table without a usable key restarts its snapshot from the first row
(its destination can only append, so rows read before the crash appear twice).

Values are exact and equal what a ``full`` read returns: the binlog decoder is told each
column's signedness, enum/set labels and (as ``binary``) its character set, so strings are
decoded here in the column's own character set, ``BINARY(n)`` gets back the trailing zero
bytes the binlog strips, ``BIT`` becomes an integer (``BIT(1)`` a boolean), ``SET`` its
comma-separated text, ``TIMESTAMP`` a UTC instant, ``TIME`` a time of day (a ``TIME`` beyond
a day is an error, as in a full read).

Server requirements (checked at start, by ``replicant cdc install`` and ``status``):
``log_bin`` on, ``binlog_format=ROW``, ``binlog_row_image=FULL``; ``binlog_row_metadata=FULL``
(MariaDB 10.5+, MySQL 8.0.14+) is recommended: without it, binlog columns are matched to the
table by position, which breaks for rows logged before a column was added in the middle of
a table. The user needs ``REPLICATION SLAVE`` and ``REPLICATION CLIENT`` (and ``RELOAD`` for
the MySQL snapshot lock).

Schema changes: an ``ALTER TABLE`` (any DDL naming a captured table) re-reads the table from
the catalog; new columns join the stream (columns that existed when the capture started but
were not in the stream stay excluded) and later batches follow the new schema, flushed apart
from batches in the old one. A new column that gives existing rows a value (a default,
``AUTO_INCREMENT``, generated, ``NOT NULL``: no row event carries those values) makes that
stream be snapshotted again: its position becomes ``{…, "snapshot": {"after": None}}``, its
changes are skipped, and the next capture (at once when following: it restarts) reads it
after a truncate marker from a new snapshot, streaming it from that snapshot's coordinate
(an image from before would overwrite the new value). ``TRUNCATE`` sets
``ChangeSet.truncated``. An ``UPDATE`` that changes the primary key is emitted as a delete
of the old key and an insert of the new row.

Two readers of one server (say a copy of the pipeline file run from another folder, with
its own state store and log) cannot take changes from each other, unlike two consumers of
one PostgreSQL slot: reading the binlog consumes nothing on the server, each reader resumes
from the position in its own state, and the server purges binlogs by age
(``binlog_expire_logs_seconds``), never because a replica read them (a purged file is error
1236 above: a clear refusal, not a silent skip). What a copy shares is the derived
``server_id``: run *at the same time*, the server drops the older of the two connections,
which reconnects (a ``RetriableError``) from its own position; give each its own
``server_id:`` to run both. Tested by ``test_a_copy_reading_the_same_binlog_takes_nothing_from_the_original``.

GTID positions are not used (file/pos work on MariaDB and MySQL alike; after a fail-over to
another server a stream needs a new snapshot).

Modules: this one holds the capture itself (connections, server checks, hooks, the
capture's plan and the binlog reading loop); :mod:`._binlog_snapshot` the initial snapshot;
:mod:`._binlog_values` binlog coordinates, value conversion, the per stream state
(``_Table``) and row-event decoding. ``_Table``, ``_select`` and ``_raw_type`` stay
importable from here.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from replicant.errors import ConnectionError, FatalError, RetriableError
from replicant.model import Position, Stream, encode_position
from replicant.sources.base import ChangeSet
from replicant.timeouts import pymysql_timeouts, set_pymysql_read_timeout, timed_out, timeout_hint

from ._binlog_snapshot import _Snapshot
from ._binlog_values import _coord, _Decoding, _key, _min, _Table

__all__ = ["BinlogCapture"]

log = logging.getLogger(__name__)

#: How often an idle binlog connection hands control back (server heartbeat), so ``stop``
#: is seen within about a second.
_POLL = 0.5
_CONNECT_CODES = {1040, 1044, 1045, 1129, 1130, 2002, 2003, 2005, 2006, 2013}
_TRUNCATE = re.compile(r"^\s*TRUNCATE\s+(?:TABLE\s+)?(?P<name>.+?)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_DDL = re.compile(r"^\s*(?:/\*.*?\*/\s*)*(ALTER|CREATE|DROP|RENAME)\b", re.IGNORECASE | re.DOTALL)


# ---------------------------------------------------------------------------- the capture


class BinlogCapture(_Snapshot, _Decoding):
    """The row binlog of one MySQL/MariaDB server, for the ``log`` streams of a
    :class:`replicant.sources.mysql.MySQLSource` (see the module docstring)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self._acked: Position | None = None
        self._captured: Position | None = None
        self._reader: Any = None
        self._snap_conn: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ connections

    @property
    def pipeline(self) -> str:
        """The source feed this reader serves (``pipeline`` or ``pipeline.tenant``)."""
        return str(self.source.context.feed)

    @property
    def server_id(self) -> int:
        """The replica id this reader registers with (:attr:`MySQLSource.server_id`)."""
        return int(self.source.server_id)

    def _settings(self) -> dict[str, Any]:
        u = self.source._u
        kw: dict[str, Any] = {
            "host": u.host or "localhost", "port": u.port or 3306, "user": u.username or "",
            "password": u.password or "", **pymysql_timeouts(self.source.connect_timeout),
        }
        if "unix_socket" in u.query:
            kw["unix_socket"] = u.query["unix_socket"]
        return kw

    def _connect(self, **extra: Any) -> Any:
        import pymysql

        kw = self._settings()
        try:
            conn = pymysql.connect(database=self.source._u.database, charset="utf8mb4", autocommit=True, **kw, **extra)
        except pymysql.MySQLError as e:
            why = self._scrub(e)
            if timed_out(why):
                why = timeout_hint(self.source.connect_timeout, "source.connect_timeout")
            raise ConnectionError(f"cannot connect to {self.source.location()}: {why}") from None
        set_pymysql_read_timeout(conn, None)  # logged in: a long query may take its time
        return conn

    def _scrub(self, e: BaseException) -> str:
        return self.source.scrub(str(e.args[-1]) if e.args else str(e))

    def _translate(self, e: Exception, what: str) -> Exception:
        code = e.args[0] if e.args else None
        msg = f"{what} on {self.source.location()}: {self._scrub(e)}"
        if code in _CONNECT_CODES:
            return RetriableError(msg)
        if code == 1236:
            return FatalError(
                f"{msg}. The binlog the capture must resume from is gone (purged, or another server): "
                "keep binlogs longer (binlog_expire_logs_seconds) and restart the `log` streams from a new snapshot"
            )
        if code in (1227, 1045, 1142, 1044):
            return FatalError(f"{msg}. Grant the user REPLICATION SLAVE, REPLICATION CLIENT (and RELOAD on MySQL)")
        return FatalError(msg)

    def _query(self, sql: str) -> list[tuple]:
        import pymysql

        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        except pymysql.MySQLError as e:
            raise self._translate(e, f"running {sql!r}") from None
        finally:
            conn.close()

    # ------------------------------------------------------------------ server facts

    def _facts(self) -> dict[str, Any]:
        row = self._query(
            "SELECT VERSION(), @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image"
        )[0]
        meta = self._query("SHOW GLOBAL VARIABLES LIKE 'binlog_row_metadata'")
        return {
            "version": str(row[0]), "mariadb": "mariadb" in str(row[0]).lower(), "log_bin": bool(int(row[1] or 0)),
            "binlog_format": str(row[2] or "").upper(), "binlog_row_image": str(row[3] or "").upper(),
            "binlog_row_metadata": str(meta[0][1]).upper() if meta else None,
        }

    def _check(self, facts: dict[str, Any]) -> list[str]:
        """Lines saying what is right; raises FatalError saying what to set otherwise."""
        wrong = []
        if not facts["log_bin"]:
            wrong.append("the binary log is off: start the server with log_bin (log-bin=binlog) and a server_id")
        if facts["binlog_format"] != "ROW":
            wrong.append(f"binlog_format is {facts['binlog_format'] or 'unset'}: set binlog_format=ROW "
                         "(SET GLOBAL binlog_format='ROW' and in the server's configuration)")
        if facts["binlog_row_image"] != "FULL":
            wrong.append(f"binlog_row_image is {facts['binlog_row_image'] or 'unset'}: set binlog_row_image=FULL")
        if wrong:
            raise FatalError(f"`mode: log` cannot read {self.source.location()}: " + "; ".join(wrong))
        lines = ["log_bin is ON", "binlog_format is ROW", "binlog_row_image is FULL"]
        if facts["binlog_row_metadata"] == "FULL":
            lines.append("binlog_row_metadata is FULL")
        elif facts["binlog_row_metadata"] is not None:
            lines.append(f"binlog_row_metadata is {facts['binlog_row_metadata']} (FULL is recommended: binlog "
                         "columns are then matched by name)")
        return lines

    def current_position(self) -> Position:
        """The end of the binlog now (``SHOW MASTER STATUS``), as ``{"file", "pos"}``."""
        return self._master()

    def _master(self) -> Position:
        """The end of the binlog now."""
        import pymysql

        conn = self._connect()
        try:
            with conn.cursor() as cur:
                return _coord(self._show_master(cur))
        except pymysql.MySQLError as e:
            raise self._translate(e, "reading the binlog position") from None
        finally:
            conn.close()

    @staticmethod
    def _show_master(cur: Any) -> Position:
        import pymysql

        try:
            cur.execute("SHOW MASTER STATUS")
        except pymysql.err.ProgrammingError:  # MySQL 8.4 renamed it
            cur.execute("SHOW BINARY LOG STATUS")
        row = cur.fetchone()
        if row is None:
            raise FatalError("the binary log is off: start the server with log_bin (log-bin=binlog)")
        return {"file": row[0], "pos": int(row[1])}

    # ------------------------------------------------------------------ hooks

    def check(self, streams: list[Stream]) -> list[str]:
        """Checks the server's binlog settings; ``FatalError`` says what to set."""
        return self._check(self._facts())

    def install(self, streams: list[Stream]) -> list[str]:
        """Nothing to create for a binlog reader: checks the server settings and says so."""
        lines = self._check(self._facts())
        return lines + [f"replica server_id {self.server_id} for pipeline {self.pipeline!r}"]

    def uninstall(self, streams: list[Stream]) -> list[str]:
        return ["nothing to remove: a binlog reader keeps no state on the server"]

    def acknowledge(self, position: Position) -> None:
        """A binlog has no slot to confirm; remembered only for :meth:`status`."""
        if position and "file" in position and "pos" in position and (self._acked is None or _key(position) >= _key(self._acked)):
            self._acked = _coord(position)

    def status(self, streams: list[Stream]) -> dict[str, Any]:
        facts = self._facts()
        end = self._master()
        out: dict[str, Any] = {
            "binlog file": end["file"], "binlog pos": end["pos"], "binlog_format": facts["binlog_format"],
            "binlog_row_image": facts["binlog_row_image"], "server_id": self.server_id,
        }
        at = self._acked or self._captured
        if at is not None:
            out["captured file"], out["captured pos"] = at["file"], at["pos"]
            out["lag bytes"] = self._lag(at, end)
        return out

    def _lag(self, at: Position, end: Position) -> int:
        if at["file"] == end["file"]:
            return max(0, end["pos"] - at["pos"])
        lag = 0
        for name, size, *_ in self._query("SHOW BINARY LOGS"):
            k = _key({"file": name, "pos": 0})[0]
            if k == _key(at)[0]:
                lag += max(0, int(size) - at["pos"])
            elif _key(at)[0] < k < _key(end)[0]:
                lag += int(size)
            elif k == _key(end)[0]:
                lag += end["pos"]
        return lag

    def close(self) -> None:
        with self._lock:
            reader, self._reader = self._reader, None
            conn, self._snap_conn = self._snap_conn, None
        for thing in (reader, conn):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # already broken: nothing left to release
                    log.debug("closing a binlog connection failed", exc_info=True)

    # ------------------------------------------------------------------ capture

    def capture(
        self,
        streams: list[Stream],
        positions: dict[str, Position | None],
        *,
        resume: Position | None,
        follow: bool,
        stop: threading.Event,
    ) -> Iterator[ChangeSet]:
        """See :meth:`replicant.sources.base.Source.capture` and the module docstring.

        Raises:
            FatalError: the server is not set up for row binlog capture (says what to set),
                the binlog to resume from is purged, or a value cannot be read.
            RetriableError: the connection was lost.
        """
        self._check(self._facts())
        if not streams:
            return
        tables: dict[tuple[str, str], _Table] = {}
        snapshot: list[_Table] = []
        base = _coord(resume) if resume and "file" in resume else None
        for s in streams:
            cat = self._catalog(s)
            pos = positions.get(s.name)
            excluded = frozenset(c.name for c in cat) - set(s.schema.names)
            t = _Table(s, cat, excluded, _coord(pos) if pos and "file" in pos else None)
            tables[(s.table[0], s.table[-1])] = t
            if pos is None or "file" not in pos or pos.get("snapshot") is not None:
                snapshot.append(t)
                if pos and "file" in pos:
                    t.after = (pos.get("snapshot") or {}).get("after")
                    if t.after is None:  # snapshotted again from scratch: older changes would
                        t.filter, t.truncate = None, True  # overwrite its rows with older images
                        self._as_now(t)
                if t.filter is not None:  # a snapshot to finish: stream from where it began
                    base = _min(base, t.filter)
            elif resume is None:
                base = _min(base, t.filter)
        if snapshot:
            point = yield from self._snapshot(snapshot, base, stop)
            if point is None:  # stopped
                return
            base = _min(base, point)
        if base is None:  # nothing to snapshot, nothing known: from now on
            base = self._master()
        yield from self._stream(tables, base, follow, stop)

    def _refilled(self, old: Stream, new: Stream) -> bool:
        """Whether a column ``new`` adds to ``old`` gives the rows that already existed a value
        (``ADD COLUMN … DEFAULT``: no row event carries it); logged at WARNING."""
        added = [n for n in new.schema.names if n not in old.schema.names]
        filled = self.source.filled_columns(new, added) if added else {}
        if filled:
            log.warning("stream %s: column(s) %s added to %s give(s) the existing rows a value (%s), which the binlog "
                        "does not carry: the stream is snapshotted again", new.name, ", ".join(map(repr, filled)),
                        self.source.display(new.table), "; ".join(f"{c}: {why}" for c, why in filled.items()))
        return bool(filled)

    # ------------------------------------------------------------------ binlog

    def _stream(
        self, tables: dict[tuple[str, str], _Table], start: Position, follow: bool, stop: threading.Event
    ) -> Iterator[ChangeSet]:
        import pymysql
        from pymysqlreplication import BinLogStreamReader
        from pymysqlreplication.event import (
            GtidEvent,
            HeartbeatLogEvent,
            MariadbGtidEvent,
            QueryEvent,
            XidEvent,
        )
        from pymysqlreplication.row_event import (
            DeleteRowsEvent,
            TableMapEvent,
            UpdateRowsEvent,
            WriteRowsEvent,
        )

        cfg = self.source.config
        target = None if follow else self._master()
        committed = _coord(start)
        self._captured = committed
        if target is not None and _key(committed) >= _key(target):
            return
        batch_size = int(cfg.batch_size)
        flush_every = float(cfg.flush_interval)
        heartbeat = float(cfg.heartbeat)
        reader = BinLogStreamReader(
            connection_settings=self._settings(), server_id=self.server_id, resume_stream=True, blocking=True,
            log_file=committed["file"], log_pos=committed["pos"],
            only_schemas=sorted({k[0] for k in tables}), only_tables=sorted({k[1] for k in tables}),
            slave_heartbeat=_POLL, enable_logging=False, pymysql_wrapper=_pymysql_connect,
        )
        with self._lock:
            self._reader = reader
        yielded = dict(committed)
        last_yield = time.monotonic()
        first_pending: float | None = None
        truncated: set[str] = set()
        again: set[str] = set()  # streams to snapshot again: their changes are skipped meanwhile
        txn: list[tuple[_Table, str, tuple, int]] = []
        group_open = txn_open = False

        def pending_rows() -> int:
            return sum(len(t.rows) for t in tables.values())

        def change_set() -> ChangeSet:
            nonlocal yielded, last_yield, first_pending
            batches = {t.stream.name: t.batch() for t in tables.values() if t.rows}
            for t in tables.values():
                if t.stream.name in truncated and t.stream.name not in batches:
                    batches[t.stream.name] = t.batch()  # empty: carries the truncate
                t.clear()
            cs = ChangeSet(batches, dict(committed), None, frozenset(truncated))
            truncated.clear()
            yielded, last_yield, first_pending = dict(committed), time.monotonic(), None
            self._captured = dict(committed)
            return cs

        def end_group() -> None:
            nonlocal group_open, txn_open, first_pending, txn
            end = {"file": reader.log_file, "pos": int(reader.log_pos)}
            text = encode_position(end)
            for t, op, values, ts in txn:
                if t.filter is not None and _key(end) <= _key(t.filter):
                    continue
                t.rows.append(values)
                t.ops.append(op)
                t.pos.append(text)
                t.ts.append(ts)
                if first_pending is None:
                    first_pending = time.monotonic()
            txn = []
            committed.update(end)
            group_open = txn_open = False

        def ddl(ev: Any) -> Iterator[ChangeSet]:
            """A statement outside a transaction: TRUNCATE or DDL of a captured table."""
            end = {"file": reader.log_file, "pos": int(reader.log_pos)}
            query = ev.query
            schema = ev.schema.decode() if isinstance(ev.schema, bytes) else str(ev.schema or "")
            m = _TRUNCATE.match(query)
            if m:
                t = tables.get(_qualified(m["name"], schema))
                if t is not None and (t.filter is None or _key(end) > _key(t.filter)):
                    t.clear()
                    truncated.add(t.stream.name)
                return
            if not _DDL.match(query):
                return
            low = query.lower()
            for t in tables.values():
                if t.stream.table[-1].lower() in low:
                    changed = self._reshape(t)
                    if changed is not None:
                        if t.rows or truncated:
                            yield change_set()
                        old, t.stream = t.stream, changed
                        t.refresh()
                        if self._refilled(old, changed):
                            # its existing rows changed without a row event: this stream alone
                            # is snapshotted again (the next capture: at once when following)
                            again.add(t.stream.name)
                            yield ChangeSet({t.stream.name: t.batch()}, dict(committed),
                                            {t.stream.name: {**end, "snapshot": {"after": None}}})
            for key in [k for k, t in tables.items() if t.stream.name in again]:
                del tables[key]

        try:
            while True:
                if stop.is_set():
                    break
                try:
                    ev = reader.fetchone()
                except pymysql.MySQLError as e:
                    raise self._translate(e, "reading the binlog") from None
                if ev is None:  # the server ended the dump
                    raise RetriableError(f"the binlog connection to {self.source.location()} ended")
                if isinstance(ev, (MariadbGtidEvent, GtidEvent)):
                    group_open = True
                    txn_open = isinstance(ev, MariadbGtidEvent) and not (ev.flags & 1)  # FL_STANDALONE
                elif isinstance(ev, QueryEvent):
                    q = ev.query.strip().upper()
                    if q in ("BEGIN", "START TRANSACTION") or q.startswith("XA START"):
                        group_open = txn_open = True
                    elif q in ("COMMIT", "ROLLBACK") or q.startswith(("XA COMMIT", "XA ROLLBACK")):
                        end_group()
                    else:
                        self._statement(ev, tables)
                        if not txn_open:  # DDL, TRUNCATE: a group of its own
                            yield from ddl(ev)
                            end_group()
                            if again and follow:
                                raise RetriableError(f"stream(s) {', '.join(sorted(again))} must be snapshotted "
                                                     "again; restarting the capture")
                elif isinstance(ev, XidEvent):
                    end_group()
                elif isinstance(ev, TableMapEvent):
                    t = tables.get((ev.schema, ev.table))
                    if t is not None:
                        self._map_columns(t, ev)
                elif isinstance(ev, (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)):
                    t = tables.get((ev.schema, ev.table))
                    if t is not None:
                        txn.extend(self._rows(t, ev))
                        if not group_open:  # rows outside a group (should not happen): one group each
                            end_group()
                elif isinstance(ev, HeartbeatLogEvent):
                    if not group_open:  # idle at the end of the binlog: everything is read
                        here = {"file": ev.ident.rstrip("\x00") or committed["file"], "pos": int(reader.log_pos)}
                        if _key(here) > _key(committed):
                            committed.update(here)
                elif not group_open:  # rotate, format description, GTID list…: between groups
                    here = {"file": reader.log_file, "pos": int(reader.log_pos)}
                    if _key(here) > _key(committed):
                        committed.update(here)

                if group_open:
                    continue
                now = time.monotonic()
                caught_up = target is not None and _key(committed) >= _key(target)
                n = pending_rows()
                if n or truncated:
                    if caught_up or n >= batch_size or (first_pending is not None and now - first_pending >= flush_every):
                        yield change_set()
                elif _key(committed) > _key(yielded) and (caught_up or now - last_yield >= heartbeat):
                    yield change_set()  # no rows: the position still moves on
                if caught_up:
                    return
            # stopped: whole transactions only (the one in progress is read again next time)
            if pending_rows() or truncated:
                yield change_set()
        finally:
            with self._lock:
                self._reader = None
            try:
                reader.close()
            except Exception:  # already broken
                log.debug("closing the binlog reader failed", exc_info=True)

def _pymysql_connect(**kw: Any) -> Any:
    """``pymysql.connect`` for the binlog reader, which still passes the deprecated ``db``."""
    import pymysql

    if "db" in kw:
        kw["database"] = kw.pop("db")
    conn = pymysql.connect(**kw)
    set_pymysql_read_timeout(conn, None)  # logged in: the binlog stream waits on the server's heartbeats
    return conn


def _qualified(name: str, default_schema: str) -> tuple[str, str]:
    """``db.t``, ```db`.`t``` or ``t`` (in ``default_schema``) as (schema, table)."""
    parts = re.findall(r"`((?:[^`]|``)*)`|([^.`\s]+)", name.strip())
    names = [(a.replace("``", "`") if a else b) for a, b in parts]
    if len(names) >= 2:
        return names[-2], names[-1]
    return default_schema, names[0] if names else ""

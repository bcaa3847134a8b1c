"""The initial snapshot of :class:`~replicant.sources.mysql.binlog.BinlogCapture` (moved out of
:mod:`replicant.sources.mysql.binlog`, whose docstring describes how the snapshot meets the binlog).

:class:`_Snapshot`, a mixin of :class:`~replicant.sources.mysql.binlog.BinlogCapture`: the consistent
snapshot transaction and its binlog coordinate (``_consistent_point``), reading each pending
table in key order after its last key (``_read_table``, PyMySQL ``SSCursor``, converted by
:func:`replicant.sources.types.conform` like a ``full`` read), and the ``_op = "read"``
change sets (``_snapshot``). ``_select``/``_raw_type``: the select expression of a column
and the Arrow type PyMySQL returns for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from replicant.errors import FatalError
from replicant.model import (
    OP_READ,
    Position,
    Stream,
    encode_position,
    utcnow,
    with_meta,
)
from replicant.sources.base import ChangeSet
from replicant.sources.strategies.protocols import last_values
from replicant.sources.types import (
    Column,
    conform,
    decode_value,
    encode_value,
    is_keyable,
)

from ._binlog_values import _coord, _Table

log = logging.getLogger("replicant.sources.mysql.binlog")  # the capture's logger


class _Snapshot:
    """The snapshot methods of :class:`~replicant.sources.mysql.binlog.BinlogCapture` (uses its
    ``source``, ``_connect``, ``_translate``, ``_show_master``, ``_lock`` and ``_snap_conn``)."""

    source: Any
    _lock: threading.Lock
    _snap_conn: Any
    _reshape: Callable[[_Table], Stream | None]  #: the decoder's (``_Decoding._reshape``)

    def _catalog(self, stream: Stream) -> list[Column]:
        found = self.source.catalog(stream.table)
        if found is None:
            raise FatalError(
                f"table {self.source.display(stream.table)} does not exist (dropped or renamed?); "
                f"fix `table:` of stream {stream.name!r} or restore the table"
            )
        return found.columns

    def _as_now(self, t: _Table) -> None:
        """``t`` as its table is now, for a snapshot from scratch: the columns the stream's
        ``include``/``exclude`` choose (not only those it was discovered with)."""
        streams = self.source.config.streams
        sc = next((c for c in streams if c.table == t.stream.name), None) if isinstance(streams, list) else None
        names = {c.name for c in t.catalog}
        if sc is not None and sc.include:
            s = t.stream
            wanted = set(sc.include) | set(s.primary_key) | ({s.cursor} if s.cursor else set())
            t.excluded = frozenset(names - wanted)
        else:
            t.excluded = frozenset(names & set(sc.exclude or ())) if sc is not None else frozenset()
        changed = self._reshape(t)
        if changed is not None:
            t.stream = changed
            t.refresh()

    def _snapshot(self, pending: list[_Table], base: Position | None, stop: threading.Event) -> Iterator[ChangeSet]:
        """Reads ``pending`` in one consistent snapshot; returns its binlog coordinate (None
        when stopped)."""
        import pymysql

        conn = self._connect()
        with self._lock:
            self._snap_conn = conn
        try:
            point = self._consistent_point(conn)
            for t in pending:
                origin = t.filter or point
                first = t.truncate
                for batch, after in self._read_table(conn, t):
                    sp: Position = dict(origin)
                    if after is not None:
                        sp["snapshot"] = {"after": after}
                    data = with_meta(batch, OP_READ, encode_position(sp), utcnow())
                    if after is None and t is pending[-1]:
                        conn.rollback()  # read everything: release the snapshot (and its table locks) now
                    yield ChangeSet({t.stream.name: data}, base or point, {t.stream.name: sp},
                                    frozenset({t.stream.name}) if first else frozenset())
                    first = False
                    if stop.is_set():
                        return None
                t.filter = origin
            return point
        except pymysql.MySQLError as e:
            raise self._translate(e, "reading the initial snapshot") from None
        finally:
            with self._lock:
                self._snap_conn = None
            try:
                conn.rollback()
                conn.close()
            except Exception:  # the connection broke: the server ends the transaction
                log.debug("closing the snapshot connection failed", exc_info=True)

    def _consistent_point(self, conn: Any) -> Position:
        """Starts a consistent-snapshot transaction on ``conn``; the binlog coordinate it matches."""
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            mariadb = "mariadb" in str(cur.fetchone()[0]).lower()
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            if mariadb:
                # https://mariadb.com/kb/en/enhancements-for-start-transaction-with-consistent-snapshot/
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
                status = {str(k).lower(): v for k, v in cur.fetchall()}
                return {"file": str(status["binlog_snapshot_file"]), "pos": int(status["binlog_snapshot_position"])}
            cur.execute("FLUSH TABLES WITH READ LOCK")
            try:
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                return _coord(self._show_master(cur))
            finally:
                cur.execute("UNLOCK TABLES")

    def _read_table(self, conn: Any, t: _Table) -> Iterator[tuple[pa.RecordBatch, list[Any] | None]]:
        """The table's rows after ``t.after`` in key order, in batches with the key of their
        last row; the last batch (possibly empty) comes with None."""
        src, stream = self.source, t.stream
        columns = src.columns(stream)
        size = int(stream.options.get("batch_size") or src.config.batch_size)
        by_name = {c.name: c for c in columns}
        keys = [by_name[k] for k in stream.primary_key]
        keyed = bool(keys) and all(not c.nullable and is_keyable(c.arrow) for c in keys)
        after = t.after if keyed else None
        params: list[Any] = []
        where = []
        if after:
            values = [decode_value(v, c.arrow) for v, c in zip(after, keys)]
            where.append(src.where_after(">", keys, values, params))
        sel = ", ".join(_select(c).format(f"t.{src.quote(c.name)}") + f" AS {src.quote(c.name)}" for c in columns)
        sql = f"SELECT {sel} FROM {src.display(stream.table)} AS t"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if keyed:
            sql += " ORDER BY " + ", ".join(f"t.{src.quote(c.name)}" for c in keys)
        raw = [_raw_type(c) for c in columns]
        names = [c.name for c in columns]

        def convert(rows: list[tuple]) -> pa.RecordBatch:
            cols = list(zip(*rows)) if rows else [() for _ in names]
            try:
                b = pa.RecordBatch.from_arrays([pa.array(v, r) for v, r in zip(cols, raw)], names=names)
                return conform(b, stream.schema)
            except (ValueError, TypeError, OverflowError, pa.ArrowException) as e:
                raise FatalError(f"reading {src.display(stream.table)} (initial snapshot of stream "
                                 f"{stream.name!r}): {e}") from None

        import pymysql.cursors

        with conn.cursor(pymysql.cursors.SSCursor) as cur:  # streams rows: memory stays flat
            cur.execute(sql)  # keyset values are literals (MySQLSource._bind): no % to escape
            held = cur.fetchmany(size)
            while True:
                nxt = cur.fetchmany(size) if len(held) == size else []
                batch = convert(held)
                if not nxt:
                    yield batch, None
                    return
                last = last_values(batch, stream.primary_key) if keyed else []
                yield batch, [encode_value(v) for v in last]  # unkeyed: [] (restarts after a crash)
                held = nxt


def _select(col: Column) -> str:
    """The select expression for a snapshot read: a full read's, except FLOAT, which the
    text protocol would round to 6 digits (connectorx reads it binary, exactly)."""
    if pa.types.is_float32(col.arrow):
        return "CAST({} AS DOUBLE)"
    return col.select


def _raw_type(col: Column) -> pa.DataType:
    """The Arrow type of what PyMySQL returns for :func:`_select` of ``col`` (then
    :func:`conform` converts it exactly as it converts connectorx's output)."""
    sel = _select(col)
    if sel == "{}":
        return col.arrow
    if sel == "CAST({} AS CHAR)":
        return pa.string()
    if sel == "CAST({} AS UNSIGNED)":
        return pa.uint64()
    if sel == "CAST({} AS DOUBLE)":
        return pa.float64()
    if sel.startswith("ST_AsBinary"):
        return pa.binary()
    return pa.int64()  # days, microseconds computed by the server

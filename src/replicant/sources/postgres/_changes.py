"""How :class:`~replicant.sources.postgres.capture.PgLogCapture` turns decoded pgoutput messages into
change sets (moved out of :mod:`replicant.sources.postgres.capture`, whose docstring describes the
whole capture).

- :class:`_Target`: how one stream is decoded (its relation's column indexes).
- :class:`_Rows`, :class:`_Pending`: the whole transactions read but not yet yielded.
- :class:`_Changes`, a mixin of :class:`~replicant.sources.postgres.capture.PgLogCapture`: describing a
  table again when its ``Relation`` message changed (:meth:`_Changes._describe`), binding a
  stream to a relation, adding a row message to the pending rows (an update that changes the
  key becomes a delete and an update), and the pending rows → Arrow (``_flush``, ``_batch``,
  ``_refetch`` of TOASTed values an update left out).
- :func:`_changes`: what changed between two versions of a stream's columns, for the log.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from replicant.errors import FatalError
from replicant.model import OP_DELETE, OP_INSERT, OP_UPDATE, SQL_TYPE_KEY, Position, Stream
from replicant.sources.base import ChangeSet

from .pgoutput import UNCHANGED, Relation, to_arrow

if TYPE_CHECKING:
    from ._snapshot import _Snap

_log = logging.getLogger(__name__)


class _Gone(Exception):
    """An update left TOASTed values out and the table no longer has their column(s) (dropped
    or renamed since): their values at that point of the log can be read from nowhere."""

    def __init__(self, columns: list[str]) -> None:
        super().__init__(columns)
        self.columns = columns


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
        self.refill: set[str] = set()  # streams to snapshot again, to be recorded by the next flush
        self.count = 0
        self.since: float | None = None
        self.last_end = 0

    def __bool__(self) -> bool:
        return bool(self.count or self.truncated or self.refill)

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
        rest.refill = self.refill  # marked in the open transaction
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

    def snapshot_again(self, name: str) -> None:
        """Stream ``name`` will be snapshotted again: its rows (and truncate) of the open
        transaction go, the snapshot covers them; the next flush records its position."""
        r = self.rows.pop(name, None)
        if r is not None:
            self.count -= len(r.ops)
        self.truncated.discard(name)
        self.truncated_in.pop(name, None)
        self.refill.add(name)
        if self.since is None:
            self.since = time.monotonic()

    def reshape(self, name: str, old: list[str], new: list[str]) -> None:
        """Stream ``name``'s pending rows (of the open transaction) laid out for its new
        columns: a column kept keeps its values (read as its new type when flushed), a new
        one is null, a dropped one goes."""
        r = self.rows.get(name)
        if r is None:
            return
        by = dict(zip(old, r.cols))
        r.cols = [by[c] if c in by else [None] * len(r.ops) for c in new]


class _Changes:
    """The decoding methods of :class:`~replicant.sources.postgres.capture.PgLogCapture` (uses its
    ``source``, ``config``, ``_sql``, ``_qi``, ``_table`` and ``_window_filter``)."""

    source: Any
    config: Any
    _table: Callable[[Stream], str]  #: the quoted table name (PgLogCapture's)
    _again: set[str]  #: streams to snapshot again (:meth:`_flush`); their changes are skipped meanwhile

    def _describe(self, t: _Target, rel: Relation) -> Stream:
        """``t.stream`` as of ``rel`` (the table at this point of the log): the columns ``rel``
        lists, each described by the source's own discovery (so types and field metadata are
        those a fresh ``discover()`` gives) — from the catalog as it is now when the column
        has the same type there, else from ``rel``'s type (the catalog moved on since) —
        filtered by the stream's ``include``/``exclude``; key, options and schema metadata
        stay the stream's."""
        s = t.stream
        table = self.source.catalog(s.table)
        if table is None:
            raise FatalError(f"table {self._table(s)} does not exist (dropped or renamed?); fix `table:` of stream {s.name!r}")
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
        return self._chosen(s, self.source.describe(dataclasses.replace(table, columns=columns)))

    def _refill(self, t: _Target, old: pa.Schema, pending: _Pending,
                window: tuple[int, dict[str, _Snap]] | None) -> None:
        """After ``t.stream`` changed from ``old``: when an added column gives the rows that
        already existed a value (``ADD COLUMN … DEFAULT``, identity, ``NOT NULL``: the log
        carries no change for those rows), the stream is snapshotted again, as for a lost
        TOASTed value (:meth:`_flush`): its later changes are skipped, the snapshot has them.
        A stream being snapshotted at X already reads the table as it is then."""
        name = t.stream.name
        if name in self._again or (window is not None and name in window[1]):
            return
        added = [f.name for f in t.stream.schema if f.name not in old.names]
        filled = self.source.filled_columns(t.stream, added) if added else {}
        if not filled:
            return
        _log.warning("stream %s: column(s) %s added to %s give(s) the existing rows a value (%s), which the log does "
                     "not carry: the stream is snapshotted again", name, ", ".join(map(repr, filled)),
                     self._table(t.stream), "; ".join(f"{c}: {why}" for c, why in filled.items()))
        self._again.add(name)
        pending.snapshot_again(name)

    def _as_now(self, s: Stream) -> Stream:
        """``s`` described from the catalog as it is now (what a snapshot read now returns)."""
        table = self.source.catalog(s.table)
        if table is None:
            raise FatalError(f"table {self._table(s)} does not exist (dropped or renamed?); fix `table:` of stream {s.name!r}")
        return self._chosen(s, self.source.describe(table))

    def _chosen(self, s: Stream, described: Stream) -> Stream:
        """``described``'s columns filtered by ``s``'s ``include``/``exclude``; key, options and
        schema metadata stay ``s``'s."""
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
                             f"{self._table(t.stream)} (dropped or renamed during the run); run again: each run "
                             "reads the table's columns anew")
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
        again: dict[str, Position] = {}
        for name, rows in pending.rows.items():
            t = targets[name]
            try:
                batch = self._batch(t, rows, ends, stamps)
            except _Gone as e:
                # the value is in no place we can read: this stream alone starts over from a new
                # snapshot (the next capture sees its position's "snapshot" and truncates first)
                _log.warning("stream %s: an update left TOASTed values of %s out, and %s no longer has that column "
                             "(dropped or renamed since): the stream is snapshotted again (ALTER TABLE %s REPLICA "
                             "IDENTITY FULL carries such values in the log)", name, ", ".join(e.columns),
                             self._table(t.stream), self._table(t.stream))
                self._again.add(name)
                again[name] = {"lsn": pending.last_end, "snapshot": {"after": None}}
                batches[name] = pa.RecordBatch.from_pylist([], schema=t.stream.change_schema)
                continue
            if window is not None and name in window[1] and any(rows.window):
                batch = self._window_filter(batch, rows, window[1][name], t)
            batches[name] = batch
        for name in pending.refill:
            again[name] = {"lsn": pending.last_end, "snapshot": {"after": None}}
            batches[name] = pa.RecordBatch.from_pylist([], schema=targets[name].stream.change_schema)
        for name in pending.truncated:
            if name not in batches:
                batches[name] = pa.RecordBatch.from_pylist([], schema=targets[name].stream.change_schema)
        return ChangeSet(batches, {"lsn": pending.last_end}, again or None, frozenset(pending.truncated))

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
        table = self.source.catalog(s.table)
        now = {c.name: c for c in table.columns} if table is not None else {}
        left_out = [s.schema.field(i).name for i in masks]
        gone = [n for n in (*s.primary_key, *left_out) if n not in now]
        if gone:
            raise _Gone(gone)
        params: list[Any] = []
        kcols = [now[k] for k in s.primary_key]
        cols = kcols + [now[n] for n in left_out if n not in s.primary_key]
        arrays = []
        for c in kcols:
            texts = keys.column(c.name).cast(pa.string()).to_pylist() if not pa.types.is_binary(c.arrow) else \
                ["\\x" + v.hex() for v in keys.column(c.name).to_pylist()]
            params.append("{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in texts) + "}")
            arrays.append(f"CAST(current_setting('replicant.p{len(params) - 1}') AS {c.sql_type}[])")
        names = ", ".join(f"t.{self._qi(c.name)}" for c in kcols)
        where = f"({names}) IN (SELECT * FROM unnest({', '.join(arrays)}))"
        sql = self.source.select_sql(s, cols, [where])
        got = list(self.source.query_batches(s, sql, cols, 10_000, params))
        fetched = pa.Table.from_batches(got) if got else pa.schema([c.field() for c in cols]).empty_table()
        # match by key only (a pyarrow join carries only flat non-key columns): each row's index
        # into `fetched`, or null when its row is gone; the values are then `take`n, any type
        idx = pa.table({**{k: batch.column(k) for k in s.primary_key}, "__row": pa.array(np.arange(batch.num_rows))})
        found = pa.table({**{k: fetched.column(k) for k in s.primary_key},
                          "__found": pa.array(np.arange(fetched.num_rows))})
        joined = idx.join(found, keys=list(s.primary_key), join_type="left outer").sort_by("__row")
        at = joined.column("__found").combine_chunks()
        lost = need & ~at.is_valid().to_numpy(zero_copy_only=False)
        out = list(batch.columns)
        rows_now = np.arange(batch.num_rows)
        for i, m in masks.items():
            refetched = fetched.column(s.schema.field(i).name).take(at).combine_chunks()
            # row r's value: refetched[r] where it was left out, else its own (a `take` from both)
            both = pa.concat_arrays([out[i], refetched.cast(out[i].type)])
            out[i] = both.take(pa.array(np.where(m, rows_now + batch.num_rows, rows_now)))
        result = pa.RecordBatch.from_arrays(out, schema=batch.schema)
        return result.filter(pa.array(~lost)) if lost.any() else result


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

"""What the SQL sources share: discovery into streams, keyset queries, ``full`` and ``cursor`` reads.

A dialect subclass (:mod:`.postgres`, :mod:`.mysql`, :mod:`.sqlite`) supplies the catalog
(:meth:`SQLSource._tables`), identifier quoting, how a value is bound in a ``WHERE`` clause,
and a bulk reader that streams a query's rows as Arrow batches. Everything else is here.

Positions (JSON; the resume rule of :mod:`replicant.sources.base` holds for each)::

    full, keyed     {"mode": "full", "snapshot": ID, "after": [last key values]}
    full, unkeyed   {"mode": "full", "snapshot": ID, "rows": N}          resumable=False
    full, finished  {"mode": "full", "snapshot": ID, "done": true}       on the final, empty batch
    cursor          {"mode": "cursor", "cursor": MAX, "after": [key at MAX],
                     "seen": {"cursor": [...], "keys": [[...], ...]}}     seen: with a look-back

``full`` reads the table in key order, in chunks of ``chunk_size`` rows
(``WHERE (k1, k2) > (:a, :b) ORDER BY k1, k2 LIMIT n``), each streamed in batches of
``batch_size``; resuming from ``after`` continues inside the chunk where it stopped. The
snapshot ends with an empty batch marked ``final`` (no batch is held back to learn which
one is last: one batch less in memory). Reading from a ``done`` position (or None) starts
a new snapshot. A table whose key is missing or nullable is read in one unchunked query
whose positions cannot be resumed.

``cursor`` reads rows in ``(cursor, key)`` order after the position. With a look-back, a
new read starts at ``MAX - lookback`` so rows committed late with an older cursor value are
caught, and rows re-read unchanged (same key, same cursor value, recorded in ``seen``) are
not emitted again; a row whose cursor value changed is. ``seen`` holds the rows emitted
inside the look-back window, at most ``lookback_max_keys`` (default 100,000) of the newest.
Rows are emitted with ``_op = "update"``: a cursor read cannot tell a new row from a changed
one, so destinations merge them by key. Rows whose cursor is NULL are never read. The
``_pos`` column holds the position without ``seen``.

Values in positions are JSON-safe (:func:`replicant.sources.types.encode_value`) and are
always handed back to the database as parameters of the column's own type.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from replicant.config import SourceConfig, normalize_url
from replicant.errors import ConfigError, FatalError
from replicant.model import (
    ConnectorContext,
    DIALECT_KEY,
    OP_READ,
    OP_DELETE,
    OP_UPDATE,
    Position,
    Stream,
    encode_position,
    utcnow,
    with_meta,
)
from replicant.sources.base import Capabilities, ReadBatch, Source
from replicant.sources.types import (
    Column,
    decode_value,
    encode_column,
    encode_value,
    is_keyable,
)

__all__ = ["SQLSource", "Table"]

_DEFAULT_SEEN_MAX = 100_000


@dataclass
class Table:
    """A table (or view) as the catalog describes it.

    Attributes:
        table: the name parts, unquoted: ``(schema, name)``.
        kind: ``table``, ``partitioned`` (PostgreSQL parent), ``partition``, ``view`` or
            ``foreign`` (PostgreSQL foreign table).
        options: extra facts for ``Stream.options`` (``readable: False`` without SELECT).
        columns: in table order.
        primary_key: key column names in key order; empty without a primary key.
    """

    table: tuple[str, ...]
    kind: str
    columns: list[Column]
    primary_key: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Plan:
    """How one stream is read: its table, columns and the target schema."""

    stream: Stream
    columns: list[Column]  # in stream.schema order
    by_name: dict[str, Column]

    def cols(self, names: tuple[str, ...] | list[str]) -> list[Column]:
        return [self.by_name[n] for n in names]


class SQLSource(Source):
    """Base of the SQL sources. Subclasses implement the ``_`` hooks below; nothing connects
    before :meth:`discover` or :meth:`read`."""

    capabilities = Capabilities(modes=frozenset({"full", "cursor", "snapshot_diff", "trigger"}), chunked=True)
    #: SQLAlchemy dialect name, also the schema's DIALECT_KEY metadata.
    dialect: ClassVar[str] = ""
    #: ``"module:Class"`` of this dialect's ``mode: log`` capture (a replication slot, a
    #: binlog reader), or None. The class takes the source and implements ``capture``,
    #: ``acknowledge``, ``install``, ``uninstall``, ``status`` and ``close`` like
    #: :class:`replicant.sources.base.Source` (see :mod:`replicant.cdc`).
    log_capture: ClassVar[str | None] = None
    #: Whether ``(a, b) > (x, y)`` uses the index (MariaDB: it does not; expand it).
    row_values: ClassVar[bool] = True

    def __init__(self, config: SourceConfig, context: ConnectorContext) -> None:
        if config.url is None:
            raise ConfigError("invalid source", [("source.url", f"a {config.type} source needs `url:`")])
        super().__init__(config, context)
        dialect, self._url = normalize_url(config.url.get_secret_value())
        if dialect != self.dialect:
            raise ConfigError("invalid source", [("source.url", f"a {config.type} source needs a {self.dialect} URL, not {dialect}")])

    # ------------------------------------------------------------------ dialect hooks

    def _tables(self, only: tuple[str, ...] | None = None) -> list[Table]:
        """The catalog: every readable table and view, or only the one named ``only``."""
        raise NotImplementedError

    def _default_schema(self) -> str:
        """The schema that bare table names refer to."""
        raise NotImplementedError

    def location(self) -> str:
        """Where this source reads, for messages: host, port, user and database (never a
        password)."""
        raise NotImplementedError

    def _connect(self) -> Any:
        """The open connection (opened on first use); ``ConnectionError`` saying why not."""
        raise NotImplementedError

    def quote(self, name: str) -> str:
        """``name`` as a quoted identifier of this dialect."""
        return '"' + name.replace('"', '""') + '"'

    def _bind(self, value: Any, column: Column, params: list[Any]) -> str:
        """SQL standing for ``value`` (a Python value of ``column``) in a WHERE clause; appends
        what the driver needs to ``params``."""
        raise NotImplementedError

    def _batches(self, sql: str, params: list[Any], plan: _Plan, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Runs ``sql`` and streams its rows as batches of ``plan.stream.schema`` (any size)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checks

    def check(self) -> list[str]:
        """See :meth:`Source.check`. Connects, reads the catalog, resolves the configured streams
        (a missing table or one without SELECT privilege is a ``ConfigError`` naming the
        stream's key path), and for ``mode: log`` streams checks the server and role (wal_level
        and REPLICATION; binlog settings)."""
        from replicant.sources.select import resolve_streams

        self._connect()
        streams = resolve_streams(self.config, self.discover())
        lines = [f"connected to {self.location()}", f"{len(streams)} stream(s) readable"]
        logged = [s for s in streams if s.mode == "log"]
        if logged:
            lines += self._log().check(logged)
        return lines

    # ------------------------------------------------------------------ discovery

    def discover(self) -> list[Stream]:
        """Every table and view, named like ``streams: all`` names them, in mode ``full``.

        ``Stream.options["kind"]`` tells tables, PostgreSQL partitioned parents and partitions,
        and views apart.
        """
        default = self._default_schema()
        return [self._stream(t, default) for t in self._tables()]

    def _stream(self, t: Table, default: str) -> Stream:
        schema = pa.schema([c.field() for c in t.columns], metadata={DIALECT_KEY: self.dialect.encode()})
        name = t.table[-1] if t.table[:-1] == (default,) else ".".join(t.table)
        return Stream(name=name, table=t.table, schema=schema, primary_key=t.primary_key,
                      options={"kind": t.kind, **t.options})

    def _display(self, table: tuple[str, ...]) -> str:
        return ".".join(self.quote(p) for p in table)

    def _plan(self, stream: Stream) -> _Plan:
        found = self._tables(only=stream.table)
        if not found:
            raise FatalError(
                f"table {self._display(stream.table)} does not exist (dropped or renamed?); "
                f"fix `table:` of stream {stream.name!r} or restore the table"
            )
        by_name = {c.name: c for c in found[0].columns}
        missing = [f.name for f in stream.schema if f.name not in by_name]
        if missing:
            raise FatalError(
                f"stream {stream.name!r}: column(s) {', '.join(map(repr, missing))} no longer exist in "
                f"{self._display(stream.table)}; exclude them or restore them"
            )
        return _Plan(stream, [by_name[f.name] for f in stream.schema], by_name)

    # ------------------------------------------------------------------ queries

    def _where(self, op: str, cols: list[Column], values: list[Any], params: list[Any]) -> str:
        """``(c1, c2) op (v1, v2)`` with ``op`` one of ``>``, ``>=``; index-friendly per dialect."""
        names = [f"t.{self.quote(c.name)}" for c in cols]
        if len(cols) == 1:
            return f"{names[0]} {op} {self._bind(values[0], cols[0], params)}"
        if self.row_values:
            binds = [self._bind(v, c, params) for v, c in zip(values, cols)]
            return f"({', '.join(names)}) {op} ({', '.join(binds)})"
        # k1 >= v1 AND (k1 > v1 OR (k1 = v1 AND k2 > v2) OR …): MariaDB ranges on k1
        ors = []
        for i in range(len(cols)):
            last_op = op if i == len(cols) - 1 else ">"
            terms = [f"{names[j]} = {self._bind(values[j], cols[j], params)}" for j in range(i)]
            terms.append(f"{names[i]} {last_op} {self._bind(values[i], cols[i], params)}")
            ors.append("(" + " AND ".join(terms) + ")")
        first = f"{names[0]} >= {self._bind(values[0], cols[0], params)}"
        return f"{first} AND ({' OR '.join(ors)})"

    def _query(self, plan: _Plan, where: list[str], order: list[Column], limit: int | None) -> str:
        sel = ", ".join(c.select.format(f"t.{self.quote(c.name)}") + f" AS {self.quote(c.name)}" for c in plan.columns)
        sql = f"SELECT {sel} FROM {self._display(plan.stream.table)} AS t"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if order:
            sql += " ORDER BY " + ", ".join(f"t.{self.quote(c.name)}" for c in order)
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return sql

    def _rebatched(self, sql: str, params: list[Any], plan: _Plan, size: int) -> Iterator[pa.RecordBatch]:
        """The query's rows in batches of exactly ``size`` rows (the last may be shorter)."""
        held: list[pa.RecordBatch] = []
        n = 0
        for b in self._batches(sql, params, plan, size):
            while b.num_rows:
                take = min(size - n, b.num_rows)
                held.append(b.slice(0, take))
                n += take
                b = b.slice(take)
                if n == size:
                    yield held[0] if len(held) == 1 else _concat(held)
                    held, n = [], 0
        if n:
            yield held[0] if len(held) == 1 else _concat(held)

    # ------------------------------------------------------------------ reading

    def read(self, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        """Reads ``stream`` after ``position`` (see the module docstring for the formats).

        Raises:
            FatalError: the table or a column is gone, a value does not fit its type, or the
                mode is not ``full``/``cursor``.
            ConnectionError: the database cannot be reached.
        """
        if stream.mode == "snapshot_diff":
            from replicant.cdc import snapshot_diff

            return snapshot_diff.read(self, stream, position)
        if stream.mode == "trigger":
            from replicant.cdc import triggers

            return triggers.read(self, stream, position)
        if stream.mode not in ("full", "cursor"):
            raise FatalError(f"stream {stream.name!r}: mode {stream.mode!r} is read by capture(), not read()")
        plan = self._plan(stream)
        if stream.mode == "full":
            return self._read_full(plan, position)
        return self._read_cursor(plan, position)

    # ------------------------------------------------------------------ change data capture

    def acknowledge(self, stream: Stream, position: Position) -> None:
        if stream.mode == "snapshot_diff":
            from replicant.cdc import snapshot_diff

            snapshot_diff.acknowledge(self, stream, position)
        elif stream.mode == "trigger":
            from replicant.cdc import triggers

            triggers.acknowledge(self, stream, position)

    def _log(self) -> Any:
        if self.log_capture is None:
            raise FatalError(f"a {self.config.type} source has no `mode: log`; use trigger, snapshot_diff or cursor")
        if getattr(self, "_log_capture_obj", None) is None:
            import importlib

            module, _, cls = self.log_capture.partition(":")
            self._log_capture_obj = getattr(importlib.import_module(module), cls)(self)
        return self._log_capture_obj

    def capture(self, streams, positions, *, resume, follow, stop):  # type: ignore[no-untyped-def]
        return self._log().capture(streams, positions, resume=resume, follow=follow, stop=stop)

    def acknowledge_capture(self, position: Position) -> None:
        self._log().acknowledge(position)

    def install(self, streams: list[Stream]) -> list[str]:
        from replicant.cdc import triggers

        done = triggers.install(self, [s for s in streams if s.mode == "trigger"])
        logged = [s for s in streams if s.mode == "log"]
        if logged:
            done += self._log().install(logged)
        return done

    def uninstall(self, streams: list[Stream]) -> list[str]:
        from replicant.cdc import triggers

        done = triggers.uninstall(self, [s for s in streams if s.mode == "trigger"])
        logged = [s for s in streams if s.mode == "log"]
        if logged or self.log_capture is not None:
            done += self._log().uninstall(logged)
        return done

    def cdc_status(self, streams: list[Stream]) -> dict[str, Any]:
        logged = [s for s in streams if s.mode == "log"]
        return self._log().status(logged) if logged else {}

    def _close_capture(self) -> None:
        obj = getattr(self, "_log_capture_obj", None)
        if obj is not None:
            self._log_capture_obj = None
            obj.close()

    def _key_values(self, batch: pa.RecordBatch, names: tuple[str, ...] | list[str], row: int = -1) -> list[Any]:
        i = row if row >= 0 else batch.num_rows + row
        return [_py(batch.column(n)[i], n) for n in names]

    def _empty(self, stream: Stream) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in stream.schema], schema=stream.schema)

    def _read_full(self, plan: _Plan, position: Position | None) -> Iterator[ReadBatch]:
        stream = plan.stream
        batch_size = int(stream.options.get("batch_size") or self.config.batch_size)
        chunk = int(stream.options.get("chunk_size") or self.config.chunk_size)
        keys = plan.cols(stream.primary_key)
        keyed = bool(keys) and all(not c.nullable and is_keyable(c.arrow) for c in keys)
        resume = position if position and position.get("mode") == "full" and not position.get("done") else None
        snapshot = str(resume["snapshot"]) if resume and resume.get("snapshot") else uuid.uuid4().hex[:16]
        after = resume.get("after") if resume and keyed else None
        done = {"mode": "full", "snapshot": snapshot, "done": True}

        def emit(batch: pa.RecordBatch, pos: Position, **kw: Any) -> ReadBatch:
            # each row's _pos names the key after its batch; the snapshot id stays in the log's
            # position only: the text is repeated on every row (a third of a narrow batch)
            row_pos = {k: v for k, v in pos.items() if k != "snapshot"}
            return ReadBatch(with_meta(batch, OP_READ, encode_position(row_pos), utcnow()), pos, **kw)

        if not keyed:
            sql = self._query(plan, [], [], None)
            rows = 0
            for b in self._rebatched(sql, [], plan, batch_size):
                rows += b.num_rows
                yield emit(b, {"mode": "full", "snapshot": snapshot, "rows": rows}, resumable=False)
            yield emit(self._empty(stream), done, final=True)
            return

        values = [decode_value(v, c.arrow) for v, c in zip(after, keys)] if after else None
        while True:
            params: list[Any] = []
            where = [self._where(">", keys, values, params)] if values else []
            sql = self._query(plan, where, keys, chunk)
            n, last = 0, None
            for b in self._rebatched(sql, params, plan, batch_size):
                n += b.num_rows
                last = b
                yield emit(b, self._after_pos(snapshot, b, keys))
            if last is None or n < chunk:  # the table ends in this chunk
                yield emit(self._empty(stream), done, final=True)
                return
            values = self._key_values(last, stream.primary_key)

    def _after_pos(self, snapshot: str, batch: pa.RecordBatch, keys: list[Column]) -> Position:
        last = self._key_values(batch, [c.name for c in keys])
        return {"mode": "full", "snapshot": snapshot, "after": [encode_value(v) for v in last]}

    def _read_cursor(self, plan: _Plan, position: Position | None) -> Iterator[ReadBatch]:
        stream = plan.stream
        batch_size = int(stream.options.get("batch_size") or self.config.batch_size)
        chunk = int(stream.options.get("chunk_size") or self.config.chunk_size)
        lookback = stream.options.get("lookback") or 0
        seen_max = int(stream.options.get("lookback_max_keys") or _DEFAULT_SEEN_MAX)
        cur_col = plan.by_name[stream.cursor]
        keys = plan.cols(stream.primary_key)
        order = [cur_col, *keys]
        state = _CursorState.load(position, cur_col, keys)

        cursor_sql = f"t.{self.quote(cur_col.name)}"
        where: list[str]
        params: list[Any] = []
        if state.max is None:
            where = [f"{cursor_sql} IS NOT NULL"]
        elif lookback:
            where = [self._where(">=", [cur_col], [_minus(state.max, lookback)], params)]
        else:
            where = [self._where(">", order, [state.max, *state.max_key], params)]
        while True:
            sql = self._query(plan, where, order, chunk)
            n, last = 0, None
            for b in self._rebatched(sql, params, plan, batch_size):
                n += b.num_rows
                last = b
                out = state.advance(b, stream, lookback, seen_max)
                if out.num_rows:
                    pos = state.position(with_seen=bool(lookback))
                    short = {k: v for k, v in pos.items() if k != "seen"}
                    changes = with_meta(out, OP_UPDATE, encode_position(short), utcnow())
                    if stream.options.get("soft_delete"):
                        changes = _soft_deletes(changes, stream.options["soft_delete"])
                    yield ReadBatch(changes, pos)
            if n < chunk or last is None:
                return
            params = []
            where = [self._where(">", order, self._key_values(last, [c.name for c in order]), params)]


def _soft_deletes(batch: pa.RecordBatch, column: str) -> pa.RecordBatch:
    """Rows whose soft-delete column is set (true, or any non-null value of another type)
    become deletes: ``_op`` is rewritten vectorised."""
    flag = batch.column(column)
    marked = pc.fill_null(flag, False) if pa.types.is_boolean(flag.type) else pc.is_valid(flag)
    i = batch.schema.get_field_index("_op")
    ops = pc.if_else(marked, pa.scalar(OP_DELETE, pa.string()), batch.column(i))
    return batch.set_column(i, batch.schema.field(i), ops)


def _py(scalar: pa.Scalar, name: str) -> Any:
    """A key or cursor value as Python; ±infinity (PostgreSQL) cannot order a keyset."""
    try:
        return scalar.as_py()
    except (OverflowError, ValueError):
        raise FatalError(
            f"key or cursor column {name!r} holds {scalar.cast(pa.int64()) if scalar.is_valid else scalar} "
            "(±infinity?), which cannot be kept in a position; choose another key or cursor column"
        ) from None


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def _minus(value: Any, lookback: float) -> Any:
    """``value - lookback``: seconds for dates and times, cursor units for numbers."""
    if isinstance(value, datetime):
        return value - timedelta(seconds=lookback)
    if isinstance(value, time):
        moved = datetime.combine(date(2000, 1, 2), value) - timedelta(seconds=lookback)
        return moved.time() if moved.date() == date(2000, 1, 2) else time(0)
    if isinstance(value, date):
        return value - timedelta(days=-(-lookback // 86400))
    if isinstance(value, Decimal):
        return value - Decimal(str(lookback))
    if isinstance(value, int) and isinstance(lookback, float) and not lookback.is_integer():
        return value - int(-(-lookback // 1))
    return value - type(value)(lookback)


class _CursorState:
    """The high-water mark of a cursor read, and the rows seen inside the look-back window."""

    def __init__(self, cur: Column, keys: list[Column]) -> None:
        self.cur, self.keys = cur, keys
        self.max: Any = None
        self.max_key: list[Any] = []
        self.seen: pa.Table | None = None  # columns c, k0, k1…

    @classmethod
    def load(cls, position: Position | None, cur: Column, keys: list[Column]) -> _CursorState:
        st = cls(cur, keys)
        if position and position.get("mode") == "cursor" and position.get("cursor") is not None:
            st.max = decode_value(position["cursor"], cur.arrow)
            st.max_key = [decode_value(v, c.arrow) for v, c in zip(position.get("after") or [], keys)]
            seen = position.get("seen")
            if seen and seen.get("cursor"):
                cols = {"c": pa.array([decode_value(v, cur.arrow) for v in seen["cursor"]], cur.arrow)}
                for i, (vals, c) in enumerate(zip(seen["keys"], keys)):
                    cols[f"k{i}"] = pa.array([decode_value(v, c.arrow) for v in vals], c.arrow)
                st.seen = pa.table(cols)
        return st

    def _keyed(self, batch: pa.RecordBatch) -> pa.Table:
        cols = {"c": batch.column(self.cur.name)}
        for i, c in enumerate(self.keys):
            cols[f"k{i}"] = batch.column(c.name)
        return pa.table(cols)

    def advance(self, batch: pa.RecordBatch, stream: Stream, lookback: float, seen_max: int) -> pa.RecordBatch:
        """Takes a batch read in (cursor, key) order; returns its rows not emitted before."""
        out = batch
        if lookback and self.seen is not None and self.seen.num_rows:
            keyed = self._keyed(batch).append_column("__row", pa.array(range(batch.num_rows), pa.int64()))
            fresh = keyed.join(self.seen, keys=list(self.seen.column_names), join_type="left anti")
            rows = fresh.column("__row").combine_chunks().sort() if fresh.num_rows else pa.array([], pa.int64())
            if len(rows) != batch.num_rows:
                out = batch.take(rows)
        if batch.num_rows:
            last_c = _py(batch.column(self.cur.name)[-1], self.cur.name)
            # without a look-back every batch lies after the last (database order); with one,
            # re-read rows may lie before the high-water mark (cursor is a number or a time)
            if not lookback or self.max is None or last_c >= self.max:
                self.max = last_c
                self.max_key = [_py(batch.column(c.name)[-1], c.name) for c in self.keys]
        if lookback and out.num_rows:
            new = self._keyed(out)
            self.seen = new if self.seen is None else pa.concat_tables([self.seen, new])
            floor = _minus(self.max, lookback)
            self.seen = self.seen.filter(pc.greater_equal(self.seen.column("c"), pa.scalar(floor, self.cur.arrow)))
            if self.seen.num_rows > seen_max:
                self.seen = self.seen.sort_by("c").slice(self.seen.num_rows - seen_max)
        return out

    def position(self, *, with_seen: bool) -> Position:
        pos: Position = {
            "mode": "cursor",
            "cursor": encode_value(self.max),
            "after": [encode_value(v) for v in self.max_key],
        }
        if with_seen and self.seen is not None:
            pos["seen"] = {
                "cursor": encode_column(self.seen.column("c")),
                "keys": [encode_column(self.seen.column(f"k{i}")) for i in range(len(self.keys))],
            }
        return pos

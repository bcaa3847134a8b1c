"""What the SQL sources share: discovery into streams and the read strategies' protocols.

A dialect subclass (:mod:`.postgres`, :mod:`.mysql`, :mod:`.sqlite`) supplies the catalog
(:meth:`SQLSource._tables`), identifier quoting, how a value is bound in a ``WHERE`` clause,
and a bulk reader that streams a query's rows as Arrow batches. On top, this class
implements the protocols the read strategies need
(:class:`~replicant.sources.strategies.RangeReader`:
keyset range reads; :class:`~replicant.sources.strategies.TriggerSource`: plain SQL and the
catalog's columns); the strategies themselves (``full``, ``cursor``, ``snapshot_diff``,
``trigger``) live in :mod:`replicant.sources.strategies`, and ``mode: log`` in each dialect's
package (:attr:`SQLSource.log_capture`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from replicant.config import SourceConfig, normalize_url
from replicant.errors import ConfigError, FatalError
from replicant.model import (
    DIALECT_KEY,
    ConnectorContext,
    Position,
    Stream,
)
from replicant.sources.base import Capabilities, Source
from replicant.sources.types import Column

if TYPE_CHECKING:
    from replicant.sources.strategies.trigger_sql import TriggerSQL

__all__ = ["Plan", "SQLSource", "Table"]


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
class Plan:
    """How one stream is read: its table, columns and the target schema."""

    stream: Stream
    columns: list[Column]  # in stream.schema order
    by_name: dict[str, Column]

    def cols(self, names: tuple[str, ...] | list[str]) -> list[Column]:
        return [self.by_name[n] for n in names]


class SQLSource(Source):
    """Base of the SQL sources. Subclasses implement the ``_`` hooks below (and
    :meth:`location`, :meth:`trigger_sql`); nothing connects before :meth:`discover`,
    :meth:`check` or :meth:`read`."""

    capabilities = Capabilities(modes=frozenset({"full", "cursor", "snapshot_diff", "trigger"}), chunked=True)
    #: SQLAlchemy dialect name, also the schema's DIALECT_KEY metadata.
    dialect: ClassVar[str] = ""
    #: ``"module:Class"`` of this dialect's ``mode: log`` capture (a replication slot, a
    #: binlog reader), or None. The class takes the source and implements ``capture``,
    #: ``acknowledge``, ``install``, ``uninstall``, ``status`` and ``close`` like
    #: :class:`replicant.sources.base.Source`.
    log_capture: ClassVar[str | None] = None
    #: Whether ``(a, b) > (x, y)`` uses the index (MariaDB: it does not; expand it).
    row_values: ClassVar[bool] = True

    @classmethod
    def resolve_config(cls, config: SourceConfig, *, base_dir: Path) -> SourceConfig:
        """A SQL source needs a supported ``url:`` (checked here, with its key path)."""
        if config.url is None:
            raise ConfigError("invalid pipeline file", [("source.url", f"a {config.type} source needs `url:`")])
        try:
            normalize_url(config.url.get_secret_value())
        except ConfigError as e:
            raise ConfigError("invalid pipeline file", [("source." + k, m) for k, m in e.problems]) from None
        return config

    def __init__(self, config: SourceConfig, context: ConnectorContext) -> None:
        if config.url is None:
            raise ConfigError("invalid source", [("source.url", f"a {config.type} source needs `url:`")])
        super().__init__(config, context)
        dialect, _ = normalize_url(config.url.get_secret_value())
        self._secret_url = config.url
        #: Seconds to connect and log in (``source.connect_timeout``).
        self.connect_timeout = float(config.connect_timeout)
        if dialect != self.dialect:
            raise ConfigError("invalid source", [("source.url", f"a {config.type} source needs a {self.dialect} URL, not {dialect}")])

    @property
    def _url(self) -> str:
        """The URL with its references resolved now: each connection (a reconnect too) sees
        the secret's current value, so a changed or re-encrypted secret needs no restart."""
        assert self._secret_url is not None
        return normalize_url(self._secret_url.get_secret_value())[1]

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

    def _batches(self, sql: str, params: list[Any], plan: Plan, batch_size: int) -> Iterator[pa.RecordBatch]:
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

    def display(self, table: tuple[str, ...]) -> str:
        return ".".join(self.quote(p) for p in table)

    def _plan(self, stream: Stream) -> Plan:
        found = self._tables(only=stream.table)
        if not found:
            raise FatalError(
                f"table {self.display(stream.table)} does not exist (dropped or renamed?); "
                f"fix `table:` of stream {stream.name!r} or restore the table"
            )
        by_name = {c.name: c for c in found[0].columns}
        missing = [f.name for f in stream.schema if f.name not in by_name]
        if missing:
            raise FatalError(
                f"stream {stream.name!r}: column(s) {', '.join(map(repr, missing))} no longer exist in "
                f"{self.display(stream.table)} (dropped or renamed during the run); run again: each run "
                "reads the table's columns anew"
            )
        return Plan(stream, [by_name[f.name] for f in stream.schema], by_name)

    # ------------------------------------------------------------------ queries

    def where_after(self, op: str, cols: list[Column], values: list[Any], params: list[Any]) -> str:
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

    def _query(self, plan: Plan, where: list[str], order: list[Column], limit: int | None) -> str:
        sel = ", ".join(c.select.format(f"t.{self.quote(c.name)}") + f" AS {self.quote(c.name)}" for c in plan.columns)
        sql = f"SELECT {sel} FROM {self.display(plan.stream.table)} AS t"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if order:
            sql += " ORDER BY " + ", ".join(f"t.{self.quote(c.name)}" for c in order)
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return sql

    def _rebatched(self, sql: str, params: list[Any], plan: Plan, size: int) -> Iterator[pa.RecordBatch]:
        """The query's rows in batches of at most ``size`` rows, copying as little as it can.

        The driver's batches are cut into slices of ``size`` rows, and smaller ones gathered
        (one copy) while the next fits. Where a batch would overflow a gathered batch already
        half full or more, that one goes out shorter instead of being topped up with a copy of
        a slice of the next:
        PostgreSQL's ~42,000-row COPY batches of narrow rows become records of 25,000 and
        17,000 rows, without the copy of every second record (a tenth of the page faults of a
        PG→DuckDB run). The strategies rely on row counts, never on a batch's size.
        """
        held: list[pa.RecordBatch] = []
        n = 0
        for b in self._batches(sql, params, plan, size):
            while b.num_rows:
                if n and n + b.num_rows > size and n >= size // 2:
                    yield _joined(held)
                    held, n = [], 0
                    continue
                take = min(size - n, b.num_rows)
                held.append(b.slice(0, take))
                n += take
                b = b.slice(take)
                if n == size:
                    yield _joined(held)
                    held, n = [], 0
        if n:
            yield _joined(held)

    # ------------------------------------------------------------------ the strategies' protocols

    def read_range(
        self,
        stream: Stream,
        order: Sequence[str],
        *,
        after: Sequence[Any] | None = None,
        inclusive: bool = False,
        limit: int | None = None,
        batch_size: int,
    ) -> Iterator[pa.RecordBatch]:
        """See :class:`replicant.sources.strategies.RangeReader`."""
        plan = self._plan(stream)
        cols = plan.cols(list(order))
        params: list[Any] = []
        where: list[str] = []
        if after:
            where.append(self.where_after(">=" if inclusive else ">", cols[: len(after)], list(after), params))
        elif cols and cols[0].nullable:
            where.append(f"t.{self.quote(cols[0].name)} IS NOT NULL")
        return self._rebatched(self._query(plan, where, cols, limit), params, plan, batch_size)

    def columns(self, stream: Stream) -> list[Column]:
        """See :class:`replicant.sources.strategies.TriggerSource`."""
        return self._plan(stream).columns

    def query_batches(self, stream: Stream, sql: str, columns: list[Column], batch_size: int,
                      params: Sequence[Any] = ()) -> Iterator[pa.RecordBatch]:
        """See :class:`replicant.sources.strategies.TriggerSource`. ``params`` are bound the way
        this dialect's ``where_after`` bound them."""
        same = [f.name for f in stream.schema] == [c.name for c in columns]
        schema = stream.schema if same else pa.schema([c.field() for c in columns])
        plan = Plan(replace(stream, schema=schema), columns, {c.name: c for c in columns})
        return self._rebatched(sql, list(params), plan, batch_size)

    def select_sql(self, stream: Stream, columns: list[Column], where: list[str]) -> str:
        """``SELECT`` of ``columns`` (each with its read expression) from ``stream``'s table,
        aliased ``t``, with the ``AND`` of ``where``."""
        return self._query(Plan(stream, columns, {c.name: c for c in columns}), where, [], None)

    def catalog(self, table: tuple[str, ...]) -> Table | None:
        """The catalog's description of one table now, or None when it is gone."""
        found = self._tables(only=table)
        return found[0] if found else None

    def describe(self, table: Table) -> Stream:
        """``table`` as a stream, named the way discovery names it."""
        return self._stream(table, self._default_schema())

    def trigger_sql(self, stream: Stream) -> TriggerSQL:
        """This dialect's shadow table and triggers of ``stream`` (``mode: trigger``)."""
        raise FatalError(f"stream {stream.name!r}: a {self.config.type} source has no `mode: trigger`")

    # ------------------------------------------------------------------ change data capture

    def _log(self) -> Any:
        if self.log_capture is None:
            raise FatalError(f"a {self.config.type} source has no `mode: log`; use trigger, snapshot_diff or cursor")
        if getattr(self, "_log_capture_obj", None) is None:
            import importlib

            module, _, cls = self.log_capture.partition(":")
            self._log_capture_obj = getattr(importlib.import_module(module), cls)(self)
        return self._log_capture_obj

    def capture(self, streams, positions, *, resume, follow, stop):
        return self._log().capture(streams, positions, resume=resume, follow=follow, stop=stop)

    def acknowledge_capture(self, position: Position) -> None:
        self._log().acknowledge(position)

    def current_position(self, stream: Stream) -> Position | None:
        if stream.mode == "log" and self.log_capture is not None:
            return self._log().current_position()
        if stream.mode == "trigger":
            from replicant.sources.strategies import trigger

            return trigger.current_position(self, stream)
        return None

    def install(self, streams: list[Stream]) -> list[str]:
        from replicant.sources.strategies import trigger

        done = trigger.install(self, [s for s in streams if s.mode == "trigger"])
        logged = [s for s in streams if s.mode == "log"]
        if logged:
            done += self._log().install(logged)
        return done

    def uninstall(self, streams: list[Stream]) -> list[str]:
        from replicant.sources.strategies import trigger

        done = trigger.uninstall(self, [s for s in streams if s.mode == "trigger"])
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


def _joined(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One batch of ``batches``: the only one as it is, several copied together."""
    return batches[0] if len(batches) == 1 else _concat(batches)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]

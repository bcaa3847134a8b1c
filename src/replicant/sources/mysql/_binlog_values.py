"""Binlog coordinates, value conversion and row-event decoding for
:class:`~replicant.sources.mysql.binlog.BinlogCapture` (moved out of :mod:`replicant.sources.mysql.binlog`,
whose docstring describes the whole capture and its values).

- ``_key``/``_coord``/``_min``: binlog coordinates ``{"file", "pos"}`` and their order.
- ``_converter``: one value as ``mysql-replication`` decodes it → the Python value of the
  Arrow type a ``full`` read gives (character sets, unsigned integers, ``BIT``, ``SET``,
  ``BINARY(n)``, ``TIMESTAMP``, ``TIME``, geometry).
- :class:`_Table`: one captured stream's state (schema, catalog columns, pending rows) and
  its pending rows → Arrow.
- :class:`_Decoding`, a mixin of :class:`~replicant.sources.mysql.binlog.BinlogCapture`: the table map
  told what the binlog leaves out (``_map_columns``), row events → rows (``_rows``; an update
  that changes the key becomes a delete and an insert), a table's columns re-read after DDL
  (``_reshape``) and statement-based DML refused (``_statement``).
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from replicant.errors import FatalError
from replicant.model import OP_DELETE, OP_INSERT, OP_UPDATE, Position, Stream
from replicant.sources.types import Column

log = logging.getLogger("replicant.sources.mysql.binlog")  # the capture's logger

#: binlog field types whose bytes the decoder would decode itself: we take the bytes.
_STRING_FIELDS = {15, 249, 250, 251, 252, 253, 254}  # VARCHAR, *BLOB, VAR_STRING, STRING
_ENUM, _SET = 247, 248
_INT_BITS = {"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "integer": 32, "bigint": 64}
_LABEL = re.compile(r"'((?:[^']|'')*)'")
_LENGTH = re.compile(r"^\w+\((\d+)\)")
_DML = re.compile(r"^\s*(?:/\*.*?\*/\s*)*(INSERT|UPDATE|DELETE|REPLACE|LOAD)\b", re.IGNORECASE | re.DOTALL)
#: MySQL character set → Python codec (the rest: the same name, if Python knows it).
_CODECS = {
    "utf8mb4": "utf-8", "utf8mb3": "utf-8", "utf8": "utf-8", "latin1": "cp1252", "latin2": "iso8859-2",
    "ucs2": "utf-16-be", "utf16": "utf-16-be", "utf16le": "utf-16-le", "utf32": "utf-32-be",
    "greek": "iso8859-7", "hebrew": "iso8859-8", "latin5": "iso8859-9", "latin7": "iso8859-13",
    "sjis": "shift_jis", "ujis": "euc_jp", "eucjpms": "euc_jp", "euckr": "euc_kr", "koi8r": "koi8_r",
    "koi8u": "koi8_u", "tis620": "tis-620", "armscii8": "utf-8", "swe7": "utf-8", "keybcs2": "utf-8",
    "dec8": "utf-8", "hp8": "utf-8", "geostd8": "utf-8",
}


def _key(pos: Position) -> tuple[int, int]:
    """A binlog coordinate as something that orders: (file number, byte offset)."""
    name = str(pos["file"])
    suffix = name.rsplit(".", 1)[-1]
    return (int(suffix) if suffix.isdigit() else 0, int(pos["pos"]))


def _coord(pos: Position) -> Position:
    return {"file": str(pos["file"]), "pos": int(pos["pos"])}


def _min(a: Position | None, b: Position | None) -> Position | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if _key(a) <= _key(b) else b


def _labels(sql_type: str) -> list[str]:
    """The labels of ``enum('a','b c')``/``set(...)`` as COLUMN_TYPE writes them."""
    inner = sql_type[sql_type.find("(") + 1: sql_type.rfind(")")]
    return [m.replace("''", "'") for m in _LABEL.findall(inner)]


def _data_type(col: Column) -> str:
    return re.split(r"[\s(]", col.sql_type.strip().lower(), maxsplit=1)[0]


def _codec(charset: str | None) -> str:
    name = (charset or "utf8mb4").lower()
    codec = _CODECS.get(name, name)
    try:
        codecs.lookup(codec)
    except LookupError:
        return "utf-8"
    return codec


# ---------------------------------------------------------------------------- value conversion


def _converter(col: Column) -> Callable[[Any], Any] | None:
    """Turns one value as ``mysql-replication`` decodes it into the Python value of the Arrow
    type a ``full`` read gives (None: the value is right as it is)."""
    t, dt = col.arrow, _data_type(col)
    if pa.types.is_unsigned_integer(t) and dt in _INT_BITS:
        wrap = 1 << _INT_BITS[dt]
        return lambda v: v + wrap if v is not None and v < 0 else v
    if dt == "bit":
        if pa.types.is_boolean(t):
            return lambda v: None if v is None else int(v, 2) != 0
        return lambda v: None if v is None else int(v, 2)
    if dt == "year":
        return lambda v: 0 if v == 1900 else v  # YEAR 0000 is byte 0, which the decoder reads as 1900
    if pa.types.is_timestamp(t) and t.tz:
        return lambda v: None if v is None or v == datetime(1970, 1, 1) else v.replace(tzinfo=UTC)
    if pa.types.is_time(t):
        def time_us(v: Any) -> Any:
            if v is None:
                return None
            us = (v.days * 86_400 + v.seconds) * 1_000_000 + v.microseconds
            if not 0 <= us < 86_400_000_000:
                raise ValueError(f"column {col.name!r}: {v} is not a time of day (a TIME beyond 00:00..24:00)")
            return us
        return time_us
    if pa.types.is_binary(t):
        m = _LENGTH.match(col.sql_type.strip().lower())
        if dt == "binary" and m:  # BINARY(n): the binlog strips the trailing zero bytes
            n = int(m[1])
            return lambda v: None if v is None else bytes(v).ljust(n, b"\x00")
        if dt in ("geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
                  "multipolygon", "geometrycollection", "geomcollection"):
            return lambda v: None if v is None else bytes(v)[4:]  # SRID + WKB → WKB (ST_AsBinary)
        return lambda v: v.encode("utf-8") if isinstance(v, str) else v
    if pa.types.is_string(t):
        codec = _codec(col.charset)
        if dt == "set":
            return lambda v: v if v is None or isinstance(v, str) else ",".join(sorted(v, key=_set_order(col)))

        def text(v: Any) -> Any:
            if isinstance(v, (bytes, bytearray)):
                return bytes(v).decode(codec)
            if isinstance(v, (dict, list, int, float, bool)):  # MySQL binary JSON
                return json.dumps(v, ensure_ascii=False)
            if v is not None and not isinstance(v, str):
                return str(v)
            return v
        return text
    return None


def _set_order(col: Column) -> Callable[[str], int]:
    order = {label: i for i, label in enumerate(_labels(col.sql_type))}
    return lambda label: order.get(label, len(order))


# ---------------------------------------------------------------------------- per stream state


@dataclass
class _Table:
    """One captured stream: its current schema, its columns in the table, pending rows."""

    stream: Stream
    catalog: list[Column]  # the table's columns, in table order
    excluded: frozenset[str]  # columns the stream leaves out on purpose
    filter: Position | None  # changes at or before this coordinate are in the log already
    fixes: list[Callable[[Any], Any] | None] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)  # committed, not yet yielded: data values
    ops: list[str] = field(default_factory=list)
    pos: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    widths_seen: set[int] = field(default_factory=set)
    after: list[Any] | None = None  # snapshot: the last key read before a crash ([] unkeyed)
    truncate: bool = False  # snapshot again from scratch: a truncate marker first

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        by_name = {c.name: c for c in self.catalog}
        self.columns = [by_name.get(f.name) for f in self.stream.schema]
        self.fixes = [_converter(c) if c is not None else None for c in self.columns]
        self.names = [f.name for f in self.stream.schema]

    def clear(self) -> None:
        self.rows, self.ops, self.pos, self.ts = [], [], [], []

    def batch(self) -> pa.RecordBatch:
        schema = self.stream.change_schema
        n = len(self.rows)
        cols = list(zip(*self.rows)) if n else [() for _ in self.names]
        arrays = []
        for f, values, fix in zip(self.stream.schema, cols, self.fixes):
            try:
                if fix is not None:
                    values = [fix(v) for v in values]
                if pa.types.is_time(f.type):
                    arrays.append(pa.array(values, pa.int64()).cast(f.type))
                else:
                    arrays.append(pa.array(values, f.type))
            except (ValueError, TypeError, OverflowError, pa.ArrowException) as e:
                raise FatalError(
                    f"stream {self.stream.name!r}: column {f.name!r}: cannot read a binlog value as {f.type}: {e}"
                ) from None
        arrays.append(pa.array(self.ops, pa.string()))
        arrays.append(pa.array(self.pos, pa.string()))
        arrays.append(pa.array(self.ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)


class _Decoding:
    """The decoding methods of :class:`~replicant.sources.mysql.binlog.BinlogCapture` (uses its
    ``source``)."""

    source: Any

    def _statement(self, ev: Any, tables: dict[tuple[str, str], _Table]) -> None:
        """A DML statement in the binlog (statement-based logging in some session) on a
        captured table cannot be decoded into rows: stop rather than lose it."""
        if not _DML.match(ev.query):
            return
        low = ev.query.lower()
        for t in tables.values():
            if t.stream.table[-1].lower() in low:
                raise FatalError(
                    f"stream {t.stream.name!r}: the binlog holds a statement instead of rows ({ev.query[:80]!r}); "
                    "a session wrote with binlog_format=STATEMENT/MIXED: set binlog_format=ROW globally and "
                    "restart the stream from a new snapshot"
                )

    def _reshape(self, t: _Table) -> Stream | None:
        """The stream with the table's current columns, or None when unchanged (or gone)."""
        found = self.source.catalog(t.stream.table)
        if found is None:
            return None
        t.catalog = found.columns
        t.widths_seen.clear()
        fields = [c.field() for c in t.catalog if c.name not in t.excluded]
        schema = pa.schema(fields, metadata=t.stream.schema.metadata)
        if schema.equals(t.stream.schema, check_metadata=True):
            t.refresh()
            return None
        return replace(t.stream, schema=schema)

    def _map_columns(self, t: _Table, ev: Any) -> None:
        """Tells the decoder what the binlog's table map leaves out (without
        ``binlog_row_metadata=FULL``): names, signedness, enum and set labels; and to hand
        strings over as bytes (decoded here in the column's character set)."""
        cols = ev.columns
        named = all(c.name for c in cols)
        if not named and len(cols) != len(t.catalog) and len(cols) not in t.widths_seen:
            t.widths_seen.add(len(cols))
            changed = self._reshape(t)  # a DDL the capture has not seen (it predates its start)
            if changed is not None:
                log.info("stream %s: table columns changed outside the captured binlog", t.stream.name)
        by_name = {c.name: c for c in t.catalog}
        if named:
            mine = [by_name.get(c.name) for c in cols]
        elif len(cols) <= len(t.catalog):
            mine = list(t.catalog[: len(cols)])  # columns added since were appended (the usual ALTER … ADD)
        else:
            raise FatalError(
                f"stream {t.stream.name!r}: the binlog has {len(cols)} columns for {self.source.display(t.stream.table)}, "
                f"the table {len(t.catalog)}; set binlog_row_metadata=FULL so columns are matched by name, "
                "and restart the stream from a new snapshot"
            )
        for c, m in zip(cols, mine):
            if c.type in _STRING_FIELDS:
                c.character_set_name = "binary"  # bytes: decoded by _converter in the column's charset
            if m is None:
                continue
            if not c.name:
                c.name = m.name
            if pa.types.is_unsigned_integer(m.arrow):
                c.unsigned = True
            if c.type == _ENUM and not c.enum_values:
                c.enum_values = [""] + _labels(m.sql_type)
            if c.type == _SET and not c.set_values:
                c.set_values = _labels(m.sql_type)

    def _rows(self, t: _Table, ev: Any) -> Iterator[tuple[_Table, str, tuple, int]]:
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent

        ts = int(ev.timestamp) * 1_000_000
        names = t.names
        sets = {c.name for c in t.columns if c is not None and _data_type(c) == "set"}
        keys = t.stream.primary_key

        def values(image: dict[str, Any], nones: dict[str, Any]) -> tuple:
            if sets:
                image = {k: ("" if v is None and k in sets and nones.get(k) == "empty set" else v)
                         for k, v in image.items()}
            return tuple(image.get(n) for n in names)

        for row in ev.rows:
            if isinstance(ev, UpdateRowsEvent):
                before, after = row["before_values"], row["after_values"]
                if keys and any(before.get(k) != after.get(k) for k in keys):
                    yield t, OP_DELETE, values(before, row["before_none_sources"]), ts
                    yield t, OP_INSERT, values(after, row["after_none_sources"]), ts
                else:
                    yield t, OP_UPDATE, values(after, row["after_none_sources"]), ts
            elif isinstance(ev, DeleteRowsEvent):
                yield t, OP_DELETE, values(row["values"], row["none_sources"]), ts
            else:
                yield t, OP_INSERT, values(row["values"], row["none_sources"]), ts

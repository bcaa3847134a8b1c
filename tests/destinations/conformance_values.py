"""Value checks of the destination conformance suite: every Arrow type round-trips, strings
and bytes that break loaders, and a slice of real data (Chinook), read back through a second
connection. :mod:`.conformance` holds the harness and the write-mode checks."""

from __future__ import annotations

import base64
import datetime as dt
import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa

from replicant.model import SQL_TYPE_KEY

from .conformance import Harness, changes, make_stream, opened

TYPES = [
    pa.field("id", pa.int64()),
    pa.field("i8", pa.int8()),
    pa.field("i32", pa.int32()),
    pa.field("f", pa.float64()),
    pa.field("dec", pa.decimal128(12, 2)),
    pa.field("s", pa.string()),
    pa.field("b", pa.bool_()),
    pa.field("d", pa.date32()),
    pa.field("ts", pa.timestamp("us", tz="UTC")),
    pa.field("bin", pa.binary()),
]
TYPE_ROWS = [
    {"id": 1, "i8": 7, "i32": 42, "f": 0.5, "dec": Decimal("12.30"), "s": "plain", "b": True,
     "d": date(2024, 1, 2), "ts": datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "bin": b"\x00\x01\xff"},
    {"id": 2, "i8": None, "i32": None, "f": None, "dec": None, "s": None, "b": None, "d": None, "ts": None, "bin": None},
    {"id": 3, "i8": -128, "i32": 2**31 - 1, "f": -1e300, "dec": Decimal("-9999999999.99"), "s": "", "b": False,
     "d": date(1970, 1, 1), "ts": datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "bin": b""},
    {"id": 4, "i8": 127, "i32": -(2**31), "f": 1.25e-7, "dec": Decimal("0.01"), "s": 'q "double" \'single\' \\ back\nline\ttab',
     "b": True, "d": date(2038, 1, 19), "ts": datetime(2038, 1, 19, 3, 14, 7, tzinfo=UTC), "bin": b"'\"\\\n"},
    {"id": 5, "i8": 0, "i32": 0, "f": 0.0, "dec": Decimal("0.00"), "s": "NULL", "b": False, "d": date(2000, 2, 29),
     "ts": datetime(2000, 2, 29, 12, 0, tzinfo=UTC), "bin": b"NULL"},
    {"id": 6, "i8": 1, "i32": 1, "f": 3.0, "dec": Decimal("1.00"), "s": "ünïcødé ✓ 漢字 🙂", "b": True, "d": date(2024, 12, 31),
     "ts": datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), "bin": "✓".encode()},
]


def _canon(value: Any, t: pa.DataType) -> Any:
    """One comparable form of a value read back, whatever the reader returns (a driver's
    native value, SQLite's text, JSON's strings and numbers)."""
    if value is None:
        return None
    if pa.types.is_boolean(t):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "t")
    if pa.types.is_integer(t):
        return int(value)
    if pa.types.is_floating(t):
        return float(value)
    if pa.types.is_decimal(t):
        return Decimal(str(value)).quantize(Decimal(1).scaleb(-t.scale))
    if pa.types.is_date(t):
        if isinstance(value, datetime):
            return value.date()
        return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
    if pa.types.is_binary(t):
        return bytes(value) if not isinstance(value, str) else base64.b64decode(value)  # JSON carries base64
    if pa.types.is_timestamp(t):
        if not isinstance(value, datetime):
            value = datetime.fromisoformat(str(value))  # ISO 8601, "Z" included (3.11+)
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return str(value)


def check_types_round_trip(h: Harness) -> None:
    """Integers at their limits, floats, exact decimals, strings with quotes, backslashes,
    control characters and unicode, ``""`` apart from NULL and from the text ``NULL``,
    booleans, dates, UTC timestamps with microseconds and binary (NUL, quotes, empty): read
    back equal."""
    s = make_stream("types", TYPES)
    d = opened(h, "append")
    try:
        d.prepare(s)
        d.write(s, changes(s, TYPE_ROWS, "insert"), last_offset=5)
        if d.capabilities.transactional:
            assert d.applied_offset(s) == 5
    finally:
        d.close()
    got = h.rows("types")
    assert got is not None
    canon = sorted(tuple(_canon(v, f.type) for v, f in zip(row, TYPES)) for row in got)
    want = sorted(tuple(_canon(r[f.name], f.type) for f in TYPES) for r in TYPE_ROWS)
    assert canon == want


TRICKY_STRINGS = [
    None,
    "",
    "NULL",
    "\\N",
    "back\\slash",
    "ends with \\",
    'quote " and ""',
    "comma, semi; tab\tend",
    "line\nbreak\r\nwindows",
    "emoji 😀 𝄞 (4-byte)",
    "ünïcødé ß 漢字",
    " padded  ",
    "'single'",
]


def check_strings_and_bytes(h: Harness) -> None:
    """Text and bytes that break naive loaders (CSV, COPY, JSON): NULL apart from ``""`` and
    from the text ``NULL``, ``\\N``, backslashes, quotes, separators, line breaks, 4-byte
    UTF-8, padding; bytes with NUL, every byte value, quotes and separators."""
    n = len(TRICKY_STRINGS)
    blobs = [None, b"", b"\x00", bytes(range(256)), b"\\N", b'"', b"NULL", b"\n,\r"] + [b"x"] * (n - 8)
    fields = [pa.field("id", pa.int64()), pa.field("s", pa.string()), pa.field("b", pa.binary()), pa.field("ls", pa.large_string())]
    s = make_stream("vals", fields)
    rows = [{"id": i, "s": v, "b": blobs[i], "ls": v} for i, v in enumerate(TRICKY_STRINGS)]
    d = opened(h, "append")
    try:
        d.prepare(s)
        d.write(s, changes(s, rows, "insert"), last_offset=0)
    finally:
        d.close()
    got = sorted(tuple(_canon(v, f.type) for v, f in zip(row, fields)) for row in h.rows("vals") or [])
    assert got == [(r["id"], r["s"], r["b"], r["ls"]) for r in rows]


def chinook_tracks(path: Any) -> tuple[list[pa.Field], list[dict]]:
    """Chinook's tracks joined to an invoice: mixed types, NULLs, a backslash in a name."""
    con = sqlite3.connect(path)
    try:
        rows = con.execute(
            "SELECT t.TrackId, t.Name, t.Composer, t.Milliseconds, t.UnitPrice, i.InvoiceDate, i.BillingState "
            "FROM Track t LEFT JOIN InvoiceLine l ON l.TrackId = t.TrackId LEFT JOIN Invoice i ON i.InvoiceId = l.InvoiceId "
            "GROUP BY t.TrackId ORDER BY t.TrackId"
        ).fetchall()
    finally:
        con.close()
    fields = [
        pa.field("TrackId", pa.int32()),
        pa.field("Name", pa.string(), metadata={SQL_TYPE_KEY: b"nvarchar(200)"}),
        pa.field("Composer", pa.string()),
        pa.field("Milliseconds", pa.int32()),
        pa.field("UnitPrice", pa.decimal128(10, 2)),
        pa.field("InvoiceDate", pa.timestamp("us")),
        pa.field("BillingState", pa.string()),
    ]
    out = [
        {
            "TrackId": r[0],
            "Name": r[1],
            "Composer": r[2],
            "Milliseconds": r[3],
            "UnitPrice": Decimal(str(r[4])).quantize(Decimal("0.01")),
            "InvoiceDate": dt.datetime.fromisoformat(r[5]) if r[5] else None,
            "BillingState": r[6],
        }
        for r in rows
    ]
    return fields, out


def check_mixed_real_data(h: Harness, chinook_path: Any) -> None:
    """3,503 Chinook tracks merged in two overlapping writes (the overlap upserts)."""
    fields, rows = chinook_tracks(chinook_path)
    assert any("\\" in r["Name"] for r in rows) and any(r["BillingState"] is None for r in rows)
    s = make_stream("Track", fields, key=("TrackId",))
    d = opened(h, "merge")
    try:
        d.prepare(s)
        d.write(s, changes(s, rows[:2000], "read"), last_offset=0)
        d.write(s, changes(s, rows[1500:], "update"), last_offset=1)
    finally:
        d.close()
    got = sorted(tuple(_canon(v, f.type) for v, f in zip(row, fields)) for row in h.rows("Track") or [])
    assert got == [tuple(_canon(r[f.name], f.type) for f in fields) for r in rows]


#: Checks of the SQL state machine, for every transactional kind (replace: where it replaces).

"""Dates and timestamps that ordinary date text cannot show, as lossless text.

A PostgreSQL source hands over values outside the years 0001–9999 that most date text
(Arrow's cast, DuckDB's ``strftime``, ``datetime``) cannot format: ``±infinity`` (Arrow
``±(2³¹−1)`` days, ``±(2⁶³−1)`` ticks: DuckDB's encoding of infinity), years after 9999 (up
to 5 874 897 for dates, 294 247 for timestamps) and years before Christ. Their text here:

* ``infinity`` / ``-infinity``: PostgreSQL's own spelling, which it (and DuckDB) reads back;
* years after 9999: ISO 8601 expanded years with a ``+`` sign, ``+10000-01-01``;
* years before 1: ISO 8601 **astronomical** year numbering (year 0 is 1 BC, −1 is 2 BC),
  at least four digits after the sign: 44 BC is ``-0043-03-15``.

These are the rules of Java's ``java.time`` and of ISO 8601's expanded representation.
Ordinary values keep whatever text the caller produced (the fast paths); only the rows
outside 0001–9999 are rewritten, and only those go through Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["INTERVAL_STRUCT", "date_text", "interval_struct", "is_odd", "odd_mask", "patch_timestamps", "temporal_bounds"]

_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}
FIRST_DAY = -719162  #: 0001-01-01 in days since 1970-01-01
END_DAY = 2932897  #: 10000-01-01 in days since 1970-01-01
_INF32 = 2**31 - 1
_INF64 = 2**63 - 1


def temporal_bounds(t: pa.DataType) -> tuple[int, int, int]:
    """``(first, end, infinity)`` of a date or timestamp type as its integer storage: the
    values of 0001-01-01 and 10000-01-01 and the magnitude that means infinity."""
    if pa.types.is_date32(t):
        return FIRST_DAY, END_DAY, _INF32
    if pa.types.is_date64(t):
        return FIRST_DAY * 86_400_000, END_DAY * 86_400_000, _INF64
    per_day = 86_400 * _PER_SECOND[t.unit]
    # the first tick of 0001-01-01, so that values before it (negative years) are odd; an
    # ns timestamp cannot reach year 1 (int64 ns spans 1677–2262): every value is ordinary
    first = FIRST_DAY * per_day if t.unit != "ns" else -_INF64 + 1
    end = END_DAY * per_day if t.unit != "ns" else _INF64
    return first, end, _INF64


def _ints(arr: pa.Array) -> np.ndarray:
    """The integer storage of a date/timestamp array (nulls as 0)."""
    width = pa.int32() if pa.types.is_date32(arr.type) else pa.int64()
    return pc.fill_null(arr.view(width), 0).to_numpy(zero_copy_only=False)


def odd_mask(arr: pa.Array) -> np.ndarray:
    """True where a date/timestamp value is outside 0001-01-01 … 9999-12-31 (infinity included)."""
    first, end, _ = temporal_bounds(arr.type)
    v = _ints(arr)
    out: np.ndarray = ((v < first) | (v >= end)) & arr.is_valid().to_numpy(zero_copy_only=False)
    return out


def is_odd(col: pa.ChunkedArray | pa.Array) -> bool:
    """Any value outside the years 0001–9999 (vectorised min/max, no copy)."""
    if len(col) == 0 or col.null_count == len(col):
        return False
    first, end, _ = temporal_bounds(col.type)
    width = pa.int32() if pa.types.is_date32(col.type) else pa.int64()
    mm = pc.min_max(col.cast(width) if isinstance(col, pa.ChunkedArray) else col.view(width))
    return bool(mm["min"].as_py() < first or mm["max"].as_py() >= end)


def _civil(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(year, month, day) of days since 1970-01-01, proleptic Gregorian, astronomical years
    (Howard Hinnant's ``civil_from_days``), for any int64 day number."""
    z = days.astype(np.int64) + 719468
    era = np.floor_divide(z, 146097)
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


def _year(y: int) -> str:
    if y > 9999:
        return f"+{y}"
    return f"-{-y:04d}" if y < 0 else f"{y:04d}"


def _odd_texts(v: np.ndarray, t: pa.DataType, *, sep: str, zulu: bool) -> list[str]:
    """The text of each odd value (rare rows only: per-row Python is fine here)."""
    _, _, inf = temporal_bounds(t)
    if pa.types.is_date(t):
        per_day, per_second, digits = (1, 1, 0) if pa.types.is_date32(t) else (86_400_000, 1000, 0)
    else:
        per_second, digits = _PER_SECOND[t.unit], _DIGITS[t.unit]
        per_day = 86_400 * per_second
    days = np.floor_divide(v, per_day)
    rest = v - days * per_day
    year, month, day = _civil(days)
    out = []
    for i, value in enumerate(v.tolist()):
        if abs(value) == inf:
            out.append("infinity" if value > 0 else "-infinity")
            continue
        text = f"{_year(int(year[i]))}-{int(month[i]):02d}-{int(day[i]):02d}"
        if not pa.types.is_date(t):
            secs, frac = divmod(int(rest[i]), per_second)
            text += f"{sep}{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
            if digits:
                text += f".{frac:0{digits}d}"
            if zulu:
                text += "Z"
        out.append(text)
    return out


def _patch(arr: pa.Array, text: pa.Array, *, sep: str, zulu: bool) -> pa.Array:
    mask = odd_mask(arr)
    if not mask.any():
        return text
    odd = _ints(arr)[mask]
    return pc.replace_with_mask(text, pa.array(mask), pa.array(_odd_texts(odd, arr.type, sep=sep, zulu=zulu), text.type))


def patch_timestamps(col: pa.ChunkedArray, text: pa.ChunkedArray, *, sep: str = "T", zulu: bool = False) -> pa.ChunkedArray:
    """``text`` (the ordinary text of the date/timestamp column ``col``, row for row) with
    every value outside the years 0001–9999 rewritten by the rules in the module doc;
    ``sep`` between date and time, ``zulu`` appends ``Z`` to (non-infinite) timestamps."""
    if not is_odd(col):
        return text
    chunks = []
    start = 0
    text = text.cast(pa.string())
    for arr in col.chunks:
        piece = text.slice(start, len(arr)).combine_chunks()
        chunks.append(_patch(arr, piece, sep=sep, zulu=zulu))
        start += len(arr)
    return pa.chunked_array(chunks, pa.string())


def date_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """``YYYY-MM-DD`` text of a date column; years outside 0001–9999 and ±infinity by the
    rules in the module doc. Nulls stay null."""
    if not is_odd(col):
        return col.cast(pa.string())
    chunks = []
    for arr in col.chunks:
        mask = odd_mask(arr)
        # Arrow's cast cannot format every odd value: give it a placeholder date, then patch
        safe = pc.if_else(pa.array(mask), pa.scalar(0, pa.int32()).cast(pa.date32()).cast(arr.type), arr)
        chunks.append(_patch(arr, safe.cast(pa.string()), sep="T", zulu=False))
    return pa.chunked_array(chunks, pa.string())


#: The Parquet form of a ``month_day_nano_interval``: Parquet's own ``INTERVAL`` holds
#: milliseconds (PostgreSQL keeps microseconds) and Arrow cannot write it, so the three
#: components are kept apart as they are, typed.
INTERVAL_STRUCT = pa.struct([("months", pa.int32()), ("days", pa.int32()), ("nanoseconds", pa.int64())])


def interval_struct(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A ``month_day_nano_interval`` column as :data:`INTERVAL_STRUCT` (zero-copy views of
    the value buffer, no per-row work). Nulls stay null."""
    chunks = []
    for arr in col.chunks:
        arr = pa.concat_arrays([arr]) if arr.offset else arr
        rec = np.frombuffer(arr.buffers()[1], dtype=np.dtype([("m", "<i4"), ("d", "<i4"), ("ns", "<i8")]), count=len(arr))
        parts = [pa.array(np.ascontiguousarray(rec[name])) for name in ("m", "d", "ns")]
        chunks.append(pa.StructArray.from_arrays(parts, fields=list(INTERVAL_STRUCT), mask=arr.is_null()))
    return pa.chunked_array(chunks, INTERVAL_STRUCT)

"""pgoutput (protocol version 1) messages, and their text values as Arrow arrays.

:class:`Decoder` turns one ``XLogData`` payload into a small tuple (per message Python is
what the wire format forces). :func:`to_arrow` then converts one column of text values at
once, vectorised, into the Arrow type the full read (:mod:`replicant.sources.postgres`)
produces for the same SQL type, so a row read by the snapshot and the same row decoded
from the log are identical.

The walsender formats values with its session settings; :data:`SESSION_OPTIONS` pins the
ones conversion relies on (UTC timestamps, ISO dates, ISO 8601 intervals, hex bytea,
shortest exact floats, ``C`` money).

Message formats: https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from replicant.model import SQL_TYPE_KEY

__all__ = ["SESSION_OPTIONS", "UNCHANGED", "Decoder", "Relation", "pg_epoch_us", "to_arrow"]

#: ``options`` of the replication connection: how the walsender prints values.
SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=iso_8601 -c bytea_output=hex "
    "-c extra_float_digits=1 -c lc_monetary=C"
)

#: A TOASTed value the update did not change (pgoutput sends no value: ``'u'``).
UNCHANGED = object()

#: Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
_PG_EPOCH_US = 946_684_800_000_000

_Q = struct.Struct(">Q")
_I = struct.Struct(">I")
_H = struct.Struct(">H")


def pg_epoch_us(value: int) -> int:
    """A PostgreSQL timestamp (µs since 2000-01-01) as µs since the Unix epoch."""
    return value + _PG_EPOCH_US


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


@dataclass(frozen=True)
class Relation:
    """A table as a ``Relation`` message describes it (sent before its first change and after
    every schema change)."""

    oid: int
    namespace: str
    name: str
    identity: str  #: replica identity: d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[str, ...]
    key: tuple[bool, ...]  #: part of the replica identity
    types: tuple[int, ...] = ()  #: per column, ``pg_attribute.atttypid`` (a domain's own oid)
    typmods: tuple[int, ...] = ()  #: per column, ``pg_attribute.atttypmod`` (-1: none)

    @property
    def shape(self) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
        """Column names, type oids and type modifiers: what a schema change changes."""
        return self.columns, self.types, self.typmods


class Decoder:
    """Decodes pgoutput payloads. Keeps the relations seen so far.

    :meth:`decode` returns one of::

        ("B", final_lsn, commit_ts_us, xid)
        ("C", commit_lsn, end_lsn, commit_ts_us)
        ("R", Relation)                      sent before a table's first change in a session,
                                             and again after its schema changed
        ("I", relid, new)
        ("U", relid, old_kind, old, new)     old_kind: "K" (key), "O" (full) or None
        ("D", relid, old_kind, old)
        ("T", [relid, …])
        ("?", kind)                          Origin, Type, Message: not needed

    Tuples are lists holding ``bytes`` (the value's text), ``None`` (NULL) or
    :data:`UNCHANGED`. Timestamps are µs since the Unix epoch.
    """

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}

    def decode(self, buf: bytes) -> tuple:
        kind = buf[0:1]
        if kind == b"B":
            final_lsn, ts = _Q.unpack_from(buf, 1)[0], _Q.unpack_from(buf, 9)[0]
            return ("B", final_lsn, pg_epoch_us(_signed(ts)), _I.unpack_from(buf, 17)[0])
        if kind == b"C":
            return ("C", _Q.unpack_from(buf, 2)[0], _Q.unpack_from(buf, 10)[0], pg_epoch_us(_signed(_Q.unpack_from(buf, 18)[0])))
        if kind == b"I":
            relid = _I.unpack_from(buf, 1)[0]
            new, _ = _tuple(buf, 6)  # 5 is 'N'
            return ("I", relid, new)
        if kind == b"U":
            relid = _I.unpack_from(buf, 1)[0]
            pos, old_kind, old = 5, None, None
            if buf[pos:pos + 1] in (b"K", b"O"):
                old_kind = buf[pos:pos + 1].decode()
                old, pos = _tuple(buf, pos + 1)
            new, _ = _tuple(buf, pos + 1)  # skip 'N'
            return ("U", relid, old_kind, old, new)
        if kind == b"D":
            relid = _I.unpack_from(buf, 1)[0]
            old, _ = _tuple(buf, 6)
            return ("D", relid, buf[5:6].decode(), old)
        if kind == b"R":
            rel = self._relation(buf)
            self.relations[rel.oid] = rel
            return ("R", rel)
        if kind == b"T":
            n = _I.unpack_from(buf, 1)[0]
            return ("T", [_I.unpack_from(buf, 6 + 4 * i)[0] for i in range(n)])
        return ("?", kind.decode(errors="replace"))

    @staticmethod
    def _relation(buf: bytes) -> Relation:
        oid = _I.unpack_from(buf, 1)[0]
        namespace, pos = _cstring(buf, 5)
        name, pos = _cstring(buf, pos)
        identity = chr(buf[pos])
        ncols = _H.unpack_from(buf, pos + 1)[0]
        pos += 3
        cols, key, types, mods = [], [], [], []
        for _ in range(ncols):
            flags = buf[pos]
            col, pos = _cstring(buf, pos + 1)
            types.append(_I.unpack_from(buf, pos)[0])
            mods.append(_signed32(_I.unpack_from(buf, pos + 4)[0]))
            pos += 8
            cols.append(col)
            key.append(bool(flags & 1))
        return Relation(oid, namespace or "pg_catalog", name, identity, tuple(cols), tuple(key), tuple(types), tuple(mods))


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _signed32(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\x00", pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[list[Any], int]:
    n = _H.unpack_from(buf, pos)[0]
    pos += 2
    out: list[Any] = []
    for _ in range(n):
        k = buf[pos]
        pos += 1
        if k == 0x74 or k == 0x62:  # 't'ext (or 'b'inary, not requested)
            ln = _I.unpack_from(buf, pos)[0]
            out.append(buf[pos + 4:pos + 4 + ln])
            pos += 4 + ln
        elif k == 0x6E:  # 'n'ull
            out.append(None)
        else:  # 'u'nchanged TOAST
            out.append(UNCHANGED)
    return out, pos


# ---------------------------------------------------------------------------- text → Arrow


def to_arrow(values: pa.Array, field: pa.Field) -> pa.Array:
    """One column of pgoutput text values (``binary``, nulls as nulls) as ``field.type``.

    Raises:
        ValueError: naming the column when a value does not fit (``NaN`` in ``numeric(p,s)``,
            a date BC…), like the full read.
    """
    sql_type = (field.metadata or {}).get(SQL_TYPE_KEY, b"").decode()
    try:
        return _convert(values, field.type, sql_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise ValueError(f"column {field.name!r}: cannot read {sql_type or 'a value'} as {field.type}: {e}") from None


def _convert(raw: pa.Array, t: pa.DataType, sql_type: str) -> pa.Array:
    if pa.types.is_list(t):
        return _array(raw, t, sql_type)
    if pa.types.is_binary(t):
        return _unhex(raw)
    s = raw.cast(pa.string())
    if pa.types.is_string(t):
        if sql_type.startswith("money"):  # the full read selects money::numeric::text
            return pc.replace_substring_regex(s, r"[$,]", "")
        if sql_type.startswith("inet"):  # inet::text always shows the netmask, inet_out does not
            bare = pc.invert(pc.match_substring(s, "/"))
            mask = pc.if_else(pc.match_substring(s, ":"), "/128", "/32")
            return pc.if_else(bare, pc.binary_join_element_wise(s, mask, ""), s)
        return s
    if pa.types.is_boolean(t):
        return pc.equal(s, "t")
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return s.cast(t)
    if pa.types.is_date32(t) or pa.types.is_timestamp(t):
        return _temporal(s, t)
    if pa.types.is_time(t):
        stamps = pc.binary_join_element_wise("1970-01-01 ", s, "").cast(pa.timestamp(t.unit))
        return stamps.view(pa.int64()).cast(t)
    if t == pa.month_day_nano_interval():
        return _interval(s)
    return s.cast(t)


def _temporal(s: pa.Array, t: pa.DataType) -> pa.Array:
    """Dates and timestamps; ``±infinity`` as ±max of the integer, like the full read; years
    before Christ (``0044-03-15 BC``) and after 9999 (``10000-01-01``), which Arrow's parser
    refuses, by :func:`_far_values` (those rows only)."""
    inf, ninf = pc.equal(s, "infinity"), pc.equal(s, "-infinity")
    far = pc.or_(pc.ends_with(s, " BC"), pc.match_substring_regex(s, r"^\d{5,}-"))
    special = pc.or_(pc.or_(inf, ninf), far)
    if not pc.any(special).as_py():
        return s.cast(t)
    filler = "1970-01-01 00:00:00+00" if getattr(t, "tz", None) else "1970-01-01"
    fixed = pc.if_else(special, filler, s).cast(t)
    ints = pa.int32() if pa.types.is_date32(t) else pa.int64()
    top = 2 ** (ints.bit_width - 1) - 1
    values = fixed.view(ints)
    mask = pc.fill_null(far, False)
    if pc.any(mask).as_py():
        texts = s.filter(mask).to_pylist()
        values = pc.replace_with_mask(values, mask, pa.array(_far_values(texts, t), ints))
    out = pc.if_else(inf, top, pc.if_else(ninf, -top, values))
    return out.cast(ints).view(t)


_FAR = re.compile(r"^(\d+)-(\d\d)-(\d\d)(?: (\d\d):(\d\d):(\d\d)(?:\.(\d+))?)?(?:[+-]\d\d(?::\d\d){0,2})?( BC)?$")
_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date, astronomical year (Hinnant)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _far_values(texts: list[str], t: pa.DataType) -> list[int]:
    """The integer values of dates/timestamps before year 1 or after 9999 (rare: per-row
    Python over these rows only). The walsender prints them in UTC (``+00``).

    Raises:
        pa.ArrowInvalid: text of another shape, or a timestamp past the int64 range (year 294247)."""
    out = []
    for text in texts:
        m = _FAR.match(text)
        if m is None:
            raise pa.ArrowInvalid(f"unexpected date/time text {text!r}")
        year = int(m[1])
        days = _days_from_civil(1 - year if m[8] else year, int(m[2]), int(m[3]))
        if pa.types.is_date32(t):
            out.append(days)
            continue
        per = _PER_SECOND[t.unit]
        frac = int(((m[7] or "") + "0" * 9)[:9]) * per // 10**9
        value = ((days * 24 + int(m[4] or 0)) * 60 + int(m[5] or 0)) * 60 + int(m[6] or 0)
        value = value * per + frac
        if not -(2**63) < value < 2**63 - 1:
            raise pa.ArrowInvalid(f"{text!r} is beyond the range of {t}")
        out.append(value)
    return out


_HEX = np.full(256, 0, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def _unhex(raw: pa.Array) -> pa.Array:
    """``\\x00ff…`` (bytea's hex output) as binary, without a Python loop."""
    raw = raw.cast(pa.binary())
    n = len(raw)
    if n == 0:
        return pa.array([], pa.binary())
    offsets = np.frombuffer(raw.buffers()[1], dtype=np.int32, count=n + 1, offset=raw.offset * 4).astype(np.int64)
    data = raw.buffers()[2]
    chars = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    chars = chars[offsets[0]:offsets[-1]]
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    has = lengths > 0
    keep = np.ones(len(chars), dtype=bool)
    starts = offsets[:-1][has]
    keep[starts] = False  # the two-character '\x' prefix of every value
    keep[starts + 1] = False
    nib = _HEX[chars[keep]]
    out = (nib[0::2] << 4) | nib[1::2]
    new_len = np.where(has, (lengths - 2) // 2, 0)
    new_off = np.concatenate([[0], np.cumsum(new_len)]).astype(np.int32)
    validity = raw.buffers()[0]
    if validity is not None and raw.offset:
        validity = pc.is_valid(raw).buffers()[1]
    return pa.Array.from_buffers(pa.binary(), n, [validity, pa.py_buffer(new_off.tobytes()), pa.py_buffer(out.astype(np.uint8).tobytes())],
                                 null_count=raw.null_count)


_INTERVAL = (
    r"^P(?:(?P<y>-?\d+)Y)?(?:(?P<mo>-?\d+)M)?(?:(?P<d>-?\d+)D)?"
    r"(?:T(?:(?P<h>-?\d+)H)?(?:(?P<mi>-?\d+)M)?(?:(?P<s>-?\d+)(?:\.(?P<f>\d+))?S)?)?$"
)


def _interval(s: pa.Array) -> pa.Array:
    """ISO 8601 interval text (``P1Y2M3DT4H5M6.789S``) as month_day_nano, like ADBC reads it."""
    parts = pc.extract_regex(s, _INTERVAL)
    if parts.null_count > s.null_count:
        bad = s.filter(pc.and_(pc.is_valid(s), pc.is_null(parts)))[0].as_py()
        raise pa.ArrowInvalid(f"unexpected interval text {bad!r}")

    def num(name: str) -> np.ndarray:
        col = pc.struct_field(parts, name)
        return pc.fill_null(pc.if_else(pc.equal(col, ""), "0", col), "0").cast(pa.int64()).to_numpy(zero_copy_only=False)

    sec_txt = pc.fill_null(pc.struct_field(parts, "s"), "")
    frac = pc.fill_null(pc.struct_field(parts, "f"), "")
    micro = pc.if_else(pc.equal(frac, ""), "0", pc.utf8_slice_codeunits(pc.utf8_rpad(frac, 6, "0"), 0, 6))
    micro = micro.cast(pa.int64()).to_numpy(zero_copy_only=False)
    negative = pc.fill_null(pc.starts_with(sec_txt, "-"), False).to_numpy(zero_copy_only=False)
    seconds = num("s")
    usec = seconds * 1_000_000 + np.where(negative, -micro, micro)
    nanos = ((num("h") * 60 + num("mi")) * 60_000_000 + usec) * 1000
    packed = np.zeros(len(s), dtype=[("m", "<i4"), ("d", "<i4"), ("n", "<i8")])
    packed["m"] = num("y") * 12 + num("mo")
    packed["d"] = num("d")
    packed["n"] = nanos
    validity = pc.is_valid(s).buffers()[1] if s.null_count else None
    return pa.Array.from_buffers(pa.month_day_nano_interval(), len(s), [validity, pa.py_buffer(packed.tobytes())],
                                 null_count=s.null_count)


_DIMS = re.compile(r"^\[[^=]*\]=")


def _array(raw: pa.Array, t: pa.ListType, sql_type: str) -> pa.Array:
    """PostgreSQL array text (``{1,NULL,"y z"}``) as a list; nested arrays are flattened."""
    offsets = [0]
    elems: list[bytes | None] = []
    for v in raw.to_pylist():  # array literals need a small parser; elements convert vectorised
        if v is not None:
            elems.extend(_parse_array(v.decode()))
        offsets.append(len(elems))
    values = _convert(pa.array(elems, pa.binary()), t.value_type, sql_type.removesuffix("[]"))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, type=t, mask=pc.is_null(raw))


def _parse_array(text: str) -> list[bytes | None]:
    text = _DIMS.sub("", text)
    out: list[bytes | None] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "{},":
            i += 1
        elif c == '"':
            i += 1
            buf = []
            while text[i] != '"':
                if text[i] == "\\":
                    i += 1
                buf.append(text[i])
                i += 1
            out.append("".join(buf).encode())
            i += 1
        else:
            j = i
            while j < n and text[j] not in ",}":
                j += 1
            token = text[i:j]
            out.append(None if token == "NULL" else token.encode())
            i = j
    return out

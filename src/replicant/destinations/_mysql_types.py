"""MariaDB/MySQL destination types: DDL from Arrow, and the CSV that ``LOAD DATA`` reads.

Two questions are answered here, without a round trip to the server:

1. :func:`ddl_type` — the column type a new column gets. A field whose
   ``replicant.sql_type`` came from a MySQL/MariaDB source is created with that declared
   type verbatim (exact same-dialect round trip); otherwise the Arrow type is mapped (the
   table in ``docs/types.md``, section *MariaDB/MySQL destination*).

2. :func:`encode` — each column as CSV text that ``LOAD DATA LOCAL INFILE`` reads back
   into exactly the same value, plus the ``SET`` expression a column needs (``UNHEX`` for
   binary). The CSV is written by ``pyarrow.csv`` (C++) with ``quoting_style="all_valid"``
   and ``null_string="NULL"``: every value is quoted, a null is the bare word ``NULL``.
   MariaDB reads an unquoted ``NULL`` as SQL NULL and a quoted ``"NULL"`` or ``""`` as
   the string ``'NULL'`` or ``''`` (`LOAD DATA: "If FIELDS ENCLOSED BY is not empty, a
   field containing the literal word NULL as its value is read as a NULL value"
   <https://mariadb.com/kb/en/load-data-infile/>`_). ``ESCAPED BY ''`` turns backslash
   escapes off, so a ``\\`` in data stays a backslash (datasets README, trap 2); a quote
   inside a value is doubled, which ``ENCLOSED BY '"'`` undoes.

The Arrow → text encoders (:func:`hex_text`, :func:`decimal_text`, :func:`interval_text`, :func:`time_text`,
:func:`json_text`) are vectorised (Arrow kernels, numpy on buffers, DuckDB for JSON) and
shared with the SQLite destination.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from hashlib import sha1

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from replicant.destinations._sql_base import Encoded, TypeMapper
from replicant.errors import FatalError
from replicant.model import DIALECT_KEY, SQL_TYPE_KEY

__all__ = [
    "DIALECT",
    "MySQLTypes",
    "plain",
    "DEFAULT_KEY_CHARS",
    "MAX_KEY_CHARS",
    "quote",
    "aux_name",
    "binary_collation",
    "declared_type",
    "ddl_type",
    "canonical_type",
    "is_text_type",
    "encode",
    "hex_text",
    "decimal_text",
    "interval_text",
    "time_text",
    "json_text",
    "is_nested",
    "is_string",
    "is_binary",
    "stored_type",
]

DIALECT = "mysql"
#: Length of a ``VARCHAR``/``VARBINARY`` key column when the source declared none.
DEFAULT_KEY_CHARS = 255
#: InnoDB indexes at most 3072 bytes per column: 768 utf8mb4 characters.
MAX_KEY_CHARS = 768
_MAX_KEY_BYTES = 3072
#: Longest MySQL identifier, in characters.
MAX_NAME = 64

_INTS = {
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INT",
    pa.int64(): "BIGINT",
    pa.uint8(): "TINYINT UNSIGNED",
    pa.uint16(): "SMALLINT UNSIGNED",
    pa.uint32(): "INT UNSIGNED",
    pa.uint64(): "BIGINT UNSIGNED",
}
_FRACTION = {"s": "", "ms": "(3)", "us": "(6)", "ns": "(6)"}
_LENGTH = re.compile(r"\(\s*(\d+)\s*\)")


def quote(name: str) -> str:
    """A MySQL identifier in backticks (a backtick inside is doubled)."""
    return "`" + name.replace("`", "``") + "`"


def aux_name(table: str, suffix: str) -> str:
    """``table + suffix``, shortened with a hash when it would pass MySQL's 64 characters."""
    name = table + suffix
    if len(name) <= MAX_NAME:
        return name
    digest = sha1(table.encode()).hexdigest()[:8]
    return f"{table[: MAX_NAME - len(suffix) - 9]}_{digest}{suffix}"


def binary_collation(version: str) -> str:
    """The utf8mb4 collation that compares bytes with no trailing-space padding."""
    if "mariadb" in version.lower():
        return "utf8mb4_nopad_bin"  # MariaDB ≥ 10.2
    major = int(version.split(".", 1)[0]) if version[:1].isdigit() else 0
    return "utf8mb4_0900_bin" if major >= 8 else "utf8mb4_bin"


def declared_type(field: pa.Field, schema: pa.Schema) -> str | None:
    """The field's ``replicant.sql_type`` when the schema came from a MySQL/MariaDB source."""
    meta = schema.metadata or {}
    if meta.get(DIALECT_KEY, b"").decode() != DIALECT:
        return None
    sql = (field.metadata or {}).get(SQL_TYPE_KEY)
    return sql.decode().strip() if sql else None


def stored_type(t: pa.DataType) -> pa.DataType:
    """The type that is stored: dictionaries by their values, extensions by their storage."""
    while True:
        if pa.types.is_dictionary(t):
            t = t.value_type
        elif isinstance(t, pa.BaseExtensionType):
            t = t.storage_type
        else:
            return t


def is_nested(t: pa.DataType) -> bool:
    """Lists, structs and maps (stored as JSON text)."""
    t = stored_type(t)
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
        or pa.types.is_struct(t)
        or pa.types.is_map(t)
    )


def is_string(t: pa.DataType) -> bool:
    """``string``, ``large_string`` or ``string_view``."""
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def is_binary(t: pa.DataType) -> bool:
    """Any binary type, fixed-size included."""
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    )


def _decimal_type(t: pa.DataType) -> str:
    precision, scale = t.precision, t.scale
    if scale < 0:  # Arrow allows a negative scale: 123 × 10^2
        precision, scale = precision - scale, 0
    if precision <= 65 and scale <= 30:
        return f"DECIMAL({precision},{scale})"
    return "LONGTEXT"  # exact as text; MySQL DECIMAL holds at most 65 digits, 30 after the point


class MySQLTypes(TypeMapper):
    """The :class:`TypeMapper` of MariaDB/MySQL: :func:`ddl_type` with the server's binary
    no-pad collation for key strings (``key_collation``), and :func:`encode` (CSV-safe text,
    with ``UNHEX``/``CAST`` expressions applied by ``LOAD DATA … SET``)."""

    dialect = DIALECT

    def __init__(self, key_collation: str = "utf8mb4_bin") -> None:
        self.key_collation = key_collation

    def ddl_type(self, field: pa.Field, schema: pa.Schema, *, key: bool = False) -> str:
        return ddl_type(field, schema, key=key, key_collation=self.key_collation)

    def encode(self, rows: pa.Table, declared: Mapping[str, str]) -> Encoded:
        data, exprs = encode(rows, {k: v.lower() for k, v in declared.items()})
        return Encoded(data, exprs)

    def refused(self, rows: pa.Table) -> dict[int, str]:
        """Rows with a date or timestamp outside the years 0001–9999 (``±infinity``, 44 BC,
        year 10000: ``DATE``/``DATETIME`` stop at 9999 and have no infinity) or a ``NaN``/
        ``±inf`` float (``DOUBLE`` has none). Masks are vectorised; reasons are built for the
        refused rows only."""
        from replicant.destinations._values import date_text, is_odd, odd_mask, patch_timestamps

        out: dict[int, str] = {}
        for name, col in zip(rows.column_names, rows.columns):
            col = plain(col)
            t = col.type
            if pa.types.is_date(t) or pa.types.is_timestamp(t):
                if not is_odd(col):
                    continue
                arr = col.combine_chunks()
                mask = odd_mask(arr)
                bad = arr.filter(pa.array(mask))
                texts = date_text(pa.chunked_array([bad])) if pa.types.is_date(t) else patch_timestamps(
                    pa.chunked_array([bad]), pa.chunked_array([bad.cast(pa.string())]), sep=" ")
                what = "DATE" if pa.types.is_date(t) else "DATETIME"
                for i, text in zip(np.nonzero(mask)[0].tolist(), texts.to_pylist()):
                    out.setdefault(i, f"column {name!r}: {text} is outside the years MySQL/MariaDB {what} holds (0001–9999)")
            elif pa.types.is_floating(t):
                mask = pc.fill_null(pc.invert(pc.is_finite(col)), False).to_numpy(zero_copy_only=False)
                for i in np.nonzero(mask)[0].tolist():
                    out.setdefault(i, f"column {name!r}: {col[i].as_py()} cannot be stored in MySQL/MariaDB (no NaN or infinity)")
        return out


def ddl_type(field: pa.Field, schema: pa.Schema, *, key: bool = False, key_collation: str = "utf8mb4_bin") -> str:
    """The column type for ``field`` in a ``CREATE TABLE``.

    A MySQL-declared ``sql_type`` is used verbatim. Otherwise the Arrow type is mapped;
    a key column that would be ``LONGTEXT``/``LONGBLOB`` (which InnoDB cannot index without
    a prefix) becomes ``VARCHAR(n)`` with a binary, no-pad collation (keys compare
    exactly, as in the source: ``'a'``, ``'A'`` and ``'a '`` stay three keys) or
    ``VARBINARY(n)``; ``n`` is the length in the field's ``sql_type`` (``varchar(40)``)
    when there is one, else :data:`DEFAULT_KEY_CHARS`, at most :data:`MAX_KEY_CHARS`.

    Raises:
        FatalError: an Arrow type with no MySQL equivalent.
    """
    declared = declared_type(field, schema)
    if declared:
        return declared
    mapped = _mapped(field.type, field.name)
    if key and mapped in ("LONGTEXT", "JSON"):
        return f"VARCHAR({_key_length(field, MAX_KEY_CHARS)}) CHARACTER SET utf8mb4 COLLATE {key_collation}"
    if key and mapped == "LONGBLOB":
        return f"VARBINARY({_key_length(field, _MAX_KEY_BYTES)})"
    return mapped


def canonical_type(type_sql: str) -> str:
    """A column type in one spelling, to compare a generated type with ``COLUMN_TYPE``:
    lower case, no character set or collation, no integer display width (``int(11)`` →
    ``int``), ``integer`` → ``int``, ``numeric`` → ``decimal(p,s)``, ``double precision`` →
    ``double``."""
    t = re.sub(r"\s+", " ", type_sql.strip().lower())
    t = re.split(r" (?:character set|charset|collate) ", t)[0]
    t = re.sub(r"^integer\b", "int", t)
    t = re.sub(r"^(tinyint|smallint|mediumint|int|bigint) ?\(\d+\)", r"\1", t)
    t = re.sub(r"^(?:numeric|dec|fixed)\b", "decimal", t)
    t = re.sub(r"^decimal(?! ?\()", "decimal(10)", t)
    t = re.sub(r"^decimal ?\((\d+)\)", r"decimal(\1,0)", t)
    t = re.sub(r"^decimal ?\((\d+), ?(\d+)\)", r"decimal(\1,\2)", t)
    return t.replace("double precision", "double")


def is_text_type(type_sql: str) -> bool:
    """Whether a column type holds characters (and so has a character set and collation)."""
    return re.match(r"\s*(?:national\s+)?(?:var)?char|\s*(?:tiny|medium|long)?text\b|\s*enum\b|\s*set\b", type_sql.lower()) is not None


def _key_length(field: pa.Field, limit: int) -> int:
    sql = (field.metadata or {}).get(SQL_TYPE_KEY, b"").decode()
    m = _LENGTH.search(sql)
    n = int(m.group(1)) if m else DEFAULT_KEY_CHARS
    return max(1, min(n, limit))


def _mapped(t: pa.DataType, name: str) -> str:
    t = stored_type(t)
    if t in _INTS:
        return _INTS[t]
    if pa.types.is_boolean(t):
        return "TINYINT(1)"
    if pa.types.is_float16(t) or pa.types.is_float32(t):
        return "FLOAT"
    if pa.types.is_float64(t):
        return "DOUBLE"
    if pa.types.is_decimal(t):
        return _decimal_type(t)
    if is_string(t) or pa.types.is_null(t):
        return "LONGTEXT"
    if pa.types.is_fixed_size_binary(t):
        return f"BINARY({t.byte_width})" if t.byte_width <= 255 else "LONGBLOB"
    if is_binary(t):
        return "LONGBLOB"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_time(t):
        return "TIME" + _FRACTION[t.unit]
    if pa.types.is_timestamp(t):
        return "DATETIME" + _FRACTION[t.unit]
    if pa.types.is_duration(t):
        return "TIME" + _FRACTION[t.unit]
    if pa.types.is_interval(t):
        return "VARCHAR(64)"
    if is_nested(t):
        return "JSON"
    raise FatalError(f"column {name!r}: Arrow type {t} has no MySQL/MariaDB equivalent; exclude the column or cast it")


# --------------------------------------------------------------------------- values


def encode(table: pa.Table, declared: Mapping[str, str] | None = None) -> tuple[pa.Table, list[str | None]]:
    """Rewrites ``table`` so that ``pyarrow.csv`` writes text ``LOAD DATA`` reads exactly.

    Args:
        table: the columns to load, any Arrow types :func:`ddl_type` maps.
        declared: lower-cased declared types of the target columns, by name (used for
            ``BIT`` columns, which need a numeric ``SET`` expression).

    Returns:
        The encoded table (integers, floats, decimals, strings only) and, per column,
        ``None`` (load the text as is) or a ``SET`` expression with ``{v}`` for the user
        variable holding the text (``UNHEX({v})``).
    """
    declared = declared or {}
    arrays, exprs = [], []
    for name, col in zip(table.column_names, table.columns):
        arr, expr = _encode_column(col, declared.get(name.lower(), ""))
        arrays.append(arr)
        exprs.append(expr)
    return pa.table(arrays, names=table.column_names), exprs


def plain(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """``col`` with dictionaries decoded and extension types as their storage (zero-copy
    for extensions): the value types every text encoder works on."""
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    if isinstance(t, pa.BaseExtensionType):
        col = pa.chunked_array([c.storage for c in col.chunks], t.storage_type)
    return col


def _encode_column(col: pa.ChunkedArray, declared: str) -> tuple[pa.ChunkedArray, str | None]:
    col = plain(col)
    t = col.type
    if declared.startswith("bit"):
        return col.cast(pa.uint64()), "CAST({v} AS UNSIGNED)"
    if pa.types.is_boolean(t):
        return col.cast(pa.int8()), None
    if pa.types.is_float16(t):
        return col.cast(pa.float32()), None
    if pa.types.is_decimal(t) and _decimal_type(t) == "LONGTEXT":
        return decimal_text(col), None
    if pa.types.is_string_view(t):
        return col.cast(pa.string()), None
    if pa.types.is_null(t):
        return col.cast(pa.string()), None
    if is_binary(t):
        return hex_text(col), "UNHEX({v})"
    if pa.types.is_date64(t):
        return col.cast(pa.date32()), None
    if pa.types.is_time(t) and t.unit == "ns":
        return pc.cast(col, pa.time64("us"), safe=False), None  # MySQL keeps microseconds
    if pa.types.is_timestamp(t):
        # UTC wall time, microseconds at most: tz-aware values are stored as UTC DATETIME.
        unit = "us" if t.unit == "ns" else t.unit
        return pc.cast(col, pa.timestamp(unit), safe=False), None
    if pa.types.is_duration(t):
        return time_text(col), None
    if pa.types.is_interval(t):
        return interval_text(col), None
    if is_nested(t):
        return json_text(col), None
    return col, None


def _unsliced(arr: pa.Array) -> pa.Array:
    return pa.concat_arrays([arr]) if arr.offset else arr


def hex_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Lower-case hex text of every binary value (``b"\\x00\\xff"`` → ``"00ff"``), nulls kept.

    Works on the value buffers: one ``bytes.hex()`` per chunk, offsets doubled. The result
    is ``large_string`` (hex doubles the size; 64-bit offsets never overflow).
    """
    t = col.type
    out = []
    for arr in col.chunks:
        if pa.types.is_binary_view(t):
            arr = arr.cast(pa.large_binary())
        arr = _unsliced(arr)
        n = len(arr)
        if pa.types.is_fixed_size_binary(t):
            width = t.byte_width
            data = arr.buffers()[1]
            raw = data.to_pybytes()[: n * width] if data is not None else b""
            offsets = np.arange(n + 1, dtype=np.int64) * (2 * width)
        else:
            wide = pa.types.is_large_binary(arr.type)
            offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if wide else np.int32, count=n + 1)
            data = arr.buffers()[2]
            raw = data.to_pybytes()[offsets[0] : offsets[-1]] if data is not None else b""
            offsets = (offsets.astype(np.int64) - offsets[0]) * 2
        hexed = pa.py_buffer(raw.hex().encode("ascii"))
        buffers = [arr.buffers()[0], pa.py_buffer(offsets.tobytes()), hexed]
        out.append(pa.Array.from_buffers(pa.large_string(), n, buffers, arr.null_count))
    return pa.chunked_array(out, pa.large_string())


def decimal_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Plain decimal text of a decimal column, never scientific notation, scale kept.

    Arrow's own cast writes ``1E-10`` for ``Decimal("0.0000000001")``; this writes
    ``0.0000000001`` (and ``-1.50`` for ``-1.50``, ``12300`` for ``1.23E+4``). Nulls stay null.
    """
    t = col.type
    scale = t.scale
    if 0 <= scale <= 6:
        # Arrow writes plain notation when the adjusted exponent is ≥ -6, always true here.
        return col.cast(pa.string())
    unscaled_type = pa.decimal128(38, 0) if t.bit_width == 128 else pa.decimal256(76, 0)
    chunks = []
    for arr in col.chunks:
        arr = _unsliced(arr)
        chunks.append(pa.Array.from_buffers(unscaled_type, len(arr), arr.buffers(), arr.null_count))
    text = pa.chunked_array(chunks, unscaled_type).cast(pa.string())  # the unscaled integer
    if scale == 0:
        return text
    if scale < 0:
        return pc.binary_join_element_wise(text, "0" * -scale, "")
    negative = pc.starts_with(text, "-")
    digits = pc.utf8_lpad(pc.utf8_ltrim(text, characters="-"), width=scale + 1, padding="0")
    whole = pc.utf8_slice_codeunits(digits, 0, -scale)
    fraction = pc.utf8_slice_codeunits(digits, -scale)
    return pc.binary_join_element_wise(pc.if_else(negative, "-", ""), whole, ".", fraction, "")


def _seconds_text(nanos: np.ndarray) -> pa.Array:
    """Seconds as short decimal text: 1_500_000_000 ns → ``"1.5"``, -1 000 ns → ``"-0.000001"``, 0 → ``"0"``."""
    a = np.abs(nanos)
    whole = pa.array(a // 1_000_000_000).cast(pa.string())
    fraction = pc.utf8_lpad(pa.array(a % 1_000_000_000).cast(pa.string()), width=9, padding="0")
    fraction = pc.utf8_rtrim(fraction, characters="0")
    dot = pc.if_else(pc.equal(pc.utf8_length(fraction), 0), "", ".")
    sign = pa.array(np.where(nanos < 0, "-", ""), pa.string())
    return pc.binary_join_element_wise(sign, whole, dot, fraction, "")


def interval_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """ISO-8601 duration text of a ``month_day_nano_interval`` (or ``month_interval``…) column.

    ``(14 months, 3 days, 4.5 s)`` → ``"P14M3DT4.5S"``; components keep their sign, as
    PostgreSQL writes them (``"P-1M0DT0S"``). Nulls stay null.
    """
    out = []
    for arr in col.chunks:
        arr = _unsliced(arr)
        n = len(arr)
        t = arr.type
        if pa.types.is_interval(t) and t == pa.month_day_nano_interval():
            rec = np.frombuffer(
                arr.buffers()[1], dtype=np.dtype([("m", "<i4"), ("d", "<i4"), ("ns", "<i8")]), count=n
            )
            months, days, nanos = rec["m"], rec["d"], rec["ns"]
        elif t == pa.month_interval():
            months = np.frombuffer(arr.buffers()[1], dtype="<i4", count=n)
            days = np.zeros(n, np.int32)
            nanos = np.zeros(n, np.int64)
        else:  # day_time_interval: (days, milliseconds)
            rec = np.frombuffer(arr.buffers()[1], dtype=np.dtype([("d", "<i4"), ("ms", "<i4")]), count=n)
            months, days, nanos = np.zeros(n, np.int32), rec["d"], rec["ms"].astype(np.int64) * 1_000_000
        text = pc.binary_join_element_wise(
            "P",
            pa.array(months).cast(pa.string()),
            "M",
            pa.array(days).cast(pa.string()),
            "DT",
            _seconds_text(np.ascontiguousarray(nanos)),
            "S",
            "",
        )
        out.append(pc.if_else(arr.is_valid(), text, pa.scalar(None, pa.string())))
    return pa.chunked_array(out, pa.string())


def time_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """``[-]H:MM:SS.ffffff`` text of a ``duration`` column (MySQL ``TIME`` literal syntax).

    Sub-microsecond parts are truncated (MySQL keeps microseconds). Nulls stay null.
    """
    micros = pc.cast(pc.cast(col, pa.duration("us"), safe=False), pa.int64())
    a = pc.abs(micros)
    hours = pc.divide(a, 3_600_000_000)
    minutes = pc.divide(pc.subtract(a, pc.multiply(hours, 3_600_000_000)), 60_000_000)
    rest = pc.subtract(a, pc.add(pc.multiply(hours, 3_600_000_000), pc.multiply(minutes, 60_000_000)))
    seconds = pc.divide(rest, 1_000_000)
    fraction = pc.subtract(rest, pc.multiply(seconds, 1_000_000))

    def pad(x: pa.ChunkedArray, width: int) -> pa.ChunkedArray:
        return pc.utf8_lpad(x.cast(pa.string()), width=width, padding="0")

    sign = pc.if_else(pc.less(micros, 0), "-", "")
    return pc.binary_join_element_wise(
        sign, hours.cast(pa.string()), ":", pad(minutes, 2), ":", pad(seconds, 2), ".", pad(fraction, 6), ""
    )


def json_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """JSON text of every value of a nested column (DuckDB ``to_json``, vectorised). Nulls stay null."""
    import duckdb  # lazy: only tables with list/struct/map columns need it

    con = duckdb.connect()
    try:
        con.register("_replicant_nested", pa.table({"v": col}))
        out = con.sql("SELECT to_json(v)::VARCHAR AS v FROM _replicant_nested").to_arrow_table()
    finally:
        con.close()
    return out["v"].cast(pa.string())

"""The canonical value encoding, written once per SQL dialect, so the same value hashes the
same in PostgreSQL, MariaDB/MySQL, SQLite and DuckDB.

Every compared column becomes text by the rule of its Arrow type in the pipeline's log (the
type both sides were written from), then ``v`` + that text, or ``n`` for NULL (so NULL and
``''`` differ); a row is those texts joined by U+001F. Rules (docs/validate.md):

* integers: decimal digits; booleans: ``1`` / ``0``;
* decimals ``(p,s)``: rounded to the scale ``s`` of the log's type and written with exactly
  ``s`` decimals (``12.30``), whatever the column stores (SQLite REAL, DECIMAL text);
* floats: 12 significant digits in scientific form (``5.00000000000e-01``); NaN and
  ±infinity as ``NaN``, ``Infinity``, ``-Infinity``;
* dates ``YYYY-MM-DD``; timestamps ``YYYY-MM-DD HH:MM:SS.ffffff``, zoned ones as UTC wall
  time; times ``HH:MM:SS.ffffff``;
* bytes: lower-case hex;
* text as it is, except ``char(n)`` columns (by the source's declared type): trailing spaces
  removed, as the SQL standard compares them;
* JSON: the text the source gave the log (PostgreSQL's ``jsonb`` is normalised by the server);
* other types (lists, structs, intervals): not compared; the column is listed as unverified.

The row hash is the first 64 bits of the MD5 of the row text: every dialect computes MD5 the
same way. Between two sides of one dialect a cheaper hash is used: the typed values' own hash
(PostgreSQL ``hash_record_extended``, DuckDB ``hash``) when every compared column has the same
type on both sides, else that dialect's hash of the canonical text (:attr:`Dialect.cheap_hash`).
"""

from __future__ import annotations

import re

import pyarrow as pa

from replicant.model import SQL_TYPE_KEY

__all__ = ["DIALECTS", "Dialect", "is_char", "sql_type"]

#: Decimal digits of a float's mantissa after the point: 12 significant digits.
FLOAT_DIGITS = 11
_MASK32 = 4294967295
#: Bucket numbers come from the low 60 bits of the key hash (positive in every dialect).
MASK60 = (1 << 60) - 1


def sql_type(field: pa.Field) -> str:
    """The column's declared type at the source (``character(5)``), lower case, or ''."""
    raw = (field.metadata or {}).get(SQL_TYPE_KEY)
    return raw.decode().lower() if raw else ""


def is_char(field: pa.Field) -> bool:
    """A fixed-width ``char(n)`` column (its trailing spaces are padding)."""
    t = sql_type(field)
    return bool(re.match(r"^(n?char|character|bpchar)\b", t)) and "varying" not in t and "varchar" not in t


def kind(t: pa.DataType) -> str | None:
    """The canonical rule an Arrow type follows, or None (not compared)."""
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_decimal(t):
        return "decimal"
    if pa.types.is_floating(t):
        return "floating"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "binary"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_time(t):
        return "time"
    return None


class Dialect:
    """How one SQL dialect writes the canonical text and hash of a column and a row."""

    name = ""
    #: the dialect's cheaper 64-bit hash of a text, used only when both sides are this dialect
    cheap_hash: str | None = None

    def quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def literal(self, text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    def concat(self, parts: list[str]) -> str:
        return "(" + " || ".join(parts) + ")"

    def sep(self) -> str:
        return "chr(31)"

    def canonical(self, col: str, field: pa.Field) -> str | None:
        """``col``'s canonical text (NULL stays NULL), or None when its type is not compared."""
        k = kind(field.type)
        if k is None:
            return None
        if k == "text":
            return self.rtrim(col) if is_char(field) else self.text(col)
        if k == "decimal":
            return self.decimal(col, field.type.precision, field.type.scale)
        return getattr(self, k)(col)

    def wrapped(self, col: str, field: pa.Field) -> str | None:
        """``v`` + the canonical text, or ``n`` for NULL."""
        c = self.canonical(col, field)
        return None if c is None else f"COALESCE({self.concat([self.literal('v'), c])}, 'n')"

    def row_text(self, parts: list[str]) -> str:
        if not parts:
            return "''"
        if len(parts) == 1:
            return parts[0]
        joined: list[str] = []
        for p in parts:
            joined += [p, self.sep()]
        return self.concat(joined[:-1])

    def hash64(self, text: str) -> str:
        """The first 64 bits of MD5(text) as an integer (signed or unsigned: only its low
        60 bits and its two 32-bit halves are used)."""
        raise NotImplementedError

    def typed_hash(self, cols: list[str]) -> str | None:
        """A 64-bit hash of the columns' typed values, when the dialect has one: equal only
        between two tables of this dialect whose columns have the same types."""
        return None

    def high(self, h: str) -> str:
        return f"(({h} >> 32) & {_MASK32})"

    def low(self, h: str) -> str:
        return f"({h} & {_MASK32})"

    def bucket(self, h: str, n: int) -> str:
        return f"(({h} & {MASK60}) % {n})"

    # -- per type (NULL in, NULL out) -----------------------------------------------------------

    def text(self, col: str) -> str:
        return f"CAST({col} AS TEXT)"

    def rtrim(self, col: str) -> str:
        return f"RTRIM(CAST({col} AS TEXT), ' ')"

    def integer(self, col: str) -> str:
        return f"CAST({col} AS TEXT)"

    def boolean(self, col: str) -> str:
        return f"CASE WHEN {col} THEN '1' WHEN NOT {col} THEN '0' END"

    def decimal(self, col: str, precision: int, scale: int) -> str:
        raise NotImplementedError

    def floating(self, col: str) -> str:
        raise NotImplementedError

    def binary(self, col: str) -> str:
        return f"lower(hex({col}))"

    def date(self, col: str) -> str:
        raise NotImplementedError

    def timestamp(self, col: str) -> str:
        raise NotImplementedError

    def timestamptz(self, col: str) -> str:
        return self.timestamp(col)

    def time(self, col: str) -> str:
        raise NotImplementedError


class PostgresDialect(Dialect):
    name = "postgresql"
    cheap_hash = "hashtextextended({}, 0)"

    def hash64(self, text: str) -> str:
        return f"('x' || substr(md5({text}), 1, 16))::bit(64)::bigint"

    def typed_hash(self, cols: list[str]) -> str | None:
        return f"hash_record_extended(ROW({', '.join(cols)}), 0)"

    def type_of(self, col: str) -> str:
        return f"pg_typeof({col})::text"

    def text(self, col: str) -> str:
        return f"{col}::text"

    def rtrim(self, col: str) -> str:
        return f"rtrim({col}::text, ' ')"

    def integer(self, col: str) -> str:
        return f"{col}::text"

    def decimal(self, col: str, precision: int, scale: int) -> str:
        return f"round({col}::numeric, {scale})::text"

    def floating(self, col: str) -> str:
        v = f"{col}::float8"
        return (f"CASE WHEN {v} IN ('NaN', 'Infinity', '-Infinity') THEN {v}::text "
                f"ELSE btrim(to_char({v}, '9.{'9' * FLOAT_DIGITS}EEEE')) END")

    def binary(self, col: str) -> str:
        return f"encode({col}, 'hex')"

    def date(self, col: str) -> str:
        return f"to_char({col}, 'YYYY-MM-DD')"

    def timestamp(self, col: str) -> str:
        return f"to_char({col}, 'YYYY-MM-DD HH24:MI:SS.US')"

    def timestamptz(self, col: str) -> str:
        return f"to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"

    def time(self, col: str) -> str:
        return f"to_char({col}, 'HH24:MI:SS.US')"


class MySQLDialect(Dialect):
    name = "mysql"

    def quote(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def literal(self, text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"

    def concat(self, parts: list[str]) -> str:
        return "CONCAT(" + ", ".join(parts) + ")"

    def sep(self) -> str:
        return "CHAR(31)"

    def hash64(self, text: str) -> str:
        return f"CAST(CONV(SUBSTR(MD5({text}), 1, 16), 16, 10) AS UNSIGNED)"

    def text(self, col: str) -> str:
        return f"CAST({col} AS CHAR)"

    def rtrim(self, col: str) -> str:
        return f"RTRIM(CAST({col} AS CHAR))"

    def integer(self, col: str) -> str:
        return f"CAST({col} AS CHAR)"

    def boolean(self, col: str) -> str:
        return f"CASE WHEN {col} <> 0 THEN '1' WHEN {col} = 0 THEN '0' END"

    def decimal(self, col: str, precision: int, scale: int) -> str:
        return f"CAST(CAST(ROUND({col}, {scale}) AS DECIMAL(65, {scale})) AS CHAR)"

    def floating(self, col: str) -> str:
        # MariaDB has no scientific format: mantissa and exponent by arithmetic
        e = f"FLOOR(LOG10(ABS({col})))"
        m = f"CAST(ROUND({col} / POW(10, {e}), {FLOAT_DIGITS}) AS DECIMAL(14, {FLOAT_DIGITS}))"
        exp = f"CONCAT('e', IF({e} < 0, '-', '+'), IF(ABS({e}) < 10, CONCAT('0', ABS({e})), ABS({e})))"  # LPAD would cut 300 to 30
        return f"CASE WHEN {col} = 0 THEN '0.{'0' * FLOAT_DIGITS}e+00' ELSE CONCAT({m}, {exp}) END"

    def binary(self, col: str) -> str:
        return f"LOWER(HEX({col}))"

    def date(self, col: str) -> str:
        return f"DATE_FORMAT({col}, '%Y-%m-%d')"

    def timestamp(self, col: str) -> str:
        return f"DATE_FORMAT({col}, '%Y-%m-%d %H:%i:%s.%f')"

    def time(self, col: str) -> str:
        return f"TIME_FORMAT({col}, '%H:%i:%s.%f')"


class SQLiteDialect(Dialect):
    """SQLite has no MD5: :func:`replicant.validate.sides.sqlite_connection` registers
    ``replicant_md5_64`` (Python's hashlib, called once per row)."""

    name = "sqlite"

    def sep(self) -> str:
        return "char(31)"

    def hash64(self, text: str) -> str:
        return f"replicant_md5_64({text})"

    # printf() and hex() turn NULL into '0.00' and '': NULL must stay NULL
    def decimal(self, col: str, precision: int, scale: int) -> str:
        # replicant's SQLite destination stores decimals as exact text at their scale (DECIMAL_TEXT);
        # a SQLite source's NUMERIC holds REAL or INTEGER: printed at the scale (15 digits)
        return f"CASE WHEN typeof({col}) = 'text' THEN {col} WHEN {col} IS NOT NULL THEN printf('%.{scale}f', {col}) END"

    def floating(self, col: str) -> str:
        return f"CASE WHEN {col} IS NOT NULL THEN printf('%.{FLOAT_DIGITS}e', {col}) END"

    def binary(self, col: str) -> str:
        return f"CASE WHEN {col} IS NOT NULL THEN lower(hex({col})) END"

    def boolean(self, col: str) -> str:
        return f"CASE WHEN {col} <> 0 THEN '1' WHEN {col} = 0 THEN '0' END"

    def date(self, col: str) -> str:
        return f"substr({col}, 1, 10)"

    def _fraction(self, col: str, width: int) -> str:
        v = f"replace(CAST({col} AS TEXT), 'T', ' ')"
        return f"CASE WHEN instr({v}, '.') > 0 THEN substr({v} || '000000', 1, {width}) ELSE substr({v} || '.000000', 1, {width}) END"

    def timestamp(self, col: str) -> str:
        return self._fraction(col, 26)

    def time(self, col: str) -> str:
        return self._fraction(col, 15)


class DuckDBDialect(Dialect):
    """DuckDB; the connection runs with ``TimeZone = 'UTC'`` (zoned values as UTC wall time)."""

    name = "duckdb"
    cheap_hash = "hash({})"

    def hash64(self, text: str) -> str:
        return f"('0x' || substr(md5({text}), 1, 16))::UBIGINT"

    def typed_hash(self, cols: list[str]) -> str | None:
        return f"hash({', '.join(cols)})"

    def type_of(self, col: str) -> str:
        return f"typeof({col})"

    def text(self, col: str) -> str:
        return f"CAST({col} AS VARCHAR)"

    def rtrim(self, col: str) -> str:
        return f"rtrim(CAST({col} AS VARCHAR), ' ')"

    def integer(self, col: str) -> str:
        return f"CAST({col} AS VARCHAR)"

    def decimal(self, col: str, precision: int, scale: int) -> str:
        return f"CAST(CAST({col} AS DECIMAL(38, {scale})) AS VARCHAR)"

    def floating(self, col: str) -> str:
        v = f"CAST({col} AS DOUBLE)"
        return (f"CASE WHEN isnan({v}) THEN 'NaN' WHEN isinf({v}) THEN CASE WHEN {v} > 0 THEN 'Infinity' ELSE '-Infinity' END "
                f"ELSE printf('%.{FLOAT_DIGITS}e', {v}) END")

    def date(self, col: str) -> str:
        return f"strftime(CAST({col} AS DATE), '%Y-%m-%d')"

    def timestamp(self, col: str) -> str:
        return f"strftime(CAST({col} AS TIMESTAMP), '%Y-%m-%d %H:%M:%S.%f')"

    def time(self, col: str) -> str:
        return f"strftime(DATE '1970-01-01' + CAST({col} AS TIME), '%H:%M:%S.%f')"


DIALECTS: dict[str, Dialect] = {d.name: d for d in (PostgresDialect(), MySQLDialect(), SQLiteDialect(), DuckDBDialect())}

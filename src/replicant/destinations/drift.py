"""Schema drift for the SQL destinations: what changed between two versions of a stream, and
whether a destination may follow.

:func:`plan` compares ``old.schema`` with ``stream.schema`` (and the table as it is now) and
returns a :class:`Plan`, or raises :class:`~replicant.errors.SchemaDriftError` listing every
change that cannot be applied, each with what to do. The rules, the same for every SQL
destination:

Applied
    * a **new nullable column**: ``ADD COLUMN`` with the type a new table would get;
    * a **widened type**: ``int8 → int16 → int32 → int64`` (an unsigned integer into a wider
      unsigned or signed one), ``float16 → float32 → float64``, a decimal whose integer digits
      and scale both do not shrink, ``string``/``large_string``/``string_view`` among each
      other (binary likewise), a timestamp, time or duration of finer precision (same
      time-zone kind). When the destination creates columns from the source's declared
      type (same dialect), a declared-type change must be a widening too:
      ``varchar(n) → varchar(m ≥ n)``/``text``, ``integer → bigint``, ``numeric(10,2) →
      numeric(12,2)``, ``timestamp(3) → timestamp(6)``…
    * a **dropped column**: kept in the destination (never dropped: its history stays
      readable), and rows written from then on hold NULL in it (the column default for a
      column that has one), as Debezium's JDBC sink and Airbyte do.

Refused (:class:`~replicant.errors.SchemaDriftError`)
    * a narrowed or incompatible type change (``decimal(10,2) → text``, ``int64 → int32``);
    * a **renamed column**: a column is gone and a new one of the same type took its place
      (same position). The log cannot tell a rename from a drop plus an add at the same
      place, and following it as drop + add would leave the old values in one column and
      the new ones in another;
    * a new ``NOT NULL`` column: the log does not carry the source's default for the rows
      already in the table;
    * a changed primary key.

A change is judged against the table as it is: a column the table already has is not
added again (so :func:`plan` is idempotent after a crash half-way through an ``evolve``),
and a refused rename or ``NOT NULL`` column can be resolved by hand — rename or add the
column in the destination table, then resume.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from replicant.errors import SchemaDriftError
from replicant.model import DIALECT_KEY, SQL_TYPE_KEY, Stream

__all__ = ["Plan", "arrow_wider", "plan", "recreate_hint", "sql_wider"]


def recreate_hint(destination: str) -> str:
    """What to do when a table cannot follow: rebuild it from the log."""
    return (
        f"drop the table and rebuild it with `replicant replay PIPELINE.yml --destination {destination} --from-start`, "
        "or, for a column whose type changed, leave it out with `exclude:` on its stream (under source.streams)"
    )


@dataclass
class Plan:
    """What :meth:`evolve` must do to the table.

    Attributes:
        added: new columns (nullable) the table does not have yet.
        widened: ``(old field, new field)`` of columns whose type (or declared type) widened.
        kept: names of columns gone from the stream and kept in the table (written NULL).
    """

    added: list[pa.Field] = field(default_factory=list)
    widened: list[tuple[pa.Field, pa.Field]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def plan(
    destination: str,
    stream: Stream,
    old: Stream,
    table_columns: Iterable[str],
    *,
    dialect: str | None,
    fold: Callable[[str], str] = str.casefold,
) -> Plan:
    """The changes from ``old`` to ``stream`` that the table still needs.

    Args:
        destination: the destination's name, for messages.
        stream: the new version of the stream.
        old: the previous version.
        table_columns: the names of the columns the table has now.
        dialect: the destination's SQLAlchemy dialect name when it creates columns from the
            source's declared type for schemas of that dialect (``postgresql``, ``mysql``,
            ``sqlite``); None when it maps Arrow types only.
        fold: how the destination compares column names (case-insensitively by default).

    Raises:
        SchemaDriftError: one or more changes cannot be applied; the message lists each.
    """
    where = f"destination {destination!r}, stream {stream.name!r}"
    hint = recreate_hint(destination)
    have = {fold(c) for c in table_columns}
    old_by = {fold(f.name): f for f in old.schema}
    new_by = {fold(f.name): f for f in stream.schema}
    declared = dialect is not None and _dialect(old.schema) == dialect and _dialect(stream.schema) == dialect
    problems: list[str] = []
    out = Plan()

    old_key, new_key = _key(old), _key(stream)
    keys = {fold(c) for c in (*new_key, *old_key)}
    key_changed = [fold(k) for k in new_key] != [fold(k) for k in old_key]
    if key_changed:
        problems.append(
            f"the primary key changed from ({', '.join(old_key)}) to ({', '.join(new_key)}), "
            f"which the table's rows cannot follow (merge matches rows by key); {hint}"
        )

    for i, f in enumerate(stream.schema):
        k = fold(f.name)
        before = old_by.get(k)
        if before is not None and k not in have:
            out.added.append(f.with_nullable(True))  # the table never got it: add it as prepare would
            continue
        if before is not None:
            verdict = _compare(before, f, declared=declared, dialect=dialect or "")
            if verdict == "wider":
                out.widened.append((before, f))
            elif verdict != "same":
                problems.append(
                    f"column {f.name} changed from {_describe(before, declared)} to {_describe(f, declared)}, "
                    f"which destination {destination!r} cannot convert in place ({verdict}); {hint}"
                )
            continue
        if k in have:
            continue  # added by an earlier evolve (or by hand)
        gone = old.schema.field(i) if i < len(old.schema) else None
        if gone is not None and fold(gone.name) not in new_by and fold(gone.name) in have and _same_type(gone, f):
            problems.append(
                f"column {gone.name} looks renamed to {f.name} (gone, and a new column of the same type "
                f"{_describe(f, declared)} took its place), which destination {destination!r} does not follow: rename "
                f"the column in the destination table yourself and resume (if it is a drop and an add, add column "
                f"{f.name} to the table yourself), or {hint}"
            )
            continue
        if not f.nullable:
            problems.append(
                f"column {f.name} was added as NOT NULL, which destination {destination!r} cannot add (the log does "
                f"not carry the source's default for the rows already there): add the column to the destination table "
                f"yourself (nullable, or with that default) and resume, or {hint}"
            )
            continue
        out.added.append(f)

    for k, f in old_by.items():
        if k in new_by:
            continue
        if k in keys:
            if not key_changed:
                problems.append(f"key column {f.name} is gone from the stream; {hint}")
            continue
        if k in have:
            out.kept.append(f.name)

    if problems:
        raise SchemaDriftError(f"{where}: the source schema changed in a way the table cannot follow: " + "; ".join(problems))
    return out


#: Schema metadata the engine writes into the log: the stream's key columns, comma-separated.
_KEY_METADATA = b"replicant.primary_key"


def _key(stream: Stream) -> tuple[str, ...]:
    """The stream's key: the one the log recorded in the schema when there is one (a
    version of the stream built from a log record keeps the previous ``primary_key``)."""
    raw = (stream.schema.metadata or {}).get(_KEY_METADATA)
    if raw is None:
        return tuple(stream.primary_key)
    return tuple(k for k in raw.decode().split(",") if k)


# --------------------------------------------------------------------------- Arrow types


def _dialect(schema: pa.Schema) -> str:
    return (schema.metadata or {}).get(DIALECT_KEY, b"").decode()


def _sql(f: pa.Field) -> str:
    return (f.metadata or {}).get(SQL_TYPE_KEY, b"").decode().strip()


def _describe(f: pa.Field, declared: bool) -> str:
    sql = _sql(f)
    if sql and declared:
        return sql
    t = _stored(f.type)
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    return str(f.type) + (f" ({sql})" if sql else "")


def _stored(t: pa.DataType) -> pa.DataType:
    """Dictionaries by their values: dictionary encoding is not a schema change here."""
    while pa.types.is_dictionary(t):
        t = t.value_type
    return t


def _same_type(a: pa.Field, b: pa.Field) -> bool:
    return _stored(a.type) == _stored(b.type) and _sql(a).lower() == _sql(b).lower()


_UNITS = {"s": 0, "ms": 1, "us": 2, "ns": 3}


def _family(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "binary"
    return ""


def arrow_wider(old: pa.DataType, new: pa.DataType) -> bool:
    """Whether every value of ``old`` is a value of ``new`` (``new`` differs from ``old``)."""
    old, new = _stored(old), _stored(new)
    if old == new:
        return False
    if pa.types.is_integer(old) and pa.types.is_integer(new):
        if pa.types.is_signed_integer(old):
            return pa.types.is_signed_integer(new) and new.bit_width > old.bit_width
        return new.bit_width > old.bit_width  # unsigned → wider unsigned, or signed of more bits
    if pa.types.is_floating(old) and pa.types.is_floating(new):
        return new.bit_width > old.bit_width
    if pa.types.is_decimal(old) and pa.types.is_decimal(new):
        return new.scale >= old.scale and new.precision - new.scale >= old.precision - old.scale
    if _family(old) and _family(old) == _family(new):
        return True  # offsets width only: the same values
    if pa.types.is_timestamp(old) and pa.types.is_timestamp(new):
        return (old.tz is None) == (new.tz is None) and _UNITS[new.unit] >= _UNITS[old.unit]
    if pa.types.is_time(old) and pa.types.is_time(new):
        return _UNITS[new.unit] > _UNITS[old.unit]
    if pa.types.is_duration(old) and pa.types.is_duration(new):
        return _UNITS[new.unit] > _UNITS[old.unit]
    return False


def _compare(old: pa.Field, new: pa.Field, *, declared: bool, dialect: str) -> str:
    """``"same"``, ``"wider"``, or why the change is refused."""
    verdict = "same"
    if _stored(old.type) != _stored(new.type):
        if not arrow_wider(old.type, new.type):
            return "a narrower or different type"
        verdict = "wider"
    if declared:
        a, b = _sql(old), _sql(new)
        if a and b and _squash(a) != _squash(b):
            if not sql_wider(a, b, dialect):
                return "a narrower or different declared type"
            verdict = "wider"
    return verdict


# --------------------------------------------------------------------------- declared types

_INT_RANK = {
    "tinyint": 1, "int1": 1,
    "smallint": 2, "int2": 2, "smallserial": 2,
    "mediumint": 3, "int3": 3,
    "int": 4, "integer": 4, "int4": 4, "serial": 4,
    "bigint": 5, "int8": 5, "bigserial": 5,
}  # fmt: skip
_FLOAT_RANK = {"real": 1, "float4": 1, "float": 1, "double precision": 2, "float8": 2, "double": 2}
_DECIMALS = {"numeric", "decimal", "dec", "fixed"}
_CHARS = {"char", "character", "bpchar", "nchar"}
_VARCHARS = {"varchar", "character varying", "nvarchar", "varchar2"}
_TEXTS = {"tinytext": 255, "text": 65_535, "mediumtext": 16_777_215, "longtext": 2**32 - 1}
_BINARIES = {"binary", "varbinary"}
_BLOBS = {"tinyblob": 255, "blob": 65_535, "mediumblob": 16_777_215, "longblob": 2**32 - 1, "bytea": 2**32 - 1}
_TEMPORAL = {"timestamp", "datetime", "time", "timestamptz", "timetz", "interval"}
_TYPE = re.compile(r"^(?P<base>[a-z_][a-z0-9_ ]*)\s*(?:\((?P<args>[^)]*)\))?\s*(?P<rest>.*)$")
_INFINITE = 2**63


def _squash(sql: str) -> str:
    return re.sub(r"\s+", " ", sql.strip().lower())


_MULTIWORD = ("double precision", "character varying", "bit varying", "national character varying", "national character")


def _parse(sql: str) -> tuple[str, list[int] | None, str]:
    """``(base name, numeric arguments, the rest)``: ``timestamp(3) with time zone`` →
    ``("timestamp", [3], "with time zone")``, ``int unsigned`` → ``("int", None, "unsigned")``."""
    m = _TYPE.match(_squash(sql))
    if not m:
        return _squash(sql), None, ""
    base, rest = m.group("base").strip(), m.group("rest").strip()
    if m.group("args") is None:  # the base ran on into the modifiers
        head = next((w for w in _MULTIWORD if base == w or base.startswith(w + " ")), base.split(" ", 1)[0])
        base, rest = head, (base[len(head) :].strip() + " " + rest).strip()
    args = None
    if m.group("args") is not None:
        try:
            args = [int(a) for a in m.group("args").split(",")]
        except ValueError:
            args = None
    return base, args, rest


def _capacity(base: str, args: list[int] | None, dialect: str) -> int | None:
    """Characters (or bytes) a string or binary type holds; None if not one."""
    if base in _CHARS or base in _VARCHARS or base in _BINARIES:
        return args[0] if args else (1 if base in _CHARS | _BINARIES else _INFINITE)
    if base == "text" and dialect != "mysql":
        return _INFINITE
    if base in _TEXTS:
        return _TEXTS[base]
    if base in _BLOBS:
        return _BLOBS[base]
    return None


def sql_wider(old: str, new: str, dialect: str = "") -> bool:
    """Whether declared type ``new`` holds every value of ``old`` (both of one dialect).

    Known families: integers, floats, decimals, character and binary strings, and
    timestamps/times by fractional precision. Any other change is not a widening.
    """
    ob, oa, orest = _parse(old)
    nb, na, nrest = _parse(new)
    if ob in _INT_RANK and nb in _INT_RANK:
        o_uns, n_uns = "unsigned" in orest, "unsigned" in nrest
        if o_uns == n_uns:
            return _INT_RANK[nb] >= _INT_RANK[ob]
        return o_uns and _INT_RANK[nb] > _INT_RANK[ob]
    if ob in _FLOAT_RANK and nb in _FLOAT_RANK:
        return _FLOAT_RANK[nb] >= _FLOAT_RANK[ob] and orest == nrest
    if ob in _DECIMALS and nb in _DECIMALS:
        if not na:
            return not oa or dialect != "mysql"  # an unconstrained numeric holds any (PostgreSQL)
        if not oa:
            return False
        op, os_ = oa[0], (oa[1] if len(oa) > 1 else 0)
        np_, ns = na[0], (na[1] if len(na) > 1 else 0)
        return ns >= os_ and np_ - ns >= op - os_ and orest == nrest
    o_cap, n_cap = _capacity(ob, oa, dialect), _capacity(nb, na, dialect)
    if o_cap is not None and n_cap is not None:
        o_bin = ob in _BINARIES or ob in _BLOBS
        n_bin = nb in _BINARIES or nb in _BLOBS
        return o_bin == n_bin and n_cap >= o_cap
    if ob in _TEMPORAL and ob == nb and orest == nrest:
        default = 0 if dialect == "mysql" else 6
        return (na[0] if na else default) >= (oa[0] if oa else default)
    return False

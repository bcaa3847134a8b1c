"""Column shaping: ``rename``, ``cast``, ``select`` and ``drop`` (Arrow only, zero-copy but ``cast``)."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from replicant.errors import FatalError
from replicant.model import META_COLUMNS
from replicant.transforms.base import Transform, key_of, need_columns, with_key

__all__ = ["Cast", "Drop", "Rename", "Select", "arrow_type"]


class Rename(Transform):
    """``rename: {old: new}``. Renaming a key column renames the stream's key."""

    name = "rename"

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = dict(mapping)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        need_columns(schema, self.mapping, "rename")
        fields = [f.with_name(self.mapping.get(f.name, f.name)) for f in schema]
        names = [f.name for f in fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rename: column {dupes[0]!r} would appear twice")
        out = pa.schema(fields, metadata=schema.metadata)
        return with_key(out, [self.mapping.get(k, k) for k in key_of(schema)]) if key_of(schema) else out

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays(batch.columns, schema=self.output_schema(batch.schema))


class Select(Transform):
    """``select: [columns]``: only these data columns (the metadata columns stay). The key
    columns must be among them (a stream that loses its key cannot be merged or deleted)."""

    name = "select"

    def __init__(self, columns: list[str]) -> None:
        self.columns = list(columns)

    def _keep(self, schema: pa.Schema) -> list[str]:
        need_columns(schema, self.columns, "select")
        lost = [k for k in key_of(schema) if k not in self.columns]
        if lost:
            raise ValueError(f"select: key column {lost[0]!r} must be selected (the stream's key); "
                             "rename it, or select it too")
        return self.columns + [m for m in META_COLUMNS if m in schema.names]

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        keep = self._keep(schema)
        return pa.schema([schema.field(n) for n in keep], metadata=schema.metadata)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return batch.select(self._keep(batch.schema))


class Drop(Transform):
    """``drop: [columns]``: all data columns but these. Dropping a key column is a config
    error: the stream would lose its key (select another key with ``primary_key:`` first)."""

    name = "drop"

    def __init__(self, columns: list[str]) -> None:
        self.columns = list(columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        need_columns(schema, self.columns, "drop")
        keys = [c for c in self.columns if c in key_of(schema)]
        if keys:
            raise ValueError(f"drop: {keys[0]!r} is a key column of the stream; a stream cannot lose its key "
                             "(set another `primary_key:` for the stream, or mask the column instead)")
        return pa.schema([f for f in schema if f.name not in self.columns], metadata=schema.metadata)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return batch.select([n for n in batch.schema.names if n not in self.columns])


_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(), "boolean": pa.bool_(),
    "int8": pa.int8(), "tinyint": pa.int8(), "int16": pa.int16(), "smallint": pa.int16(),
    "int32": pa.int32(), "int": pa.int32(), "integer": pa.int32(), "int64": pa.int64(), "bigint": pa.int64(),
    "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(), "uint64": pa.uint64(),
    "float32": pa.float32(), "float": pa.float32(), "real": pa.float32(),
    "float64": pa.float64(), "double": pa.float64(),
    "string": pa.string(), "text": pa.string(), "varchar": pa.string(),
    "binary": pa.binary(), "blob": pa.binary(), "bytea": pa.binary(),
    "date": pa.date32(), "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"), "timestamptz": pa.timestamp("us", tz="UTC"),
}
_DECIMAL = re.compile(r"^(?:decimal|numeric)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)$", re.I)


def arrow_type(text: str) -> pa.DataType:
    """The Arrow type a ``cast:`` names: ``bigint``, ``double``, ``text``, ``date``,
    ``timestamptz``, ``decimal(12,2)``… (SQL or Arrow spelling, any case).

    Raises:
        ValueError: an unknown type name, listing the known ones.
    """
    t = text.strip().lower()
    if t in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[t]
    m = _DECIMAL.match(t)
    if m:
        precision, scale = int(m[1]), int(m[2])
        if not 0 < precision <= 76 or scale > precision:
            raise ValueError(f"{text!r}: precision must be 1..76 and scale at most the precision")
        return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    raise ValueError(f"unknown type {text!r}; use one of {', '.join(sorted(_SIMPLE_TYPES))} or decimal(p,s)")


class Cast(Transform):
    """``cast: {column: type}``: Arrow's safe cast (a value that does not fit stops the stream
    with a message naming the column, never the value)."""

    name = "cast"

    def __init__(self, types: dict[str, str]) -> None:
        self.types = {c: arrow_type(t) for c, t in types.items()}

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        need_columns(schema, self.types, "cast")
        fields = []
        for f in schema:
            if f.name in self.types:
                target = self.types[f.name]
                if not pa.types.is_null(f.type) and not _castable(f.type, target):
                    raise ValueError(f"cast: column {f.name!r} is {f.type}, which cannot become {target}")
                f = pa.field(f.name, target, nullable=f.nullable)  # the source's declared SQL type no longer holds
            fields.append(f)
        return pa.schema(fields, metadata=schema.metadata)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        schema = self.output_schema(batch.schema)
        columns = []
        for f, col in zip(schema, batch.columns, strict=True):
            if f.name in self.types and col.type != f.type:
                try:
                    col = pc.cast(col, f.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    what = str(e).split(":")[0]  # Arrow's reason, without the value it quotes
                    raise FatalError(f"cast: a value of column {f.name!r} does not fit {f.type} ({what}); "
                                     "change the cast or fix the data") from None
            columns.append(col)
        return pa.RecordBatch.from_arrays(columns, schema=schema)


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    try:
        pc.cast(pa.array([], source), target)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


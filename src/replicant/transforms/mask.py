"""``mask``: personal data made unreadable, column by column.

Methods:

``hash``
    HMAC-SHA256 of the value's UTF-8 text (bytes as they are), keyed by a secret given by
    reference, as 64 hex characters. Salted by default with the column's name, so equal
    values in two columns do not link; ``salt: false`` (equal values hash equally in every
    column with the same key, so they join) or ``salt: TEXT`` (a shared salt) change that.
    Equal values are hashed once per batch (``pyarrow.compute.unique``): the per-value work is
    one HMAC over each distinct value.
``redact``
    ``***`` for every non-null value.
``last4``
    The last four characters kept, the others replaced by ``*`` (``*******1234``).

Masked columns become text columns. A key column may be hashed (the same value always gives
the same hash), never redacted or cut to its last four characters (keys would collide).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from replicant.transforms.base import Transform, key_of, need_columns

__all__ = ["Mask", "MaskRule", "hmac_hex", "last4", "redact"]

REDACTED = "***"


@dataclass(frozen=True, repr=False)
class MaskRule:
    """How one column is masked: ``method`` (hash, redact, last4); for ``hash`` the key and
    the salt (None: the column's name)."""

    method: str
    key: bytes | None = None
    salt: bytes | None = None

    def __repr__(self) -> str:
        return f"MaskRule({self.method!r})"  # never the key


def as_text(col: pa.Array) -> pa.Array:
    """The values as UTF-8 text (binary and text columns as they are)."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_binary(col.type):
        return col
    return pc.cast(col, pa.string())


def hmac_hex(col: pa.Array, key: bytes, salt: bytes) -> pa.Array:
    """HMAC-SHA256(key, salt + NUL + value) in hex per value, nulls kept; each distinct value
    once."""
    text = as_text(col)
    distinct = pc.unique(text)
    base = hmac.new(key, salt + b"\x00", hashlib.sha256)
    digests: list[str | None] = []
    for v in distinct.to_pylist():
        if v is None:
            digests.append(None)
            continue
        h = base.copy()
        h.update(v if isinstance(v, bytes) else v.encode())
        digests.append(h.hexdigest())
    return pc.take(pa.array(digests, pa.string()), pc.index_in(text, value_set=distinct))


def redact(col: pa.Array) -> pa.Array:
    return pc.if_else(pc.is_null(col), pa.scalar(None, pa.string()), pa.scalar(REDACTED, pa.string()))


def last4(col: pa.Array) -> pa.Array:
    text = as_text(col)
    if pa.types.is_binary(text.type):
        text = pc.cast(pc.binary_join_element_wise(text, b"", null_handling="emit_null"), pa.string())
    n = pc.utf8_length(text)
    stars = pc.binary_repeat(pa.scalar("*"), pc.max_element_wise(pc.subtract(n, 4), 0))
    return pc.binary_join_element_wise(stars, pc.utf8_slice_codeunits(text, start=-4), "")


class Mask(Transform):
    """``mask: {column: hash | redact | last4 | {method: hash, key: …, salt: …}}``."""

    name = "mask"

    def __init__(self, rules: dict[str, MaskRule]) -> None:
        self.rules = dict(rules)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        need_columns(schema, self.rules, "mask")
        for c, rule in self.rules.items():
            if c in key_of(schema) and rule.method != "hash":
                raise ValueError(f"mask: {c!r} is a key column; only `hash` keeps keys distinct")
        fields = [pa.field(f.name, pa.string(), nullable=f.nullable) if f.name in self.rules else f for f in schema]
        return pa.schema(fields, metadata=schema.metadata)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        schema = self.output_schema(batch.schema)
        columns = []
        for f, col in zip(batch.schema, batch.columns, strict=True):
            rule = self.rules.get(f.name)
            if rule is not None:
                col = self.masked(f.name, col, rule)
            columns.append(col)
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    @staticmethod
    def masked(column: str, col: pa.Array, rule: MaskRule) -> pa.Array:
        if rule.method == "redact":
            return redact(col)
        if rule.method == "last4":
            return last4(col)
        assert rule.key is not None
        return hmac_hex(col, rule.key, column.encode() if rule.salt is None else rule.salt)

"""Property tests for the transforms with many edge cases: ``cast`` round trips, ``mask`` (hash
keyed and salted, last4 keeps exactly the tail) and ``encrypt`` round trips with key rotation;
and the ``filter`` ``_op`` rule on every op."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicant.model import META_FIELDS
from replicant.transforms.base import KEY_METADATA
from replicant.transforms.columns import Cast
from replicant.transforms.crypto import Encrypt, EncryptRule, decrypt, key_id
from replicant.transforms.mask import Mask, MaskRule
from replicant.transforms.sql import Filter

TEXT = st.one_of(st.none(), st.text(max_size=40))
KEYS = st.binary(min_size=32, max_size=32)


def _batch(columns: dict[str, pa.Array], ops: list[str] | None = None, key: str | None = None) -> pa.RecordBatch:
    n = len(next(iter(columns.values())))
    ops = ops or ["insert"] * n
    meta = [pa.array(ops, pa.string()), pa.array(["{}"] * n, pa.string()),
            pa.array([datetime(2026, 1, 1, tzinfo=UTC)] * n, pa.timestamp("us", tz="UTC"))]
    schema = pa.schema([pa.field(c, a.type) for c, a in columns.items()] + list(META_FIELDS),
                       metadata={KEY_METADATA: (key or "").encode()})
    return pa.RecordBatch.from_arrays([*columns.values(), *meta], schema=schema)


@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=50))
def test_cast_int_to_text_and_back_is_the_identity(values: list[int | None]) -> None:
    batch = _batch({"n": pa.array(values, pa.int64())})
    there = Cast({"n": "text"}).apply(batch)
    back = Cast({"n": "bigint"}).apply(there)
    assert there.schema.field("n").type == pa.string()
    assert back.column(0).to_pylist() == values


@given(st.lists(st.one_of(st.none(), st.decimals(min_value=-(10**9), max_value=10**9, places=2, allow_nan=False)), max_size=30))
def test_cast_decimal_to_double_to_decimal_keeps_cents(values: list) -> None:
    batch = _batch({"v": pa.array(values, pa.decimal128(12, 2))})
    back = Cast({"v": "decimal(12,2)"}).apply(Cast({"v": "text"}).apply(batch))
    assert back.column(0).to_pylist() == values


@given(st.lists(TEXT, max_size=40), KEYS, st.one_of(st.none(), st.binary(max_size=8)))
def test_mask_hash_is_the_keyed_salted_hmac_of_each_value(values: list[str | None], key: bytes, salt: bytes | None) -> None:
    out = Mask({"c": MaskRule("hash", key, salt)}).apply(_batch({"c": pa.array(values, pa.string())})).column(0).to_pylist()
    s = b"c" if salt is None else salt  # the column's name by default
    assert out == [None if v is None else hmac.new(key, s + b"\x00" + v.encode(), hashlib.sha256).hexdigest() for v in values]
    other = Mask({"c": MaskRule("hash", key, s + b"x")}).apply(_batch({"c": pa.array(values, pa.string())})).column(0).to_pylist()
    assert all(a != b for a, b in zip(out, other, strict=True) if a is not None), "another salt, other hashes"


@given(st.lists(TEXT, max_size=40))
def test_mask_last4_keeps_the_last_four_characters_and_the_length(values: list[str | None]) -> None:
    out = Mask({"c": MaskRule("last4")}).apply(_batch({"c": pa.array(values, pa.string())})).column(0).to_pylist()
    assert out == [None if v is None else "*" * max(len(v) - 4, 0) + v[-4:] for v in values]


@settings(max_examples=50)
@given(st.lists(TEXT, max_size=30), KEYS, KEYS, st.booleans())
def test_encrypt_then_decrypt_gives_back_every_value_across_a_key_rotation(
    values: list[str | None], old: bytes, new: bytes, deterministic: bool
) -> None:
    batch = _batch({"c": pa.array(values, pa.string())})
    before = Encrypt({"c": EncryptRule(old, deterministic)}).apply(batch).column(0).to_pylist()
    after = Encrypt({"c": EncryptRule(new, deterministic)}).apply(batch).column(0).to_pylist()
    keys = [base64.b64encode(old).decode(), base64.b64encode(new).decode()]
    assert decrypt(before + after, keys) == values + values
    assert all(v is None or f".{key_id(old)}." in v for v in before)
    if deterministic:
        again = Encrypt({"c": EncryptRule(old, True)}).apply(batch).column(0).to_pylist()
        assert again == before


def test_decrypt_refuses_a_tampered_value_and_an_unknown_key() -> None:
    key = bytes(32)
    [value] = Encrypt({"c": EncryptRule(key)}).apply(_batch({"c": pa.array(["secret"])})).column(0).to_pylist()
    assert decrypt(value, key) == "secret"
    body = value.rsplit(".", 1)
    tampered = body[0] + "." + ("A" if body[1][0] != "A" else "B") + body[1][1:]
    with pytest.raises(ValueError, match="does not decrypt"):
        decrypt(tampered, key)
    with pytest.raises(ValueError, match="was not given"):
        decrypt(value, bytes([1]) * 32)


def test_filter_op_rule_insert_dropped_update_becomes_delete_of_key_delete_passes() -> None:
    batch = _batch({"id": pa.array([1, 2, 3, 4, 5]), "status": pa.array(["on", "off", "off", None, "off"]),
                    "email": pa.array(["a@x", "b@x", "c@x", None, "e@x"])},
                   ops=["insert", "insert", "update", "delete", "read"], key="id")
    out = Filter("status = 'on'").apply(batch)
    got = list(zip(out.column(0).to_pylist(), out.column(3).to_pylist(), out.column(2).to_pylist(), strict=True))
    assert got == [(1, "insert", "a@x"), (3, "delete", None), (4, "delete", None)], \
        "2 and 5 never passed: dropped; 3's new image fails: a delete of its key, without the image"
    unkeyed = Filter("status = 'on'").apply(_batch({"id": pa.array([3]), "status": pa.array(["off"])}, ops=["update"]))
    assert unkeyed.num_rows == 0, "without a key an update cannot delete: dropped"

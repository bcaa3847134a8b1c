"""``encrypt`` and :func:`decrypt`: columns readable only by someone holding the key.

A key is 32 random bytes written in base64 (``python -c "import os, base64;
print(base64.b64encode(os.urandom(32)).decode())"``), given by reference (``${env:NAME}``,
``${secret:NAME}``). Each value's UTF-8 text (bytes as they are) is encrypted with
AES-256-GCM and a random 96-bit nonce, or with AES-256-GCM-SIV and a fixed nonce when
``deterministic: true`` (equal plaintexts give equal ciphertexts, so they can be joined and
used as keys; only equality is revealed). The result is text::

    v1.gcm.<key id>.<base64url(nonce + ciphertext + tag)>      (v1.siv. for deterministic)

The key id (by default the first 8 hex digits of the key's SHA-256; ``key_id:`` names it) is
stored with every value, so keys rotate: encrypt new rows with a new key and give
:func:`decrypt` every key still in use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV

from replicant.transforms.base import Transform, key_of, need_columns
from replicant.transforms.mask import as_text

__all__ = ["Encrypt", "EncryptRule", "decrypt", "key_id", "parse_key"]

_NONCE = 12
_SIV_NONCE = bytes(_NONCE)


def parse_key(text: str) -> bytes:
    """The 32 bytes of a base64 key.

    Raises:
        ValueError: not base64 of exactly 32 bytes (the message never shows the key).
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key is not base64; a key is 32 random bytes written in base64") from None
    if len(raw) != 32:
        raise ValueError(f"the key is {len(raw)} bytes; a key is 32 random bytes written in base64")
    return raw


def key_id(key: bytes) -> str:
    """The default id of a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


@dataclass(frozen=True, repr=False)
class EncryptRule:
    key: bytes
    deterministic: bool = False
    key_id: str | None = None

    def __repr__(self) -> str:
        return f"EncryptRule(deterministic={self.deterministic})"  # never the key

    @property
    def kid(self) -> str:
        return self.key_id or key_id(self.key)


def _encrypt(col: pa.Array, rule: EncryptRule) -> pa.Array:
    text = as_text(col)
    kid = rule.kid
    if rule.deterministic:
        siv = AESGCMSIV(rule.key)
        distinct = pc.unique(text)
        prefix = f"v1.siv.{kid}."
        out = [None if v is None else prefix + base64.urlsafe_b64encode(
            _SIV_NONCE + siv.encrypt(_SIV_NONCE, v if isinstance(v, bytes) else v.encode(), None)).decode()
            for v in distinct.to_pylist()]
        return pc.take(pa.array(out, pa.string()), pc.index_in(text, value_set=distinct))
    gcm = AESGCM(rule.key)
    values = text.to_pylist()
    nonces = os.urandom(_NONCE * len(values))
    prefix = f"v1.gcm.{kid}."
    b64 = base64.urlsafe_b64encode
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        nonce = nonces[i * _NONCE:(i + 1) * _NONCE]
        out.append(prefix + b64(nonce + gcm.encrypt(nonce, v if isinstance(v, bytes) else v.encode(), None)).decode())
    return pa.array(out, pa.string())


class Encrypt(Transform):
    """``encrypt: {column: {key: ${secret:NAME}, deterministic: false, key_id: …}}``."""

    name = "encrypt"

    def __init__(self, rules: dict[str, EncryptRule]) -> None:
        self.rules = dict(rules)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        need_columns(schema, self.rules, "encrypt")
        for c, rule in self.rules.items():
            if c in key_of(schema) and not rule.deterministic:
                raise ValueError(f"encrypt: {c!r} is a key column; encrypt it with `deterministic: true` "
                                 "(a random nonce would give every change of a row a new key)")
        fields = [pa.field(f.name, pa.string(), nullable=f.nullable) if f.name in self.rules else f for f in schema]
        return pa.schema(fields, metadata=schema.metadata)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        schema = self.output_schema(batch.schema)
        columns = [_encrypt(col, self.rules[f.name]) if f.name in self.rules else col
                   for f, col in zip(batch.schema, batch.columns, strict=True)]
        return pa.RecordBatch.from_arrays(columns, schema=schema)


def decrypt(values: Any, keys: str | bytes | Iterable[str | bytes] | Mapping[str, str | bytes]) -> Any:
    """Decrypts values written by ``encrypt``.

    Args:
        values: one value (str), a list, or a pyarrow array of them; None stays None.
        keys: the key (base64 text or 32 bytes), several keys (rotation: each value names its
            key by id), or a mapping from key id to key (for ids set with ``key_id:``).

    Returns:
        The plaintext text(s) in the same shape as ``values``: a str, a list, or a pyarrow
        string array.

    Raises:
        ValueError: a value is not one ``encrypt`` wrote, names a key id not given, or does not
            decrypt with that key (tampered, or the wrong key).
    """
    by_id = _keyring(keys)
    if isinstance(values, str):
        return _decrypt_one(values, by_id)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return pa.array([None if v is None else _decrypt_one(v, by_id) for v in values.to_pylist()], pa.string())
    return [None if v is None else _decrypt_one(v, by_id) for v in values]


def _raw(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) and len(key) == 32 else parse_key(key.decode() if isinstance(key, bytes) else key)


def _keyring(keys: Any) -> dict[str, bytes]:
    if isinstance(keys, Mapping):
        return {str(k): _raw(v) for k, v in keys.items()}
    if isinstance(keys, (str, bytes)):
        keys = [keys]
    raws = [_raw(k) for k in keys]
    return {key_id(k): k for k in raws}


def _decrypt_one(value: str, by_id: dict[str, bytes]) -> str:
    parts = value.split(".", 3)
    if len(parts) != 4 or parts[0] != "v1" or parts[1] not in ("gcm", "siv"):
        raise ValueError("not a value written by `encrypt` (expected v1.gcm.… or v1.siv.…)")
    _, alg, kid, body = parts
    key = by_id.get(kid)
    if key is None:
        raise ValueError(f"the value was encrypted with key id {kid!r}, which was not given")
    blob = base64.urlsafe_b64decode(body)
    aead = AESGCMSIV(key) if alg == "siv" else AESGCM(key)
    try:
        plain = aead.decrypt(blob[:_NONCE], blob[_NONCE:], None)
    except InvalidTag:
        raise ValueError(f"the value does not decrypt with key {kid!r} (tampered, or another key with that id)") from None
    return plain.decode("utf-8", errors="surrogateescape")

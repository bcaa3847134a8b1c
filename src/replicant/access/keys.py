"""Master keys of the secret store, and encrypting a secret under them.

Keys come from ``REPLICANT_MASTER_KEY_FILE`` (a file, one key per line, ``#`` comments,
re-read at every use, so a running pipeline sees a key added or removed without a
restart) or else ``REPLICANT_MASTER_KEY`` (keys separated by commas). Each key is a
Fernet key (32 random bytes, URL-safe base64: ``replicant secret keygen``). The **first**
key encrypts; every key decrypts (:class:`~cryptography.fernet.MultiFernet`), which is
what makes rotation possible without downtime. A key's id is the first 8 hex digits of
its SHA-256: stored beside each ciphertext, it says which key a secret still needs.
Keys are never written to the state store, a log or an error.

A plaintext is ``name NUL value``: a ciphertext copied to another secret's row does not
decrypt as that secret.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from replicant.errors import ConfigError

if TYPE_CHECKING:  # imported where used: a run without ${secret:…} never loads it (6 MB RSS)
    from cryptography.fernet import MultiFernet

__all__ = ["MasterKeys", "load_master_keys", "generate_key", "key_id"]

ENV_KEY = "REPLICANT_MASTER_KEY"
ENV_KEY_FILE = "REPLICANT_MASTER_KEY_FILE"


def generate_key() -> str:
    """A new random master key (Fernet format)."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def key_id(key: str) -> str:
    """The public id of a key: 8 hex digits of its SHA-256 (reveals nothing usable)."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class MasterKeys:
    """The configured keys, newest (encrypting) first."""

    keys: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError(f"no master key: set {ENV_KEY_FILE} or {ENV_KEY} (`replicant secret keygen` prints a new key)")
        from cryptography.fernet import Fernet

        for i, k in enumerate(self.keys):
            try:
                Fernet(k.encode())
            except (ValueError, TypeError):
                raise ConfigError(f"master key {i + 1} is not a Fernet key (32 bytes, URL-safe base64): "
                                  "`replicant secret keygen` prints one") from None

    @property
    def ids(self) -> list[str]:
        return [key_id(k) for k in self.keys]

    @property
    def primary_id(self) -> str:
        return key_id(self.keys[0])

    def _fernet(self) -> MultiFernet:
        from cryptography.fernet import Fernet, MultiFernet

        return MultiFernet([Fernet(k.encode()) for k in self.keys])

    def encrypt(self, name: str, value: str) -> tuple[str, str]:
        """``(ciphertext, key id)`` of ``value`` as secret ``name``, under the first key."""
        return self._fernet().encrypt(f"{name}\0{value}".encode()).decode(), self.primary_id

    def decrypt(self, name: str, ciphertext: str, stored_key_id: str) -> str:
        """The value of secret ``name``.

        Raises:
            ConfigError: no configured key decrypts it (names the key id it needs, never a value).
        """
        from cryptography.fernet import InvalidToken

        try:
            plain = self._fernet().decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise ConfigError(f"secret {name} cannot be decrypted: it needs master key id {stored_key_id}, "
                              f"and the configured keys are {', '.join(self.ids)}") from None
        owner, sep, value = plain.partition("\0")
        if not sep or owner != name:
            raise ConfigError(f"secret {name} holds another secret's ciphertext: set it again")
        return value

    def rotate(self, ciphertext: str) -> str:
        """``ciphertext`` re-encrypted under the first key (decrypted by any)."""
        return self._fernet().rotate(ciphertext.encode()).decode()


def load_master_keys() -> MasterKeys:
    """The keys configured now (the key file is read at every call).

    Raises:
        ConfigError: none configured, the file cannot be read, or a key is malformed.
    """
    path = os.environ.get(ENV_KEY_FILE)
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read the master key file {ENV_KEY_FILE}={path}: {e.strerror}") from None
        keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    else:
        keys = [k.strip() for k in os.environ.get(ENV_KEY, "").split(",") if k.strip()]
    return MasterKeys(tuple(keys))

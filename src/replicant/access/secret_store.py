"""Where ``${secret:NAME}`` comes from: providers behind one small interface.

A provider is any object with ``get(name) -> str | None`` (``None``: not here). The CLI
installs a :class:`Chain` of the pipeline's :class:`EncryptedStore` (the state database,
Fernet under the master keys of :mod:`replicant.access.keys`) and, when
``REPLICANT_SECRETS_DIR`` is set, a :class:`DirectoryProvider` (one file per secret, as a
Kubernetes secret volume mounts them). A Vault or cloud key-vault provider is a class with
a ``get`` method (docs/secrets.md shows one). Every lookup happens when a connector
connects, so a changed or re-encrypted secret is picked up by the next connection.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

from replicant.access.keys import MasterKeys, load_master_keys
from replicant.errors import ConfigError
from replicant.secrets import _NAME, Secret, set_secret_store

__all__ = [
    "SecretProvider",
    "EncryptedStore",
    "EnvProvider",
    "DirectoryProvider",
    "Chain",
    "RotateResult",
    "pipeline_state_url",
    "sqlite_state_exists",
    "install_for_pipeline",
]


class SecretProvider(Protocol):
    """Looks a secret up by name: its value, or ``None`` when this provider does not have it."""

    def get(self, name: str) -> str | None: ...


class EnvProvider:
    """Secrets from environment variables ``PREFIX + NAME`` (default ``REPLICANT_SECRET_``)."""

    def __init__(self, prefix: str = "REPLICANT_SECRET_") -> None:
        self.prefix = prefix

    def get(self, name: str) -> str | None:
        return os.environ.get(self.prefix + name)


class DirectoryProvider:
    """Secrets as files ``DIR/NAME`` (a Kubernetes secret volume); one trailing newline dropped."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def get(self, name: str) -> str | None:
        if not _NAME.fullmatch(name):
            return None
        try:
            text = (self.directory / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        return text[:-1] if text.endswith("\n") else text


class Chain:
    """The first provider that has the secret answers; callable, as :func:`set_secret_store` wants."""

    def __init__(self, providers: Iterable[SecretProvider]) -> None:
        self.providers = list(providers)

    def get(self, name: str) -> str | None:
        for p in self.providers:
            value = p.get(name)
            if value is not None:
                return value
        return None

    __call__ = get


@dataclass(frozen=True)
class RotateResult:
    """What ``rotate`` did: secrets re-encrypted under ``key_id``, and the keys still needed."""

    key_id: str
    reencrypted: int
    still_needed: list[str]  # key ids other than key_id that some secret still needs (empty: old keys removable)


class EncryptedStore:
    """Secrets encrypted in a state database; the master keys are read at every use.

    Args:
        state: a :class:`~replicant.state.store.StateStore` or its URL (opened on first use).
        keys: fixed master keys (tests); default: :func:`~replicant.access.keys.load_master_keys` each time.
    """

    def __init__(self, state: Any, *, keys: MasterKeys | None = None) -> None:
        from replicant.state.store import StateStore

        self._store = state if isinstance(state, StateStore) else StateStore(state)
        self._keys = keys

    def _open(self) -> Any:
        return self._store.open()

    def keys(self) -> MasterKeys:
        return self._keys if self._keys is not None else load_master_keys()

    def _missing(self) -> bool:
        """A SQLite state that does not exist yet holds no secret (and a lookup must not create it)."""
        return self._store._engine is None and not sqlite_state_exists(self._store._url)

    def get(self, name: str) -> str | None:
        if self._missing():
            return None
        found = self._open().secret_ciphertext(name)
        if found is None:
            return None
        return self.keys().decrypt(name, *found)

    __call__ = get

    def set(self, name: str, value: str) -> None:
        """Stores ``value`` as secret ``name``, encrypted under the first master key."""
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{name!r} is not a secret name: letters, digits and _, not starting with a digit")
        self._open().put_secret(name, *self.keys().encrypt(name, value))

    def delete(self, name: str) -> bool:
        return bool(self._open().delete_secret(name))

    def list(self) -> list[dict[str, Any]]:
        """Name, key id, created and updated time of every secret (no value, no ciphertext)."""
        return [{k: r[k] for k in ("name", "key_id", "created_at", "updated_at")} for r in self._open().secret_rows()]

    def rotate(self) -> RotateResult:
        """Re-encrypts every secret not under the first key. Safe while pipelines run: a
        reader with the old and new keys decrypts either ciphertext; a secret set meanwhile
        is not overwritten (compare-and-swap per secret)."""
        keys = self.keys()
        done = 0
        for row in self._open().secret_rows():
            if row["key_id"] == keys.primary_id:
                continue
            keys.decrypt(row["name"], row["ciphertext"], row["key_id"])  # name check; says which key is missing
            if self._store.replace_secret_ciphertext(row["name"], row["ciphertext"], keys.rotate(row["ciphertext"]), keys.primary_id):
                done += 1
        needed = sorted({r["key_id"] for r in self._store.secret_rows()} - {keys.primary_id})
        return RotateResult(keys.primary_id, done, needed)

    def close(self) -> None:
        self._store.close()


def sqlite_state_exists(url: Any) -> bool:
    """False only for a SQLite state whose file does not exist yet (a server state: True)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return True
    return Path(u.database).expanduser().exists()


def pipeline_state_url(path: str | os.PathLike[str]) -> str | None:
    """The state store URL of the pipeline file at ``path`` (``None`` when the file cannot
    be read or its ``state`` cannot be resolved: loading it then says why)."""
    from replicant.runtime import state_url
    from replicant.yaml_load import load_yaml

    p = Path(path)
    try:
        data = load_yaml(p.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - the full load reports every problem of the file
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pipeline"), str):
        return None
    state = data.get("state")
    if state is not None and (not isinstance(state, str) or "${secret:" in state):
        return None
    cfg = SimpleNamespace(pipeline=data["pipeline"], base_dir=p.resolve().parent, state=None if state is None else Secret(state))
    try:
        return state_url(cfg)  # type: ignore[arg-type]
    except ConfigError:
        return None


_installed: dict[str, Chain] = {}


def install_for_pipeline(path: str | os.PathLike[str]) -> Chain | None:
    """Installs the secret providers of the pipeline file at ``path`` (its encrypted store,
    then ``REPLICANT_SECRETS_DIR`` if set) as the resolver of ``${secret:…}``. One chain per
    state URL is kept for the process. Returns it, or ``None`` when the state is unknown."""
    url = pipeline_state_url(path)
    if url is None:
        return None
    chain = _installed.get(url)
    if chain is None:
        providers: list[SecretProvider] = [EncryptedStore(url)]
        if os.environ.get("REPLICANT_SECRETS_DIR"):
            providers.append(DirectoryProvider(os.environ["REPLICANT_SECRETS_DIR"]))
        chain = _installed[url] = Chain(providers)
    set_secret_store(chain)
    return chain

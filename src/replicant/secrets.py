"""Secrets by reference, resolved when a connector reads them, never at parse time.

A pipeline file names a secret by reference: ``${env:NAME}`` (an environment variable)
or ``${secret:NAME}`` (the secret store of ``replicant serve``; until a store is
installed with :func:`set_secret_store`, such a reference is an error). A :class:`Secret`
keeps the text *with its references*; :meth:`Secret.get_secret_value` resolves them at
each call, so the resolved value lives only as long as the caller (a driver connecting)
holds it, a rotated secret is picked up by the next connection, and a config object
never contains a password: its repr, ``model_dump()`` and any error built from it show
``**********`` or the reference, not the value.

:func:`reference_problems` lets the parser check every reference exists when the file
is loaded (each problem with its key path), without keeping any value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from pydantic import GetCoreSchemaHandler, SecretStr
from pydantic_core import core_schema

from replicant.errors import ConfigError

__all__ = ["REFERENCE", "Secret", "SecretStore", "reference_problems", "resolve", "resolve_all", "set_secret_store"]

#: ``${env:NAME}`` or ``${secret:NAME}``.
REFERENCE = re.compile(r"\$\{(?P<kind>env|secret):(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")

#: Looks a secret up by name: its value, or ``None`` when the store has no such secret.
SecretStore = Callable[[str], "str | None"]

_store: SecretStore | None = None


def set_secret_store(store: SecretStore | None) -> None:
    """Installs the store that resolves ``${secret:NAME}`` (``None`` removes it).

    The seam for ``replicant serve``'s encrypted secret store: until one is installed a
    ``${secret:…}`` reference is reported as a problem when the pipeline is loaded.
    """
    global _store
    _store = store


def _lookup(kind: str, name: str) -> tuple[str | None, str]:
    """The value of one reference (``None`` if absent) and the message saying why it is absent."""
    if kind == "env":
        return os.environ.get(name), f"environment variable {name} is not set"
    if _store is None:
        return None, f"${{secret:{name}}} needs the secret store of `replicant serve`; use ${{env:{name}}}"
    return _store(name), f"secret {name} is not in the secret store"


def reference_problems(text: str) -> list[str]:
    """What is wrong with the references in ``text`` (empty: each one resolves now).

    Checks existence only; no value is returned or kept.
    """
    found = []
    for m in REFERENCE.finditer(text):
        value, why = _lookup(m["kind"], m["name"])
        if value is None:
            found.append(why)
    return found


def resolve(text: str) -> str:
    """``text`` with every reference replaced by its current value.

    Raises:
        ConfigError: a reference does not resolve (the variable was unset since the
            pipeline was loaded, or no secret store is installed); names the reference,
            never a value.
    """

    def value(m: re.Match[str]) -> str:
        found, why = _lookup(m["kind"], m["name"])
        if found is None:
            raise ConfigError(f"cannot resolve a secret: {why}")
        return found

    return REFERENCE.sub(value, text)


def resolve_all(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, strings, :class:`~pydantic.SecretStr`) with every
    reference resolved and every secret unwrapped: for options handed to a library as
    they are (fsspec ``storage_options``). Call it when connecting; do not keep the result."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, str):
        return resolve(value)
    if isinstance(value, dict):
        return {k: resolve_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_all(v) for v in value]
    return value


class Secret(SecretStr):
    """A secret text that may hold references, resolved by :meth:`get_secret_value`.

    Masked like :class:`~pydantic.SecretStr` (``Secret('**********')``) in repr, str and
    JSON dumps. A field typed ``Secret`` also accepts a plain ``SecretStr``. Two secrets
    are equal when their references are. Pickled (to a worker process) it keeps the
    reference, resolved in that process's environment.
    """

    def get_secret_value(self) -> str:
        """The secret with its references resolved now (a new lookup at every call).

        Raises:
            ConfigError: a reference no longer resolves (see :func:`resolve`).
        """
        return resolve(super().get_secret_value())

    @property
    def reference(self) -> str:
        """The unresolved text (``postgresql://app:${env:PGPASSWORD}@h/db``).

        Still secret when the file wrote a value in clear instead of a reference: never log it.
        """
        return super().get_secret_value()

    def __eq__(self, other: object) -> bool:
        # by reference: comparing configs must neither resolve a secret nor fail on an unset one
        return isinstance(other, Secret) and self.reference == other.reference

    def __hash__(self) -> int:
        return hash(self.reference)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: type[Any], handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        def unwrap(value: Any) -> Any:
            if isinstance(value, SecretStr) and not isinstance(value, Secret):
                return SecretStr.get_secret_value(value)
            return value

        return core_schema.no_info_before_validator_function(unwrap, super().__get_pydantic_core_schema__(source, handler))

"""Secrets by reference, resolved when a connector reads them, never at parse time.

A pipeline file names a secret by reference: ``${env:NAME}`` (an environment variable)
``${file:PATH}`` (a file's content: a Kubernetes secret mount) or ``${secret:NAME}`` (the
encrypted store in the state database, :mod:`replicant.access.secret_store`, which the CLI
installs with :func:`set_secret_store`; without a store such a reference is an error). A :class:`Secret`
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
from urllib.parse import quote, unquote

from pydantic import GetCoreSchemaHandler, SecretStr
from pydantic_core import core_schema

from replicant.errors import ConfigError

__all__ = [
    "REFERENCE",
    "Secret",
    "SecretStore",
    "reference_problems",
    "resolve",
    "resolve_all",
    "set_secret_store",
    "split_userinfo",
    "userinfo_problem",
]

#: ``${env:NAME}``, ``${secret:NAME}`` or ``${file:PATH}`` (a file's content, e.g. a Kubernetes
#: secret mount; one trailing newline dropped).
REFERENCE = re.compile(r"\$\{(?P<kind>env|secret|file):(?P<name>[A-Za-z_][A-Za-z0-9_]*|(?<=file:)[^}\s]+)\}")

#: Where a reference may start: every ``${`` must open a well-formed reference.
_OPENING = re.compile(r"\$\{")
_CLOSED = re.compile(r"\$\{(?P<body>[^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: The user info of a URL *as written* (references unresolved): ``app:${env:PW}`` of
#: ``postgresql://app:${env:PW}@host/db``. References hold no ``/?#@``, so this is exact.
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://(?P<userinfo>[^/?#@\s]*)@")
#: What a value substituted into user info keeps unencoded (RFC 3986 sub-delims and ``:``,
#: so ``${env:CREDS}`` may hold ``user:password``); ``@ / ? # %`` and the rest are encoded.
_USERINFO_SAFE = "!$&'()*+,;=:"

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
    if kind == "file":
        return _read_file(name), f"file {name} cannot be read"
    if _store is None:
        return None, (f"${{secret:{name}}} needs a secret store: run through `replicant` (which installs the "
                      f"pipeline's encrypted store), or use ${{env:{name}}} and set the environment variable {name}")
    return _store(name), f"secret {name} is not in the secret store"


def _read_file(path: str) -> str | None:
    """The content of a secret file (one trailing newline dropped), ``None`` when unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    return text[:-1] if text.endswith("\n") else text


def reference_problems(text: str, *, must_resolve: bool = True) -> list[str]:
    """What is wrong with the references in ``text`` (empty: each one resolves now).

    Every ``${`` must open a well-formed reference: ``${NAME}`` (no kind), ``${env:bad
    name}``, an unknown kind (``${vault:X}``) and an unclosed ``${env:X`` are problems
    saying what to write instead, never taken literally. Checks existence only (not with
    ``must_resolve=False``: then only the form is checked); no value is returned or kept.
    """
    found = []
    for opening in _OPENING.finditer(text):
        m = REFERENCE.match(text, opening.start())
        if m is None:
            found.append(_malformed(text, opening.start()))
            continue
        if not must_resolve:
            continue
        value, why = _lookup(m["kind"], m["name"])
        if value is None:
            found.append(why)
    return found


def _malformed(text: str, start: int) -> str:
    """Why the ``${`` at ``start`` is not a reference, and what to write instead."""
    closed = _CLOSED.match(text, start)
    if closed is None:
        # the name-like start only: an unclosed brace must not quote the rest (a password?)
        head = re.match(r"[A-Za-z0-9_:]*", text[start + 2:])
        shown = "${" + (head[0] if head else "")
        kind, _, name = shown[2:].rpartition(":")
        fix = f"${{{kind or 'env'}:{name or 'NAME'}}}"
        return f"unclosed reference {shown!r}: write {fix} (a reference ends with }})"
    body = closed["body"]
    kind, colon, name = body.partition(":")
    if not colon:
        fix = f"${{env:{body}}}" if _NAME.fullmatch(body) else "${env:NAME}"
        return f"{closed[0]!r} is not a reference (no kind): write {fix} for an environment variable"
    if kind not in ("env", "secret", "file"):
        shown_name = name if _NAME.fullmatch(name) else "NAME"
        return (f"unknown reference kind {kind!r} in {closed[0]!r}: write ${{env:{shown_name}}} "
                f"(an environment variable) or ${{secret:{shown_name}}}")
    return (f"{name!r} is not a valid name in {closed[0]!r}: a name has letters, digits and _ "
            f"and does not start with a digit, e.g. ${{{kind}:{_as_name(name)}}}")


def _as_name(text: str) -> str:
    """``text`` made a valid name (``bad name`` → ``bad_name``, ``9x`` → ``_9x``)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text) or "NAME"
    return "_" + name if name[0].isdigit() else name


def userinfo_problem(url: str) -> str | None:
    """Why a server URL cannot mean what was written, when a password in it was not
    percent-encoded (written in clear, or a whole URL in one variable): an ``@`` left in
    the user info, a ``#``, or a password cut at its ``/ ? #`` and taken for a host and
    port. ``None`` when the URL is well-formed. The message never quotes the URL.
    """
    _, sep, rest = url.partition("://")
    if not sep:
        return None
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, hostport = authority.rpartition("@")
    path = rest[len(authority):].split("?", 1)[0]
    fix = (
        "percent-encode user and password (@ as %40, / as %2F, ? as %3F, # as %23, % as %25), or write the "
        "password as a reference, user:${env:PASSWORD}@host, which replicant encodes"
    )
    if "@" in userinfo:
        return f"more than one @ before the host (an unencoded @ in the password?): {fix}"
    if "#" in rest:
        return f"a # in the URL (an unencoded # in the password?): {fix}"
    for host in hostport.split(","):
        port = host.rpartition("]")[2] if host.startswith("[") else host
        port = port.rpartition(":")[2] if ":" in port else ""
        if port and not port.isdigit():
            return f"the port is not a number (a password cut at an unencoded / or ?): {fix}"
    if not at and "@" in path:
        return f"an @ after the host (a password cut at an unencoded / or ?): {fix}"
    return None


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without user info, user, password)``, user and password percent-decoded (None
    when absent): for a client that reads a URL's user info without decoding it (nats-py),
    given the credentials as arguments instead. Call it when connecting; do not keep them.
    """
    scheme, sep, rest = url.partition("://")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if not sep or "@" not in authority:
        return url, None, None
    userinfo, _, hostport = authority.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return f"{scheme}://{hostport}{rest[len(authority):]}", unquote(user), unquote(password) if colon else None


def resolve(text: str) -> str:
    """``text`` with every reference replaced by its current value.

    A value substituted into the user info of a URL (``postgresql://app:${env:PW}@host/db``)
    is percent-encoded (``p@ss/w#1`` → ``p%40ss%2Fw%231``), so the driver decodes exactly
    the password and no part of it becomes a host, port or path; elsewhere (a whole URL in
    one variable, a path, a token) the value is used as is. A value is always taken
    literally: a variable holding an already-encoded password is encoded again.

    Raises:
        ConfigError: a reference does not resolve (the variable was unset since the
            pipeline was loaded, or no secret store is installed); names the reference,
            never a value.
    """

    userinfo = [m.span("userinfo") for m in _USERINFO.finditer(text)]

    def value(m: re.Match[str]) -> str:
        found, why = _lookup(m["kind"], m["name"])
        if found is None:
            raise ConfigError(f"cannot resolve a secret: {why}")
        if any(start <= m.start() and m.end() <= end for start, end in userinfo):
            return quote(found, safe=_USERINFO_SAFE)
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

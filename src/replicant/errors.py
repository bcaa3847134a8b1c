"""The one exception tree of replicant.

Branch by what the caller should do::

    ReplicantError
    ├── ConfigError          fail at start, report every problem at once, with the key path
    ├── ConnectionError      could not reach a system; says which, never the password
    ├── RetriableError       transient: retry with back-off (a mix-in, so a driver error keeps its kind)
    │   └── DiskFullError    the staging log's or state store's disk is full: wait for space, retry
    ├── FatalError           stop this stream, keep others running, say what to do
    │   └── FencedError      a worker lost its run's lease: its state writes are refused
    │       └── DestinationFencedError  another writer moved a destination's offset: the write is refused
    ├── RecordError          one bad record: goes to the dead-letter store with its origin
    └── SchemaDriftError     a change the destination cannot absorb

Errors are picklable (workers are processes): every subclass keeps its whole state in
``args`` or passes keyword attributes through ``__reduce__``.
"""

from __future__ import annotations

import re

__all__ = [
    "ReplicantError",
    "ConfigError",
    "ConnectionError",
    "RetriableError",
    "retry_delay",
    "DiskFullError",
    "FatalError",
    "FencedError",
    "DestinationFencedError",
    "RecordError",
    "SchemaDriftError",
    "redact",
]

#: ``scheme://user:password@``: the password runs to the *last* ``@`` before white space,
#: so one written unencoded (``p@ss/w#1``) is masked whole, not up to its own ``@`` or ``/``
#: (masking a little too much, say an ``@`` in a query, is the safe mistake).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>\S*)(?P<tail>@)")
_KV_PASSWORD = re.compile(r"(?i)(?P<head>\b(?:password|passwd|pwd)\s*=\s*)(?P<pw>'[^']*'|\"[^\"]*\"|[^\s;,]+)")


def redact(text: str) -> str:
    """Masks passwords in URLs (``scheme://user:***@host``) and ``password=...`` pairs.

    A password that a driver split into other parts (a host ``tail@127.0.0.1`` after a
    bare ``@``) cannot be recognised here: references are encoded into URLs for that
    (:func:`replicant.secrets.resolve`)."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}***", text)


class ReplicantError(Exception):
    """Base of every error replicant raises on purpose.

    The message is redacted (no passwords) when the error is created, so it is safe
    to print or log anywhere.
    """

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(redact(str(message)), *args)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return self.message


class ConfigError(ReplicantError):
    """The pipeline file or arguments are wrong. Carries every problem found, each with its key path.

    Args:
        message: a summary line.
        problems: ``(key_path, what_is_wrong)`` pairs, e.g. ``("source.streams[2].table", "no such table")``.
    """

    def __init__(self, message: str = "", problems: list[tuple[str, str]] | tuple = ()) -> None:
        super().__init__(message, tuple(tuple(p) for p in problems))

    @property
    def problems(self) -> tuple[tuple[str, str], ...]:
        return self.args[1] if len(self.args) > 1 else ()

    def __str__(self) -> str:
        lines = [self.message] if self.message else []
        lines += [f"  {key}: {redact(what)}" for key, what in self.problems]
        return "\n".join(lines)


class ConnectionError(ReplicantError):  # deliberately shadows the builtin
    """A system could not be reached or refused the login. The message names it, never the password."""


class RetriableError(ReplicantError):
    """A transient failure: retrying with back-off may succeed (:func:`retry_delay`)."""


class DiskFullError(RetriableError):
    """No space left where the staging log or the state store writes (``ENOSPC``, ``EDQUOT``).

    Nothing was lost: the failed append was undone and no checkpoint moved. ``--follow``
    waits and retries with back-off until there is space again, like a destination outage;
    a plain ``run`` stops that stream with this error."""


def retry_delay(failures: int, *, most: float = 30.0) -> float:
    """Seconds to wait before the next attempt after ``failures`` failures in a row:
    exponential from 1 s, at most ``most``."""
    return min(most, 0.5 * 2 ** min(failures, 6))


class FatalError(ReplicantError):
    """Stop this stream (others keep running); the message says what to do."""


class FencedError(FatalError):
    """A worker's lease of a run was taken over (it was presumed dead): the state store refuses
    its checkpoint, offset and run writes, so only the new owner moves the run on."""


class DestinationFencedError(FencedError):
    """A transactional destination's offset row moved under this writer (another writer
    delivered the stream meanwhile: a worker that took over the run, a second run of the
    pipeline): the write's transaction, rows and offset, was rolled back. The message names
    destination, stream, the offset expected and the one found."""


class RecordError(ReplicantError):
    """One bad record. It goes to the dead-letter store with its origin and reason."""

    def __init__(self, message: str = "", origin: str = "") -> None:
        super().__init__(message, origin)

    @property
    def origin(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else ""


class SchemaDriftError(ReplicantError):
    """The source schema changed in a way the destination cannot absorb."""

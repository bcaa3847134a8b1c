"""Translation of the PostgreSQL destination's driver errors (psycopg) into :mod:`replicant.errors`.

The table, by SQLSTATE class (https://www.postgresql.org/docs/current/errcodes-appendix.html):

=========================================  ===================  =========================
SQLSTATE                                   meaning              raised as
=========================================  ===================  =========================
``40001``, ``40P01``, ``55P03``, ``57014``  serialization,        :class:`RetriableError`
                                           deadlock, lock/stmt
                                           timeout
``08*`` except ``08P01``; ``57P01..03``;   connection lost,     :class:`RetriableError`
no SQLSTATE on an I/O error                server shutting down (the connection is dropped)
``53*``                                    out of resources     :class:`RetriableError`
``28*``                                    bad login            :class:`ConnectionError`
anything else (``08P01`` protocol/COPY     the data or schema   :class:`FatalError`
format, ``22*`` data, ``23*`` constraint,
``42*`` syntax/undefined…)
=========================================  ===================  =========================

During a write, :func:`is_content_error` (classes ``22`` and ``23``) marks the error as one
of the rows' values: the SQL base then finds the rejected rows and dead-letters them
(:mod:`replicant.destinations._bad_records`) instead of raising the ``FatalError``.

Messages never carry the connection URL or password: libpq's messages do not contain
them, and every :class:`~replicant.errors.ReplicantError` redacts URLs on creation anyway.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from replicant.errors import ConnectionError, FatalError, ReplicantError, RetriableError

__all__ = ["describe_url", "is_connection_lost", "is_content_error", "message_of", "sqlstate_of", "translate"]

_RETRY_STATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03"})


def sqlstate_of(exc: BaseException) -> str:
    return (getattr(exc, "sqlstate", None) or "").upper()


def is_content_error(exc: BaseException) -> bool:
    """True when the server rejected the *values* of a write (SQLSTATE class ``22`` data
    exception, ``23`` integrity constraint violation): the rows go to the dead letters
    (:mod:`replicant.destinations._bad_records`) instead of failing the stream."""
    return sqlstate_of(exc)[:2] in ("22", "23")


def is_connection_lost(exc: BaseException) -> bool:
    """True when the session is gone and the connection must be reopened."""
    state = sqlstate_of(exc)
    if state.startswith("08"):
        return state != "08P01"
    if state in ("57P01", "57P02", "57P03"):
        return True
    if not state:
        text = str(exc).lower()
        return any(
            s in text
            for s in (
                "server closed the connection",
                "connection to server",
                "no connection",
                "terminating connection",
                "ssl syscall",
                "connection is lost",
                "connection is closed",
            )
        )
    return False


def message_of(exc: BaseException) -> str:
    """The server's own message (primary, detail, hint) when the driver has it, else its text."""
    fields = _diagnostics(exc)
    if fields.get("primary"):
        parts = [fields["primary"]]
        for tag, label in (("detail", "detail"), ("hint", "hint"), ("context", "context")):
            if fields.get(tag):
                parts.append(f"{label}: {fields[tag].strip()}")
        state = sqlstate_of(exc)
        return "; ".join(parts) + (f" (SQLSTATE {state})" if state else "")
    return " ".join(str(exc).split())


def _diagnostics(exc: BaseException) -> dict[str, str]:
    """The server's error fields (psycopg's ``diag``); empty for an error the server did not send."""
    diag = getattr(exc, "diag", None)
    if diag is None:
        return {}
    return {
        "primary": diag.message_primary or "",
        "detail": diag.message_detail or "",
        "hint": diag.message_hint or "",
        "context": diag.context or "",
    }


def describe_url(url: str) -> str:
    """``host H port P database D user U`` of a PostgreSQL URL; never the password."""
    try:
        parts = urlsplit(url)
        host, port, user = parts.hostname or "localhost", parts.port or 5432, unquote(parts.username or "")
    except ValueError:
        return "PostgreSQL (unparsable URL)"
    db = unquote(parts.path.lstrip("/")) or user or "postgres"
    return f"PostgreSQL at host {host} port {port}, database {db!r}, user {user or '(default)'!r}"


def translate(exc: BaseException, context: str) -> ReplicantError:
    """The replicant error for a driver error; ``context`` says where (destination, stream, table, step)."""
    state = sqlstate_of(exc)
    msg = message_of(exc)
    if state.startswith("28"):
        return ConnectionError(f"{context}: login refused: {msg}")
    if state in _RETRY_STATES or state.startswith("53") or is_connection_lost(exc):
        return RetriableError(f"{context}: transient failure, retry: {msg}")
    return FatalError(f"{context}: {msg}")

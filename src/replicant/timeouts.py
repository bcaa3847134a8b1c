"""Connect timeouts shared by the network connectors (``connect_timeout:`` on ``source:`` and
on each destination; default 10 s).

A host that accepts TCP but never answers (a black hole: a firewall, a half-dead server)
must fail the connection within the configured time, with an error that names the host and
the key to change, instead of hanging in the driver for as long as the operating system's
TCP timers allow (PostgreSQL: 14 min; MySQL: forever, pymysql reads the greeting without a
timeout).
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT", "libpq_seconds", "libpq_url", "pymysql_timeouts", "set_pymysql_read_timeout", "timed_out", "timeout_hint",
]

#: Seconds to connect and log in when the pipeline file does not say.
DEFAULT_CONNECT_TIMEOUT = 10.0


def libpq_seconds(seconds: float) -> int:
    """libpq's ``connect_timeout`` is whole seconds, and it treats 1 as 2."""
    return max(2, math.ceil(seconds))


def libpq_url(url: str, seconds: float) -> str:
    """``url`` (``postgresql://…``) with ``connect_timeout`` set, unless the URL sets its own.

    libpq's ``connect_timeout`` bounds each connection attempt as a whole: TCP, TLS, the
    startup packet and authentication (https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNECT-CONNECT-TIMEOUT)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "connect_timeout" for k, _ in query):
        return url
    query.append(("connect_timeout", str(libpq_seconds(seconds))))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/:@")))


def pymysql_timeouts(seconds: float) -> dict[str, Any]:
    """``pymysql.connect`` keywords that bound the whole login by ``seconds``: TCP connect
    (``connect_timeout``) and the server's greeting and login answers, which pymysql reads
    with ``read_timeout`` (None by default: a black hole hangs forever). After the login,
    :func:`set_pymysql_read_timeout` lifts the read limit again for long queries."""
    return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}


def set_pymysql_read_timeout(conn: Any, seconds: float | None) -> None:
    """Sets a logged-in pymysql connection's read and write timeouts (None: no limit).

    pymysql has no public setter; it applies ``_read_timeout``/``_write_timeout`` to the socket
    before each read and write (pymysql/connections.py ``_read_bytes``/``_write_bytes``)."""
    conn._read_timeout = seconds
    conn._write_timeout = seconds


def timed_out(reason: str) -> bool:
    """Whether a driver's connection failure says the time ran out."""
    text = reason.lower()
    return "timeout expired" in text or "timed out" in text


def timeout_hint(seconds: float, key: str) -> str:
    """What to say when a connection timed out: the time and the key that sets it."""
    return f"no answer within {seconds:g} s (is the host right and the server up? `{key}` sets the time)"

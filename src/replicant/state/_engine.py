"""Connecting the state store: URL normalisation, SQLite connection setup, error text."""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine

from replicant.errors import ConfigError, redact

__all__ = ["configure_sqlite", "first_line", "normalise_url"]

_SQLITE_BUSY_TIMEOUT_MS = 30_000
_PG_DRIVER = "postgresql+psycopg"


def normalise_url(url: str | os.PathLike[str]) -> URL:
    """Parses the store URL, choosing psycopg 3 for PostgreSQL; a bare path means SQLite."""
    text = os.fspath(url)
    if "://" not in text:
        return URL.create("sqlite", database=text)
    try:
        parsed = sa.make_url(text)
    except sa_exc.ArgumentError:
        raise ConfigError(f"state store URL is not a valid URL: {redact(text)}") from None
    driver = parsed.drivername
    if driver in ("postgresql", "postgres", _PG_DRIVER):
        return parsed.set(drivername=_PG_DRIVER)
    if driver in ("sqlite", "sqlite+pysqlite"):
        if parsed.database in (None, "", ":memory:") or "mode=memory" in text:
            raise ConfigError("state store: an in-memory SQLite database cannot be shared; give a file, sqlite:///path")
        return parsed
    raise ConfigError(
        f"state store URL scheme {driver!r} is not supported: use sqlite:///path, "
        "postgresql:// or postgresql+psycopg://"
    )


def first_line(exc: sa_exc.DBAPIError) -> str:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return redact(text.strip().splitlines()[0] if text.strip() else type(exc.orig).__name__)


def configure_sqlite(engine: Engine) -> None:
    """WAL, busy timeout, foreign keys; replicant, not sqlite3, emits BEGIN.

    sqlite3's legacy transaction control neither begins a transaction before a SELECT nor
    lets us choose ``BEGIN IMMEDIATE``; SQLAlchemy's documented recipe hands BEGIN to us:
    https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#sqlite-enabling-transactions
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a commit survives a process crash without an fsync each; a power
            # loss may drop the newest commits, always a suffix, and nothing here is the only
            # copy of what it records (checkpoints trail the staging log; a lost offset of a
            # non-transactional destination re-delivers under the same idempotency keys).
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("replicant_begin", "BEGIN"))

"""Fixtures for the SQL source conformance suite: one :class:`dbs.Db` handle per dialect.

``chinook_db`` is parametrized over PostgreSQL, MariaDB and SQLite (Chinook loaded, a fresh
copy per test); ``empty_db`` likewise over fresh empty databases.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from .dbs import KINDS, Db


def _sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(Path(path).resolve())


@pytest.fixture(params=KINDS)
def chinook_db(request: pytest.FixtureRequest) -> Iterator[Db]:
    """Chinook in each dialect, a fresh copy per test."""
    kind = request.param
    if kind == "postgres":
        yield Db(kind, request.getfixturevalue("chinook_pg_url"))
    elif kind == "mysql":
        yield Db(kind, request.getfixturevalue("chinook_mysql_url"))
    else:
        yield Db(kind, _sqlite_url(request.getfixturevalue("chinook_sqlite_path")))


@pytest.fixture(params=KINDS)
def empty_db(request: pytest.FixtureRequest) -> Iterator[Db]:
    """A fresh empty database in each dialect."""
    kind = request.param
    if kind == "postgres":
        yield Db(kind, request.getfixturevalue("pg_url"))
    elif kind == "mysql":
        yield Db(kind, request.getfixturevalue("mysql_url"))
    else:
        path = request.getfixturevalue("sqlite_path")
        sqlite3.connect(path).close()
        yield Db(kind, _sqlite_url(path))

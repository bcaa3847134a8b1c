"""Shared fixtures: throwaway PostgreSQL and MariaDB servers, fresh databases, Chinook.

Session fixtures (started lazily, only when a test asks for them):

- ``pg_server``: :class:`servers.PgServer` (``.host``, ``.port``, ``.user`` =
  "postgres", ``.url(dbname)``, ``.connect(dbname)``); ``wal_level=logical``.
- ``mysql_server``: :class:`servers.MysqlServer` (``.host``, ``.port``,
  ``.user`` = "root", ``.url(dbname)``, ``.connect(dbname)``); ROW binlog.

- ``nats_server``: :class:`servers.NatsServer` (``.host``, ``.port``, ``.url``
  = "nats://127.0.0.1:PORT"), JetStream enabled. ``nats_url``: its URL. One
  server is shared by the session: use ``unique_name`` for streams/subjects.

Set ``REPLICANT_TEST_PG_URL`` / ``REPLICANT_TEST_MYSQL_URL`` /
``REPLICANT_TEST_NATS_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``)
to use an existing server instead; it must allow CREATE/DROP DATABASE, and the
tests that need them expect ``wal_level=logical`` and a ROW binlog.

Function fixtures, each unique to the test and dropped at teardown:

- ``pg_url`` / ``mysql_url``: URL of a fresh, empty database.
- ``sqlite_path``: path of a not yet existing SQLite file in ``tmp_path``.
- ``chinook_pg_url`` / ``chinook_mysql_url`` / ``chinook_sqlite_path``: a fresh
  database (file) holding Chinook, copied from a template loaded once per session.
- ``chinook_counts``: ``{lower_snake_table: rows}`` for Chinook's 11 tables.
- ``unique_name``: a lower-case identifier unique to the test and run.
- ``api``: the http source's test API (:mod:`sources.http_api`), a fresh server on a free port.
- ``tap_postgres`` (session): a Singer tap from PyPI in a throwaway venv (skips if it cannot install).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

if __package__:  # tests/ turned into a package
    from . import datasets, servers
    from .cdc._pipelines import dest_database, slot_pipeline
else:  # default rootdir layout: pytest puts tests/ on sys.path
    import datasets
    import servers
    from cdc._pipelines import dest_database, slot_pipeline

_log = logging.getLogger(__name__)
_counter = itertools.count(1)


def unique_db_name(request: pytest.FixtureRequest, prefix: str = "t") -> str:
    """Return a lower-case database name unique to this test and run (≤ 63 chars)."""
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:32]
    return f"{prefix}{next(_counter):04d}_{slug}_{uuid.uuid4().hex[:6]}"


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def pg_server() -> Iterator[servers.PgServer]:
    """A PostgreSQL server for the whole session (throwaway unless overridden)."""
    url = os.environ.get("REPLICANT_TEST_PG_URL")
    server = servers.existing_postgres(url) if url else servers.start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[servers.MysqlServer]:
    """A MariaDB server for the whole session (throwaway unless overridden)."""
    url = os.environ.get("REPLICANT_TEST_MYSQL_URL")
    server = servers.existing_mysql(url) if url else servers.start_mysql()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[servers.NatsServer]:
    """A NATS JetStream server for the whole session (throwaway unless overridden)."""
    url = os.environ.get("REPLICANT_TEST_NATS_URL")
    server = servers.existing_nats(url) if url else servers.start_nats()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: servers.NatsServer) -> str:
    """URL of the session's NATS server (shared: name streams with ``unique_name``)."""
    return nats_server.url


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A lower-case identifier (``[a-z0-9_]``, ≤ 48 chars) unique to this test and run."""
    return unique_db_name(request, "n")


# --------------------------------------------------------------------------- PostgreSQL


def _drop_pg_database(server: servers.PgServer, name: str) -> None:
    """Teardown drop: a failure is logged, not raised, so it never hides the test outcome."""
    try:
        server.drop_database(name)
    except psycopg.Error as exc:
        _log.warning("could not drop PostgreSQL test database %s: %s", name, exc)


@pytest.fixture
def pg_url(pg_server: servers.PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database unique to the test."""
    name = unique_db_name(request)
    pg_server.create_database(name)
    try:
        yield pg_server.url(name)
    finally:
        _drop_pg_database(pg_server, name)


@pytest.fixture
def dest_url(pg_server: servers.PgServer, unique_name: str) -> Iterator[str]:
    """A fresh destination database on the test PostgreSQL server, dropped afterwards."""
    with dest_database(pg_server, f"dst_{unique_name}"[:60]) as url:
        yield url


@pytest.fixture
def pipeline_name(pg_url: str, unique_name: str) -> Iterator[str]:
    """A pipeline name of the test's own (replication slots are per server, not per database),
    its slot dropped afterwards."""
    with slot_pipeline(pg_url, f"p_{unique_name}") as name:
        yield name


@pytest.fixture(scope="session")
def _chinook_pg_template(pg_server: servers.PgServer) -> Iterator[str]:
    name = f"chinook_template_{uuid.uuid4().hex[:6]}"
    datasets.load_chinook_pg(pg_server, name)
    try:
        yield name
    finally:
        _drop_pg_database(pg_server, name)


@pytest.fixture
def chinook_pg_url(
    pg_server: servers.PgServer, _chinook_pg_template: str, request: pytest.FixtureRequest
) -> Iterator[str]:
    """URL of a fresh PostgreSQL database holding Chinook (lower snake_case tables)."""
    name = unique_db_name(request, "chinook")
    pg_server.create_database(name, template=_chinook_pg_template)
    try:
        yield pg_server.url(name)
    finally:
        _drop_pg_database(pg_server, name)


# --------------------------------------------------------------------------- MariaDB


def _drop_mysql_database(server: servers.MysqlServer, name: str) -> None:
    """Teardown drop: a failure is logged, not raised, so it never hides the test outcome."""
    try:
        server.drop_database(name)
    except pymysql.MySQLError as exc:
        _log.warning("could not drop MariaDB test database %s: %s", name, exc)


@pytest.fixture
def mysql_url(mysql_server: servers.MysqlServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fresh, empty MariaDB database unique to the test."""
    name = unique_db_name(request)
    mysql_server.create_database(name)
    try:
        yield mysql_server.url(name)
    finally:
        _drop_mysql_database(mysql_server, name)


@pytest.fixture(scope="session")
def _chinook_mysql_template(mysql_server: servers.MysqlServer) -> Iterator[datasets.MysqlTemplate]:
    name = f"chinook_template_{uuid.uuid4().hex[:6]}"
    datasets.load_chinook_mysql(mysql_server, name)
    try:
        yield datasets.MysqlTemplate(mysql_server, name)
    finally:
        _drop_mysql_database(mysql_server, name)


@pytest.fixture
def chinook_mysql_url(
    mysql_server: servers.MysqlServer,
    _chinook_mysql_template: datasets.MysqlTemplate,
    request: pytest.FixtureRequest,
) -> Iterator[str]:
    """URL of a fresh MariaDB database holding Chinook (PascalCase tables)."""
    name = unique_db_name(request, "chinook")
    try:
        _chinook_mysql_template.clone(name)
        yield mysql_server.url(name)
    finally:
        _drop_mysql_database(mysql_server, name)


# --------------------------------------------------------------------------- SQLite


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """Path of a SQLite database file that does not exist yet, in ``tmp_path``."""
    return tmp_path / "test.sqlite"


@pytest.fixture
def chinook_sqlite_path(tmp_path: Path) -> Path:
    """Path of a private copy of the Chinook SQLite file (PascalCase tables)."""
    target = tmp_path / "chinook.sqlite"
    shutil.copyfile(datasets.chinook_sqlite_file(), target)
    return target


# --------------------------------------------------------------------------- data


@pytest.fixture
def chinook_counts() -> dict[str, int]:
    """Chinook row count per table, keyed by lower snake_case name (a fresh copy)."""
    return dict(datasets.CHINOOK_COUNTS)


# --------------------------------------------------------------------------- Singer taps


@pytest.fixture(scope="session")
def tap_postgres(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tap-postgres`` (pipelinewise-tap-postgres from PyPI) in a throwaway venv made once per
    session: the tap pins its own singer library and psycopg2. Skips, saying why, when the
    package index cannot provide it."""
    import subprocess
    import venv

    folder = tmp_path_factory.mktemp("tap-postgres-venv")
    venv.create(folder, with_pip=True)
    package = "pipelinewise-tap-postgres>=1.8,<3"
    done = subprocess.run([str(folder / "bin" / "pip"), "install", "-q", package], capture_output=True, text=True,
                          timeout=900, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot install {package} from the package index: {done.stderr.strip().splitlines()[-1:]}")
    return folder / "bin" / "tap-postgres"


# --------------------------------------------------------------------------- HTTP API


@pytest.fixture
def api() -> Iterator[Any]:
    """The test API of the http source (:mod:`sources.http_api`), started on a free port."""
    from sources.http_api import Api

    server = Api().start()
    try:
        yield server
    finally:
        server.stop()

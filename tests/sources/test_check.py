"""``Source.check()`` against the real servers: it connects and says precisely what is wrong."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import psycopg
import pytest

from replicant.errors import ConfigError, ConnectionError

from .dbs import Db


def _as_user(url: str, user: str, password: str) -> str:
    """``url`` logging in as ``user`` with ``password`` (same host, port and database)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[1]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_check_lists_what_it_checked(empty_db: Db) -> None:
    empty_db.execute("CREATE TABLE checked (id int PRIMARY KEY, v varchar(10))")
    with empty_db.source(["checked"]) as src:
        lines = src.check()
    assert lines[0].startswith("connected to ") and lines[1] == "1 stream(s) readable"


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_unreachable_port_names_host_and_port(kind: str) -> None:
    port = _free_port()
    scheme = "postgresql" if kind == "postgres" else "mysql"
    with Db(kind, f"{scheme}://someone:pw-s3cret@127.0.0.1:{port}/db").source() as src, \
            pytest.raises(ConnectionError) as e:
        src.check()
    text = str(e.value)
    assert f"127.0.0.1:{port}" in text and "'someone'" in text and "pw-s3cret" not in text
    assert "nothing answers there" in text


def test_missing_database_is_named(empty_db: Db, tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "nowhere.db") if empty_db.kind == "sqlite" else empty_db.url.rsplit("/", 1)[0] + "/no_such_db_here"
    with Db(empty_db.kind, url).source() as src, pytest.raises(ConnectionError) as e:
        src.check()
    text = str(e.value)
    if empty_db.kind == "sqlite":
        assert "nowhere.db" in text and "no such file" in text
    else:
        assert "database 'no_such_db_here' does not exist" in text


def test_pg_wrong_password_names_host_and_user_never_the_password(pg_server, pg_url: str) -> None:
    from servers import PASSWORD_ROLE

    if os.environ.get("REPLICANT_TEST_PG_URL"):
        pytest.skip("needs the throwaway server's pg_hba, which asks PASSWORD_ROLE for a password")
    dbname = pg_url.rsplit("/", 1)[1]
    with pg_server.connect(dbname) as c:
        c.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 'right-one'")
    try:
        url = f"postgresql://{PASSWORD_ROLE}:wr0ng-s3cret@{pg_server.host}:{pg_server.port}/{dbname}"
        with Db("postgres", url).source() as src, pytest.raises(ConnectionError) as e:
            src.check()
        text = str(e.value)
        assert "wr0ng" not in text and "s3cret" not in text
        assert f"wrong or missing password for user {PASSWORD_ROLE!r}" in text
        assert f"{pg_server.host}:{pg_server.port}" in text
    finally:
        with pg_server.connect(dbname) as c:
            c.execute(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")


def test_mysql_wrong_password_names_host_and_user_never_the_password(mysql_url: str) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    Db("mysql", mysql_url).execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'right-one'")
    try:
        url = _as_user(mysql_url, user, "wr0ng-s3cret")
        with Db("mysql", url).source() as src, pytest.raises(ConnectionError) as e:
            src.check()
        text = str(e.value)
        assert "wr0ng" not in text and "s3cret" not in text
        assert f"access denied for user {user!r}" in text
    finally:
        Db("mysql", mysql_url).execute(f"DROP USER '{user}'@'%'")


def test_pg_missing_select_privilege_names_the_stream(pg_server, pg_url: str) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} LOGIN")
        c.execute("CREATE TABLE open_t (id int PRIMARY KEY); CREATE TABLE secret_t (id int PRIMARY KEY)")
        c.execute(f"GRANT SELECT ON open_t TO {role}")
    try:
        db = Db("postgres", f"postgresql://{role}@{pg_server.host}:{pg_server.port}/{dbname}")
        with db.source(["open_t", "secret_t"]) as src, pytest.raises(ConfigError) as e:
            src.check()
        assert dict(e.value.problems)["source.streams[1].table"].startswith("no SELECT privilege on 'secret_t'")
        with db.source([{"table": "open_t", "mode": "log"}]) as src, pytest.raises(ConfigError) as e:
            src.check()  # log mode needs REPLICATION, which this role lacks
        assert f"role {role!r} may not use replication" in dict(e.value.problems)["source.url"]
    finally:
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute(f"DROP OWNED BY {role}")
            c.execute(f"DROP ROLE {role}")


def test_mysql_missing_select_privilege_names_the_stream(mysql_url: str) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    root = Db("mysql", mysql_url)
    dbname = mysql_url.rsplit("/", 1)[1]
    root.execute("CREATE TABLE open_t (id int PRIMARY KEY)")
    root.execute("CREATE TABLE secret_t (id int PRIMARY KEY)")
    root.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
    root.execute(f"GRANT SELECT ON `{dbname}`.open_t TO '{user}'@'%'")
    try:
        db = Db("mysql", _as_user(mysql_url, user, "pw"))
        with db.source(["open_t", "secret_t"]) as src, pytest.raises(ConfigError) as e:
            src.check()
        problem = dict(e.value.problems)["source.streams[1].table"]
        assert "secret_t" in problem
    finally:
        root.execute(f"DROP USER '{user}'@'%'")


def test_mysql_unknown_user_is_not_a_hang(mysql_server) -> None:
    """An unknown user gets the same precise answer as a wrong password (the server does not tell)."""
    url = f"mysql://nobody_{uuid.uuid4().hex[:6]}:pw@{mysql_server.host}:{mysql_server.port}/mysql"
    with Db("mysql", url).source() as src, pytest.raises(ConnectionError) as e:
        src.check()
    assert "access denied for user" in str(e.value)

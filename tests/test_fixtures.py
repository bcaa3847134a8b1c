"""The shared fixtures do what conftest promises: real servers, fresh databases, Chinook."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import uuid
from urllib.parse import urlsplit

import psycopg
import pymysql

import datasets


def _mysql_connect(url: str) -> pymysql.connections.Connection:
    parts = urlsplit(url)
    return pymysql.connect(host=parts.hostname, port=parts.port, user=parts.username,
                           password=parts.password or "", database=parts.path.lstrip("/"),
                           charset="utf8mb4", autocommit=True)


def test_pg_server_is_logical_and_urls_match(pg_server):
    assert pg_server.user == "postgres"
    assert pg_server.url("x") == f"postgresql://postgres@{pg_server.host}:{pg_server.port}/x"
    with psycopg.connect(pg_server.url("postgres")) as conn:
        assert conn.execute("SHOW wal_level").fetchone()[0] == "logical"
        assert int(conn.execute("SHOW max_replication_slots").fetchone()[0]) >= 20
        assert conn.execute("SHOW server_encoding").fetchone()[0] == "UTF8"


def test_pg_url_is_fresh_and_empty(pg_url):
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == urlsplit(pg_url).path[1:]
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()[0]
    assert tables == 0


def test_pg_drop_database_survives_open_session_and_slot(pg_server):
    name = f"fixture_drop_probe_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(name)
    try:
        # An open session and a logical slot: what a CDC test may leave behind.
        with psycopg.connect(pg_server.url(name), autocommit=True) as left_open:
            left_open.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [name])
            pg_server.drop_database(name)
        with pg_server.connect() as admin:
            left = admin.execute(
                "SELECT (SELECT count(*) FROM pg_database WHERE datname = %s)"
                " + (SELECT count(*) FROM pg_replication_slots WHERE database = %s)",
                [name, name]).fetchone()[0]
    finally:
        pg_server.drop_database(name)  # on failure above; a no-op after success
    assert left == 0


def test_mysql_drop_database_survives_open_transaction(mysql_server):
    name = f"fixture_drop_probe_{uuid.uuid4().hex[:8]}"
    mysql_server.create_database(name)
    holder = mysql_server.connect(name, autocommit=False)
    try:
        with holder.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY)")
            cur.execute("INSERT INTO t VALUES (1)")  # open transaction holds a metadata lock
        mysql_server.drop_database(name)
        admin = mysql_server.connect()
        try:
            with admin.cursor() as cur:
                cur.execute("SHOW DATABASES LIKE %s", [name])
                assert cur.fetchall() == ()
        finally:
            admin.close()
    finally:
        try:
            holder.close()
        except pymysql.MySQLError:
            pass  # killed by drop_database, as intended
        mysql_server.drop_database(name)  # on failure above; a no-op after success


def test_two_pg_urls_differ(pg_url, chinook_pg_url):
    assert pg_url != chinook_pg_url


def test_mysql_server_binlog_row_and_tcp_root(mysql_server):
    assert mysql_server.user == "root"
    assert mysql_server.url("x") == f"mysql://root@{mysql_server.host}:{mysql_server.port}/x"
    conn = _mysql_connect(mysql_server.url(""))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@log_bin, @@binlog_format, @@local_infile, CURRENT_USER()")
            log_bin, fmt, infile, user = cur.fetchone()
    finally:
        conn.close()
    assert (log_bin, fmt, infile) == (1, "ROW", 1)
    assert user.startswith("root@")


def test_mysql_url_is_fresh_and_empty(mysql_url):
    conn = _mysql_connect(mysql_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT DATABASE(), @@character_set_database")
            db, charset = cur.fetchone()
            cur.execute("SHOW TABLES")
            assert cur.fetchall() == ()
    finally:
        conn.close()
    assert db == urlsplit(mysql_url).path.lstrip("/")
    assert charset == "utf8mb4"


def test_nats_server_has_jetstream(nats_server, nats_url):
    assert nats_url == f"nats://{nats_server.host}:{nats_server.port}"
    with socket.create_connection((nats_server.host, nats_server.port), timeout=5) as conn, \
            conn.makefile("rb") as stream:
        info = json.loads(stream.readline().removeprefix(b"INFO ").strip())
    assert info["jetstream"] is True
    assert info["port"] == nats_server.port


def test_unique_name_is_an_identifier(unique_name):
    assert re.fullmatch(r"[a-z][a-z0-9_]{0,62}", unique_name)


def test_sqlite_path_is_new(sqlite_path):
    assert not sqlite_path.exists()
    assert sqlite_path.parent.is_dir()


def test_chinook_counts_fixture(chinook_counts):
    assert len(chinook_counts) == 11
    assert sum(chinook_counts.values()) == datasets.CHINOOK_TOTAL_ROWS


def test_chinook_pg_counts(chinook_pg_url, chinook_counts):
    with psycopg.connect(chinook_pg_url) as conn:
        got = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in chinook_counts}
        # Foreign keys came through the template copy.
        fks = conn.execute(
            "SELECT count(*) FROM information_schema.table_constraints"
            " WHERE constraint_type = 'FOREIGN KEY' AND table_schema = 'public'").fetchone()[0]
    assert got == chinook_counts
    assert fks == 11


def test_chinook_mysql_counts_and_backslashes(chinook_mysql_url, chinook_counts):
    conn = _mysql_connect(chinook_mysql_url)
    try:
        with conn.cursor() as cur:
            got = {}
            for table, pascal in datasets.CHINOOK_PASCAL.items():
                cur.execute(f"SELECT count(*) FROM `{pascal}`")
                got[table] = cur.fetchone()[0]
            cur.execute("SELECT Name FROM Track WHERE TrackId = 3448")
            (name,) = cur.fetchone()
            cur.execute(
                "SELECT count(*) FROM information_schema.referential_constraints"
                " WHERE constraint_schema = DATABASE()")
            (fks,) = cur.fetchone()
    finally:
        conn.close()
    assert got == chinook_counts
    # Loaded with NO_BACKSLASH_ESCAPES: the literal backslash survived.
    assert "First Set \\ Incipit" in name
    assert fks == 11


def test_chinook_mysql_copies_are_independent(chinook_mysql_url, _chinook_mysql_template):  # noqa: PT019 - its value is used
    conn = _mysql_connect(chinook_mysql_url)
    try:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM PlaylistTrack")
            cur.execute("SELECT count(*) FROM PlaylistTrack")
            assert cur.fetchone() == (0,)
            template = _chinook_mysql_template.dbname
            cur.execute(f"SELECT count(*) FROM `{template}`.PlaylistTrack")
            assert cur.fetchone() == (8715,)
    finally:
        conn.close()


def test_chinook_sqlite_counts_and_private_copy(chinook_sqlite_path, chinook_counts):
    conn = sqlite3.connect(chinook_sqlite_path)
    try:
        got = {t: conn.execute(f'SELECT count(*) FROM "{p}"').fetchone()[0]
               for t, p in datasets.CHINOOK_PASCAL.items()}
        conn.execute("DELETE FROM Track")
        conn.commit()
    finally:
        conn.close()
    assert got == chinook_counts
    assert chinook_sqlite_path != datasets.chinook_sqlite_file()
    # The shared file is untouched.
    shared = sqlite3.connect(f"file:{datasets.chinook_sqlite_file()}?mode=ro", uri=True)
    try:
        assert shared.execute("SELECT count(*) FROM Track").fetchone()[0] == 3503
    finally:
        shared.close()

"""Loaders for the shared sample datasets (read-only in /work/shared/datasets).

Chinook is loaded once per session into a *template* database, then copied per
test (PostgreSQL ``CREATE DATABASE ... TEMPLATE``; MariaDB table-by-table copy
from cached ``SHOW CREATE TABLE`` statements; SQLite a file copy). Nothing is
ever written into the shared folder.

Row counts below are the README's verified figures (``count(*)`` per table).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servers import MysqlServer, PgServer

#: Root of the shared, read-only datasets (override with REPLICANT_DATASETS).
DATASETS = Path(os.environ.get("REPLICANT_DATASETS", "/work/shared/datasets"))
CHINOOK_DIR = DATASETS / "chinook"

#: Chinook row count per table, keyed by the PostgreSQL (lower snake_case) name.
CHINOOK_COUNTS: dict[str, int] = {
    "album": 347,
    "artist": 275,
    "customer": 59,
    "employee": 8,
    "genre": 25,
    "invoice": 412,
    "invoice_line": 2240,
    "media_type": 5,
    "playlist": 18,
    "playlist_track": 8715,
    "track": 3503,
}
CHINOOK_TOTAL_ROWS = 15607

#: PostgreSQL table name -> MySQL/SQLite table name (PascalCase).
CHINOOK_PASCAL: dict[str, str] = {
    name: "".join(part.capitalize() for part in name.split("_")) for name in CHINOOK_COUNTS
}


def chinook_sqlite_file() -> Path:
    """Return the shipped, ready-made Chinook SQLite file (copy it, never write it)."""
    return CHINOOK_DIR / "Chinook_Sqlite.sqlite"


# --------------------------------------------------------------------------- PostgreSQL


def chinook_pg_script() -> str:
    """Return Chinook_PostgreSql.sql without its DROP/CREATE DATABASE and ``\\c`` lines.

    What is left is plain SQL that a driver can run inside any database.
    """
    text = (CHINOOK_DIR / "Chinook_PostgreSql.sql").read_text(encoding="utf-8")
    kept = [
        line for line in text.splitlines()
        if not re.match(r"\s*(DROP DATABASE|CREATE DATABASE|\\c\b)", line, re.IGNORECASE)
    ]
    return "\n".join(kept) + "\n"


def load_chinook_pg(server: PgServer, dbname: str) -> None:
    """Create database ``dbname`` on ``server`` and load Chinook into it.

    Tables are lower snake_case in schema ``public``. Raises psycopg errors.
    """
    with server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    with server.connect(dbname, autocommit=False) as conn:
        # No parameters: psycopg sends the whole script in one simple query.
        conn.execute(chinook_pg_script())
        conn.commit()
        conn.execute("ANALYZE")


# --------------------------------------------------------------------------- MariaDB


def chinook_mysql_script(dbname: str) -> str:
    """Return Chinook_MySql.sql rewritten to create and use database ``dbname``."""
    text = (CHINOOK_DIR / "Chinook_MySql.sql").read_text(encoding="utf-8")
    return text.replace("`Chinook`", f"`{dbname}`")


def load_chinook_mysql(server: MysqlServer, dbname: str) -> None:
    """(Re)create database ``dbname`` on ``server`` with Chinook in it.

    Loads with ``NO_BACKSLASH_ESCAPES``: without it MariaDB silently drops the
    backslash in four Track names (datasets README, dialect issue 2).
    """
    from pymysql.constants import CLIENT

    conn = server.connect(client_flag=CLIENT.MULTI_STATEMENTS, autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
            cur.execute(chinook_mysql_script(dbname))
            while cur.nextset():  # drain every statement's result; errors surface here
                pass
        conn.commit()
    finally:
        conn.close()


class MysqlTemplate:
    """A loaded MariaDB database that can be cloned quickly into new databases.

    Keeps the template's ``SHOW CREATE TABLE`` statements (with keys, indexes,
    foreign keys and column charsets), so a clone has the same DDL, then copies
    rows with ``INSERT ... SELECT`` inside the server.
    """

    def __init__(self, server: MysqlServer, dbname: str) -> None:
        self.server = server
        self.dbname = dbname
        conn = server.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW FULL TABLES WHERE Table_type = 'BASE TABLE'")
                tables = [row[0] for row in cur.fetchall()]
                self.ddl: dict[str, str] = {}
                for table in tables:
                    cur.execute(f"SHOW CREATE TABLE `{table}`")
                    self.ddl[table] = cur.fetchone()[1]
        finally:
            conn.close()

    def clone(self, target: str) -> None:
        """Create database ``target`` holding a copy of every template table."""
        conn = self.server.connect(autocommit=False)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{target}`")
                cur.execute(f"USE `{target}`")
                cur.execute("SET SESSION foreign_key_checks = 0")
                for ddl in self.ddl.values():
                    cur.execute(ddl)
                for table in self.ddl:
                    cur.execute(
                        f"INSERT INTO `{target}`.`{table}` SELECT * FROM `{self.dbname}`.`{table}`"
                    )
            conn.commit()
        finally:
            conn.close()

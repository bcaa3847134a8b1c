"""A PostgreSQL role that must log in (and replicate) with its password, on the throwaway server."""

from __future__ import annotations

from typing import Any


def password_role(pg_server: Any, db: str, role: str, password: str) -> None:
    """Creates ``role`` with ``password``; pg_hba asks it for scram-sha-256 (normal and replication
    connections), so a wrong password is refused. The hba lines name only this role."""
    hba = pg_server.base_dir / "data" / "pg_hba.conf"
    lines = f"host all {role} 127.0.0.1/32 scram-sha-256\nhost replication {role} 127.0.0.1/32 scram-sha-256\n"
    text = hba.read_text()
    if lines not in text:
        hba.write_text(lines + text)
    with pg_server.connect(db) as c:
        c.execute(f"DROP ROLE IF EXISTS {role}")
        c.execute(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{password}'")
        c.execute(f'GRANT CREATE ON DATABASE "{db}" TO {role}')
        c.execute("SELECT pg_reload_conf()")


def password_table(pg_server: Any, pg_url: str, role: str, password: str, table: str, rows: int, *, own: bool = False) -> str:
    """A table ``table`` (id, name) of ``rows`` rows in ``pg_url``'s database that ``role`` (made
    by :func:`password_role`) reads, or owns with ``own``; returns the database's name. Skips
    the test unless the server is the suite's throwaway one (its pg_hba is edited)."""
    import os

    import psycopg
    import pytest

    if os.environ.get("REPLICANT_TEST_PG_URL") or pg_server.base_dir is None:
        pytest.skip("needs the throwaway server's pg_hba")
    db = pg_url.rsplit("/", 1)[1]
    password_role(pg_server, db, role, password)
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
        c.execute(f"INSERT INTO {table} SELECT g, 'n' || g FROM generate_series(1, %s::int) g", (rows,))
        c.execute(f"ALTER TABLE {table} OWNER TO {role}" if own else f"GRANT SELECT ON {table} TO {role}")
    return db

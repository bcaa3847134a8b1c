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

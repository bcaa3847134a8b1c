"""Tables of the secret store, the API tokens and the audit log, and the migration that
creates them (appended to :data:`replicant.state.schema.MIGRATIONS`).

``replicant_sealed`` holds only ciphertext (Fernet, under a master key that is never in
the state store) and the id of the key that encrypted it. ``replicant_tokens`` holds the
SHA-256 of each token, never the token. ``replicant_audit`` is append-only: the Python API
has no update or delete, and database triggers refuse an ``UPDATE`` or ``DELETE`` from any
client (SQLite ``RAISE(ABORT)``, a PostgreSQL trigger function that raises).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicant.state.schema import UTCDateTime

__all__ = ["secrets", "tokens", "audit", "migrate_access"]

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_NAME = sa.String(255)

metadata = sa.MetaData()


def _tables(md: sa.MetaData) -> tuple[sa.Table, sa.Table, sa.Table]:
    """The three tables as the access migration creates them (frozen: edit only with a new migration)."""
    s = sa.Table(
        "replicant_sealed",
        md,
        sa.Column("name", _NAME, primary_key=True),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    t = sa.Table(
        "replicant_tokens",
        md,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", _NAME, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("tenants", sa.Text, nullable=False),  # JSON list; [] = every tenant
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column("last_used_at", UTCDateTime, nullable=True),
    )
    a = sa.Table(
        "replicant_audit",
        md,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", _NAME, nullable=False),  # "token:ID (name)" or "user:NAME"
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("pipeline", _NAME, nullable=True),
        sa.Column("tenant", _NAME, nullable=True),
        sa.Column("stream", _NAME, nullable=True),
        sa.Column("origin", _NAME, nullable=True),  # host, address or "cli"
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Index("replicant_audit_at_idx", "at"),
    )
    return s, t, a


secrets, tokens, audit = _tables(metadata)

_PG_TRIGGER = """
CREATE OR REPLACE FUNCTION replicant_audit_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'replicant_audit is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER replicant_audit_no_update BEFORE UPDATE OR DELETE ON replicant_audit
  FOR EACH ROW EXECUTE FUNCTION replicant_audit_append_only();
"""


def migrate_access(conn: Connection) -> None:
    """The secrets, tokens and audit tables; triggers make the audit table append-only."""
    for table in _tables(sa.MetaData()):
        table.create(conn)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_PG_TRIGGER)
        return
    for op in ("UPDATE", "DELETE"):
        conn.exec_driver_sql(
            f"CREATE TRIGGER replicant_audit_no_{op.lower()} BEFORE {op} ON replicant_audit "
            "BEGIN SELECT RAISE(ABORT, 'replicant_audit is append-only'); END"
        )

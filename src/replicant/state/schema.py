"""Tables of the state store and the numbered migrations that create them.

Every table is prefixed ``replicant_`` so the store can share a database with other
applications. ``replicant_schema_version`` holds one row per migration applied;
the highest number is the schema version of the database.

Identity is (pipeline, tenant, stream): every keyed table has a non-null ``tenant``
column where ``''`` means "no tenant" (a NULL in a primary key or unique index never
equals another NULL, so an upsert would insert duplicates). The store's Python API
speaks ``tenant: str | None`` and maps ``None`` to ``''``.

Versions: 1 created the tables; 2 added ``tenant`` to runs, checkpoints, offsets and dead
letters (keys ``(pipeline, tenant, stream)`` and ``(pipeline, tenant, destination, stream)``;
existing rows get ``''``); 3 added ``replicant_paused`` (the streams a destination paused, and why);
4 added ``attempts`` and ``retried_at`` to dead letters (``replicant dead-letters retry``);
5 added ``replicant_validations`` (``replicant validate``'s findings per stream);
6 added ``replicant_files_seen`` (every file a files source saw: :mod:`replicant.state.files_seen`).
7 added the service's run queue, schedules, pauses, workers and webhook ids
(:mod:`replicant.state.service_tables`); 8 the encrypted secrets, tokens and the append-only
audit log (:mod:`replicant.state.access_tables`); 9 ``replicant_stream_progress``, the snapshot
progress of the streams a service worker reads (:mod:`replicant.state.progress`).

Adding a migration: append a function to :data:`MIGRATIONS` (its position + 1 is its
number). A migration receives the connection of the open transaction and must be
written against the schema *as it was* at that version, never against the current
:class:`~sqlalchemy.Table` objects, because a database may be several versions behind:
when a later migration changes a table, freeze the earlier migration's DDL first.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from replicant.errors import ConfigError

__all__ = [
    "UTCDateTime",
    "metadata",
    "schema_version",
    "runs",
    "checkpoints",
    "offsets",
    "dead_letters",
    "leases",
    "paused",
    "validations",
    "files_seen",
    "MIGRATIONS",
    "current_version",
    "migrate",
]


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (UTC).

    PostgreSQL stores ``timestamptz``. SQLite has no timestamp type: values are stored as
    naive UTC text in SQLAlchemy's fixed-width format, so text comparison orders them
    correctly (the lease expiry checks rely on it).

    Raises:
        ValueError: when binding a naive datetime; the store never guesses a timezone.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the state store needs a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# SQLite makes only an INTEGER PRIMARY KEY an alias of the rowid (auto-increment).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_NAME = sa.String(255)

metadata = sa.MetaData()

schema_version = sa.Table(
    "replicant_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)

runs = sa.Table(
    "replicant_runs",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("pipeline", _NAME, nullable=False),
    sa.Column("tenant", _NAME, nullable=False, server_default=""),  # '' = the whole pipeline / no tenant
    sa.Column("command", sa.String(32), nullable=False),
    sa.Column("owner", _NAME, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("rows", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index("replicant_runs_pipeline_idx", "pipeline", "id"),
    sa.Index("replicant_runs_tenant_idx", "pipeline", "tenant", "id"),
)

checkpoints = sa.Table(
    "replicant_checkpoints",
    metadata,
    sa.Column("pipeline", _NAME, primary_key=True),
    sa.Column("tenant", _NAME, primary_key=True, server_default=""),
    sa.Column("stream", _NAME, primary_key=True),
    sa.Column("position", sa.Text, nullable=True),  # JSON text; NULL = start over
    sa.Column("rows_total", sa.BigInteger, nullable=False),
    sa.Column("log_offset", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

offsets = sa.Table(
    "replicant_offsets",
    metadata,
    sa.Column("pipeline", _NAME, primary_key=True),
    sa.Column("tenant", _NAME, primary_key=True, server_default=""),
    sa.Column("destination", _NAME, primary_key=True),
    sa.Column("stream", _NAME, primary_key=True),
    sa.Column("log_offset", sa.BigInteger, nullable=False),
    sa.Column("rows_total", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

dead_letters = sa.Table(
    "replicant_dead_letters",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("pipeline", _NAME, nullable=False),
    sa.Column("tenant", _NAME, nullable=False, server_default=""),
    sa.Column("stream", _NAME, nullable=False),
    sa.Column("destination", _NAME, nullable=True),
    sa.Column("origin", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # JSON text
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),  # retries that were rejected again
    sa.Column("retried_at", UTCDateTime, nullable=True),  # the last such retry
    sa.Index("replicant_dead_letters_tenant_stream_idx", "pipeline", "tenant", "stream", "id"),
)

leases = sa.Table(
    "replicant_leases",
    metadata,
    sa.Column("name", _NAME, primary_key=True),
    sa.Column("owner", _NAME, nullable=False),
    sa.Column("acquired_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)



# A stream one destination paused (schema drift, a fatal delivery error), until a successful
# delivery or replay of it resumes it: ``status`` shows it from any process.
paused = sa.Table(
    "replicant_paused",
    metadata,
    sa.Column("pipeline", _NAME, primary_key=True),
    sa.Column("tenant", _NAME, primary_key=True, server_default=""),
    sa.Column("destination", _NAME, primary_key=True),
    sa.Column("stream", _NAME, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("paused_at", UTCDateTime, nullable=False),
)


def _validations_table(md: sa.MetaData) -> sa.Table:
    """``replicant_validations``: one row per stream compared by ``replicant validate`` (at one
    destination); the latest per stream is what ``status`` shows (frozen: as version 5 created it)."""
    return sa.Table(
        "replicant_validations",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pipeline", _NAME, nullable=False),
        sa.Column("tenant", _NAME, nullable=False, server_default=""),
        sa.Column("destination", _NAME, nullable=False),
        sa.Column("stream", _NAME, nullable=False),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("differences", sa.Integer, nullable=False),
        sa.Column("repaired", sa.Integer, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("validated_at", UTCDateTime, nullable=False),
        sa.Index("replicant_validations_stream", "pipeline", "tenant", "stream", "destination", "id"),
    )


validations = _validations_table(metadata)


def _files_seen_table(md: sa.MetaData) -> sa.Table:
    """``replicant_files_seen``: every file a files source saw, per stream (frozen: as its
    migration created it)."""
    return sa.Table(
        "replicant_files_seen",
        md,
        sa.Column("pipeline", _NAME, primary_key=True),
        sa.Column("tenant", _NAME, primary_key=True, server_default=""),
        sa.Column("stream", _NAME, primary_key=True),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=True),
        sa.Column("etag", sa.String(255), nullable=True),  # etag, else a content hash, else size+mtime
        sa.Column("modified_at", UTCDateTime, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),  # pending | reading | read | loaded | failed
        sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),  # read order (resume rule)
        sa.Column("rows", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bad_records", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_line", sa.BigInteger, nullable=False, server_default="0"),  # highest _line ever emitted
        sa.Column("loads", sa.Integer, nullable=False, server_default="0"),
        sa.Column("first_error", sa.Text, nullable=True),
        sa.Column("first_error_line", sa.BigInteger, nullable=True),
        sa.Column("note", sa.Text, nullable=True),  # after_load: moved to …, deleted
        sa.Column("first_seen_at", UTCDateTime, nullable=False),
        sa.Column("loaded_at", UTCDateTime, nullable=True),
        sa.Index("replicant_files_seen_seq_idx", "pipeline", "tenant", "stream", "seq"),
    )


files_seen = _files_seen_table(metadata)


def _v1_tables(md: sa.MetaData) -> list[sa.Table]:
    """The tables as version 1 created them (frozen: version 2 changed all but leases)."""
    return [
        sa.Table(
            "replicant_runs",
            md,
            sa.Column("id", _ID, primary_key=True, autoincrement=True),
            sa.Column("pipeline", _NAME, nullable=False),
            sa.Column("command", sa.String(32), nullable=False),
            sa.Column("owner", _NAME, nullable=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("started_at", UTCDateTime, nullable=False),
            sa.Column("finished_at", UTCDateTime, nullable=True),
            sa.Column("rows", sa.BigInteger, nullable=False, server_default="0"),
            sa.Column("error", sa.Text, nullable=True),
            sa.Index("replicant_runs_pipeline_idx", "pipeline", "id"),
        ),
        sa.Table(
            "replicant_checkpoints",
            md,
            sa.Column("pipeline", _NAME, primary_key=True),
            sa.Column("stream", _NAME, primary_key=True),
            sa.Column("position", sa.Text, nullable=True),
            sa.Column("rows_total", sa.BigInteger, nullable=False),
            sa.Column("log_offset", sa.BigInteger, nullable=False),
            sa.Column("updated_at", UTCDateTime, nullable=False),
        ),
        sa.Table(
            "replicant_offsets",
            md,
            sa.Column("pipeline", _NAME, primary_key=True),
            sa.Column("destination", _NAME, primary_key=True),
            sa.Column("stream", _NAME, primary_key=True),
            sa.Column("log_offset", sa.BigInteger, nullable=False),
            sa.Column("rows_total", sa.BigInteger, nullable=False),
            sa.Column("updated_at", UTCDateTime, nullable=False),
        ),
        sa.Table(
            "replicant_dead_letters",
            md,
            sa.Column("id", _ID, primary_key=True, autoincrement=True),
            sa.Column("pipeline", _NAME, nullable=False),
            sa.Column("stream", _NAME, nullable=False),
            sa.Column("destination", _NAME, nullable=True),
            sa.Column("origin", sa.Text, nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("payload", sa.Text, nullable=False),
            sa.Column("created_at", UTCDateTime, nullable=False),
            sa.Index("replicant_dead_letters_stream_idx", "pipeline", "stream", "id"),
        ),
    ]


def _v1_initial(conn: Connection) -> None:
    """Version 1: runs, checkpoints, offsets, dead letters, leases."""
    for table in _v1_tables(sa.MetaData()):
        table.create(conn)
    leases.create(conn)  # unchanged since version 1


# Version 2's keyed tables as it created them on SQLite (rebuilt there: SQLite cannot
# change a primary key in place). Frozen: a later change to the tables must not alter them.
def _v2_sqlite_keyed(md: sa.MetaData, suffix: str) -> tuple[sa.Table, sa.Table]:
    checkpoints_v2 = sa.Table(
        f"replicant_checkpoints{suffix}",
        md,
        sa.Column("pipeline", _NAME, primary_key=True),
        sa.Column("tenant", _NAME, primary_key=True, server_default=""),
        sa.Column("stream", _NAME, primary_key=True),
        sa.Column("position", sa.Text, nullable=True),
        sa.Column("rows_total", sa.BigInteger, nullable=False),
        sa.Column("log_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    offsets_v2 = sa.Table(
        f"replicant_offsets{suffix}",
        md,
        sa.Column("pipeline", _NAME, primary_key=True),
        sa.Column("tenant", _NAME, primary_key=True, server_default=""),
        sa.Column("destination", _NAME, primary_key=True),
        sa.Column("stream", _NAME, primary_key=True),
        sa.Column("log_offset", sa.BigInteger, nullable=False),
        sa.Column("rows_total", sa.BigInteger, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    return checkpoints_v2, offsets_v2


_V2_KEYS = {
    "replicant_checkpoints": ("pipeline", "tenant", "stream"),
    "replicant_offsets": ("pipeline", "tenant", "destination", "stream"),
}


def _v2_tenant(conn: Connection) -> None:
    """Version 2: a ``tenant`` column (``''`` = no tenant) in runs, checkpoints, offsets and
    dead letters, part of the checkpoint and offset keys; every existing row gets ``''``."""
    q = conn.dialect.identifier_preparer.quote
    add = "ALTER TABLE {} ADD COLUMN tenant VARCHAR(255) DEFAULT '' NOT NULL"
    for name in ("replicant_runs", "replicant_dead_letters"):
        conn.exec_driver_sql(add.format(q(name)))
    conn.exec_driver_sql("DROP INDEX replicant_dead_letters_stream_idx")
    conn.exec_driver_sql(
        "CREATE INDEX replicant_dead_letters_tenant_stream_idx ON replicant_dead_letters (pipeline, tenant, stream, id)"
    )
    conn.exec_driver_sql("CREATE INDEX replicant_runs_tenant_idx ON replicant_runs (pipeline, tenant, id)")
    if conn.dialect.name == "postgresql":
        inspector = sa.inspect(conn)
        for name, key in _V2_KEYS.items():
            pk = inspector.get_pk_constraint(name)["name"] or f"{name}_pkey"  # PostgreSQL's default name
            conn.exec_driver_sql(add.format(q(name)))
            conn.exec_driver_sql(
                f"ALTER TABLE {q(name)} DROP CONSTRAINT {q(pk)}, ADD PRIMARY KEY ({', '.join(key)})"
            )
        return
    for new in _v2_sqlite_keyed(sa.MetaData(), "_v2"):
        name = new.name.removesuffix("_v2")
        new.create(conn)
        kept = [c.name for c in new.columns if c.name != "tenant"]
        conn.exec_driver_sql(
            f"INSERT INTO {new.name} ({', '.join(kept)}, tenant) SELECT {', '.join(kept)}, '' FROM {name}"
        )
        conn.exec_driver_sql(f"DROP TABLE {name}")
        conn.exec_driver_sql(f"ALTER TABLE {new.name} RENAME TO {name}")


def _v3_paused(conn: Connection) -> None:
    """Version 3: ``replicant_paused``, the streams a destination paused and why."""
    sa.Table(  # frozen: as version 3 created it
        "replicant_paused",
        sa.MetaData(),
        sa.Column("pipeline", _NAME, primary_key=True),
        sa.Column("tenant", _NAME, primary_key=True, server_default=""),
        sa.Column("destination", _NAME, primary_key=True),
        sa.Column("stream", _NAME, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("paused_at", UTCDateTime, nullable=False),
    ).create(conn)


def _v4_retries(conn: Connection) -> None:
    """Version 4: ``attempts`` (0 for every existing dead letter) and ``retried_at`` in
    ``replicant_dead_letters``, kept by ``replicant dead-letters retry``."""
    q = conn.dialect.identifier_preparer.quote
    table = q("replicant_dead_letters")
    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN attempts INTEGER DEFAULT 0 NOT NULL")
    stamp = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN retried_at {stamp}")


def _v5_validations(conn: Connection) -> None:
    """Version 5: ``replicant_validations``, what ``replicant validate`` found per stream."""
    _validations_table(sa.MetaData()).create(conn)


def _v6_files_seen(conn: Connection) -> None:
    """Version 6: ``replicant_files_seen``, the record of every file a files source saw."""
    _files_seen_table(sa.MetaData()).create(conn)


def _v7_service(conn: Connection) -> None:
    """Version 7: the service's run queue, schedules, pauses, workers and webhook ids
    (:mod:`replicant.state.service_tables`, which freezes its DDL there)."""
    from replicant.state import service_tables

    service_tables.create(conn)


def _v8_access(conn: Connection) -> None:
    """Version 8: secrets, tokens and the append-only audit log (:mod:`replicant.state.access_tables`)."""
    from replicant.state.access_tables import migrate_access

    migrate_access(conn)


def _v9_progress(conn: Connection) -> None:
    """Version 9: snapshot progress per stream (:mod:`replicant.state.progress`)."""
    from replicant.state import progress

    progress.create(conn)


#: Migration ``n`` is ``MIGRATIONS[n - 1]``; applied in order, never edited once released.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1_initial, _v2_tenant, _v3_paused, _v4_retries, _v5_validations, _v6_files_seen, _v7_service, _v8_access,
    _v9_progress,
]

# Key of the PostgreSQL advisory lock that serialises concurrent migrations ("repl").
_PG_MIGRATION_LOCK = 0x7265706C


def current_version(conn: Connection) -> int:
    """The schema version of the database behind ``conn``: 0 when it holds no replicant tables."""
    if not sa.inspect(conn).has_table(schema_version.name):
        return 0
    return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)


def migrate(conn: Connection, now: datetime, migrations: list[Callable[[Connection], None]] | None = None) -> int:
    """Brings the schema up to the latest version inside the caller's transaction.

    The caller owns the transaction: if a migration fails, rolling it back leaves the
    database at the version it had (PostgreSQL and SQLite both have transactional DDL).
    Concurrent callers are serialised by an advisory lock on PostgreSQL and by the
    ``BEGIN IMMEDIATE`` write lock the store takes on SQLite.

    Args:
        conn: a connection inside a write transaction.
        now: the timestamp recorded for each migration applied.
        migrations: the migration list (default :data:`MIGRATIONS`).

    Returns:
        The schema version after migrating.

    Raises:
        ConfigError: the database was written by a newer replicant (its version is higher
            than the newest migration this one knows).
    """
    migrations = MIGRATIONS if migrations is None else migrations
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
    schema_version.create(conn, checkfirst=True)
    version = current_version(conn)
    latest = len(migrations)
    if version > latest:
        raise ConfigError(
            f"the state store has schema version {version}, written by a newer replicant; "
            f"this replicant knows versions up to {latest}: upgrade replicant"
        )
    for number in range(version + 1, latest + 1):
        migrations[number - 1](conn)
        conn.execute(sa.insert(schema_version).values(version=number, applied_at=now))
    return latest

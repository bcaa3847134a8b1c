"""What replicant leaves on a PostgreSQL server for change capture, listed and dropped by
``replicant cdc list`` and ``replicant cdc drop-slot``.

A logical replication slot keeps every WAL segment from its ``restart_lsn`` on until its
consumer confirms it: the slot of a pipeline whose file is gone fills the server's disk.
Listed: replication slots named ``replicant_…`` (or the pipeline's own ``slot:``), on the whole
cluster (a slot belongs to one database, shown), with active/inactive, the confirmed and
restart LSNs and the WAL they retain (``pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)``);
publications named ``replicant_…`` (or the pipeline's ``publication:``) of the connected
database with their tables; the ``trigger`` strategy's shadow tables (``_replicant_changes_…``)
with their approximate row counts. The owner column says ``this pipeline`` for the names the
pipeline file gives, ``temporary`` for the short-lived slots of a snapshot, else
``other pipeline or orphan?``: a slot carries no owner, only its name (see
:meth:`PgLogCapture._check_owner`).

Dropping refuses an active slot (its consumer is running), and this pipeline's own slot or
publication unless forced (``replicant cdc uninstall`` is the way to remove those).
"""

from __future__ import annotations

from typing import Any

import psycopg

from replicant.errors import ConnectionError, FatalError

__all__ = ["THIS_PIPELINE", "OTHER", "TEMPORARY", "drop", "list_objects", "size_text"]

THIS_PIPELINE = "this pipeline"
TEMPORARY = "temporary"
OTHER = "other pipeline or orphan?"

_SLOTS = r"""
SELECT s.slot_name, d.datname, s.plugin, s.active, s.active_pid, s.temporary,
       s.confirmed_flush_lsn::text, s.restart_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint
FROM pg_replication_slots s LEFT JOIN pg_database d ON d.oid = s.datoid
WHERE s.slot_name LIKE 'replicant\_%%' OR s.slot_name = %s
ORDER BY s.slot_name
"""
_PUBLICATIONS = r"""
SELECT p.pubname, p.puballtables,
       coalesce((SELECT string_agg(t.schemaname || '.' || t.tablename, ', ' ORDER BY 1)
                 FROM pg_publication_tables t WHERE t.pubname = p.pubname), '')
FROM pg_publication p
WHERE p.pubname LIKE 'replicant\_%%' OR p.pubname = %s
ORDER BY p.pubname
"""
_SHADOWS = r"""
SELECT n.nspname, c.relname, greatest(c.reltuples, 0)::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relname LIKE '\_replicant\_changes\_%%'
ORDER BY 1, 2
"""


def size_text(n: int | None) -> str:
    """Bytes for people: ``0 B``, ``16.0 MB``, ``1.2 GB``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _connect(url: str, where: str, scrub: Any) -> psycopg.Connection:
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        raise ConnectionError(f"cannot connect to {where}: {scrub(str(e)).strip()}") from None


def _owner(name: str, own: str) -> str:
    if name == own:
        return THIS_PIPELINE
    return TEMPORARY if name.startswith("replicant_tmp_") else OTHER


def list_objects(url: str, *, slot: str, publication: str, where: str, scrub: Any) -> dict[str, Any]:
    """The slots, publications and shadow tables replicant owns on the server of ``url``
    (``slot`` and ``publication``: this pipeline's names), as JSON-able dicts."""
    with _connect(url, where, scrub) as conn:
        database = conn.info.dbname
        slots = conn.execute(_SLOTS, (slot,)).fetchall()
        pubs = conn.execute(_PUBLICATIONS, (publication,)).fetchall()
        shadows = conn.execute(_SHADOWS).fetchall()
    return {
        "server": where,
        "database": database,
        "slots": [
            {"slot": name, "database": db, "plugin": plugin, "active": bool(active), "active_pid": pid,
             "temporary": bool(temp), "confirmed_flush_lsn": confirmed, "restart_lsn": restart,
             "retained_wal_bytes": None if retained is None else int(retained), "retained_wal": size_text(retained),
             "owner": _owner(name, slot)}
            for name, db, plugin, active, pid, temp, confirmed, restart, retained in slots
        ],
        "publications": [
            {"publication": name, "database": database, "all_tables": bool(every), "tables": tables,
             "owner": THIS_PIPELINE if name == publication else OTHER}
            for name, every, tables in pubs
        ],
        "shadow_tables": [{"table": f"{schema}.{name}", "approx_rows": int(rows)} for schema, name, rows in shadows],
    }


def drop(url: str, *, slot: str | None, publication: str | None, own_slot: str, own_publication: str, force: bool,
         where: str, scrub: Any) -> list[str]:
    """Drops a slot and/or a publication; returns one line per object dropped.

    Raises:
        FatalError: no such slot or publication; the slot is active; it lives in another
            database (a logical slot is dropped from its own database); it is this pipeline's
            own and ``force`` is not set.
    """
    done: list[str] = []
    with _connect(url, where, scrub) as conn:
        database = conn.info.dbname
        if slot is not None:
            row = conn.execute(
                "SELECT s.active_pid, d.datname, pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint "
                "FROM pg_replication_slots s LEFT JOIN pg_database d ON d.oid = s.datoid WHERE s.slot_name = %s",
                (slot,)).fetchone()
            if row is None:
                raise FatalError(f"there is no replication slot {slot!r} on {where} (see `replicant cdc list`)")
            pid, db, retained = row
            if pid is not None:
                raise FatalError(f"replication slot {slot!r} is active (process {pid} consumes it): stop that "
                                 "pipeline first; an active slot is never dropped")
            if slot == own_slot and not force:
                raise FatalError(f"replication slot {slot!r} is this pipeline's own: `replicant cdc uninstall` removes "
                                 "it with its publication (the next run snapshots again); or pass --force")
            if db is not None and db != database:
                raise FatalError(f"replication slot {slot!r} belongs to database {db!r}: point the source url at "
                                 f"that database to drop it (a logical slot is dropped from its own database)")
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg.Error as e:  # taken meanwhile, or no privilege
                raise FatalError(f"cannot drop replication slot {slot!r} on {where}: {scrub(str(e)).strip()}") from None
            done.append(f"dropped replication slot {slot} (it retained {size_text(retained)} of WAL)")
        if publication is not None:
            if publication == own_publication and not force:
                raise FatalError(f"publication {publication!r} is this pipeline's own: `replicant cdc uninstall` "
                                 "removes it; or pass --force")
            if not conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone():
                raise FatalError(f"there is no publication {publication!r} in database {database!r} on {where}")
            name = '"' + publication.replace('"', '""') + '"'
            try:
                conn.execute(f"DROP PUBLICATION {name}")
            except psycopg.Error as e:
                raise FatalError(f"cannot drop publication {publication!r}: {scrub(str(e)).strip()}") from None
            done.append(f"dropped publication {publication}")
    return done

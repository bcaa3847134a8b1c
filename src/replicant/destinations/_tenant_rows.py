"""What SQL destinations do for tenants' feeds, which write the same tables at once through one
connection each: table DDL serialised within the process (:func:`ddl_lock`), a tenant's rows
found and deleted by ``_tenant`` (:func:`tenant_where`, :func:`delete_tenant_rows`)."""

from __future__ import annotations

import threading
from typing import Any

from replicant.tenants.config import TENANT_COLUMN

__all__ = ["ddl_lock", "delete_tenant_rows", "tenant_where"]

_DDL_LOCKS: dict[str, threading.RLock] = {}
_DDL_LOCKS_GUARD = threading.Lock()


def ddl_lock(destination: str) -> threading.RLock:
    """One lock per destination name in this process, held while a table is created or
    altered: several tenants' feeds (one connection each) write the same tables, and two
    ``CREATE TABLE``s at once conflict (DuckDB: a catalog write-write conflict; PostgreSQL: a
    duplicate type). Row writes do not take it: each tenant's rows are its own keys."""
    with _DDL_LOCKS_GUARD:
        return _DDL_LOCKS.setdefault(destination, threading.RLock())


def delete_tenant_rows(dest: Any, table: str, tenant: str) -> None:
    """Deletes ``tenant``'s rows (``_tenant = tenant``) of ``table`` of SQL destination ``dest``
    in its open transaction: a truncate of one tenant's stream, ``replicant tenant drop``."""
    dest.execute(f"DELETE FROM {dest.qualified(table)} WHERE {dest.quote(TENANT_COLUMN)} = {dest.param_marker}", (tenant,))


def tenant_where(dest: Any, columns: dict[str, Any], tenant: str | None) -> tuple[str, tuple[str, ...] | None]:
    """`` WHERE _tenant = ?`` and its parameters for ``tenant``'s rows of a table with
    ``columns`` (folded names), or ``("", None)``: no tenant, or a table without ``_tenant``."""
    if tenant is None or dest.fold(TENANT_COLUMN) not in columns:
        return "", None
    return f" WHERE {dest.quote(TENANT_COLUMN)} = {dest.param_marker}", (tenant,)

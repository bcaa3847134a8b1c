"""Secrets, tokens and audit entries in the state store (:class:`StateStore` mixes them in).

Storage only: what is stored is already encrypted (secrets: :mod:`replicant.access.keys`)
or hashed (tokens: :mod:`replicant.access.tokens`); this module never sees a secret value
or a token. The audit log has an ``append`` and reads, no update or delete.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicant.errors import redact
from replicant.state.access_tables import audit, secrets, tokens

__all__ = ["AccessMixin"]


class AccessMixin:
    """Rows of ``replicant_sealed``, ``replicant_tokens`` and ``replicant_audit``."""

    _clock: Callable[[], datetime]
    _insert: Callable[[sa.Table], Any]
    _begin: Callable[..., AbstractContextManager[Connection]]

    # -- secrets (ciphertext only) --------------------------------------------------

    def put_secret(self, name: str, ciphertext: str, key_id: str) -> None:
        """Creates or replaces the ciphertext of secret ``name`` (its creation time is kept)."""
        now = self._clock()
        insert = self._insert(secrets).values(name=name, ciphertext=ciphertext, key_id=key_id, created_at=now, updated_at=now)
        statement = insert.on_conflict_do_update(
            index_elements=[secrets.c.name],
            set_={"ciphertext": insert.excluded.ciphertext, "key_id": insert.excluded.key_id, "updated_at": now},
        )
        with self._begin(write=True) as conn:
            conn.execute(statement)

    def replace_secret_ciphertext(self, name: str, old: str, new: str, key_id: str) -> bool:
        """Swaps ``old`` for ``new`` (re-encryption) unless the secret changed meanwhile;
        ``updated_at`` stays: the value did not change. Returns whether it was swapped."""
        with self._begin(write=True) as conn:
            done = conn.execute(
                secrets.update().where(secrets.c.name == name, secrets.c.ciphertext == old).values(ciphertext=new, key_id=key_id)
            )
        return done.rowcount == 1

    def secret_ciphertext(self, name: str) -> tuple[str, str] | None:
        """``(ciphertext, key id)`` of secret ``name``, or ``None``."""
        with self._begin() as conn:
            row = conn.execute(sa.select(secrets.c.ciphertext, secrets.c.key_id).where(secrets.c.name == name)).first()
        return None if row is None else (row[0], row[1])

    def secret_rows(self) -> list[dict[str, Any]]:
        """Every secret: name, key id, created and updated times, and the ciphertext (sorted by name)."""
        with self._begin() as conn:
            rows = conn.execute(sa.select(secrets).order_by(secrets.c.name)).mappings().all()
        return [dict(r) for r in rows]

    def delete_secret(self, name: str) -> bool:
        """Removes secret ``name``; whether it existed."""
        with self._begin(write=True) as conn:
            return conn.execute(secrets.delete().where(secrets.c.name == name)).rowcount == 1

    # -- tokens (hashes only) -------------------------------------------------------

    def add_token(self, *, id: str, name: str, role: str, tenants: list[str], digest: str,
                  expires_at: datetime | None) -> None:
        """Stores a token's id, name, role, tenants and SHA-256 (never the token)."""
        with self._begin(write=True) as conn:
            conn.execute(tokens.insert().values(
                id=id, name=name, role=role, tenants=json.dumps(sorted(tenants)), hash=digest,
                created_at=self._clock(), expires_at=expires_at,
            ))

    def token_rows(self, *, digest: str | None = None) -> list[dict[str, Any]]:
        """Every token (or the one with this hash), tenants as a list, without the hash."""
        query = sa.select(*[c for c in tokens.c if c.name != "hash"]).order_by(tokens.c.created_at, tokens.c.id)
        if digest is not None:
            query = query.where(tokens.c.hash == digest)
        with self._begin() as conn:
            rows = conn.execute(query).mappings().all()
        return [{**r, "tenants": json.loads(r["tenants"])} for r in rows]

    def token_used(self, id: str) -> None:
        """Stamps a token's ``last_used_at``."""
        with self._begin(write=True) as conn:
            conn.execute(tokens.update().where(tokens.c.id == id).values(last_used_at=self._clock()))

    def revoke_token(self, id: str) -> bool:
        """Revokes token ``id`` (kept, for the audit trail); whether a live token was revoked."""
        with self._begin(write=True) as conn:
            done = conn.execute(tokens.update().where(tokens.c.id == id, tokens.c.revoked_at.is_(None))
                                .values(revoked_at=self._clock()))
        return done.rowcount == 1

    # -- audit (append-only) --------------------------------------------------------

    def append_audit(self, *, actor: str, action: str, result: str, pipeline: str | None = None,
                     tenant: str | None = None, stream: str | None = None, origin: str | None = None,
                     detail: str | None = None) -> int:
        """Appends one audit entry (``detail`` redacted) and returns its id. There is no
        update or delete: database triggers refuse both (see the access migration)."""
        with self._begin(write=True) as conn:
            done = conn.execute(audit.insert().values(
                at=self._clock(), actor=actor, action=action, pipeline=pipeline, tenant=tenant, stream=stream,
                origin=origin, result=result, detail=None if detail is None else redact(detail)[:2000],
            ))
        key = done.inserted_primary_key
        assert key is not None
        return int(key[0])

    def audit_entries(self, *, since: datetime | None = None, pipeline: str | None = None,
                      tenants: list[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Audit entries oldest first, filtered by time, pipeline and tenants (any of them)."""
        query = sa.select(audit).order_by(audit.c.id)
        if since is not None:
            query = query.where(audit.c.at >= since)
        if pipeline is not None:
            query = query.where(audit.c.pipeline == pipeline)
        if tenants is not None:
            query = query.where(audit.c.tenant.in_(tenants))
        if limit is not None:
            query = query.limit(limit)
        with self._begin() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

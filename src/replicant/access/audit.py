"""The audit log's Python API: who did what, to which pipeline, tenant and stream, when,
from where, with what result. The service calls :func:`record` with the request's
:class:`~replicant.access.tokens.Principal` and client address; the CLI records the OS user.

Append-only: the store has ``append_audit`` and reads, no update or delete, and database
triggers refuse an ``UPDATE`` or ``DELETE`` of ``replicant_audit`` from any client.
"""

from __future__ import annotations

import getpass
import json
import socket
from datetime import datetime
from typing import Any

from replicant.access.tokens import Principal

__all__ = ["cli_actor", "cli_origin", "record", "entries_as_json_lines"]


def cli_actor() -> str:
    """``user:NAME`` of the OS user running the command."""
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return "user:unknown"


def cli_origin() -> str:
    """``cli@HOST``."""
    return f"cli@{socket.gethostname()}"


def record(store: Any, who: Principal | str, action: str, *, result: str = "ok", pipeline: str | None = None,
           tenant: str | None = None, stream: str | None = None, origin: str | None = None,
           detail: str | None = None) -> int:
    """Appends an entry: ``who`` is a principal (its id and name are kept, never the token) or
    an actor text (``user:alice``). Returns the entry's id."""
    actor = who.actor if isinstance(who, Principal) else who
    return int(store.append_audit(actor=actor, action=action, result=result, pipeline=pipeline, tenant=tenant,
                                  stream=stream, origin=origin, detail=detail))


def _jsonable(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in entry.items()}


def entries_as_json_lines(entries: list[dict[str, Any]]) -> str:
    """One JSON object per line (the export format)."""
    return "".join(json.dumps(_jsonable(e), sort_keys=True) + "\n" for e in entries)

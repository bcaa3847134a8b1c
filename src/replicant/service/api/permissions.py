"""Which permission each endpoint needs: ONE table, and the one hook where authentication plugs in.

:data:`ACTIONS` maps a route name (the endpoint function's name) to the permission of
:mod:`replicant.access.tokens` it needs (``read``, ``trigger``, ``tokens``…); :data:`PERMISSIONS`
is derived from it: the weakest role granting that permission (``viewer`` < ``operator`` <
``admin``). Every route's name must be in the table (a test checks it, and the roles × endpoints
× tenants matrix test walks it). :func:`authorize` records both on the request and calls
``app.state.authorizer`` (:class:`replicant.service.auth.Authorizer`; ``None``: allow).
"""

from __future__ import annotations

from typing import Literal

from fastapi import Request

from replicant.access.tokens import ROLE_PERMISSIONS

__all__ = ["ACTIONS", "PERMISSIONS", "ROLES", "Role", "authorize"]

Role = Literal["viewer", "operator", "admin"]

#: The roles, weakest first.
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")

#: Route name → the permission it needs (``replicant.access.tokens.PERMISSIONS``).
ACTIONS: dict[str, str] = {
    "list_pipelines": "read",
    "get_pipeline": "read",
    "pipeline_status": "read",
    "trigger_run": "trigger",
    "pause_pipeline": "pause",
    "resume_pipeline": "resume",
    "pause_tenant": "pause",
    "resume_tenant": "resume",
    "pause_stream": "pause",
    "resume_stream": "resume",
    "resync_stream": "resync",
    "replay_destination": "replay",
    "validate_pipeline": "validate",
    "list_runs": "read",
    "get_run": "read",
    "cancel_run": "trigger",
    "list_dead_letters": "read",
    "download_dead_letters": "read",
    "retry_dead_letters": "dead_letters.retry",
    "discard_dead_letters": "dead_letters.discard",
    "list_workers": "read",
    "service_status": "read",
    "webhook": "trigger",  # authenticated by its signature, not by a token
    "list_tokens": "tokens",
    "create_token": "tokens",
    "revoke_token": "tokens",
    "list_secrets": "secrets",
    "set_secret": "secrets",
    "query_audit": "audit",
    "export_audit": "audit",
    "whoami": "read",
}

#: Routes that take no token (they authenticate otherwise).
PUBLIC: frozenset[str] = frozenset({"webhook"})


def _weakest(permission: str) -> Role:
    return next(r for r in ROLES if permission in ROLE_PERMISSIONS[r])


#: Route name → the weakest role that may call it.
PERMISSIONS: dict[str, Role] = {name: _weakest(permission) for name, permission in ACTIONS.items()}


async def authorize(request: Request) -> None:
    """The auth hook of every ``/api/v1`` route: looks the route up in :data:`ACTIONS` and
    asks the service's authorizer (default: allow)."""
    route = request.scope.get("route")
    name = str(getattr(route, "name", None))
    request.state.permission = ACTIONS.get(name, "tokens")  # an unlisted route needs admin
    request.state.required_role = PERMISSIONS.get(name, "admin")
    authorizer = getattr(request.app.state, "authorizer", None)
    if authorizer is not None and name not in PUBLIC:
        await authorizer(request, request.state.required_role)

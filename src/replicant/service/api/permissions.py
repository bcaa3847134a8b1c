"""Which role each endpoint needs: ONE table, and the one hook where authentication plugs in.

Roles are ordered: ``viewer`` (read) < ``operator`` (trigger, pause, resync, replay, retry) <
``admin``. Every route's name must be in :data:`PERMISSIONS` (a test checks it). Today
:func:`authorize` only records the required role on the request (``request.state.required_role``)
and lets it through; token auth with roles and tenant scope replaces ``Service.authorizer``.
"""

from __future__ import annotations

from typing import Literal

from fastapi import Request

__all__ = ["PERMISSIONS", "ROLES", "Role", "authorize"]

Role = Literal["viewer", "operator", "admin"]

#: The roles, weakest first.
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")

#: Route name (the endpoint function's name) → the role it needs.
PERMISSIONS: dict[str, Role] = {
    "list_pipelines": "viewer",
    "get_pipeline": "viewer",
    "pipeline_status": "viewer",
    "trigger_run": "operator",
    "pause_pipeline": "operator",
    "resume_pipeline": "operator",
    "pause_tenant": "operator",
    "resume_tenant": "operator",
    "pause_stream": "operator",
    "resume_stream": "operator",
    "resync_stream": "operator",
    "replay_destination": "operator",
    "validate_pipeline": "operator",
    "list_runs": "viewer",
    "get_run": "viewer",
    "cancel_run": "operator",
    "list_dead_letters": "viewer",
    "download_dead_letters": "viewer",
    "retry_dead_letters": "operator",
    "discard_dead_letters": "operator",
    "list_workers": "viewer",
    "service_status": "viewer",
    "webhook": "operator",  # authenticated by its signature, not by a token
}


async def authorize(request: Request) -> None:
    """The auth hook of every ``/api/v1`` route: looks the route's role up in
    :data:`PERMISSIONS` and asks the service's authorizer (default: allow)."""
    route = request.scope.get("route")
    name = getattr(route, "name", None)
    role = PERMISSIONS.get(str(name), "admin")  # an unlisted route needs the most
    request.state.required_role = role
    authorizer = getattr(request.app.state, "authorizer", None)
    if authorizer is not None:
        await authorizer(request, role)

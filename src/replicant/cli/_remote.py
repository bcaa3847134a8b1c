"""``--server URL``: the CLI verbs ask a running ``replicant serve`` instead of working locally.

The pipeline file still names the pipeline (only its ``pipeline:`` is read: no secret is
needed). Runs the service queues (replay, resync, validate) are waited for, and their result
printed, unless ``--no-wait``.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from replicant.errors import ConfigError, ConnectionError, ReplicantError

__all__ = ["call", "wait_run"]


def call(server: str, method: str, path: str, **kwargs: Any) -> Any:
    """One API call; a problem response becomes a :class:`ReplicantError` with its detail.

    Raises:
        ConnectionError: the server cannot be reached.
        ConfigError: the server refused the request as invalid (4xx with ``invalid_*``).
        ReplicantError: any other problem response.
    """
    url = server.rstrip("/") + "/api/v1" + path
    try:
        response = httpx.request(method, url, timeout=60.0, **kwargs)
    except httpx.TransportError as e:
        raise ConnectionError(f"cannot reach the replicant service at {server}: {e}") from None
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text, "code": "http_error"}
        problems = [(p["key"], p["message"]) for p in body.get("problems") or []]
        if str(body.get("code", "")).startswith("invalid"):
            raise ConfigError(f"{server}: {body.get('detail')}", problems)
        raise ReplicantError(f"{server}: {body.get('detail')} ({body.get('code')})")
    return response.json()


def wait_run(server: str, run_id: int, *, timeout: float = 3600.0) -> dict[str, Any]:
    """Polls run ``run_id`` until it finished; returns its detail."""
    deadline = time.monotonic() + timeout
    while True:
        run = call(server, "GET", f"/runs/{run_id}", params={"lines": 0})
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return run
        if time.monotonic() > deadline:
            raise ReplicantError(f"run {run_id} did not finish within {timeout:g} s (it goes on in the service)")
        time.sleep(0.5)


def pipeline_name(path: Any) -> str:
    from replicant.config import load

    return load(path, secrets_needed=False).pipeline

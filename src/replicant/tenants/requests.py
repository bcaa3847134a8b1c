"""Resync requests handed to a following run of the tenants.

``replicant resync … --tenant ID`` cannot append to the staging log while ``replicant run
--follow`` holds it; for a pipeline with ``tenants:`` it leaves a request instead, one JSON file
per tenant under ``<home>/requests/``, written whole (temporary name, then rename). The
following :class:`~replicant.tenants.runner.TenantRunner` takes each request: it stops that
tenant's feed, appends the resync marker (:func:`replicant.resync.start_over`) to its log, starts
the feed again and then deletes the file, so a crash in between repeats the request (one more
fresh snapshot), never loses it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from replicant.config import PipelineConfig

__all__ = ["pending_resyncs", "request_resync", "requests_dir"]


def requests_dir(config: PipelineConfig) -> Path:
    from replicant import runtime

    return runtime.home(config) / "requests"


def request_resync(config: PipelineConfig, stream: str, tenants: list[str]) -> list[str]:
    """Leaves one resync request per tenant for the following run; returns what it did.

    Raises:
        ConfigError: the staging log has no such stream of these tenants (read without the lock).
    """
    from replicant import runtime
    from replicant.dead_letters import stream_in_log
    from replicant.resync import no_such_stream

    lg = runtime.open_pipeline_log(config, read_only=True)
    try:
        found = [t for t in tenants if stream_in_log(config, lg, stream, t) is not None]
        if not found:
            no_such_stream(stream, lg.streams(), list(tenants))
    finally:
        lg.close()
    folder = requests_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for tenant in found:
        path = folder / f"resync-{tenant}-{uuid.uuid4().hex[:12]}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stream": stream, "tenant": tenant}))
        os.replace(tmp, path)
        lines.append(f"{stream} of tenant {tenant}: handed to the running `run --follow`, which snapshots it again "
                     "while the other tenants go on")
    return lines


def pending_resyncs(config: PipelineConfig) -> list[tuple[Path, dict[str, Any]]]:
    """The requests left, oldest first (a file not yet whole is skipped: its name ends ``.tmp``)."""
    folder = requests_dir(config)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("resync-*.json"), key=lambda p: p.stat().st_mtime_ns):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return out

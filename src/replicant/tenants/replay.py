"""``replicant replay … [--tenant ID]``: a replay of one tenant's log streams, or of each tenant's."""

from __future__ import annotations

from typing import Any

from replicant.config import PipelineConfig
from replicant.results import RunResult

__all__ = ["replay_tenants"]


def replay_tenants(config: PipelineConfig, tenant: str | None, destination: str, *, observer: Any = None,
                   **start: Any) -> RunResult:
    """Re-delivers the staging log to ``destination``: a pipeline without ``tenants:`` as a
    whole; with them, ``tenant``'s streams, or every tenant's one after the other (results
    merged, streams named ``tenant/stream``).

    Raises:
        ConfigError: ``tenant`` given for a pipeline without ``tenants:``, or not in the file.
    """
    from replicant.engine import Engine
    from replicant.errors import ConfigError
    from replicant.tenants.config import tenant_ids, tenant_of

    if not config.tenants:
        if tenant is not None:
            raise ConfigError("--tenant needs `tenants:` in the pipeline file", [("tenants", "the pipeline has none")])
        return Engine(config, observer=observer).replay(destination, **start)
    if tenant is not None:
        tenant_of(config, tenant)
    merged = RunResult(config.pipeline)
    for t in [tenant] if tenant is not None else tenant_ids(config):
        result = Engine(config, tenant=t, observer=observer).replay(destination, **start)
        for dest, per in result.rows_written.items():
            merged.rows_written.setdefault(dest, {}).update({f"{t}/{n}": rows for n, rows in per.items()})
        for dest, per in result.dead_letters.items():
            merged.dead_letters.setdefault(dest, {}).update({f"{t}/{n}": rows for n, rows in per.items()})
        merged.errors.extend(result.errors)
        merged.warnings.extend(result.warnings)
        merged.seconds += result.seconds
    return merged

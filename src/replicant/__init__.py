"""replicant: data pipelines through a durable staging log.

>>> import replicant
>>> result = replicant.run("pipeline.yml")            # doctest: +SKIP
>>> result.ok, result.rows_read                        # doctest: +SKIP

Importing this package reads no configuration, opens no connection and starts no thread;
the engine and the connector base classes are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replicant import memory as _memory  # noqa: F401 - first: chooses Arrow's pool before pyarrow loads
from replicant.api import Pipeline, run
from replicant.config import PipelineConfig, load, parse
from replicant.errors import (
    ConfigError,
    ConnectionError,
    FatalError,
    RecordError,
    ReplicantError,
    RetriableError,
    SchemaDriftError,
)
from replicant.model import ChangeSet, ConnectorContext, DeadLetter, ReadBatch, Stream
from replicant.results import Observer, RunError, RunResult

if TYPE_CHECKING:
    from replicant.destinations.base import Destination
    from replicant.engine import Engine
    from replicant.sources.base import Source
    from replicant.status import PipelineStatus

__version__ = "0.1.0"

__all__ = [
    "ChangeSet",
    "ConfigError",
    "ConnectionError",
    "ConnectorContext",
    "DeadLetter",
    "Destination",
    "Engine",
    "FatalError",
    "Observer",
    "Pipeline",
    "PipelineConfig",
    "PipelineStatus",
    "ReadBatch",
    "RecordError",
    "ReplicantError",
    "RetriableError",
    "RunError",
    "RunResult",
    "SchemaDriftError",
    "Source",
    "Stream",
    "__version__",
    "load",
    "parse",
    "run",
]

_LAZY = {
    "Destination": "replicant.destinations.base",
    "Engine": "replicant.engine",
    "PipelineStatus": "replicant.status",
    "Source": "replicant.sources.base",
}


def __getattr__(name: str) -> Any:
    """The engine and connector bases, imported on first use (``import replicant`` stays cheap)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'replicant' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

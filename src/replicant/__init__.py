"""replicant: data pipelines through a durable staging log.

Importing this package reads no configuration, opens no connection and starts no thread.
"""

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
from replicant.model import Stream

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConnectionError",
    "FatalError",
    "PipelineConfig",
    "RecordError",
    "ReplicantError",
    "RetriableError",
    "SchemaDriftError",
    "Stream",
    "__version__",
    "load",
    "parse",
]

"""Connectors by name, imported lazily.

Built-in sources and destinations are listed here as ``"module:Class"`` strings and
imported on first use, so ``import replicant`` stays cheap. Third-party connectors plug in
through the ``replicant.connectors`` entry-point group with names ``source.NAME`` or
``destination.NAME`` pointing at the class.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from replicant.errors import ConfigError

__all__ = ["source_class", "destination_class", "SOURCES", "DESTINATIONS"]

SOURCES: dict[str, str] = {
    "postgres": "replicant.sources.postgres:PostgresSource",
    "postgresql": "replicant.sources.postgres:PostgresSource",
    "mysql": "replicant.sources.mysql:MySQLSource",
    "mariadb": "replicant.sources.mysql:MySQLSource",
    "sqlite": "replicant.sources.sqlite:SQLiteSource",
    "pipeline": "replicant.sources.pipeline:PipelineSource",
    "http": "replicant.sources.http:HttpSource",
    "singer": "replicant.sources.singer:SingerSource",
    "files": "replicant.sources.files:FilesSource",
}

DESTINATIONS: dict[str, str] = {
    "duckdb": "replicant.destinations.duckdb:DuckDBDestination",
    "postgres": "replicant.destinations.postgres:PostgresDestination",
    "postgresql": "replicant.destinations.postgres:PostgresDestination",
    "mysql": "replicant.destinations.mysql:MySQLDestination",
    "mariadb": "replicant.destinations.mysql:MySQLDestination",
    "sqlite": "replicant.destinations.sqlite:SQLiteDestination",
    "http": "replicant.destinations.http:HttpDestination",
    "files": "replicant.destinations.files:FilesDestination",
    "nats": "replicant.destinations.nats:NatsDestination",
}


def _load(kind: str, name: str, builtins: dict[str, str], key: str) -> Any:
    target = builtins.get(name)
    if target is None:
        for ep in entry_points(group="replicant.connectors"):
            if ep.name == f"{kind}.{name}":
                return ep.load()
        known = sorted(builtins)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(known)}"
        raise ConfigError(f"unknown {kind} type", [(key, f"{name!r} is not a {kind} type{hint}")])
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def source_class(name: str) -> Any:
    return _load("source", name, SOURCES, "source.type")


def destination_class(name: str, index: int = 0) -> Any:
    return _load("destination", name, DESTINATIONS, f"destinations[{index}].type")

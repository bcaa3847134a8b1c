"""The pipeline files of a served folder, read again when they change.

``DIR/*.yml`` and ``DIR/*/*.yml`` (``replicant.yml`` is the service's own settings). A YAML
file that is a mapping with neither ``pipeline:`` nor ``source:`` is not a pipeline and is
skipped; every other file is a pipeline, and a file with errors is kept with its error
(reported by the API and the log) instead of stopping the service.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicant.config import PipelineConfig, load
from replicant.errors import ConfigError, ReplicantError
from replicant.secrets import Secret
from replicant.service.settings import SETTINGS_FILE

__all__ = ["Catalog", "PipelineFile", "for_service"]

log = logging.getLogger(__name__)


@dataclass
class PipelineFile:
    """One pipeline file: its config, or why it could not be read."""

    path: Path
    digest: str
    config: PipelineConfig | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.config.pipeline if self.config is not None else self.path.stem


@dataclass
class Catalog:
    """The pipelines of ``folder`` by name, and the files with errors."""

    folder: Path
    state_url: str
    pipelines: dict[str, PipelineFile] = field(default_factory=dict)
    broken: dict[str, PipelineFile] = field(default_factory=dict)  # by path

    def scan(self) -> list[str]:
        """Reads the folder again; returns what changed (``added x``, ``changed x``,
        ``removed x``, ``error in PATH: …``), each also logged."""
        seen: dict[Path, str] = {}
        for path in sorted([*self.folder.glob("*.yml"), *self.folder.glob("*.yaml"), *self.folder.glob("*/*.yml")]):
            if path.name == SETTINGS_FILE or ".replicant" in path.parts:
                continue
            try:
                seen[path] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                continue
        changes: list[str] = []
        known = {p.path: p for p in [*self.pipelines.values(), *self.broken.values()]}
        for path, digest in seen.items():
            if path in known and known[path].digest == digest:
                continue
            entry = self._read(path, digest)
            if entry is None:
                continue
            self._forget(path)
            if entry.config is None:
                self.broken[str(path)] = entry
                changes.append(f"error in {path}: {entry.error}")
            elif entry.name in self.pipelines and self.pipelines[entry.name].path != path:
                entry.error = f"pipeline {entry.name!r} is also defined in {self.pipelines[entry.name].path}"
                entry.config = None
                self.broken[str(path)] = entry
                changes.append(f"error in {path}: {entry.error}")
            else:
                changes.append(f"{'changed' if path in known else 'added'} {entry.name}")
                self.pipelines[entry.name] = entry
        for path in set(known) - set(seen):
            changes.append(f"removed {known[path].name}")
            self._forget(path)
        for change in changes:
            (log.warning if change.startswith("error") else log.info)("pipelines: %s", change)
        return changes

    def _forget(self, path: Path) -> None:
        self.broken.pop(str(path), None)
        for name, entry in list(self.pipelines.items()):
            if entry.path == path:
                del self.pipelines[name]

    def _read(self, path: Path, digest: str) -> PipelineFile | None:
        import yaml

        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(raw, dict) and "pipeline" not in raw and "source" not in raw:
                return None  # some other YAML file
            from replicant.service.secret_provider import install

            install(self.state_url)  # ${secret:…} from the service's store
            config = for_service(load(path), self.state_url)
            return PipelineFile(path, digest, config=config)
        except (ReplicantError, OSError, ValueError, yaml.YAMLError) as e:
            return PipelineFile(path, digest, error=str(e).replace("\n", " "))


def for_service(config: PipelineConfig, state_url: str) -> PipelineConfig:
    """``config`` as the service runs it: a pipeline without ``state:`` keeps its checkpoints in
    the service's state store, where its run queue and leases are (the fencing needs both in
    one database). A pipeline with its own ``state:`` must name the same store.

    Raises:
        ConfigError: its ``state:`` is another store.
    """
    if config.state is None:
        return config.model_copy(update={"state": Secret(state_url)})
    from replicant import runtime

    if runtime.state_url(config) != state_url:
        raise ConfigError("invalid pipeline file for the service", [
            ("state", "the service keeps every pipeline's state in its own store (replicant.yml `state:`); "
                      "remove `state:` or name the same store")])
    return config


def describe(config: PipelineConfig) -> dict[str, Any]:
    """What the API shows of a pipeline's configuration (no secrets)."""
    source = config.source
    streams = source.streams if source.streams == "all" else [s.table for s in source.streams]
    return {
        "source": {"type": source.type, "streams": streams},
        "destinations": [{"name": d.name, "type": d.type} for d in config.destinations],
        "schedule": None if config.schedule is None else config.schedule.model_dump(mode="json", exclude={"secret"}),
    }

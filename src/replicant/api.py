"""The Python API: run a pipeline from Airflow, Dagster, a notebook or a script.

``replicant.run("pipeline.yml")`` does what ``replicant run pipeline.yml`` does and returns
the :class:`~replicant.results.RunResult` instead of printing it. :class:`Pipeline` is the
same model as the pipeline file (a path, a dict shaped like the YAML, or a parsed
:class:`~replicant.config.PipelineConfig`) with the CLI's verbs as methods.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from replicant.config import PipelineConfig, load, parse
from replicant.results import Observer, RunResult

__all__ = ["Pipeline", "run"]

PipelineLike = PipelineConfig | Mapping[str, Any] | str | os.PathLike[str]


class Pipeline:
    """A pipeline, validated, ready to run.

    Args:
        source: a pipeline file's path, a dict shaped like the YAML file, or a
            :class:`~replicant.config.PipelineConfig`.
        base_dir: the folder relative paths of a dict resolve against (default: the current
            folder); a file's own folder is used for a path.
        observer: run events (progress, metrics) for every run of this pipeline.
        transforms: transforms of every stream before the log, after the file's own
            ``transforms:``: entries shaped like the YAML (``{"mask": {"email": "hash"}}``) or
            :class:`~replicant.transforms.base.Transform` objects (docs/transforms.md).

    Raises:
        ConfigError: the pipeline is invalid; every problem with its key path.
    """

    def __init__(self, source: PipelineLike, *, base_dir: str | os.PathLike[str] = ".", observer: Observer | None = None,
                 transforms: list[Any] | None = None) -> None:
        if isinstance(source, PipelineConfig):
            self.config = source
        elif isinstance(source, Mapping):
            self.config = parse(dict(source), base_dir=Path(base_dir).resolve())
        else:
            self.config = load(source)
        if transforms:
            self.config = _with_transforms(self.config, list(transforms))
        self.observer = observer
        #: Set it (from any thread) to stop a running :meth:`run`, e.g. ``run(follow=True)``.
        self.stop_event = threading.Event()

    @property
    def name(self) -> str:
        return self.config.pipeline

    def _engine(self) -> Any:
        from replicant.engine import Engine

        engine = Engine(self.config, observer=self.observer)
        engine.stop_event = self.stop_event
        return engine

    def run(self, *, follow: bool = False) -> RunResult:
        """Initial sync and catch-up; with ``follow``, keeps capturing until :attr:`stop_event`
        is set. A stream's or destination's failure is in ``RunResult.errors`` (``ok`` False);
        configuration and start-up connection errors raise. With ``tenants:``, every tenant's
        feed at once (:class:`~replicant.tenants.runner.TenantRunner`)."""
        if self.config.tenants:
            from replicant.tenants.runner import TenantRunner

            runner = TenantRunner(self.config, observer=self.observer)
            runner.stop_event = self.stop_event
            return runner.run(follow=follow)
        return self._engine().run(follow=follow)

    def replay(
        self, destination: str, *, from_start: bool = False, offset: int | None = None, since: datetime | None = None
    ) -> RunResult:
        """Re-delivers the staging log to ``destination`` from the start, an offset or a time
        (exactly one), without reading the source."""
        from replicant.errors import ConfigError

        if sum((from_start, offset is not None, since is not None)) != 1:
            raise ConfigError("replay needs exactly one of from_start, offset or since")
        from replicant.tenants.replay import replay_tenants

        if from_start:
            return replay_tenants(self.config, None, destination, observer=self.observer, start="start")
        if offset is not None:
            return replay_tenants(self.config, None, destination, observer=self.observer, start="offset", offset=offset)
        return replay_tenants(self.config, None, destination, observer=self.observer, start="since", since=since)

    def status(self, *, ask_source: bool = False) -> Any:
        """The pipeline's :class:`~replicant.status.PipelineStatus` (``.to_dict()`` for JSON)."""
        return self._engine().status(ask_source=ask_source)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r})"


def _with_transforms(config: PipelineConfig, transforms: list[Any]) -> PipelineConfig:
    """``config`` with ``transforms`` after its top-level ones; ConfigError for a bad entry
    (key path ``transforms[i]``, counted after the file's)."""
    from replicant.errors import ConfigError
    from replicant.transforms.config import specs

    entries = [*(config.transforms or []), *transforms]
    problems: list[tuple[str, str]] = []
    specs(entries, "transforms", problems)
    if problems:
        raise ConfigError("invalid transforms", problems)
    return config.model_copy(update={"transforms": entries})


def run(source: PipelineLike, *, follow: bool = False, observer: Observer | None = None,
        base_dir: str | os.PathLike[str] = ".") -> RunResult:
    """Runs a pipeline (a file's path, a dict shaped like the file, or a config) once to
    catch-up, or with ``follow`` until interrupted; see :meth:`Pipeline.run`."""
    return Pipeline(source, base_dir=base_dir, observer=observer).run(follow=follow)

"""Builds the running parts of a pipeline from its config: paths, source, destinations,
state store and staging log.

Relative paths in the pipeline file (``sqlite:///data.db``, ``path: warehouse.duckdb``,
``log: .replicant/log``) resolve against the pipeline file's folder. The embedded default
keeps state and log under ``<folder>/.replicant/<pipeline>/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from replicant.config import DestinationConfig, PipelineConfig, SourceConfig, sqlite_url_against
from replicant.errors import ConfigError
from replicant.model import ConnectorContext
from replicant.registry import destination_class, source_class
from replicant.secrets import userinfo_problem

__all__ = [
    "home",
    "state_url",
    "log_location",
    "resolve_source_config",
    "resolve_destination_config",
    "check_connectors",
    "build_source",
    "source_context",
    "build_destinations",
    "state_exists",
    "open_state",
    "open_pipeline_log",
]


def home(cfg: PipelineConfig) -> Path:
    """The folder holding the embedded default state and log of this pipeline."""
    return cfg.base_dir / ".replicant" / cfg.pipeline


def state_url(cfg: PipelineConfig) -> str:
    """The state store's URL (nothing is created: :func:`open_state` creates the folder)."""
    if cfg.state is None:
        return f"sqlite:///{home(cfg) / 'state.db'}"
    url = cfg.state.get_secret_value()
    if url.startswith("sqlite"):
        return sqlite_url_against(url, cfg.base_dir)
    problem = userinfo_problem(url)
    if problem:
        raise ConfigError("invalid pipeline file", [("state", problem)])
    return url


def log_location(cfg: PipelineConfig) -> str:
    if cfg.log is None:
        return str(home(cfg) / "log")
    if "://" in cfg.log and not cfg.log.startswith("file://"):
        return cfg.log
    path = Path(cfg.log.removeprefix("file://"))
    return str(path if path.is_absolute() else (cfg.base_dir / path).resolve())


def resolve_source_config(cfg: PipelineConfig) -> SourceConfig:
    """The ``source:`` section completed by its type (relative paths, required keys); a derived
    pipeline's source also takes the stateful entries of ``transforms:`` (they run there)."""
    resolved = source_class(cfg.source.type).resolve_config(cfg.source, base_dir=cfg.base_dir)
    if cfg.source.type == "pipeline":
        from replicant.transforms.config import stateful_entries

        found = stateful_entries(cfg.transforms)
        if found:
            resolved = resolved.model_copy(update={"stateful": found})
    return resolved


def resolve_destination_config(cfg: PipelineConfig, dest: DestinationConfig, index: int) -> DestinationConfig:
    """A destination's section completed by its type (paths, default file, required ``url``)."""
    cls = destination_class(dest.type, index)
    return cls.resolve_config(dest, base_dir=cfg.base_dir, pipeline=cfg.pipeline, key=f"destinations[{index}]")


def check_connectors(cfg: PipelineConfig) -> None:
    """Completes every section as :func:`build_source` and :func:`build_destinations` will,
    without connecting, so that what the connector types find (a required ``url``, a
    missing SQLite file) is reported at once, not one section per run.

    Raises:
        ConfigError: every problem of every section, with its key path.
    """
    problems: list[tuple[str, str]] = []
    if cfg.state is not None and not cfg.state.reference.startswith("sqlite"):
        problem = userinfo_problem(cfg.state.get_secret_value())
        problems += [("state", problem)] if problem else []
    for index in range(-1, len(cfg.destinations)):  # -1: the source
        try:
            if index < 0 and cfg.tenants:  # each tenant's source (`source:` alone may lack its url)
                problems.extend(_tenant_source_problems(cfg))
            elif index < 0:
                resolve_source_config(cfg)
            else:
                resolve_destination_config(cfg, cfg.destinations[index], index)
        except ConfigError as e:
            problems.extend(e.problems or [("(pipeline)", e.message)])
    if problems:
        raise ConfigError("invalid pipeline file", problems)


def _tenant_source_problems(cfg: PipelineConfig) -> list[tuple[str, str]]:
    from replicant.tenants.config import for_tenant

    problems: list[tuple[str, str]] = []
    for i, tenant in enumerate(cfg.tenants or ()):
        try:
            resolve_source_config(for_tenant(cfg, tenant.id))
        except ConfigError as e:
            problems.extend((f"tenants[{i}] ({k})", m) for k, m in e.problems or [("source", e.message)])
    return problems


def source_context(cfg: PipelineConfig, tenant: str | None = None, *, readers: int = 1) -> ConnectorContext:
    """What a source of this pipeline is told at construction: its name, tenant and work dir
    (``<home>/source``, created by the source when it needs it; ``<home>/source/<tenant>`` for
    a tenant of ``tenants:``: two tenants' snapshot_diff files never meet), and how many of
    its sources read at once (``readers``)."""
    workdir = home(cfg) / "source"
    if tenant is not None and cfg.tenants:
        workdir = workdir / tenant
    return ConnectorContext(pipeline=cfg.pipeline, tenant=tenant, workdir=workdir, state_url=state_url(cfg),
                            readers=readers)


def build_source(cfg: PipelineConfig, context: ConnectorContext | None = None):
    cls = source_class(cfg.source.type)
    return cls(resolve_source_config(cfg), context or source_context(cfg))


def build_destinations(
    cfg: PipelineConfig, context_for: Callable[[DestinationConfig], ConnectorContext] | None = None
) -> list:
    """The pipeline's destinations, not opened.

    Args:
        context_for: the :class:`~replicant.model.ConnectorContext` each destination is built
            with (its dead-letter sink, …); default: the pipeline name only.
    """
    out = []
    for i, d in enumerate(cfg.destinations):
        cls = destination_class(d.type, i)
        context = context_for(d) if context_for is not None else ConnectorContext(cfg.pipeline)
        out.append(cls(resolve_destination_config(cfg, d, i), context))
    return out


def state_exists(cfg: PipelineConfig) -> bool:
    """False when the pipeline's SQLite state file (the embedded default or a ``sqlite:``
    ``state:``) does not exist yet: the pipeline never ran, and a reader (``status``) must
    not create it. True for a server-backed state store."""
    url = state_url(cfg)
    if not url.startswith("sqlite"):
        return True
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return not database or database == ":memory:" or Path(database).expanduser().exists()


def open_state(cfg: PipelineConfig):
    from replicant.state import StateStore

    store = StateStore(state_url(cfg))
    store.open()
    return store


def open_pipeline_log(cfg: PipelineConfig, **kwargs):
    from replicant.log import open_log

    return open_log(log_location(cfg), **kwargs)

"""Builds the running parts of a pipeline from its config: paths, source, destinations,
state store and staging log.

Relative paths in the pipeline file (``sqlite:///data.db``, ``path: warehouse.duckdb``,
``log: .replicant/log``) resolve against the pipeline file's folder. The embedded default
keeps state and log under ``<folder>/.replicant/<pipeline>/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from replicant.config import DestinationConfig, PipelineConfig, SourceConfig, normalize_url
from replicant.errors import ConfigError
from replicant.model import ConnectorContext
from replicant.registry import destination_class, source_class

__all__ = [
    "home",
    "state_url",
    "log_location",
    "resolve_source_config",
    "resolve_destination_config",
    "build_source",
    "source_context",
    "build_destinations",
    "open_state",
    "open_pipeline_log",
]


def home(cfg: PipelineConfig) -> Path:
    """The folder holding the embedded default state and log of this pipeline."""
    return cfg.base_dir / ".replicant" / cfg.pipeline


def _sqlite_url(url: str, base: Path) -> str:
    """Makes ``sqlite:///relative.db`` absolute against ``base``; ``sqlite:////abs`` stays."""
    prefix, _, rest = url.partition(":///")
    if not rest or rest.startswith("/") or rest == ":memory:":
        return url
    return f"{prefix}:///{(base / rest).resolve()}"


def state_url(cfg: PipelineConfig) -> str:
    if cfg.state is None:
        path = home(cfg) / "state.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    url = cfg.state.get_secret_value()
    if url.startswith("sqlite"):
        return _sqlite_url(url, cfg.base_dir)
    return url


def log_location(cfg: PipelineConfig) -> str:
    if cfg.log is None:
        return str(home(cfg) / "log")
    if "://" in cfg.log and not cfg.log.startswith("file://"):
        return cfg.log
    path = Path(cfg.log.removeprefix("file://"))
    return str(path if path.is_absolute() else (cfg.base_dir / path).resolve())


def resolve_source_config(cfg: PipelineConfig) -> SourceConfig:
    """The source config with its URL checked and relative SQLite paths made absolute."""
    src = cfg.source
    if src.url is None:
        raise ConfigError("invalid pipeline file", [("source.url", f"a {src.type} source needs `url:`")])
    try:
        dialect, _ = normalize_url(src.url.get_secret_value())
    except ConfigError as e:
        raise ConfigError("invalid pipeline file", [("source." + k, m) for k, m in e.problems]) from None
    if dialect == "sqlite":
        fixed = _sqlite_url(src.url.get_secret_value(), cfg.base_dir)
        path = Path(fixed.partition(":///")[2])
        if not path.exists():
            raise ConfigError("invalid pipeline file", [("source.url", f"SQLite file {str(path)!r} does not exist")])
        src = src.model_copy(update={"url": SecretStr(fixed)})
    return src


def resolve_destination_config(cfg: PipelineConfig, dest: DestinationConfig, index: int) -> DestinationConfig:
    key = f"destinations[{index}]"
    update: dict[str, object] = {}
    if dest.type in ("duckdb", "sqlite"):
        path = dest.path
        if path is None and dest.url is not None:
            path = dest.url.get_secret_value().partition(":///")[2] or None
        if path is None:
            path = f"{cfg.pipeline}.{'duckdb' if dest.type == 'duckdb' else 'db'}"
        p = Path(path)
        update["path"] = str(p if p.is_absolute() else (cfg.base_dir / p).resolve())
    elif dest.type == "files" and dest.path and "://" not in dest.path and not Path(dest.path).is_absolute():
        update["path"] = str((cfg.base_dir / dest.path).resolve())
    elif dest.type not in _SQL_URL_TYPES:
        pass  # http, files, nats…: their class validates its own settings
    elif dest.url is None:
        raise ConfigError("invalid pipeline file", [(f"{key}.url", f"a {dest.type} destination needs `url:`")])
    else:
        try:
            normalize_url(dest.url.get_secret_value())
        except ConfigError as e:
            raise ConfigError("invalid pipeline file", [(f"{key}.{k}", m) for k, m in e.problems]) from None
    return dest.model_copy(update=update) if update else dest


_SQL_URL_TYPES = ("postgres", "postgresql", "mysql", "mariadb")


def source_context(cfg: PipelineConfig, tenant: str | None = None) -> ConnectorContext:
    """What a source of this pipeline is told at construction: its name, tenant and work dir
    (``<home>/source``, created by the source when it needs it)."""
    return ConnectorContext(pipeline=cfg.pipeline, tenant=tenant, workdir=home(cfg) / "source")


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


def open_state(cfg: PipelineConfig):
    from replicant.state import StateStore

    store = StateStore(state_url(cfg))
    store.open()
    return store


def open_pipeline_log(cfg: PipelineConfig, **kwargs):
    from replicant.log import open_log

    return open_log(log_location(cfg), **kwargs)

"""Per-stream keys of a source type (``path``, ``paginate`` of an http stream), gathered into
:attr:`replicant.config.StreamConfig.options` before the common stream keys are validated.

A source class that declares ``stream_entry(entry) -> entry`` (a classmethod) reshapes each raw
``streams:`` mapping: its own keys go under ``options`` (validated by the source, with key paths,
when it is constructed), and it may set common keys (``table`` from ``name``, ``mode``). Types
without it get their entries unchanged.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

__all__ = ["options_entry", "stream_options", "stream_problems", "with_stream_entries"]


def with_stream_entries(data: Any) -> Any:
    """The raw ``source:`` mapping with each ``streams:`` entry reshaped by its type (see above)."""
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return data
    from replicant.errors import ConfigError
    from replicant.registry import source_class

    try:
        reshape = getattr(source_class(data["type"]), "stream_entry", None)
    except ConfigError:  # reported with the other problems by the parser
        return data
    if reshape is None:
        return data
    out = dict(data)
    if isinstance(data.get("streams"), list):  # `- name` is short for `- name: name`
        out["streams"] = [reshape(s if isinstance(s, dict) else {"name": s}) if isinstance(s, (dict, str)) else s
                          for s in data["streams"]]
    default = getattr(source_class(data["type"]), "default_stream_mode", None)
    if default is not None:
        out.setdefault("default_mode", default)
    return out


def stream_problems(cls: Any, streams: Any) -> list[tuple[str, str]]:
    """The problems of the raw ``streams:`` entries' type-specific keys, checked against the
    source class's ``stream_settings`` model when the file is loaded (``source.streams[1].paginat:
    unknown key (did you mean 'paginate'?)``); none for types without one."""
    from replicant.config import StreamConfig, settings_problems

    model = getattr(cls, "stream_settings", None)
    reshape = getattr(cls, "stream_entry", None)
    if model is None or reshape is None or not isinstance(streams, list):
        return []
    problems: list[tuple[str, str]] = []
    for i, raw in enumerate(streams):
        if isinstance(raw, dict):
            options = reshape(raw).get("options") or {}
            problems += settings_problems(model, options, f"source.streams[{i}]", list(StreamConfig.model_fields))
    return problems


def options_entry(entry: dict[str, Any], *, mode: str | None = None) -> dict[str, Any]:
    """A raw ``streams:`` entry in the common shape, for a type's ``stream_entry``: ``name`` is the
    stream (``table``), every key that is not a common stream key goes under ``options`` (merged
    over the ``options`` already gathered: a validated config dumped and validated again), and
    ``mode`` (when given) is the default mode."""
    from replicant.config import StreamConfig

    common = set(StreamConfig.model_fields) | {"name"}
    out = {k: v for k, v in entry.items() if k in common}
    out["options"] = {**(entry.get("options") or {}), **{k: v for k, v in entry.items() if k not in common}}
    if "name" in out and "table" not in out:
        out["table"] = out.pop("name")
    if mode is not None:
        out.setdefault("mode", mode)
    return out


def stream_options(streams: Any, model: type[M]) -> dict[str, M]:
    """Each stream's ``options`` validated by ``model``, by stream name.

    Raises:
        ConfigError: every problem, each with its key path (``source.streams[1].glob``).
    """
    from replicant.config import StreamConfig, settings_problems
    from replicant.errors import ConfigError

    problems: list[tuple[str, str]] = []
    out: dict[str, M] = {}
    for i, sc in enumerate(streams if isinstance(streams, list) else []):
        found = settings_problems(model, sc.options, f"source.streams[{i}]", list(StreamConfig.model_fields))
        problems += found
        if not found:
            out[sc.table] = model.model_validate(sc.options)
    if problems:
        raise ConfigError("invalid source", problems)
    return out

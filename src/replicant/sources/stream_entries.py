"""Per-stream keys of a source type (``path``, ``paginate`` of an http stream), gathered into
:attr:`replicant.config.StreamConfig.options` before the common stream keys are validated.

A source class that declares ``stream_entry(entry) -> entry`` (a classmethod) reshapes each raw
``streams:`` mapping: its own keys go under ``options`` (validated by the source, with key paths,
when it is constructed), and it may set common keys (``table`` from ``name``, ``mode``). Types
without it get their entries unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["stream_problems", "with_stream_entries"]


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

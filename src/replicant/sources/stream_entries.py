"""Per-stream keys of a source type (``path``, ``paginate`` of an http stream), gathered into
:attr:`replicant.config.StreamConfig.options` before the common stream keys are validated.

A source class that declares ``stream_entry(entry) -> entry`` (a classmethod) reshapes each raw
``streams:`` mapping: its own keys go under ``options`` (validated by the source, with key paths,
when it is constructed), and it may set common keys (``table`` from ``name``, ``mode``). Types
without it get their entries unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["with_stream_entries"]


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

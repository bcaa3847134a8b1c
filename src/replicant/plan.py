"""Planning: which streams a pipeline runs, from the source's discovery and the pipeline file.

:func:`plan_streams` applies ``source.streams`` (mode, cursor, key, columns) on top of what the
source discovered, checks every stream against what the source and each destination can do,
and reports every problem at once with its key path. The streams it returns carry their key
columns in the schema metadata, so the staging log (and a replay without the source) knows
them: :func:`log_stream` rebuilds a stream from the log alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import pyarrow as pa

from replicant.config import DestinationConfig, PipelineConfig, suggest
from replicant.errors import ConfigError
from replicant.model import Stream

__all__ = ["KEY_METADATA", "chosen", "log_key", "log_stream", "plan_streams"]

#: Schema metadata holding a stream's key columns, comma-separated.
KEY_METADATA = b"replicant.primary_key"


def plan_streams(
    config: PipelineConfig, discovered: list[Stream], modes: Iterable[str], *, tenant: str | None = None,
    other_streams: frozenset[str] = frozenset(),
) -> list[Stream]:
    """The streams to run: ``discovered`` narrowed and shaped by ``config.source.streams``.

    Args:
        config: the pipeline.
        discovered: what the source lists (:meth:`replicant.sources.base.Source.discover`).
        modes: the read strategies the source supports.
        tenant: the tenant whose source was discovered; its streams carry it (their
            :attr:`~replicant.model.Stream.log_name` includes it).
        other_streams: other tenants' stream names, which transforms' ``streams:`` and a
            destination's ``streams:``/``tables:`` may name too (a MySQL tenant's ``Album``).

    Raises:
        ConfigError: every problem at once, each with its key path (a mode the source cannot
            read, ``replace`` on a non-``full`` stream, ``merge`` of a stream without a key, a
            write mode the destination cannot do, a destination naming an unknown stream),
            before anything is read or written.
    """
    from replicant.sources.select import resolve_streams

    streams = [_keyed(s, tenant) for s in resolve_streams(config.source, discovered)]
    modes = frozenset(modes)
    problems: list[tuple[str, str]] = [
        (f"source.streams ({s.name})", f"a {config.source.type} source cannot read mode {s.mode!r}; it reads {', '.join(sorted(modes))}")
        for s in streams
        if s.mode not in modes
    ]
    names = sorted(s.name for s in streams)
    others = other_streams - set(names)
    logged = _transform_problems(config, streams, problems, tenant, others)
    for i, d in enumerate(config.destinations):
        problems.extend(_write_problems(i, d, chosen(d, logged)))
        if getattr(config, "tenants", None) and d.write == "replace":
            problems.append((f"destinations[{i}].write", "replace swaps the whole table, which holds every tenant's rows: "
                                                         "use merge (keyed by _tenant and the stream's key) or append"))
        problems.extend(
            (f"destinations[{i}].streams", f"no stream named {n!r}{suggest(n, names)}") for n in d.streams or ()
            if n not in names and n not in others
        )
        tables = getattr(d, "tables", None)
        if isinstance(tables, dict):
            problems.extend(
                (f"destinations[{i}].tables.{n}", f"no stream named {n!r}{suggest(n, names)}") for n in tables
                if n not in names and n not in others
            )
    if problems:
        raise ConfigError("invalid pipeline file", problems)
    return streams


def _transform_problems(
    config: PipelineConfig, streams: list[Stream], problems: list[tuple[str, str]], tenant: str | None = None,
    others: frozenset[str] = frozenset(),
) -> list[Stream]:
    """Adds what does not fit in the transform lists (a key that does not resolve, a column a
    stream has not) to ``problems``; returns the streams as the log will hold them."""
    from replicant.transforms.placement import at_destination, before_log

    try:
        pre = before_log(config, tenant)
    except ConfigError as e:
        problems.extend(e.problems)
        return streams
    found = pre.problems(streams, others)
    problems.extend(found)
    if found:
        return streams
    logged = [pre.output_stream(s) for s in streams]
    for i, d in enumerate(config.destinations):
        try:
            problems.extend(at_destination(d, i).problems(chosen(d, logged), others))
        except ConfigError as e:
            problems.extend(e.problems)
    return logged


def _write_problems(index: int, dest: DestinationConfig, streams: list[Stream]) -> list[tuple[str, str]]:
    """What stops ``streams`` from being written to destination ``index`` by its write mode
    (:meth:`~replicant.config.DestinationConfig.write_for`): merge needs a key, replace a
    full read, and the destination must be able to do the mode."""
    from replicant.registry import destination_class

    try:
        caps = getattr(destination_class(dest.type, index), "capabilities", None)
    except ConfigError as e:
        return list(e.problems)
    can_merge = caps is None or caps.merge
    key = f"destinations[{index}].write"
    if dest.write is not None and caps is not None and not getattr(caps, dest.write, True):
        return [(key, f"a {dest.type} destination cannot {dest.write}; use append")]
    modes = {s.name: dest.write_for(s.primary_key, can_merge=can_merge) for s in streams}
    problems = []
    keyless = [s.name for s in streams if modes[s.name] == "merge" and not s.primary_key]
    if keyless:
        problems.append((key, f"merge needs a key and {_names(keyless)} {'has' if len(keyless) == 1 else 'have'} none: set "
                              "`primary_key:` for it under source.streams, leave it out of this destination with "
                              f"`destinations[{index}].streams:`, or write it with `write: append`"))
    not_full = [s.name for s in streams if modes[s.name] == "replace" and s.mode != "full"]
    if not_full:
        problems.append((key, f"replace needs mode full; {_names(not_full)} {'is' if len(not_full) == 1 else 'are'} not: "
                              f"use `write: merge`, or leave it out with `destinations[{index}].streams:`"))
    return problems


def _names(streams: list[str]) -> str:
    return ("stream " if len(streams) == 1 else "streams ") + ", ".join(repr(n) for n in streams)


def chosen(dest: DestinationConfig, streams: list[Stream]) -> list[Stream]:
    """The streams a destination receives (its ``streams:`` setting; default all)."""
    only = dest.streams
    return streams if not only else [s for s in streams if s.name in only]


def log_stream(config: PipelineConfig, name: str, schema: pa.Schema, *, tenant: str | None = None) -> Stream:
    """The stream ``name`` (of ``tenant``) as the pipeline file and its log schema describe it,
    without the source (a replay): the key comes from the file, else from the log's schema
    metadata."""
    cfg_streams = config.source.streams if isinstance(config.source.streams, list) else []
    for sc in cfg_streams:
        if sc.table == name:
            key = sc.primary_key if sc.primary_key and all(k in schema.names for k in sc.primary_key) else log_key(schema)
            return Stream(name=name, table=tuple(name.split(".")), schema=schema, primary_key=tuple(key),
                          cursor=sc.cursor, mode=sc.mode, tenant=tenant)
    return Stream(name=name, table=tuple(name.split(".")), schema=schema, primary_key=tuple(log_key(schema)), tenant=tenant)


def log_key(schema: pa.Schema) -> list[str]:
    """Key columns recorded in the schema metadata by :func:`plan_streams`, if any."""
    raw = (schema.metadata or {}).get(KEY_METADATA)
    return [k for k in raw.decode().split(",") if k] if raw else []


def _keyed(stream: Stream, tenant: str | None) -> Stream:
    """The stream with its key columns in the schema metadata, and its tenant."""
    md = dict(stream.schema.metadata or {})
    md[KEY_METADATA] = ",".join(stream.primary_key).encode()
    return dataclasses.replace(stream, schema=stream.schema.with_metadata(md), tenant=tenant)

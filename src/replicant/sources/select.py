"""Which streams a pipeline reads: ``source.streams`` applied to what a SQL source discovered.

:func:`resolve_streams` turns ``streams: all`` or the list of ``table:`` entries into
:class:`~replicant.model.Stream` objects with their mode, cursor, key, columns and read
options. Every problem is collected and raised as one
:class:`~replicant.errors.ConfigError`, each with its key path
(``source.streams[2].table: no table 'albm' (did you mean 'album'?)``).

Naming: a listed stream is named exactly as the user wrote ``table:``; a stream found by
``streams: all`` is named by its bare table name in the default schema (PostgreSQL: the
first schema of the search path, MySQL: the URL's database, SQLite: ``main``) and
``schema.table`` elsewhere — which is how :meth:`Source.discover` names them.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pyarrow as pa

from replicant.config import SourceConfig, StreamConfig, suggest
from replicant.errors import ConfigError
from replicant.model import Stream
from replicant.sources.types import is_keyable, is_numeric, is_temporal

__all__ = ["OWN_TABLE_PREFIX", "parse_lookback", "resolve_streams", "split_name"]

#: Tables replicant creates in a source (trigger shadow tables…) are never streams of `all`.
OWN_TABLE_PREFIX = "_replicant"

#: Discovery's ``Stream.options["kind"]`` values that ``streams: all`` reads.
_ALL_KINDS = ("table", "partitioned")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_lookback(value: float | str, *, temporal: bool) -> float | int:
    """The look-back as a number: seconds for a temporal cursor (``'5m'``, ``'1h'``, ``'2d'``
    or a number of seconds), cursor units for a numeric one (a plain number).

    Raises:
        ValueError: a unit on a numeric cursor, a negative or unreadable value.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a look-back")
    if isinstance(value, (int, float)):
        number: float | int = value
    else:
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a look-back: give seconds or a duration like '5m', '1h', '2d'")
        if m[2] and not temporal:
            raise ValueError(f"{value!r} is a duration but the cursor is numeric: give a number of cursor units")
        text = m[1]
        number = (float(text) if "." in text else int(text)) * _UNITS[(m[2] or "s").lower()]
    if number < 0:
        raise ValueError(f"{value!r}: a look-back cannot be negative")
    return number


def split_name(text: str) -> tuple[str, ...] | None:
    """``a.b``, ``"a"."b"`` or `` `a`.`b` `` as name parts; None when it is not such a name."""
    parts: list[str] = []
    pos = 0
    pattern = re.compile(r'"((?:[^"]|"")*)"|`((?:[^`]|``)*)`|([^."`]+)')
    while pos <= len(text):
        m = pattern.match(text, pos)
        if not m:
            return None
        if m[1] is not None:
            parts.append(m[1].replace('""', '"'))
        elif m[2] is not None:
            parts.append(m[2].replace("``", "`"))
        else:
            parts.append(m[3])
        pos = m.end()
        if pos == len(text):
            return tuple(parts)
        if text[pos] != ".":
            return None
        pos += 1
    return None


def _qualified(s: Stream) -> str:
    return ".".join(s.table)


def _find(text: str, discovered: list[Stream]) -> tuple[Stream | None, str]:
    """The stream ``text`` names, or None and a hint (`` (did you mean 'x'?)``)."""
    by_name: dict[str, Stream] = {}
    for s in discovered:
        by_name.setdefault(s.name, s)
        by_name.setdefault(_qualified(s), s)
    if text in by_name:
        return by_name[text], ""
    parts = split_name(text)
    if parts:
        hits = [s for s in discovered if (len(parts) == 1 and s.name == parts[0]) or s.table == parts]
        if len(hits) == 1:
            return hits[0], ""
    # case-insensitive, only when unique
    low = text.casefold()
    folded = {id(s): s for n, s in by_name.items() if n.casefold() == low}
    if not folded and parts:
        lp = tuple(p.casefold() for p in parts)
        folded = {
            id(s): s for s in discovered
            if (len(lp) == 1 and s.name.casefold() == lp[0]) or tuple(p.casefold() for p in s.table) == lp
        }
    if len(folded) == 1:
        return next(iter(folded.values())), ""
    if len(folded) > 1:
        names = sorted(s.name for s in folded.values())
        return None, f" (ambiguous without exact case: {', '.join(repr(n) for n in names)})"
    elsewhere = [s.name for s in discovered if s.table[-1] == text]
    if elsewhere:
        return None, f" in the default schema (did you mean {elsewhere[0]!r}?)"
    return None, suggest(text, [s.name for s in discovered])


def _options(config: SourceConfig, sc: StreamConfig | None, base: dict[str, Any]) -> dict[str, Any]:
    opts = dict(base)
    opts["batch_size"] = config.batch_size
    opts["chunk_size"] = (sc.chunk_size if sc and sc.chunk_size else None) or config.chunk_size
    return opts


def _check_columns(
    key: str, what: str, names: list[str] | None, stream: Stream, problems: list[tuple[str, str]]
) -> None:
    if not names:
        return
    have = stream.schema.names
    problems.extend((key, f"no {what} {n!r} in {stream.name}{suggest(n, have)}") for n in names if n not in have)


def _resolve_one(
    config: SourceConfig, sc: StreamConfig, key: str, found: Stream, problems: list[tuple[str, str]]
) -> Stream | None:
    """Applies one ``streams:`` entry to its discovered table; None when it has problems."""
    before = len(problems)
    schema = found.schema
    _check_columns(f"{key}.primary_key", "column", sc.primary_key, found, problems)
    _check_columns(f"{key}.include", "column", sc.include, found, problems)
    _check_columns(f"{key}.exclude", "column", sc.exclude, found, problems)
    if sc.cursor is not None:
        _check_columns(f"{key}.cursor", "column", [sc.cursor], found, problems)
    if len(problems) > before:
        return None

    pk = tuple(sc.primary_key) if sc.primary_key else found.primary_key
    if sc.primary_key and len(set(pk)) != len(pk):
        problems.append((f"{key}.primary_key", "lists a column twice"))
    options = _options(config, sc, found.options)

    if sc.mode == "cursor":
        cur = schema.field(sc.cursor)
        if not pk:
            problems.append((
                f"{key}.primary_key",
                (f"{found.name} has no primary key; mode cursor needs one to page through equal cursor "
                 "values: set `primary_key:`"),
            ))
        for k in pk:
            if schema.field(k).nullable and k not in found.primary_key:
                problems.append((f"{key}.primary_key", f"column {k!r} is nullable; mode cursor needs NOT NULL key columns"))
            elif not is_keyable(schema.field(k).type):
                problems.append((f"{key}.primary_key", f"column {k!r} ({schema.field(k).type}) cannot order a keyset"))
        if not is_keyable(cur.type, cursor=True):
            problems.append((f"{key}.cursor", (f"column {sc.cursor!r} ({cur.type}) cannot be a cursor; use a number, "
                                               "date/time or text column")))
        elif sc.lookback is not None:
            try:
                options["lookback"] = parse_lookback(
                    sc.lookback, temporal=is_temporal(cur.type) or pa.types.is_string(cur.type)
                )
            except ValueError as e:
                problems.append((f"{key}.lookback", str(e)))
            else:
                if options["lookback"] and not (is_temporal(cur.type) or is_numeric(cur.type)):
                    problems.append((f"{key}.lookback", f"cursor {sc.cursor!r} is text; a look-back needs a number or time cursor"))
    elif sc.lookback is not None:
        problems.append((f"{key}.lookback", "is only used by mode cursor"))
    if sc.soft_delete is not None:
        if sc.mode != "cursor":
            problems.append((f"{key}.soft_delete", f"is only used by mode cursor (mode {sc.mode} sees deletes itself)"))
        elif sc.soft_delete not in schema.names:
            problems.append((f"{key}.soft_delete", f"no column {sc.soft_delete!r} in {found.name}{suggest(sc.soft_delete, schema.names)}"))
        else:
            options["soft_delete"] = sc.soft_delete

    keep_always = set(pk) | ({sc.cursor} if sc.cursor else set()) | ({sc.soft_delete} if sc.soft_delete else set())
    if sc.include:
        wanted = set(sc.include) | keep_always
        fields = [f for f in schema if f.name in wanted]
    elif sc.exclude:
        kept = sorted(keep_always & set(sc.exclude))
        if kept:
            problems.append((f"{key}.exclude", f"cannot exclude key or cursor column(s) {', '.join(map(repr, kept))}"))
        fields = [f for f in schema if f.name not in sc.exclude]
    else:
        fields = list(schema)
    if len(problems) > before:
        return None
    return Stream(
        name=sc.table,
        table=found.table,
        schema=pa.schema(fields, metadata=schema.metadata),
        primary_key=pk,
        cursor=sc.cursor,
        mode=sc.mode,
        options=options,
    )


def resolve_streams(config: SourceConfig, discovered: list[Stream]) -> list[Stream]:
    """Applies ``config.streams`` to the discovered streams.

    ``streams: all`` takes every table the user may read (PostgreSQL: a partitioned table
    once, never its partitions; never views or foreign tables, nor replicant's own
    ``_replicant*`` tables), optionally only
    those of ``config.schema_name``, in mode ``config.default_mode``. A list matches each
    ``table:`` against the discovered names — exactly first, then case-insensitively if
    that is unique — and applies mode, cursor, primary key, include/exclude, look-back and
    chunk size.

    Raises:
        ConfigError: listing every problem with its key path.
    """
    problems: list[tuple[str, str]] = []
    out: list[Stream] = []
    if config.streams == "all":
        if config.default_mode == "cursor":
            raise ConfigError("invalid streams", [(
                "source.default_mode",
                "mode cursor needs a cursor column per table; list the streams with `cursor:` instead of `all`",
            )])
        for s in discovered:
            if s.options.get("kind", "table") not in _ALL_KINDS or s.table_name.startswith(OWN_TABLE_PREFIX):
                continue
            if s.options.get("readable") is False:  # no SELECT privilege
                continue
            if config.schema_name is not None and s.table[0] != config.schema_name:
                continue
            out.append(replace(s, mode=config.default_mode, options=_options(config, None, s.options)))
        if not out:
            where = f" in schema {config.schema_name!r}" if config.schema_name else ""
            raise ConfigError("invalid streams", [("source.streams", f"`all` found no tables{where}")])
        return out

    seen: dict[tuple[str, ...], int] = {}
    for i, sc in enumerate(config.streams):
        key = f"source.streams[{i}]"
        found, hint = _find(sc.table, discovered)
        if found is None:
            problems.append((f"{key}.table", f"no table {sc.table!r}{hint}"))
            continue
        if found.table in seen:
            problems.append((f"{key}.table", f"{sc.table!r} is already listed at source.streams[{seen[found.table]}]"))
            continue
        seen[found.table] = i
        if found.options.get("readable") is False:
            problems.append((f"{key}.table", f"no SELECT privilege on {sc.table!r}: GRANT SELECT to the source user"))
            continue
        stream = _resolve_one(config, sc, key, found, problems)
        if stream is not None:
            out.append(stream)
    if problems:
        raise ConfigError("invalid streams", problems)
    return out

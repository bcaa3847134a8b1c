"""Transform lists in the pipeline file: checked with their key paths, built into transforms.

One syntax in every placement: a list of one-key mappings (``- rename: {a: b}``), each of
which may carry ``streams: [...]`` to scope it. :func:`specs` finds what is wrong without a
schema (unknown names, a stateful transform before the log, a ``derive`` that does not parse,
a ``python:`` target that does not import); :class:`~replicant.transforms.chain.TransformChain`
finds the rest against each stream's schema (a ``rename`` of a missing column). Keys (``key:``)
stay references until :func:`build` resolves them, when a run starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from replicant.errors import ConfigError
from replicant.transforms.base import Transform

__all__ = ["BUILT_INS", "MASK_KEY_REFERENCE", "STATEFUL", "TransformSpec", "build", "is_stateful", "specs", "stateful_entries"]

BUILT_INS = ("rename", "cast", "derive", "filter", "select", "drop", "mask", "encrypt", "sql", "python")
#: Stateful transforms: derived pipelines only.
STATEFUL = ("aggregate", "join")
_MASK_METHODS = ("hash", "redact", "last4")
#: The key of ``mask: {column: hash}`` when the entry names none.
MASK_KEY_REFERENCE = "${env:REPLICANT_MASK_KEY}"
_WHERE_STATEFUL = ("is a stateful transform: it runs only in a derived pipeline (`source: {type: pipeline}`), "
                   "in that pipeline's `transforms:`; before the log and per destination only stateless ones run")


@dataclass(frozen=True)
class TransformSpec:
    """One entry of a transform list: where it is written, what it is, which streams it takes."""

    path: str
    kind: str
    value: Any
    streams: tuple[str, ...] | None = None
    output_name: str | None = None  # `as:`: a stateful transform's output stream


def specs(entries: Any, path: str, problems: list[tuple[str, str]], *, scoped: bool = True,
          derived: bool = False) -> list[TransformSpec]:
    """The entries of the transform list at ``path``; each problem found is added to
    ``problems`` (with its key path) and its entry left out. ``scoped``: entries may carry
    ``streams:`` (not under a single stream). ``derived``: the top-level list of a derived
    pipeline, where stateful entries are taken (:func:`stateful_entries` picks them)."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        problems.append((path, "must be a list of transforms (`- rename: {a: b}`)"))
        return []
    out = []
    for i, entry in enumerate(entries):
        where = f"{path}[{i}]"
        if isinstance(entry, Transform):
            if entry.stateful:
                problems.append((where, f"{entry.name} {_WHERE_STATEFUL}"))
            else:
                out.append(TransformSpec(where, "object", entry))
            continue
        spec = _spec(entry, where, problems, scoped, derived)
        if spec is not None:
            out.append(spec)
    return out


def _spec(entry: Any, where: str, problems: list[tuple[str, str]], scoped: bool, derived: bool = False) -> TransformSpec | None:
    from replicant.config import suggest

    if not isinstance(entry, dict):
        problems.append((where, "a transform is a mapping with one key, e.g. `- drop: [fax]`"))
        return None
    entry = dict(entry)
    streams = entry.pop("streams", None)
    output_name = entry.pop("as", None)
    if streams is not None and (not scoped or not isinstance(streams, list) or not all(isinstance(s, str) for s in streams)):
        problems.append((f"{where}.streams", "a list of stream names" if scoped else
                         "has no meaning in a stream's own transforms (they take that stream only)"))
        return None
    if len(entry) != 1:
        problems.append((where, f"needs exactly one transform, has {', '.join(map(str, entry)) or 'none'}"))
        return None
    [(kind, value)] = entry.items()
    key = f"{where}.{kind}"
    if kind == "python" and derived and _is_class(value):
        return TransformSpec(where, kind, value, tuple(streams) if streams else None, output_name)
    if kind in STATEFUL and derived:
        found = _stateful_problems(kind, value, key, streams)
        problems.extend(found)
        return None if found else TransformSpec(where, kind, value, tuple(streams) if streams else None, output_name)
    if kind in STATEFUL:
        problems.append((key, f"{kind} {_WHERE_STATEFUL}"))
        return None
    if output_name is not None:
        problems.append((f"{where}.as", "names the output stream of a stateful transform (aggregate, join, "
                                        "python: module:Class); a stateless one keeps its stream's name"))
        return None
    if kind not in BUILT_INS:
        problems.append((key, f"unknown transform{suggest(str(kind), list(BUILT_INS + STATEFUL))}; "
                              f"use one of {', '.join(BUILT_INS)}"))
        return None
    found = _value_problems(kind, value, key)
    problems.extend(found)
    return None if found else TransformSpec(where, kind, value, tuple(streams) if streams is not None else None)


def _stateful_problems(kind: str, value: Any, key: str, streams: Any) -> list[tuple[str, str]]:
    """What is wrong with a stateful entry of a derived pipeline (without a schema)."""
    from replicant.transforms.sql import check_expression

    if streams is not None and len(streams) != 1:
        return [(f"{key}.streams", f"{kind} reads one stream: name it alone")]
    if kind == "join":
        return _join_problems(value, key)
    if not isinstance(value, dict):
        return [(key, "a mapping: {by: [column, …], values: {name: DuckDB aggregate expression}}")]
    extra = set(value) - {"by", "values", "as"}
    if extra:
        return [(f"{key}.{sorted(extra)[0]}", "unknown key; aggregate takes by, values and as")]
    by, values = value.get("by"), value.get("values")
    out = []
    if not isinstance(by, list) or not by or not all(isinstance(b, str) for b in by):
        out.append((f"{key}.by", "a list of group column names"))
    if not isinstance(values, dict) or not values:
        out.append((f"{key}.values", "a mapping from output column to DuckDB aggregate expression (`sum(amount)`)"))
        return out
    for col, expr in values.items():
        try:
            check_expression(expr)
        except ValueError as e:
            out.append((f"{key}.values.{col}", str(e)))
    return out


def join_value(value: Any) -> Any:
    """A ``join:`` mapping with its ``on:`` key as written: YAML 1.1 reads a bare ``on`` as true."""
    if isinstance(value, dict) and True in value and "on" not in value:
        return {("on" if k is True else k): v for k, v in value.items()}
    return value


def _join_problems(value: Any, key: str) -> list[tuple[str, str]]:
    value = join_value(value)
    if not isinstance(value, dict):
        return [(key, "a mapping: {with: STREAM, on: {column: its key column}, columns: [...], how: inner|left}")]
    extra = set(value) - {"with", "on", "columns", "how", "as"}
    if extra:
        return [(f"{key}.{sorted(extra)[0]}", "unknown key; join takes with, on, columns, how and as")]
    out = []
    if not isinstance(value.get("with"), str):
        out.append((f"{key}.with", "the name of the stream joined (as in the upstream log)"))
    on = value.get("on")
    if not isinstance(on, dict) or not on or not all(isinstance(k, str) and isinstance(v, str) for k, v in on.items()):
        out.append((f"{key}.on", "a mapping from this stream's column to the joined stream's key column"))
    cols = value.get("columns", [])
    if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
        out.append((f"{key}.columns", "a list of the joined stream's columns to add"))
    if value.get("how", "inner") not in ("inner", "left"):
        out.append((f"{key}.how", "inner or left"))
    return out


def _is_class(value: Any) -> bool:
    from replicant.transforms.python import import_target, is_stateful_target

    try:
        return is_stateful_target(import_target(value))
    except ValueError:
        return False


def is_stateful(kind: str, value: Any) -> bool:
    """An entry that runs in a derived pipeline's stateful stage: aggregate, join, or
    ``python: module:Class``."""
    return kind in STATEFUL or (kind == "python" and _is_class(value))


def stateful_entries(entries: Any) -> list[dict[str, Any]]:
    """The stateful entries of a derived pipeline's checked top-level ``transforms:``, as
    written (with ``streams:`` and ``as:``), each with its key path under ``_path``."""
    return [{**e, "_path": f"transforms[{i}]"} for i, e in enumerate(entries or []) if isinstance(e, dict)
            and any(is_stateful(k, v) for k, v in e.items() if k not in ("streams", "as"))]


def _value_problems(kind: str, value: Any, key: str) -> list[tuple[str, str]]:
    from replicant.transforms.columns import arrow_type
    from replicant.transforms.python import import_target, is_stateful_target
    from replicant.transforms.sql import check_expression, check_query

    def mapping(of: str) -> list[tuple[str, str]]:
        ok = isinstance(value, dict) and value and all(isinstance(k, str) for k in value)
        return [] if ok else [(key, f"a mapping {of}")]

    if kind in ("rename", "cast", "derive"):
        shape = {"rename": "from old column name to new", "cast": "from column to type (`bigint`, `decimal(12,2)`…)",
                 "derive": "from new column to DuckDB SQL expression"}[kind]
        found = mapping(shape)
        if found:
            return found
        out = []
        for col, v in value.items():
            try:
                if not isinstance(v, str) or not v.strip():
                    raise ValueError("needs a non-empty text value")
                if kind == "cast":
                    arrow_type(v)
                elif kind == "derive":
                    check_expression(v)
            except ValueError as e:
                out.append((f"{key}.{col}", str(e)))
        return out
    if kind in ("select", "drop"):
        ok = isinstance(value, list) and value and all(isinstance(c, str) for c in value)
        return [] if ok else [(key, "a list of column names")]
    if kind in ("filter", "sql"):
        try:
            (check_expression if kind == "filter" else check_query)(value)
        except ValueError as e:
            return [(key, str(e))]
        return []
    if kind == "python":
        try:
            target = import_target(value)
        except ValueError as e:
            return [(key, str(e))]
        if is_stateful_target(target):
            return [(key, f"{value} is a class: a stateful python transform {_WHERE_STATEFUL}")]
        return [] if callable(target) else [(key, f"{value!r} is not a function")]
    if kind == "mask":
        return mapping("from column to hash, redact or last4") or [
            p for col, rule in value.items() for p in _mask_problems(rule, f"{key}.{col}")]
    return mapping("from column to {key: ${secret:NAME}, deterministic: true|false}") or [
        p for col, rule in value.items() for p in _encrypt_problems(rule, f"{key}.{col}")]


def _mask_problems(rule: Any, key: str) -> list[tuple[str, str]]:
    from replicant.config import suggest

    method = rule if isinstance(rule, str) else rule.get("method") if isinstance(rule, dict) else None
    if method not in _MASK_METHODS:
        return [(key, f"{method!r} is not a mask method{suggest(str(method), list(_MASK_METHODS))}; "
                      "use hash, redact, last4 or {method: hash, key: ${secret:NAME}, salt: …}")]
    if isinstance(rule, dict):
        extra = set(rule) - {"method", "key", "salt"}
        if extra:
            return [(f"{key}.{sorted(extra)[0]}", "unknown key; a mask takes method, key and salt")]
        if method != "hash" and ("key" in rule or "salt" in rule):
            return [(key, f"{method} takes no key or salt")]
        if not isinstance(rule.get("salt", True), (bool, str)):
            return [(f"{key}.salt", "true (the column's name), false or a text")]
    return []


def _encrypt_problems(rule: Any, key: str) -> list[tuple[str, str]]:
    if not isinstance(rule, dict) or not isinstance(rule.get("key"), str):
        return [(key, "needs `key: ${secret:NAME}` (or ${env:NAME}): 32 random bytes written in base64")]
    extra = set(rule) - {"key", "deterministic", "key_id"}
    if extra:
        return [(f"{key}.{sorted(extra)[0]}", "unknown key; encrypt takes key, deterministic and key_id")]
    if not isinstance(rule.get("deterministic", False), bool):
        return [(f"{key}.deterministic", "true or false")]
    return []


def _secret_bytes(reference: str, key: str, *, base64_key: bool) -> bytes:
    from replicant.secrets import resolve
    from replicant.transforms.crypto import parse_key

    try:
        text = resolve(reference)
    except ConfigError as e:
        raise ConfigError("invalid pipeline file", [(key, e.message)]) from None
    if not base64_key:
        if not text:
            raise ConfigError("invalid pipeline file", [(key, "the key is empty")])
        return text.encode()
    try:
        return parse_key(text)
    except ValueError as e:
        raise ConfigError("invalid pipeline file", [(key, str(e))]) from None


def build(spec: TransformSpec) -> Transform:
    """The transform of a checked entry; resolves its keys now.

    Raises:
        ConfigError: a key that does not resolve or is not a valid key (at the entry's path).
    """
    from replicant.transforms import columns, crypto, mask, python, sql

    v, key = spec.value, f"{spec.path}.{spec.kind}"
    if spec.kind == "object":
        return v
    simple: dict[str, Any] = {"rename": columns.Rename, "cast": columns.Cast, "select": columns.Select,
                              "drop": columns.Drop, "derive": sql.Derive, "filter": sql.Filter, "sql": sql.Sql,
                              "python": python.PythonFunction}
    if spec.kind in simple:
        return simple[spec.kind](v)
    if spec.kind == "mask":
        rules = {}
        for col, rule in v.items():
            r = {"method": rule} if isinstance(rule, str) else dict(rule)
            if r["method"] != "hash":
                rules[col] = mask.MaskRule(r["method"])
                continue
            ref = _reference(r.get("key", MASK_KEY_REFERENCE))
            salt = r.get("salt", True)
            rules[col] = mask.MaskRule("hash", _secret_bytes(ref, f"{key}.{col}", base64_key=False),
                                       None if salt is True else b"" if salt is False else str(salt).encode())
        return mask.Mask(rules)
    return crypto.Encrypt({
        col: crypto.EncryptRule(_secret_bytes(_reference(rule["key"]), f"{key}.{col}.key", base64_key=True),
                                bool(rule.get("deterministic", False)), rule.get("key_id"))
        for col, rule in v.items()
    })


def _reference(value: Any) -> str:
    """A key as written: a reference kept by the loader (a :class:`~replicant.secrets.Secret`
    or its text)."""
    ref = getattr(value, "reference", None)
    return str(ref() if callable(ref) else ref) if ref is not None else str(value)

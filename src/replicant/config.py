"""The pipeline file: typed, validated, secrets by reference.

``load(path)`` reads a YAML pipeline file, substitutes ``${env:NAME}`` references,
resolves relative paths against the file's folder and validates everything at once: a
:class:`~replicant.errors.ConfigError` lists every problem with its key path
(``source.streams[1].mode``), and suggests the closest key for a typo. Repeated keys
(:mod:`replicant.yaml_load`), malformed references, pydantic errors, each connector type's
own settings and cross-checks all go into that one report.

Secrets are resolved as late as possible: under a secret key (:data:`SECRET_KEYS`: URLs,
``state``, ``auth``, ``headers``, ``storage_options``, passwords, tokens) the config
keeps the *reference* (``${env:NAME}``), checked to exist at load time but resolved only
when a connector calls ``.get_secret_value()`` on the :class:`~replicant.secrets.Secret`
(or :func:`~replicant.secrets.resolve_all` on options): masked in every repr and dump,
and a changed variable is seen by the next connection. References in other keys (paths,
names, sizes) are substituted when the file is loaded.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from replicant.config_values import normalize_url, parse_duration, parse_size, sqlite_url_against
from replicant.errors import ConfigError
from replicant.secrets import Secret, reference_problems, resolve
from replicant.service.schedule import ScheduleConfig
from replicant.tenants.config import TenantConfig, check_tenants
from replicant.transforms.placement import check as transform_problems
from replicant.yaml_load import load_yaml

__all__ = [
    "StreamConfig",
    "SourceConfig",
    "DestinationConfig",
    "RetentionConfig",
    "PipelineConfig",
    "load",
    "parse",
    "normalize_url",
    "sqlite_url_against",
    "parse_duration",
    "parse_size",
    "settings_problems",
    "suggest",
]

Mode = Literal["full", "cursor", "snapshot_diff", "trigger", "log", "incremental"]  # incremental: files (new and changed)
WriteMode = Literal["append", "merge", "replace"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class StreamConfig(_Model):
    """One entry of ``source.streams``."""

    table: str = Field(description="Source table, optionally schema-qualified: `public.orders`, `Album`.")
    mode: Mode = Field("full", description="Read strategy.")
    cursor: str | None = Field(None, description="Cursor column for `mode: cursor` (an audit column).")
    primary_key: list[str] | None = Field(None, description="Key columns, for tables without a primary key.")
    include: list[str] | None = Field(None, description="Only these columns (keys are always kept).")
    exclude: list[str] | None = Field(None, description="All columns but these.")
    lookback: float | int | str | None = Field(
        None,
        description="Cursor look-back for late commits: seconds (or '5m', '1h') for time cursors, "
        "a number for numeric cursors.",
    )
    chunk_size: int | None = Field(None, gt=0, description="Rows per key-range chunk of a full read.")
    soft_delete: str | None = Field(
        None,
        description="For `mode: cursor`: a column marking deleted rows (true, or a non-null time); "
        "such rows are emitted as deletes.",
    )
    transforms: list[Any] | None = Field(None, description="This stream's transforms, before the log (docs/transforms.md).")
    options: dict[str, Any] = Field(default_factory=dict, description="The source type's own keys of this stream "
                                    "(an http stream's `path`, `paginate`…), gathered by the type; validated by it.")

    @model_validator(mode="after")
    def _cursor_needs_column(self) -> StreamConfig:
        if self.mode == "cursor" and not self.cursor:
            raise ValueError("mode 'cursor' needs `cursor:` (the audit column to follow)")
        if self.include and self.exclude:
            raise ValueError("give `include` or `exclude`, not both")
        return self


class _Section(_Model):
    """A ``source:`` or destination section: common keys, plus the connector type's own keys
    (allowed as extras, validated by the type's ``settings`` model)."""

    def __repr_args__(self) -> Any:
        extras = self.model_extra or {}
        for key, value in super().__repr_args__():
            # a type's own keys may hold secrets (tokens, auth, headers, storage_options): never shown
            yield key, ("***" if key in extras else value)

    connect_timeout: float | str = Field(
        10.0, description="Network connectors: the longest wait to connect and log in (seconds or '30s')."
    )

    @field_validator("connect_timeout")
    @classmethod
    def _connect_seconds(cls, v: Any) -> float:
        seconds = parse_duration(v)
        if seconds <= 0:
            raise ValueError("must be more than 0 seconds")
        return seconds

    @property
    def options(self) -> dict[str, Any]:
        """The type-specific keys (validated by the connector's settings model)."""
        return dict(self.model_extra or {})


class SourceConfig(_Section):
    """The ``source:`` section: the keys every source has. Keys beyond these are the source
    type's own settings (``Source.settings``: ``slot``/``publication`` of PostgreSQL,
    ``server_id`` of MySQL/MariaDB…), validated by :func:`parse` with their key paths and
    again when the source is constructed; the source holds the validated model as
    ``source.options``."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    type: str = Field(description="postgres | mysql | sqlite | …")
    url: Secret | None = Field(None, description="Connection URL; `${env:NAME}` for secrets.")
    streams: list[StreamConfig] | Literal["all"] = Field("all", description="A list of streams, or `all`.")
    default_mode: Mode = Field("full", description="Mode of streams found by `streams: all`.")
    schema_name: str | None = Field(None, alias="schema", description="Schema searched by `streams: all`.")
    batch_size: int = Field(
        25_000,
        gt=0,
        description="Rows per batch read (and per staging-log record); bounds memory per stream.",
    )
    chunk_size: int = Field(1_000_000, gt=0, description="Rows per resumable key-range chunk of a full read.")
    heartbeat: float | str = Field(10.0, description="`mode: log`: how often an idle feed still advances its position (seconds or '30s').")
    poll_interval: float | str = Field(
        1.0, description="`--follow`: how often cursor, snapshot_diff and trigger streams are polled (seconds or '5s')."
    )
    flush_interval: float | str = Field(
        0.2, description="`--follow`: the longest a captured change waits before it is appended to the log (seconds)."
    )

    @model_validator(mode="before")
    @classmethod
    def _derived_reads_log(cls, data: Any) -> Any:
        from replicant.sources.pipeline import with_log_modes  # a derived pipeline's streams are `log`
        from replicant.sources.stream_entries import with_stream_entries

        return with_stream_entries(with_log_modes(data))

    @field_validator("heartbeat", "poll_interval", "flush_interval")
    @classmethod
    def _seconds(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("streams", mode="before")
    @classmethod
    def _streams_shorthand(cls, v: Any) -> Any:
        if isinstance(v, list):  # `- orders` is short for `- table: orders`
            return [{"table": s} if isinstance(s, str) else s for s in v]
        return v


#: The placeholders a ``tables:`` template may use.
TABLE_PLACEHOLDERS = ("stream", "schema", "table")


def table_template_fields(template: str) -> list[str]:
    """The placeholders of a ``tables:`` template.

    Raises:
        ValueError: an unknown placeholder (with the closest known one), a positional or
            formatted one (``{0}``, ``{table!r}``, ``{table:>5}``), or unbalanced braces.
    """
    import string

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{template!r} is not a valid template ({e}); write a literal brace as {{{{ or }}}}") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TABLE_PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in TABLE_PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {{{name}}} in {template!r}{suggest(name, list(TABLE_PLACEHOLDERS))}; use {known}")
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} in {template!r} takes no format or conversion")
        names.append(name)
    return names


class DestinationConfig(_Section):
    """One entry of ``destinations``. Keys beyond these are the destination type's own
    settings (``Destination.settings``), validated by :func:`parse` with their key paths."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    name: str = Field(description="Unique name of this destination in the pipeline.")
    type: str = Field("duckdb", description="duckdb | postgres | mysql | sqlite | …")
    write: WriteMode | None = Field(
        None,
        description="append | merge | replace. Not set: each stream with a key is merged and a keyless stream "
        "is appended (a destination that cannot merge, such as files or nats, appends).",
    )
    url: Secret | None = Field(None, description="Connection URL (postgres, mysql).")
    path: str | None = Field(None, description="File path (duckdb, sqlite).")
    schema_name: str | None = Field(None, alias="schema", description="Target schema (or MySQL database).")
    batch_size: int | None = Field(None, gt=0, description="Rows per write transaction (per request for http).")
    streams: list[str] | None = Field(None, description="Only these streams (by name); default: every stream.")
    on_bad_record: Literal["dead_letter", "fail"] = Field(
        "dead_letter",
        description="A record this destination rejects for its values: `dead_letter` (the default) stores it in the "
        "dead letters with the destination's message and writes the rest; `fail` pauses the stream at it.",
    )
    tables: dict[str, str] | str | None = Field(
        None,
        description="Target table per stream: a mapping from stream name to table name, or a template with "
        "{stream}, {schema} and {table} (the source's schema and table); default: the source table's own name.",
    )
    transforms: list[Any] | None = Field(None, description="Transforms at delivery to this destination only.")

    @field_validator("tables")
    @classmethod
    def _tables(cls, v: Any) -> Any:
        if isinstance(v, str):
            table_template_fields(v)  # raises ValueError naming an unknown placeholder
            if not v.strip():
                raise ValueError("the template is empty; leave `tables:` out to keep the source table names")
        elif isinstance(v, dict):
            empty = [k for k, t in v.items() if not t.strip()]
            if empty:
                raise ValueError(f"stream {empty[0]!r} is mapped to an empty table name")
        return v

    def table_for(self, stream: str, table: tuple[str, ...]) -> str:
        """The target table of stream ``stream`` whose source name parts are ``table``
        (``("public", "orders")``): by ``tables:``, else ``table[-1]``."""
        if isinstance(self.tables, str):
            schema = table[-2] if len(table) > 1 else ""
            return self.tables.format(stream=stream, schema=schema, table=table[-1])
        if isinstance(self.tables, dict):
            return self.tables.get(stream, table[-1])
        return table[-1]

    def write_for(self, primary_key: Any, *, can_merge: bool = True) -> WriteMode:
        """The write mode of a stream with key columns ``primary_key`` here: ``write:`` when
        the file sets it, else ``merge`` for a keyed stream (re-reads stay one copy) if the
        destination can merge, else ``append``."""
        if self.write is not None:
            return self.write
        return "merge" if primary_key and can_merge else "append"


class RetentionConfig(_Model):
    """How much of the staging log to keep per stream (whole segments are dropped)."""

    max_age: float | str | None = Field(None, description="Keep log segments this long: seconds or '7d', '12h'.")
    max_bytes: int | str | None = Field(None, description="Keep at most this much per stream: bytes or '10GB'.")

    @field_validator("max_age")
    @classmethod
    def _age(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)

    @field_validator("max_bytes")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return None if v is None else parse_size(v)


class PipelineConfig(_Model):
    pipeline: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="Pipeline name.")
    source: SourceConfig
    destinations: list[DestinationConfig] = Field(min_length=1)
    state: Secret | None = Field(None, description="State store SQLAlchemy URL (default: SQLite beside the file).")
    log: str | None = Field(None, description="Staging log location: a local folder, a file:// URL or nats://host:port/prefix.")
    retention: RetentionConfig | None = None
    transforms: list[Any] | None = Field(None, description="Transforms of every stream, before the log (stateless only).")
    tenants: list[TenantConfig] | None = Field(None, description="One source per tenant: `id` and the `source:` settings it overrides.")
    parallelism: int | None = Field(
        None, gt=0,
        description="Streams read at once, and written at once to a destination that takes several writers "
                    "(PostgreSQL; per tenant: one) (default: the number of cores, at least 2).",
    )
    schedule: ScheduleConfig | None = Field(None, description="When `replicant serve` runs it (docs/service.md).")
    base_dir: Path = Field(Path("."), exclude=True, description="Folder of the pipeline file (set by `load`).")

    @model_validator(mode="after")
    def _unique_destinations(self) -> PipelineConfig:
        repeated = _repeated_names([d.name for d in self.destinations])
        if repeated:
            raise ValueError(repeated)
        return self

    def destination(self, name: str) -> DestinationConfig:
        for d in self.destinations:
            if d.name == name:
                return d
        raise ConfigError(
            f"no destination named {name!r}",
            [("destinations", f"have {', '.join(d.name for d in self.destinations)}{suggest(name, [d.name for d in self.destinations])}")],
        )


def _repeated_names(names: list[Any]) -> str | None:
    dupes = sorted({str(n) for n in names if names.count(n) > 1})
    return f"destination names must be unique: {', '.join(dupes)} repeated" if dupes else None


#: Keys whose values (and everything under them) are secrets: their ``${env:…}`` references
#: are checked at load time but kept, and resolved when a connector reads the value. A field
#: under one of these keys must be typed :class:`~replicant.secrets.Secret` (or be resolved
#: with :func:`~replicant.secrets.resolve_all` when used), or it would see the reference.
SECRET_KEYS = frozenset({"url", "state", "auth", "headers", "storage_options", "password", "token", "bearer", "key", "secret"})


def _substitute(
    value: Any, path: str, problems: list[tuple[str, str]], secret: bool = False, secrets_needed: bool = True
) -> Any:
    """Replaces ``${env:NAME}`` in every string outside :data:`SECRET_KEYS`; under them keeps
    the reference. Records every reference that does not resolve now as a problem (under a
    secret key other than ``state``, only a malformed one unless ``secrets_needed``)."""
    if isinstance(value, dict):
        return {
            k: _substitute(v, f"{path}.{k}" if path else str(k), problems, secret or k in SECRET_KEYS,
                           secrets_needed or (not path and k == "state"))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", problems, secret, secrets_needed) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    found = reference_problems(value, must_resolve=secrets_needed or not secret)
    problems.extend((path, why) for why in found)
    if secret or found:
        return value
    return resolve(value)


def suggest(word: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` (case-insensitively if need be), or ""."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        low = {c.casefold(): c for c in choices}
        close = [low[c] for c in difflib.get_close_matches(word.casefold(), list(low), n=1, cutoff=0.6)]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or "(" in str(part):  # a union branch's type tag, not a key
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


_ALIASES = {"schema_name": "schema"}


def _fields_of(model: type[BaseModel]) -> list[str]:
    return [(_ALIASES.get(n, n)) for n, f in model.model_fields.items() if not f.exclude]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = PipelineConfig
    nested: dict[str, type[BaseModel]] = {
        "source": SourceConfig, "destinations": DestinationConfig, "streams": StreamConfig, "retention": RetentionConfig
    }
    for part in loc[:-1]:
        if isinstance(part, str) and part in nested:
            model = nested[part]
    return model


def parse(data: Any, *, base_dir: Path | str = ".", secrets_needed: bool = True) -> PipelineConfig:
    """Validates a pipeline given as a dict (the YAML's content); raises ``ConfigError``.

    With ``secrets_needed=False`` (``replicant status``, which reads only the state and the
    log) a secret reference that does not resolve now is no problem, except under ``state``;
    a connector using it fails when it reads the secret."""
    if not isinstance(data, dict):
        raise ConfigError("the pipeline file must be a mapping with `pipeline:`, `source:` and `destinations:`")
    problems: list[tuple[str, str]] = []
    data = _substitute(data, "", problems, secrets_needed=secrets_needed)  # its problems join the others: one report
    data = dict(data)
    data.pop("base_dir", None)
    reference_messages: dict[str, list[str]] = {}
    for k, m in problems:
        reference_messages.setdefault(k, []).append(m)
    _check_source_settings(data.get("source"), problems)
    _check_destination_settings(data.get("destinations"), problems)
    transform_problems(data, problems)  # every transform list, with its key paths
    check_tenants(data, problems)  # ids, and each tenant's source settings and transforms
    if isinstance(data.get("destinations"), list):  # cross-check here: the model's runs only when all is valid
        repeated = _repeated_names([d.get("name") for d in data["destinations"] if isinstance(d, dict) and d.get("name")])
        if repeated:
            problems.append(("destinations", repeated))
    try:
        cfg = PipelineConfig.model_validate({**data, "base_dir": Path(base_dir)})
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(p for p in err["loc"])
            key = _loc(loc)
            if err["type"] == "extra_forbidden":
                model = _model_at(loc)
                known = _fields_of(model) if model else []
                problems.append((key, f"unknown key{suggest(str(loc[-1]), known)}"))
            elif err["type"] == "missing":
                problems.append((key, "required key is missing"))
            elif err["type"] == "literal_error" and "'all'" in err["msg"] and key.endswith("streams"):
                problems.append((key, "must be a list of streams or `all`"))
            else:
                msg = err["msg"].removeprefix("Value error, ")
                if key or ("destinations", msg) not in problems:  # not the cross-check again
                    problems.append((key or "(top level)", msg))
        # one problem per key (a bad reference says more than the type error it causes), but
        # every problem of the references; drop a union's "wrong branch" line when the list
        # branch said more
        seen: dict[str, list[str]] = {}
        for k, m in problems:
            if m.startswith("must be a list of streams") and any(o.startswith(k + "[") for o, _ in problems):
                continue
            if k not in seen or m in reference_messages.get(k, ()):
                seen.setdefault(k, []).append(m)
        raise ConfigError("invalid pipeline file", [(k, m) for k, ms in seen.items() for m in dict.fromkeys(ms)]) from None
    if problems:
        raise ConfigError("invalid pipeline file", problems)
    return cfg


def _check_destination_settings(destinations: Any, problems: list[tuple[str, str]]) -> None:
    """Validates each destination's type-specific keys against its class's ``settings`` model.

    Works on the raw ``destinations`` list, so its problems join the others in one report."""
    from replicant.registry import destination_class

    if not isinstance(destinations, list):
        return
    base = set(DestinationConfig.model_fields) | set(_ALIASES.values())
    for i, d in enumerate(destinations):
        if not isinstance(d, dict) or not isinstance(d.get("type", "duckdb"), str):
            continue
        try:
            cls = destination_class(d.get("type", "duckdb"), i)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        extras = {k: v for k, v in d.items() if k not in base}
        caps = getattr(cls, "capabilities", None)
        write = d.get("write")
        if caps is not None and ((write == "merge" and not caps.merge) or (write == "replace" and not caps.replace)):
            problems.append((f"destinations[{i}].write", f"a {d.get('type')} destination cannot {write}; use append"))
        model = getattr(cls, "settings", None)
        if model is None:
            problems.extend((f"destinations[{i}].{k}", f"unknown key{suggest(str(k), _fields_of(DestinationConfig))}") for k in extras)
            continue
        try:
            model.model_validate(extras)
        except ValidationError as e:
            for err in e.errors():
                key = f"destinations[{i}]" + (f".{_loc(tuple(err['loc']))}" if err["loc"] else "")
                if err["type"] == "extra_forbidden":
                    known = _fields_of(DestinationConfig) + list(model.model_fields)
                    problems.append((key, f"unknown key{suggest(str(err['loc'][-1]), known)}"))
                elif err["type"] == "missing":
                    problems.append((key, f"required key is missing for a {d.get('type')} destination"))
                else:
                    problems.append((key, err["msg"].removeprefix("Value error, ")))


def settings_problems(model: type[BaseModel], values: dict[str, Any], prefix: str, known: list[str]) -> list[tuple[str, str]]:
    """Validates a connector type's own keys against its ``settings`` model.

    Args:
        model: the type's settings model (``extra="forbid"``).
        values: the keys beyond the common ones.
        prefix: the key path of the section (``source``, ``destinations[2]``).
        known: the common keys, offered with the model's own as did-you-mean choices.

    Returns:
        ``(key path, message)`` per problem; empty when ``values`` is valid.
    """
    try:
        model.model_validate(values)
    except ValidationError as e:
        out = []
        for err in e.errors():
            key = prefix + (f".{_loc(tuple(err['loc']))}" if err["loc"] else "")
            if err["type"] == "extra_forbidden":
                out.append((key, f"unknown key{suggest(str(err['loc'][-1]), known + list(model.model_fields))}"))
            elif err["type"] == "missing":
                out.append((key, "required key is missing"))
            else:
                out.append((key, err["msg"].removeprefix("Value error, ")))
        return out
    return []


def _check_source_settings(source: Any, problems: list[tuple[str, str]]) -> None:
    """Validates the source type's own keys against its class's ``settings`` model, on the raw
    ``source`` mapping, so its problems join the others in one report."""
    from replicant.registry import source_class

    if not isinstance(source, dict) or not isinstance(source.get("type"), str):
        return
    try:
        cls = source_class(source["type"])
    except ConfigError as e:
        problems.extend(e.problems)
        return
    base = set(SourceConfig.model_fields) | set(_ALIASES.values())
    extras = {k: v for k, v in source.items() if k not in base}
    model = getattr(cls, "settings", None)
    if model is None:
        problems.extend((f"source.{k}", f"unknown key{suggest(str(k), _fields_of(SourceConfig))}") for k in extras)
        return
    problems.extend(settings_problems(model, extras, "source", _fields_of(SourceConfig)))
    from replicant.sources.stream_entries import stream_problems  # a type's own per-stream keys

    problems.extend(stream_problems(cls, source.get("streams")))


def load(path: str | os.PathLike[str], *, secrets_needed: bool = True) -> PipelineConfig:
    """Reads and validates a pipeline file. Relative paths inside resolve against its folder.
    ``secrets_needed``: see :func:`parse`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read pipeline file {str(p)!r}: {e.strerror}") from None
    repeated: tuple[tuple[str, str], ...] = ()
    try:
        try:
            data = load_yaml(text)
        except ConfigError as e:  # repeated keys: reported with every other problem
            repeated, data = e.problems, yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    try:
        cfg = parse(data, base_dir=p.resolve().parent, secrets_needed=secrets_needed)
    except ConfigError as e:
        raise ConfigError(e.message, [*repeated, *e.problems]) from None
    if repeated:
        raise ConfigError("invalid pipeline file", repeated)
    return cfg

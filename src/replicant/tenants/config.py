"""The ``tenants:`` key: one source per tenant, the same streams, one set of destinations.

::

    source: {type: postgres, url: "${env:PG_URL}", streams: [...]}
    tenants:
      - id: acme                       # lowercase letters, digits, _ and -
        url: "${env:ACME_URL}"         # any source setting, overriding `source:`
      - id: globex
        type: mysql                    # even the type (the type's own keys of `source:` then go)
        url: "${env:GLOBEX_URL}"
        transforms:                    # this tenant's, before the pipeline's `transforms:`
          - rename: {CustName: customer_name}

A tenant id names log folders (``acme/orders``), replication slots and metric labels: it is
checked for its characters, its length and its uniqueness (also after ``-`` becomes ``_`` in a
slot name), every problem with its key path (``tenants[2].id``). Every row of a tenant carries
``_tenant`` (:data:`TENANT_COLUMN`) and its streams' keys become (``_tenant``, key…), so many
tenants share one destination table (:class:`replicant.transforms.tenant.AddTenant`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from replicant.errors import ConfigError

if TYPE_CHECKING:
    from replicant.config import PipelineConfig, SourceConfig

__all__ = ["TENANT_COLUMN", "TenantConfig", "check_tenants", "every_stream", "for_tenant", "source_for", "tenant_ids"]

#: The column every tenant's rows carry, first of the key.
TENANT_COLUMN = "_tenant"

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_ID_RULE = ("a tenant id is 1 to 48 lowercase letters, digits, `_` or `-`, starting with a letter or digit "
            "(it names log folders, replication slots and metric labels)")


class TenantConfig(BaseModel):
    """One entry of ``tenants:``: an ``id``, this tenant's ``transforms`` (before the log, before
    the pipeline's), and any ``source:`` setting to override (kept as extras)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(pattern=_ID.pattern, description="The tenant's id: 1-48 of a-z, 0-9, `_`, `-`.")
    transforms: list[Any] | None = Field(None, description="This tenant's transforms, before the pipeline's (before the log).")

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            yield key, ("***" if key in (self.model_extra or {}) else value)  # a url may hold a password

    @property
    def overrides(self) -> dict[str, Any]:
        """The ``source:`` settings this tenant overrides."""
        return dict(self.model_extra or {})


def tenant_ids(config: PipelineConfig) -> list[str]:
    """The ids of ``config.tenants`` in file order (empty: a pipeline without tenants)."""
    return [t.id for t in config.tenants or ()]


def every_stream(config: PipelineConfig) -> frozenset[str]:
    """With ``tenants:``, every stream ``source.streams`` or a tenant's ``streams:`` lists (a
    MySQL tenant's ``Album`` beside a PostgreSQL tenant's ``public.album``): names the
    pipeline's transforms and destinations may scope although one tenant lacks them."""
    if not config.tenants:
        return frozenset()
    lists: list[Any] = [config.source.streams] + [t.overrides.get("streams") for t in config.tenants]
    names = set()
    for entries in lists:
        for s in entries if isinstance(entries, list) else ():
            name = s if isinstance(s, str) else s.get("table") if isinstance(s, dict) else getattr(s, "table", None)
            if isinstance(name, str):
                names.add(name)
    return frozenset(names)


def tenant_of(config: PipelineConfig, tenant: str) -> TenantConfig:
    """The entry of ``tenant``; ConfigError (``--tenant``, with a did-you-mean) when there is none."""
    from replicant.config import suggest

    for t in config.tenants or ():
        if t.id == tenant:
            return t
    ids = tenant_ids(config)
    have = f"the pipeline has tenants {', '.join(ids)}" if ids else "the pipeline has no `tenants:`"
    raise ConfigError(f"no tenant {tenant!r}", [("--tenant", f"{have}{suggest(tenant, ids)}")])


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``source:`` (raw keys) with a tenant's ``overrides``; a tenant of another ``type`` drops
    the base type's own keys (a PostgreSQL ``slot`` means nothing to MySQL)."""
    from replicant.config import SourceConfig

    if "type" in overrides and overrides["type"] != base.get("type"):
        common = set(SourceConfig.model_fields) | {"schema"}
        base = {k: v for k, v in base.items() if k in common}
    return {**base, **overrides}


def source_for(config: PipelineConfig, tenant: str) -> SourceConfig:
    """``source:`` with ``tenant``'s overrides, validated."""
    from replicant.config import SourceConfig

    t = tenant_of(config, tenant)
    if not t.overrides:
        return config.source
    base = config.source.model_dump(by_alias=True, exclude_unset=True)
    try:
        return SourceConfig.model_validate(_merged(base, t.overrides))
    except ValidationError as e:  # checked by `parse` already; a config built in code may still be wrong
        index = tenant_ids(config).index(tenant)
        raise ConfigError("invalid pipeline file", [(f"tenants[{index}]", str(e))]) from None


def for_tenant(config: PipelineConfig, tenant: str) -> PipelineConfig:
    """The pipeline as ``tenant``'s feed runs it: its ``source:`` is the tenant's (see
    :func:`source_for`); ``tenants:`` stays, so the transforms before the log find the
    tenant's own and add ``_tenant`` (:func:`replicant.transforms.placement.before_log`)."""
    return config.model_copy(update={"source": source_for(config, tenant)})


def check_tenants(data: dict[str, Any], problems: list[tuple[str, str]]) -> None:
    """Adds every problem of the raw ``tenants:`` list to ``problems``: ids (characters,
    uniqueness, two ids that would name the same replication slot), settings that the
    tenant's source type does not have, and its ``transforms``."""
    tenants = data.get("tenants")
    if tenants is None:
        return
    if not isinstance(tenants, list) or not tenants:
        problems.append(("tenants", "must be a non-empty list of `- id: …` entries"))
        return
    from replicant.transforms.config import specs

    seen: dict[str, int] = {}
    slots: dict[str, int] = {}
    for i, t in enumerate(tenants):
        where = f"tenants[{i}]"
        if not isinstance(t, dict):
            problems.append((where, "a tenant is a mapping with `id:` and the source settings it overrides"))
            continue
        tid = t.get("id")
        if tid is None:
            problems.append((f"{where}.id", "required key is missing"))
        elif not isinstance(tid, str) or not _ID.match(tid):
            problems.append((f"{where}.id", f"{tid!r} is not a valid tenant id: {_ID_RULE}"))
        elif tid in seen:
            problems.append((f"{where}.id", f"{tid!r} repeats tenants[{seen[tid]}].id: tenant ids must be unique"))
        else:
            seen[tid] = i
            slot = tid.replace("-", "_")
            if slot in slots:
                problems.append((f"{where}.id", f"{tid!r} and tenants[{slots[slot]}].id name the same replication slot "
                                                f"(`-` becomes `_`): choose ids that differ otherwise"))
            slots.setdefault(slot, i)
        specs(t.get("transforms"), f"{where}.transforms", problems)
        _check_overrides(data.get("source"), {k: v for k, v in t.items() if k not in ("id", "transforms")}, where, problems)


def _check_overrides(source: Any, overrides: dict[str, Any], where: str, problems: list[tuple[str, str]]) -> None:
    """The tenant's merged source checked as ``source:`` is; only problems of keys the tenant
    sets are reported here (``source:``'s own are reported at ``source``)."""
    from replicant.config import SourceConfig, settings_problems, suggest
    from replicant.registry import source_class

    if not isinstance(source, dict) or not overrides:
        return
    merged = _merged(source, overrides)
    common = [*SourceConfig.model_fields, "schema"]
    try:
        cls = source_class(str(merged.get("type")))
    except ConfigError as e:
        if "type" in overrides:
            problems.extend((f"{where}.type", m) for _, m in e.problems)
        return
    model = getattr(cls, "settings", None)
    extras = {k: v for k, v in merged.items() if k not in common}
    if model is None:
        problems.extend((f"{where}.{k}", f"unknown key{suggest(k, common)}") for k in extras if k in overrides)
    else:
        found = settings_problems(model, extras, where, common)
        problems.extend((k, m) for k, m in found if k.removeprefix(f"{where}.").split(".")[0].split("[")[0] in overrides)
    try:
        SourceConfig.model_validate(merged)
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(err["loc"])
            if loc and loc[0] in overrides and err["type"] != "extra_forbidden":
                key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
                problems.append((f"{where}{key}", err["msg"].removeprefix("Value error, ")))

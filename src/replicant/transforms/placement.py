"""Where transform lists run, read from the pipeline file.

* **Before the log**: ``transforms:`` at the top (every stream, or those its ``streams:``
  names), then each stream's own ``source.streams[i].transforms``. They run in the one ingest
  path (:mod:`replicant.ingest`), so the staging log, the state store, dead letters and every
  destination only ever see their output.
* **At delivery**: ``destinations[i].transforms``, applied by :class:`TransformedDestination`
  between the log and that destination, so ``replay`` re-applies today's list.
"""

from __future__ import annotations

from typing import Any

from replicant.errors import ConfigError
from replicant.transforms.chain import Step, TransformChain
from replicant.transforms.config import TransformSpec, build, is_stateful, specs

__all__ = ["at_destination", "before_log", "check"]


def check(data: dict[str, Any], problems: list[tuple[str, str]]) -> None:
    """Adds the problems of every transform list of a raw pipeline mapping (no schema needed)."""
    source = data.get("source")
    specs(data.get("transforms"), "transforms", problems, derived=isinstance(source, dict) and source.get("type") == "pipeline")
    if isinstance(source, dict) and isinstance(source.get("streams"), list):
        for j, s in enumerate(source["streams"]):
            if isinstance(s, dict):
                specs(s.get("transforms"), f"source.streams[{j}].transforms", problems, scoped=False)
    # tenants[i].transforms: checked with the tenants (replicant.tenants.config.check_tenants)
    if isinstance(data.get("destinations"), list):
        for i, d in enumerate(data["destinations"]):
            if isinstance(d, dict):
                specs(d.get("transforms"), f"destinations[{i}].transforms", problems)


def _chain(entries: list[tuple[TransformSpec, tuple[str, ...] | None]]) -> TransformChain:
    problems: list[tuple[str, str]] = []
    steps = []
    for spec, streams in entries:
        try:
            steps.append(Step(spec.path, streams, build(spec)))
        except ConfigError as e:
            problems.extend(e.problems)
        except ValueError as e:
            problems.append((f"{spec.path}.{spec.kind}", str(e)))
    if problems:
        raise ConfigError("invalid pipeline file", problems)
    return TransformChain(steps)


def before_log(config: Any, tenant: str | None = None) -> TransformChain:
    """The chain that runs before the log (of ``tenant``'s feed: its own ``tenants[i].transforms``
    first, then the pipeline's, then ``add_tenant``). Raises ConfigError (a key that does not
    resolve)."""
    problems: list[tuple[str, str]] = []
    derived = config.source.type == "pipeline"  # its stateful entries run in the source (replicant.sources._stateful)
    tenants = [t.id for t in getattr(config, "tenants", None) or ()]
    entries = []
    if tenant is not None and tenant in tenants:
        index = tenants.index(tenant)
        entries += [(s, s.streams) for s in specs(config.tenants[index].transforms, f"tenants[{index}].transforms", problems)]
    entries += [(s, s.streams) for s in specs(config.transforms, "transforms", problems, derived=derived)
                if not (derived and is_stateful(s.kind, s.value))]
    streams = config.source.streams if isinstance(config.source.streams, list) else []
    for j, sc in enumerate(streams):
        entries += [(s, (sc.table,)) for s in specs(sc.transforms, f"source.streams[{j}].transforms", problems, scoped=False)]
    if problems:
        raise ConfigError("invalid pipeline file", problems)
    chain = _chain(entries)
    if tenant is not None and tenant in tenants:
        from replicant.transforms.tenant import AddTenant

        chain.steps.append(Step(f"tenants[{tenants.index(tenant)}]", None, AddTenant(tenant)))
    return chain


def at_destination(dest: Any, index: int) -> TransformChain:
    """The chain of destination ``index`` (its ``transforms:``)."""
    problems: list[tuple[str, str]] = []
    entries = [(s, s.streams) for s in specs(getattr(dest, "transforms", None), f"destinations[{index}].transforms", problems)]
    if problems:
        raise ConfigError("invalid pipeline file", problems)
    return _chain(entries)

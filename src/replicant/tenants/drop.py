"""``replicant tenant drop PIPELINE.yml --tenant ID``: what is left of a tenant, removed.

1. In every SQL destination, the tenant's rows (``_tenant = ID``) of each of its streams'
   tables, and its rows of ``_replicant_offsets``, in one transaction per table. The other
   tenants' rows are not touched. Files, HTTP and NATS destinations cannot take rows back:
   what they hold is listed.
2. In the state store: its checkpoints, mirrored offsets, pauses and dead letters (runs stay).
3. At its source, with ``uninstall_cdc`` (the tenant still in the file, its source reachable):
   its replication slot and publication, or triggers and shadow tables. Without it, the
   lines say how: a slot no one reads retains WAL for ever.

Its staging-log streams (``ID/…``) stay until retention removes them; a tenant added again
with the same id is delivered from them anew (its destination offsets are gone).
"""

from __future__ import annotations

from typing import Any

from replicant.config import PipelineConfig

__all__ = ["drop_tenant"]


def drop_tenant(config: PipelineConfig, tenant: str, *, uninstall_cdc: bool = False) -> list[str]:
    """Removes ``tenant``'s rows, state and (``uninstall_cdc``) capture objects (see the module
    docstring); returns one line per thing done or left.

    Raises:
        ConfigError: ``uninstall_cdc`` for a tenant no longer in the file.
        ConnectionError: a destination or the source cannot be reached (the state is then kept,
            so the command can be run again).
    """
    from replicant import runtime
    from replicant.dead_letters import stream_in_log

    lines: list[str] = []
    if runtime.state_exists(config):
        lg = runtime.open_pipeline_log(config, read_only=True)
        try:
            names = sorted(n.removeprefix(f"{tenant}/") for n in lg.streams() if n.startswith(f"{tenant}/"))
            streams = [s for s in (stream_in_log(config, lg, n, tenant) for n in names) if s is not None]
        finally:
            lg.close()
    else:
        streams = []
    if not streams:
        lines.append(f"tenant {tenant}: no stream in the staging log; nothing to delete from the destinations")
    for dest in runtime.build_destinations(config):
        try:
            lines.extend(_drop_rows(dest, streams, tenant))
        finally:
            dest.close()
    if uninstall_cdc:
        lines.extend(_uninstall(config, tenant))
    if runtime.state_exists(config):
        state = runtime.open_state(config)
        try:
            deleted = state.forget_tenant(config.pipeline, tenant)
        finally:
            state.close()
        lines.append(f"state: {deleted.get('checkpoints', 0)} checkpoints, {deleted.get('offsets', 0)} offsets, "
                     f"{deleted.get('dead_letters', 0)} dead letters of tenant {tenant} deleted")
    if not uninstall_cdc and any(s.mode in ("log", "trigger") for s in streams):
        lines.append(
            f"its source still has what `log`/`trigger` streams need (a replication slot replicant_{config.pipeline}_"
            f"{tenant.replace('-', '_')} retains WAL until dropped): while the tenant is in the file, "
            f"`replicant tenant drop PIPELINE.yml --tenant {tenant} --uninstall-cdc` removes it; else "
            f"`replicant cdc drop-slot PIPELINE.yml --slot NAME` (`replicant cdc list` shows the slots)")
    return lines


def _drop_rows(dest: Any, streams: list[Any], tenant: str) -> list[str]:
    """Deletes ``tenant``'s rows of each stream's table in SQL destination ``dest``."""
    from replicant.tenants.config import TENANT_COLUMN

    if not getattr(dest, "param_marker", None):  # not an SQL destination
        return [f"destination {dest.name} ({dest.config.type}): cannot delete rows; its records of tenant {tenant} stay"] \
            if streams else []
    lines = []
    only = getattr(dest.config, "streams", None)
    for stream in [s for s in streams if not only or s.name in only]:
        table = dest.table_name(stream)
        with dest.transaction("tenant drop", stream, table):
            columns = dest.columns(table)
            if columns is None or dest.fold(TENANT_COLUMN) not in columns:
                n = None
            else:
                where = f"FROM {dest.qualified(table)} WHERE {dest.quote(TENANT_COLUMN)} = {dest.param_marker}"
                n = dest.query(f"SELECT count(*) {where}", (tenant,))[0][0]
                dest.execute(f"DELETE {where}", (tenant,))
            dest.reset_offset(stream, -1)  # nothing applied: a tenant added again gets every record anew
        lines.append(f"destination {dest.name}: table {dest.label(table)}: "
                     + ("no such table, or no _tenant column" if n is None else f"{n:,} rows of tenant {tenant} deleted"))
    return lines


def _uninstall(config: PipelineConfig, tenant: str) -> list[str]:
    from replicant.engine import Engine

    engine = Engine(config, tenant=tenant)  # a ConfigError when the tenant is no longer in the file
    source = engine.new_source()
    try:
        return [f"source of tenant {tenant}: {line}" for line in source.uninstall(engine.streams(source)) or ["nothing to remove"]]
    finally:
        source.close()

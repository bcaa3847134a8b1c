"""``replicant cdc install|uninstall``: what trigger and log streams need at the source; ``cdc list``
and ``cdc drop-slot``: what replicant keeps there (slots, publications, shadow tables) and dropping orphans."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from replicant.cli._app import app, out
from replicant.cli._app import fail as _fail
from replicant.cli._app import load_config as _load

cdc = typer.Typer(no_args_is_help=True, help="Set up or remove change data capture at the source.")
app.add_typer(cdc, name="cdc")


@contextlib.contextmanager
def _source_streams(cfg: Any, tenant: str | None = None) -> Iterator[tuple[Any, list]]:
    """The pipeline's (or ``tenant``'s) source and its streams as the engine sees them."""
    from replicant.engine import Engine

    engine = Engine(cfg, tenant=tenant)
    source = engine.new_source()
    try:
        yield source, engine.streams(source)
    finally:
        source.close()


def _cdc(pipeline: Path, install: bool) -> None:
    from replicant.tenants.config import tenant_ids

    try:
        cfg = _load(pipeline)
        lines: list[str] = []
        tenants: list[str | None] = list(tenant_ids(cfg)) or [None]  # with tenants: each tenant's source
        for tenant in tenants:
            with _source_streams(cfg, tenant) as (source, streams):
                done = (source.install(streams) if install else source.uninstall(streams)) or []
            lines += [f"tenant {tenant}: {line}" for line in done] if tenant is not None else done
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    for line in lines or ["nothing to do"]:
        out.print(line, markup=False)


@cdc.command("install")
def cdc_install(pipeline: Annotated[Path, typer.Argument(help="The pipeline file.")]) -> None:
    """Creates triggers and shadow tables (trigger streams), publication and slot (log streams)."""
    _cdc(pipeline, True)


@cdc.command("uninstall")
def cdc_uninstall(pipeline: Annotated[Path, typer.Argument(help="The pipeline file.")]) -> None:
    """Removes everything `cdc install` or a run created at the source."""
    _cdc(pipeline, False)


def _load_source_part(path: Path) -> Any:
    """The pipeline file for commands that need only ``pipeline:`` and ``source:`` (``cdc list``,
    ``cdc drop-slot``): a user whose pipeline file is gone writes just these two keys. A file
    without ``destinations:`` is validated with a placeholder one, never built."""
    from replicant.config import parse
    from replicant.errors import ConfigError
    from replicant.yaml_load import load_yaml

    try:
        return _load(path)
    except ConfigError as e:
        if ("destinations", "required key is missing") not in e.problems:
            raise
    data = load_yaml(path.read_text(encoding="utf-8"))
    placeholder = [{"name": "(none)", "type": "duckdb", "path": "unused.duckdb"}]
    return parse({**data, "destinations": placeholder}, base_dir=path.resolve().parent)


def _add_checkpoint(cfg: Any, found: dict[str, Any]) -> None:
    """This pipeline's slot gets ``checkpoint_lsn``: where its state store says capture stands
    (the slot is confirmed up to it at most). Read-only: nothing is created for a pipeline
    that never ran."""
    from replicant import runtime
    from replicant.ingest import CAPTURE_CHECKPOINT

    own = [s for s in found.get("slots", []) if s["owner"] == "this pipeline"]
    if not own or not runtime.state_exists(cfg):
        return
    with runtime.open_state(cfg) as state:
        cp = state.checkpoint(cfg.pipeline, CAPTURE_CHECKPOINT)
    lsn = (cp.position or {}).get("lsn") if cp is not None else None
    if isinstance(lsn, int):  # positions keep LSNs as integers; people read them as PostgreSQL prints them
        from replicant.sources.postgres.pgoutput import lsn_text

        lsn = lsn_text(lsn)
    for s in own:
        s["checkpoint_lsn"] = None if lsn is None else str(lsn)


@cdc.command("list")
def cdc_list(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file (only `pipeline:` and `source:` are needed).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Lists the replication slots (with the WAL they retain), publications and trigger shadow
    tables replicant keeps at the source's server, and whose they are."""
    from rich.table import Table

    from replicant import runtime

    try:
        cfg = _load_source_part(pipeline)
        source = runtime.build_source(cfg)
        try:
            found = source.cdc_objects()
        finally:
            source.close()
        _add_checkpoint(cfg, found)
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    if as_json:
        import json

        out.print_json(json.dumps(found))
        return
    if found.get("server"):
        out.print(str(found["server"]), markup=False)
    if found.get("note"):
        out.print(str(found["note"]), markup=False)
        return
    slots = Table(title="replication slots (whole server)")
    for c in ("slot", "database", "active", "confirmed flush", "restart", "retained WAL", "owner", "checkpoint"):
        slots.add_column(c, justify="right" if c == "retained WAL" else "left")
    for s in found["slots"]:
        active = f"yes (pid {s['active_pid']})" if s["active"] else "no"
        slots.add_row(s["slot"], s["database"] or "-", active, s["confirmed_flush_lsn"] or "-", s["restart_lsn"] or "-",
                      s["retained_wal"], s["owner"], s.get("checkpoint_lsn") or "-")
    out.print(slots if found["slots"] else "no replication slots of replicant")
    pubs = Table(title=f"publications (database {found['database']})")
    for c in ("publication", "tables", "owner"):
        pubs.add_column(c)
    for p in found["publications"]:
        pubs.add_row(p["publication"], "ALL TABLES" if p["all_tables"] else p["tables"] or "-", p["owner"])
    out.print(pubs if found["publications"] else "no publications of replicant")
    if found["shadow_tables"]:
        shadows = Table(title="trigger shadow tables")
        shadows.add_column("table")
        shadows.add_column("rows (approx.)", justify="right")
        for t in found["shadow_tables"]:
            shadows.add_row(t["table"], f"{t['approx_rows']:,}")
        out.print(shadows)
    if any(s["owner"] != "this pipeline" and not s["active"] for s in found["slots"]):
        out.print(f"an inactive slot no pipeline uses retains WAL for ever: `replicant cdc drop-slot {pipeline} --slot NAME` "
                  "drops it", markup=False)


@cdc.command("drop-slot")
def cdc_drop_slot(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file (only `pipeline:` and `source:` are needed).")],
    slot: Annotated[str | None, typer.Option("--slot", help="The replication slot to drop (see `cdc list`).")] = None,
    publication: Annotated[str | None, typer.Option("--publication", help="A publication to drop too.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Also this pipeline's own slot or publication.")] = False,
) -> None:
    """Drops an orphaned replication slot (never an active one) and/or publication."""
    from replicant import runtime
    from replicant.errors import ConfigError

    try:
        if slot is None and publication is None:
            raise ConfigError("drop-slot needs --slot NAME and/or --publication NAME", [("--slot", "see `replicant cdc list`")])
        cfg = _load_source_part(pipeline)
        source = runtime.build_source(cfg)
        try:
            lines = source.drop_slot(slot, publication, force=force)
        finally:
            source.close()
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    for line in lines:
        out.print(line, markup=False)

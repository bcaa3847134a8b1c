"""``replicant dead-letters list|show|retry|discard``: the records a pipeline could not deliver.

``list`` and ``show`` read the state store only (no source, no destination, no secrets needed);
``retry`` re-sends through the destination (:mod:`replicant.dead_letters`) while holding the
staging log's writer lock, so it refuses to run beside ``replicant run`` of the same pipeline;
``discard`` deletes. ``retry`` and ``discard`` act on the ids given or, with ``--all``, on every
letter matching the filters; never on nothing said. Everything printed is redacted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from replicant.cli._app import EXIT_FAILED, app, err, out
from replicant.cli._app import fail as _fail
from replicant.cli._app import load_config as _load
from replicant.errors import ConfigError, redact

letters_app = typer.Typer(no_args_is_help=True, help="List, show, retry or discard the records a pipeline could not deliver.")
app.add_typer(letters_app, name="dead-letters")

Pipeline = Annotated[Path, typer.Argument(help="The pipeline file.")]
Ids = Annotated[list[int] | None, typer.Argument(help="Dead-letter ids (see `list`).", show_default=False)]
Destination = Annotated[str | None, typer.Option("--destination", "-d", help="Only this destination's.")]
StreamOpt = Annotated[str | None, typer.Option("--stream", help="Only this stream's.")]
Tenant = Annotated[str | None, typer.Option("--tenant", help="Only this tenant's.")]
Everything = Annotated[bool, typer.Option("--all", help="Every dead letter matching the filters.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _first_line(text: str, width: int = 100) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def _redacted(value: Any) -> Any:
    """``value`` with every string in it redacted (values, not the JSON text: a mask must not
    break the document)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _jsonable(letter: dict[str, Any]) -> dict[str, Any]:
    return _redacted({k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in letter.items()})


def _find(cfg: Any, **filters: Any) -> list[dict[str, Any]]:
    """The pipeline's dead letters matching ``filters``; none when it never ran (nothing is created)."""
    from replicant import runtime
    from replicant.state import ALL_TENANTS

    if not runtime.state_exists(cfg):
        return []
    if filters.get("tenant") is None:
        filters["tenant"] = ALL_TENANTS
    with runtime.open_state(cfg) as state:
        return state.find_dead_letters(cfg.pipeline, **filters)


def _chosen(ids: list[int] | None, everything: bool, verb: str) -> list[int] | None:
    if bool(ids) == everything:
        raise ConfigError(f"{verb} needs dead-letter ids or --all (with --destination, --stream, --tenant to narrow it)",
                          [("IDS", "give ids or --all, not both" if ids else "give ids or --all")])
    return None if everything else list(ids or [])


@letters_app.command("list")
def list_letters(
    pipeline: Pipeline, destination: Destination = None, stream: StreamOpt = None, tenant: Tenant = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many, newest first.")] = 50,
    as_json: AsJson = False,
) -> None:
    """Lists dead letters, newest first: id, stream, destination, origin, when, attempts, why."""
    try:
        cfg = _load(pipeline, secrets_needed=False)
        found = _find(cfg, stream=stream, destination=destination, tenant=tenant, limit=limit + 1)
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    more, found = len(found) > limit, found[:limit]
    if as_json:
        rows = [{k: v for k, v in _jsonable(x).items() if k != "payload"} for x in found]
        out.print_json(json.dumps(rows))
        return
    if not found:
        out.print(f"no dead letters in {cfg.pipeline}", markup=False)
        return
    t = Table(title=f"dead letters of {cfg.pipeline} (newest first)")
    tenants = any(x["tenant"] for x in found)
    for c in ("id", *(["tenant"] if tenants else []), "stream", "destination", "origin", "created at", "attempts", "reason"):
        t.add_column(c, justify="right" if c in ("id", "attempts") else "left", no_wrap=c != "reason",
                     overflow="ellipsis", max_width=40 if c == "origin" else None)
    for x in found:
        t.add_row(str(x["id"]), *([x["tenant"] or "-"] if tenants else []), x["stream"], x["destination"] or "-",
                  redact(_first_line(x["origin"], 60)), f"{x['created_at']:%Y-%m-%d %H:%M:%S}", str(x["attempts"]),
                  redact(_first_line(x["reason"])))
    out.print(t)
    if more:
        out.print(f"(more than {limit:,}: raise --limit, or narrow with --destination, --stream, --tenant)", markup=False)


@letters_app.command("show")
def show(pipeline: Pipeline, letter_id: Annotated[int, typer.Argument(metavar="ID", help="The dead letter's id.")]) -> None:
    """Prints one dead letter as JSON: full reason, origin and the record itself."""
    try:
        cfg = _load(pipeline, secrets_needed=False)
        found = _find(cfg, ids=[letter_id])
        if not found:
            raise ConfigError(f"no dead letter {letter_id} in pipeline {cfg.pipeline} (see `replicant dead-letters list`)")
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    out.print_json(json.dumps(_jsonable(found[0])))


@letters_app.command("discard")
def discard(pipeline: Pipeline, ids: Ids = None, everything: Everything = False, destination: Destination = None,
            stream: StreamOpt = None, tenant: Tenant = None) -> None:
    """Deletes the dead letters given by id, or with --all every one matching the filters."""
    from replicant import runtime
    from replicant.state import ALL_TENANTS

    try:
        cfg = _load(pipeline, secrets_needed=False)
        chosen = _chosen(ids, everything, "discard")
        n = 0
        if runtime.state_exists(cfg):
            with runtime.open_state(cfg) as state:
                n = state.discard_dead_letters(cfg.pipeline, ids=chosen, stream=stream, destination=destination,
                                               tenant=ALL_TENANTS if tenant is None else tenant)
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    out.print(f"discarded {n:,} dead letter{'' if n == 1 else 's'}", markup=False)


@letters_app.command("retry")
def retry(pipeline: Pipeline, ids: Ids = None, everything: Everything = False, destination: Destination = None,
          stream: StreamOpt = None, tenant: Tenant = None) -> None:
    """Sends dead letters to their destination again: accepted ones are removed, rejected ones
    stay with the new reason and one more attempt."""
    from replicant import runtime
    from replicant.dead_letters import retry_pipeline

    try:
        cfg = _load(pipeline)
        chosen = _chosen(ids, everything, "retry")
        if not runtime.state_exists(cfg):
            out.print(f"no dead letters in {cfg.pipeline}", markup=False)
            return
        report, letters = retry_pipeline(cfg, ids=chosen, stream=stream, destination=destination, tenant=tenant)
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    if chosen:
        missing = sorted(set(chosen) - {x["id"] for x in letters})
        for i in missing:
            err.print(f"warning: no dead letter {i} in {cfg.pipeline}", markup=False)
    out.print(f"retried {len(report.accepted) + len(report.rejected):,}: {len(report.accepted):,} accepted (removed), "
              f"{len(report.rejected):,} rejected again (kept)", markup=False)
    for i, why in sorted(report.rejected.items()):
        out.print(f"  #{i}: {_first_line(why)}", markup=False)
    for line in report.skipped:
        err.print(f"warning: skipped {line}", markup=False)
    for line in report.errors:
        err.print(f"error: {line}", markup=False)
    if report.errors:
        raise typer.Exit(EXIT_FAILED)

"""``replicant status``: per stream rows and position, per destination offset, lag and pauses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from replicant.cli._app import app, out
from replicant.cli._app import fail as _fail
from replicant.cli._app import load_config as _load
from replicant.cli._files import files_seen, print_files


@app.command()
def status(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    files: Annotated[bool, typer.Option("--files", help="Also every file a files source saw (status, rows, bad records).")] = False,
    server: Annotated[str | None, typer.Option("--server", help="Ask a running `replicant serve` at this URL.")] = None,
) -> None:
    """Per stream: rows and position; per destination: applied offset, lag and paused streams (with why)."""
    from replicant.engine import Engine

    if server is not None:
        _remote_status(pipeline, server, as_json)
        return
    try:
        cfg = _load(pipeline, secrets_needed=False)  # status reads the state and the log, not the source
        st = Engine(cfg).status(ask_source=True)
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    if as_json:
        import json

        out.print_json(json.dumps({**st.to_dict(), **({"files": files_seen(cfg)} if files else {})}, default=str))
        return
    last = st.last_run
    if last:
        out.print(f"last run: {last['status']} at {last['started_at']:%Y-%m-%d %H:%M:%S} UTC, {last.get('rows') or 0:,} rows")
    else:
        out.print("no run yet")
    t = Table(title=f"streams of {cfg.pipeline}")
    for c in ("stream", "rows", "log end offset", "position"):
        t.add_column(c)
    for s in st.streams:
        name = s.name if s.tenant is None else f"{s.tenant}/{s.name}"
        t.add_row(name, f"{s.rows:,}", str(s.log_end_offset), _short(s.position) if s.position is not None else "-")
    out.print(t)
    waiting = [x for x in (tenant.id for tenant in cfg.tenants or ()) if x not in {s.tenant for s in st.streams}]
    if waiting:
        out.print(f"tenants not read yet: {', '.join(waiting)}", markup=False)
    if st.capture is not None:
        out.print(f"change feed position: {_short(st.capture['position'])}")
        for k, v in st.source.items():
            out.print(f"{k}: {v}", markup=False)
    for tenant, capture in st.tenant_captures.items():
        out.print(f"change feed of tenant {tenant}: {_short(capture['position'])}", markup=False)
        for k, v in capture.get("source", {}).items():
            out.print(f"  {k}: {v}", markup=False)
    dead = {s.name: s.dead_letters for s in st.streams if s.dead_letters}
    if dead:
        out.print(f"dead letters: {', '.join(f'{s} {n:,}' for s, n in sorted(dead.items()))} "
                  f"(`replicant dead-letters list {pipeline}` shows them)", markup=False)
    d = Table(title="destinations")
    for c in ("destination", "stream", "applied offset", "lag (rows)", "last validated"):
        d.add_column(c)
    for ds in st.destinations:
        checked = f"{ds.validated_at:%Y-%m-%d %H:%M:%S} UTC: {ds.verdict}" if ds.validated_at else "never"
        name = ds.stream if ds.tenant is None else f"{ds.tenant}/{ds.stream}"
        d.add_row(ds.destination, name, str(ds.applied_offset), f"{ds.lag:,}", checked)
    out.print(d)
    if files:
        print_files(files_seen(cfg))
    for ds in st.destinations:
        if ds.paused:
            who = "" if ds.tenant is None else f" of tenant {ds.tenant}"
            out.print(f"paused: {ds.destination} / {ds.stream}{who} since {ds.paused_at:%Y-%m-%d %H:%M:%S} UTC: {ds.paused}",
                      markup=False)


def _short(position: Any) -> str:
    import json

    text = json.dumps(position, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _remote_status(pipeline: Path, server: str, as_json: bool) -> None:
    import json

    from replicant.cli._remote import call, pipeline_name

    try:
        st = call(server, "GET", f"/pipelines/{pipeline_name(pipeline)}/status")
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    if as_json:
        out.print_json(json.dumps(st))
        return
    t = Table(title=f"streams of {st['pipeline']} ({server})")
    for c in ("stream", "tenant", "rows", "log end offset"):
        t.add_column(c)
    for s in st["streams"]:
        t.add_row(s["name"], s["tenant"] or "", f"{s['rows']:,}", str(s["log_end_offset"]))
    out.print(t)
    d = Table(title="destinations")
    for c in ("destination", "stream", "applied offset", "lag (rows)", "paused"):
        d.add_column(c)
    for ds in st["destinations"]:
        d.add_row(ds["destination"], ds["stream"], str(ds["applied_offset"]), f"{ds['lag']:,}", ds["paused"] or "")
    out.print(d)

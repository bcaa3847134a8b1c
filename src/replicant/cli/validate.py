"""``replicant validate PIPELINE.yml [--destination D] [--stream S] [--tenant T] [--repair]
[--report FILE.json|FILE.html]``: exit 0 equal, 1 differences (each differing key listed),
2 could not validate (docs/validate.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from replicant.cli._app import app, out
from replicant.cli._app import fail as _fail
from replicant.cli._app import load_config as _load

_LISTED = 100  # differing keys printed per stream (the report holds up to 1000)


@app.command()
def validate(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file.")],
    destination: Annotated[str | None, typer.Option("--destination", help="Only this destination.")] = None,
    stream: Annotated[list[str] | None, typer.Option("--stream", help="Only this stream (repeat for several).")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant.")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Re-read the differing keys into the log, deliver, validate again.")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write the report: FILE.json or FILE.html.")] = None,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for a destination to apply the log's end.")] = 10.0,
) -> None:
    """Compares each source table with each destination by checksums inside both databases, down to the differing keys."""
    from replicant.validate import StreamResult, validate_pipeline
    from replicant.validate.report import write_report

    def show(r: StreamResult) -> None:
        who = f"{r.tenant}/{r.stream}" if r.tenant else r.stream
        c = r.comparison
        if r.error:
            out.print(f"{who} at {r.destination}: could not validate: {r.error}", markup=False, soft_wrap=True)
            return
        assert c is not None
        lag = f", lag {r.lag}" if r.lag else ""
        fixed = f", {r.found} found and {r.repaired} changes appended by --repair" if r.repaired else ""
        out.print(f"{who} at {r.destination}: {r.verdict} ({c.source_rows:,} source rows, {c.destination_rows:,} destination "
                  f"rows, {c.seconds:.2f} s{lag}{fixed})", markup=False, soft_wrap=True)
        for d in c.differences[:_LISTED]:
            out.print(f"  {d.kind}: {json.dumps(d.key, ensure_ascii=False)}", markup=False, soft_wrap=True)
        if len(c.differences) > _LISTED:
            out.print(f"  … and {len(c.differences) - _LISTED:,} more (--report lists them)", markup=False, soft_wrap=True)
        if r.unverified:
            out.print(f"  unverified: {', '.join(f'{k} ({v})' for k, v in r.unverified.items())}", markup=False, soft_wrap=True)

    try:
        cfg = _load(pipeline)
        result = validate_pipeline(cfg, destination=destination, streams=stream or None, tenant=tenant, repair=repair,
                                   wait=wait, on_result=show)
        for r in result.results:
            if r.stream == "*":
                what = "could not validate" if r.verdict == "error" else "skipped"
                out.print(f"{r.destination}: {what}: {r.error}", markup=False, soft_wrap=True)
        if report is not None:
            write_report(result, report)
    except Exception as e:  # noqa: BLE001 - the CLI boundary: every error becomes a message and an exit code
        from replicant.errors import ReplicantError

        _fail(e, exit_code=2 if isinstance(e, ReplicantError) else None)
        return
    raise typer.Exit(result.exit_code)

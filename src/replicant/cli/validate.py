"""``replicant validate PIPELINE.yml [--destination D] [--stream S] [--tenant T] [--repair]
[--report FILE.json|FILE.html]``: exit 0 equal, 1 differences (each differing key listed),
2 could not validate (docs/validate.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from replicant.cli._app import app, out
from replicant.cli._app import fail as _fail
from replicant.cli._app import load_config as _load
from replicant.errors import ReplicantError

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
    server: Annotated[str | None, typer.Option("--server", help="Have a running `replicant serve` at this URL do it.")] = None,
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

    if server is not None:
        raise typer.Exit(_remote(pipeline, server, destination, stream, tenant, repair, report))
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
        _fail(e, exit_code=2 if isinstance(e, ReplicantError) else None)
        return
    raise typer.Exit(result.exit_code)


def _remote(pipeline: Path, server: str, destination: str | None, stream: list[str] | None, tenant: str | None,
            repair: bool, report: Path | None) -> int:
    """``validate --server``: the service validates (as a run, one per ``--stream``); the same
    lines and exit code as a local validate, the report written from the run's result."""
    from replicant.cli._remote import call, pipeline_name, wait_run
    from replicant.validate.report import write_report_data

    try:
        name = pipeline_name(pipeline)
        codes: list[int] = []
        streams: list[Any] = []
        wanted: list[str | None] = list(stream) if stream else [None]
        for one in wanted:
            body = {"destination": destination, "stream": one, "tenant": tenant, "repair": repair}
            run = wait_run(server, call(server, "POST", f"/pipelines/{name}/validate", json=body)["id"])
            data = (run.get("result") or {}).get("validate")
            if data is None:
                raise ReplicantError(run.get("error") or f"validate run {run['id']} on {server}: {run['status']}")
            codes.append(data["exit_code"])
            streams.extend(data["streams"])
            for s in data["streams"]:
                who = f"{s['tenant']}/{s['stream']}" if s["tenant"] else s["stream"]
                if s["error"]:
                    out.print(f"{who} at {s['destination']}: could not validate: {s['error']}", markup=False, soft_wrap=True)
                    continue
                out.print(f"{who} at {s['destination']}: {s['verdict']} ({s['source']['rows']:,} source rows, "
                          f"{s['destination_side']['rows']:,} destination rows; run {run['id']} on {server})",
                          markup=False, soft_wrap=True)
                for d in s["differences"][:_LISTED]:
                    out.print(f"  {d['kind']}: {json.dumps(d['key'], ensure_ascii=False)}", markup=False, soft_wrap=True)
        code = max(codes)
        if report is not None and data is not None:
            write_report_data({**data, "streams": streams, "exit_code": code,
                               "verdict": {0: "equal", 1: "differences", 2: "could not validate"}[code]}, report)
        return code
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        _fail(e, exit_code=2 if isinstance(e, ReplicantError) else None)
        return 2

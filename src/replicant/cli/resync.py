"""``replicant resync PIPELINE.yml --stream NAME [--tenant ID]``: a fresh copy of one stream.

An ordinary pipeline's stream is emptied and snapshotted again on the next run while the other
streams keep their positions (:mod:`replicant.resync`). For a derived pipeline (``source: type:
pipeline``) a resync re-reads the stream from the start of its upstream's staging log: its SQL
destinations are emptied (a ``truncate`` in the derived log) and the next ``replicant run``
reprocesses everything with today's logic, without touching the original source
(:func:`replicant.sources.pipeline.resync_stream`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from replicant.cli._app import app, out
from replicant.cli._app import fail as _fail
from replicant.cli._app import load_config as _load
from replicant.errors import ReplicantError


@app.command()
def resync(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file.")],
    stream: Annotated[list[str], typer.Option("--stream", help="The stream to start over (repeat for several).")],
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's stream.")] = None,
    server: Annotated[str | None, typer.Option("--server", help="Have a running `replicant serve` at this URL do it "
                                                                "(and run the pipeline).")] = None,
) -> None:
    """Starts streams over: a fresh snapshot on the next run (a derived pipeline re-reads its upstream log)."""
    from replicant.resync import resync as start_over

    try:
        if server is not None:
            from replicant.cli._remote import call, pipeline_name, wait_run

            name = pipeline_name(pipeline)
            for one in stream:
                run = wait_run(server, call(server, "POST", f"/pipelines/{name}/streams/{one}/resync",
                                            params={"tenant": tenant} if tenant else None)["id"])
                out.print(f"{one}: resynced by run {run['id']} on {server}: {run['status']}", markup=False)
                if run["status"] != "succeeded":
                    raise ReplicantError(run.get("error") or f"run {run['id']} {run['status']}")
            return
        cfg = _load(pipeline)
        for name in stream:
            for line in start_over(cfg, name, tenant=tenant):
                out.print(line.replace("the next run", f"the next `replicant run {pipeline}`"), markup=False)
    except Exception as e:  # noqa: BLE001 - the CLI boundary: every error becomes a message and an exit code
        _fail(e)

"""``replicant serve [DIR]`` and ``replicant worker``: the service (docs/service.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from replicant.cli._app import app, err
from replicant.cli._app import fail as _fail

#: The environment variable a worker reads the state URL from (kept off the command line: no
#: password in `ps`).
STATE_ENV = "REPLICANT_STATE"

LogFormat = Annotated[str | None, typer.Option("--log-format", help="text or json (one object per line).")]
Lease = Annotated[str | None, typer.Option("--lease", help="Lease of a run: another worker resumes it this long after "
                                                           "its worker died (seconds or '15s').")]
State = Annotated[str | None, typer.Option("--state", help=f"State store URL (or ${STATE_ENV}).")]
Logs = Annotated[Path | None, typer.Option("--logs", help="Folder of run logs.")]
MaxRunning = Annotated[int | None, typer.Option("--max-running", help="Runs at once over every pipeline.")]


@app.command()
def serve(
    folder: Annotated[Path, typer.Argument(help="The folder of pipeline files (and replicant.yml).")] = Path("."),
    host: Annotated[str | None, typer.Option("--host", help="Address of the API.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port of the API (0: a free one).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes to start.")] = None,
    state: State = None,
    logs: Logs = None,
    lease: Lease = None,
    tick: Annotated[str | None, typer.Option("--tick", help="Scheduler pass interval (seconds or '1s').")] = None,
    max_running: MaxRunning = None,
    log_format: LogFormat = None,
    clock_file: Annotated[str | None, typer.Option("--clock-file", hidden=True, help="Tests: the scheduler's time.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No token needed (loopback addresses only).")] = False,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="The certificate's private key (PEM).")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option("--tls-client-ca",
                                                       help="Mutual TLS: require a client certificate of this CA.")] = None,
) -> None:
    """Runs every pipeline file in FOLDER on its schedule, with worker processes, a REST API
    (/api/v1, OpenAPI at /api/openapi.json) and Prometheus metrics (/metrics)."""
    from replicant.service.logs import setup_service_logging
    from replicant.service.server import serve as run_service
    from replicant.service.settings import load_settings
    from replicant.service.tls import TlsOptions

    try:
        tls = TlsOptions.from_flags(tls_cert, tls_key, tls_client_ca)
        overrides = {"host": host, "port": port, "workers": workers, "state": state or os.environ.get(STATE_ENV),
                     "logs": str(logs) if logs else None, "lease": lease, "tick": tick, "max_running": max_running,
                     "log_format": log_format, "clock_file": clock_file}
        settings = load_settings(folder, overrides)
        setup_service_logging(settings.log_format)
        worker_args = ["--lease", str(settings.lease), "--log-format", settings.log_format,
                       "--logs", str(settings.logs_dir)]
        if settings.max_running:
            worker_args += ["--max-running", str(settings.max_running)]
        code = run_service(folder.resolve(), settings, worker_args=worker_args, env={STATE_ENV: settings.state_url},
                           announce=lambda text: err.print(text, markup=False, soft_wrap=True), no_auth=no_auth, tls=tls)
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        _fail(e)
        return
    raise typer.Exit(code)


@app.command()
def worker(
    folder: Annotated[Path | None, typer.Option("--dir", help="Read replicant.yml of this folder for the settings.")] = None,
    state: State = None,
    logs: Logs = None,
    lease: Lease = None,
    max_running: MaxRunning = None,
    log_format: LogFormat = None,
) -> None:
    """Claims runs from the state store's queue and runs them until SIGTERM (which drains:
    the current batches finish and the run goes back to the queue)."""
    import signal
    import threading

    from replicant.service.logs import setup_service_logging
    from replicant.service.settings import load_settings
    from replicant.service.worker import Worker

    try:
        overrides = {"state": state or os.environ.get(STATE_ENV), "logs": str(logs) if logs else None, "lease": lease,
                     "max_running": max_running, "log_format": log_format}
        settings = load_settings(folder or Path("."), overrides)
        setup_service_logging(settings.log_format)
        w = Worker(settings)

        def drain(signum: int, frame: object) -> None:
            # in a thread: the handler may have interrupted the main thread inside one of these events' locks
            threading.Thread(target=w.drain, name="drain", daemon=True).start()

        signal.signal(signal.SIGTERM, drain)
        signal.signal(signal.SIGINT, drain)
        w.run_forever()
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        _fail(e)

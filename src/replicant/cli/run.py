"""``replicant run`` and ``replicant replay``: progress while they work, a table of rows when done."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from replicant.cli._app import EXIT_FAILED, app, err, out, parse_since
from replicant.cli._app import fail as _fail
from replicant.cli._app import load_config as _load
from replicant.cli._progress import DEFAULT_INTERVAL, ProgressLines
from replicant.cli._stop import DEFAULT_GRACE, Stopped, run_until_signalled
from replicant.errors import ConfigError, ReplicantError
from replicant.results import Observer


class _Bars(Observer):
    """Rich progress bars: one per stream read and one per destination × stream written."""

    def __init__(self, progress: Progress) -> None:
        self.p = progress
        self.tasks: dict[tuple[str, str], TaskID] = {}
        self.lock = threading.Lock()

    def _task(self, key: tuple[str, str], label: str, total: int | None = None) -> TaskID:
        with self.lock:
            if key not in self.tasks:
                self.tasks[key] = self.p.add_task(label, total=total, rows=0)
            return self.tasks[key]

    def stream_started(self, stream: str, estimate: int | None) -> None:
        self._task(("read", stream), f"read  {stream}", estimate or None)

    def rows_read(self, stream: str, rows: int) -> None:
        tid = self._task(("read", stream), f"read  {stream}")
        task = self.p.tasks[self.p.task_ids.index(tid)]
        if task.total is not None and task.completed + rows > task.total:
            self.p.update(tid, total=task.completed + rows)
        self.p.advance(tid, rows)

    def stream_finished(self, stream: str, error: str | None) -> None:
        tid = self._task(("read", stream), f"read  {stream}")
        task = self.p.tasks[self.p.task_ids.index(tid)]
        self.p.update(tid, total=task.completed)

    def rows_written(self, destination: str, stream: str, rows: int) -> None:
        tid = self._task((destination, stream), f"write {destination}/{stream}")
        self.p.advance(tid, rows)


class _SpeedColumn(TextColumn):
    def __init__(self) -> None:
        super().__init__("")

    def render(self, task: Any):
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rows/s", justify="right")


@app.command()
def run(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file.")],
    follow: Annotated[bool, typer.Option("--follow", help="Keep streaming after catching up (needs CDC modes).")] = False,
    stop_grace: Annotated[float, typer.Option(
        "--stop-grace", min=0, help="Seconds to wind down after SIGINT/SIGTERM before exiting at once.")] = DEFAULT_GRACE,
    progress_interval: Annotated[float, typer.Option(
        "--progress-interval", min=0,
        help="Seconds between progress lines when stderr is not a terminal (0: one per batch).")] = DEFAULT_INTERVAL,
    tenant: Annotated[list[str] | None, typer.Option("--tenant", help="Only this tenant (repeat for several).")] = None,
) -> None:
    """Initial sync and catch-up, then exit 0 (non-zero with a message on failure).

    SIGINT/SIGTERM stop it in any phase: it winds down (exit 0 for ``--follow``, else 128 +
    the signal number), or exits at once after ``--stop-grace`` seconds or a second signal."""
    from replicant.engine import Engine

    stopped = Stopped()
    try:
        cfg = _load(pipeline)
        from replicant.runtime import check_connectors

        check_connectors(cfg)  # every section's problems in this report, not in the next run's
        if follow and _only_full(cfg):
            raise ConfigError(
                "--follow needs a change-data-capture mode",
                [("source.streams", "every stream is mode full; use log, trigger, snapshot_diff or cursor to follow changes")],
            )
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:>12,.0f} rows"),
            _SpeedColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not err.is_terminal,
        )
        # no terminal (CI, a log file): progress bars would show nothing until the end
        observer: Observer = _Bars(progress) if err.is_terminal else ProgressLines(progress_interval)
        engine: Any = Engine(cfg, observer=observer) if not cfg.tenants else _tenants(cfg, pipeline, observer, tenant, follow)
        if tenant and not cfg.tenants:
            raise ConfigError("--tenant needs `tenants:` in the pipeline file", [("tenants", "the pipeline has none")])
        with progress:
            result = run_until_signalled(lambda: engine.run(follow=follow), engine.stop_event, stopped, grace=stop_grace,
                                         before_exit=progress.stop)
    except Exception as e:  # noqa: BLE001 - the CLI boundary: every error becomes a message and an exit code
        _fail(e, exit_code=stopped.exit_code if stopped.signum else None)
        return
    table = Table(title=f"pipeline {cfg.pipeline}: {'ok' if result.ok else 'FAILED'} in {result.seconds:.1f} s")
    table.add_column("stream")
    table.add_column("rows read", justify="right")
    for d in cfg.destinations:
        table.add_column(f"→ {d.name}", justify="right")
    for s, n in result.rows_read.items():
        table.add_row(s, f"{n:,}", *[f"{result.rows_written.get(d.name, {}).get(s, 0):,}" for d in cfg.destinations])
    out.print(table)
    _report_dead_letters(result)
    if not result.ok:
        for error in result.errors:
            err.print(f"error: {error}", markup=False, soft_wrap=True)
        raise typer.Exit(stopped.exit_code if stopped.signum else EXIT_FAILED)
    if stopped.signum is not None and not follow:  # interrupted before catching up
        err.print("interrupted: the next run resumes from the last checkpoint", markup=False)
        raise typer.Exit(stopped.exit_code)


def _tenants(cfg: Any, path: Path, observer: Observer, only: list[str] | None, follow: bool) -> Any:
    """Every tenant's feed at once (``--tenant``: those); ``--follow`` takes changes of the
    pipeline file's ``tenants:`` as they are saved (:func:`replicant.tenants.watch.watch_file`)."""
    from replicant.tenants.runner import TenantRunner

    runner = TenantRunner(cfg, observer=observer, tenants=only or None)
    if follow:
        from replicant.tenants.watch import watch_file

        watch_file(runner, path, interval=cfg.source.poll_interval)
    return runner


def _only_full(cfg: Any) -> bool:
    streams = cfg.source.streams
    if streams == "all":
        return cfg.source.default_mode == "full"
    return all(s.mode == "full" for s in streams)


def _report_dead_letters(result: Any) -> None:
    for dest, per in result.dead_letters.items():
        for stream, n in per.items():
            err.print(f"warning: {n:,} records of {stream} rejected by {dest}: in dead letters (see `replicant status`)", markup=False)


@app.command()
def replay(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file.")],
    destination: Annotated[str, typer.Option("--destination", "-d", help="The destination to re-deliver to.")],
    from_start: Annotated[bool, typer.Option("--from-start", help="From the earliest offset the log holds.")] = False,
    offset: Annotated[int | None, typer.Option("--offset", help="From this log offset (every stream).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="From this time: ISO 8601 (UTC if no zone) or an age like 2h.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's streams (default: every tenant's).")] = None,
    server: Annotated[str | None, typer.Option("--server", help="Have a running `replicant serve` at this URL do it.")] = None,
) -> None:
    """Re-delivers the staging log to one destination, without reading the source."""
    from replicant.tenants.replay import replay_tenants

    try:
        chosen = [x for x in (from_start, offset is not None, since is not None) if x]
        if len(chosen) != 1:
            raise ConfigError("replay needs exactly one of --from-start, --offset N or --since TIME")
        if server is not None:
            if not _remote_replay(pipeline, server, destination, from_start, offset, since):
                raise ReplicantError(f"the replay into {destination} on {server} did not succeed")
            return
        cfg = _load(pipeline)
        if from_start:
            result = replay_tenants(cfg, tenant, destination, start="start")
        elif offset is not None:
            result = replay_tenants(cfg, tenant, destination, start="offset", offset=offset)
        else:
            result = replay_tenants(cfg, tenant, destination, start="since", since=parse_since(since or ""))
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    t = Table(title=f"replay into {destination}: {result.seconds:.1f} s")
    t.add_column("stream")
    t.add_column("rows delivered", justify="right")
    for s, n in result.rows_written.get(destination, {}).items():
        t.add_row(s, f"{n:,}")
    out.print(t)
    _report_dead_letters(result)
    for w in result.warnings:
        err.print(f"warning: {w}".replace("PIPELINE.yml", str(pipeline)), markup=False)


def _remote_replay(pipeline: Path, server: str, destination: str, from_start: bool, offset: int | None,
                   since: str | None) -> bool:
    from replicant.cli._remote import call, pipeline_name, wait_run

    name = pipeline_name(pipeline)
    body = {"from_start": from_start, "offset": offset, "since": parse_since(since).isoformat() if since else None}
    run = wait_run(server, call(server, "POST", f"/pipelines/{name}/destinations/{destination}/replay", json=body)["id"])
    written = (run.get("result") or {}).get("rows_written", {}).get(destination, {})
    out.print(f"replay into {destination} (run {run['id']} on {server}): {run['status']}, "
              f"{sum(written.values()):,} rows delivered", markup=False)
    if run["status"] != "succeeded":
        err.print(f"error: {run.get('error') or run['status']}", markup=False)
    return bool(run["status"] == "succeeded")

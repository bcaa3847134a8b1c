"""The ``replicant`` command line.

``replicant run PIPELINE.yml`` syncs until caught up and exits 0, or exits non-zero with a
short message (no traceback unless ``--debug``). ``replicant status PIPELINE.yml`` shows,
per stream, rows and position, and per destination the applied offset and lag.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from replicant.errors import ConfigError, ReplicantError, redact

app = typer.Typer(add_completion=False, no_args_is_help=True, help="replicant: data pipelines through a durable staging log.")
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERNAL = 3


class _State:
    debug = False


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False) -> None:
    _State.debug = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fail(e: BaseException) -> None:
    if _State.debug:
        err.print(redact("".join(traceback.format_exception(e))), markup=False)
    if isinstance(e, ConfigError):
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(EXIT_CONFIG)
    if isinstance(e, ReplicantError):
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(EXIT_FAILED)
    err.print(f"internal error: {type(e).__name__}: {redact(str(e))}", markup=False)
    if not _State.debug:
        err.print("run again with --debug for the traceback", markup=False)
    raise typer.Exit(EXIT_INTERNAL)


def _load(path: Path):
    from replicant.config import load

    return load(path)


class _Bars:
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

    def render(self, task: Any):  # type: ignore[override]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rows/s", justify="right")


@app.command()
def run(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file.")],
    follow: Annotated[bool, typer.Option("--follow", help="Keep streaming after catching up (needs CDC modes).")] = False,
) -> None:
    """Initial sync and catch-up, then exit 0 (non-zero with a message on failure)."""
    from replicant.engine import Engine

    try:
        cfg = _load(pipeline)
        if follow:
            raise ConfigError("--follow needs a change-data-capture mode (log, trigger, snapshot_diff); not available yet")
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
        engine = Engine(cfg, observer=_Bars(progress))

        def stop(signum: int, frame: Any) -> None:
            engine.stop_event.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        with progress:
            result = engine.run()
    except Exception as e:  # noqa: BLE001 - the CLI boundary: every error becomes a message and an exit code
        _fail(e)
        return
    table = Table(title=f"pipeline {cfg.pipeline}: {'ok' if result.ok else 'FAILED'} in {result.seconds:.1f} s")
    table.add_column("stream")
    table.add_column("rows read", justify="right")
    for d in cfg.destinations:
        table.add_column(f"→ {d.name}", justify="right")
    for s, n in result.rows_read.items():
        table.add_row(s, f"{n:,}", *[f"{result.rows_written.get(d.name, {}).get(s, 0):,}" for d in cfg.destinations])
    out.print(table)
    if not result.ok:
        for e in result.errors:
            err.print(f"error: {e}", markup=False)
        raise typer.Exit(EXIT_FAILED)


@app.command()
def status(pipeline: Annotated[Path, typer.Argument(help="The pipeline file.")]) -> None:
    """Per stream: rows and position; per destination: applied offset and lag."""
    from replicant import runtime

    try:
        cfg = _load(pipeline)
        state = runtime.open_state(cfg)
        lg = runtime.open_pipeline_log(cfg, read_only=True)
        try:
            checkpoints = state.checkpoints(cfg.pipeline)
            offsets = state.offsets(cfg.pipeline)
            last = state.last_run(cfg.pipeline)
            streams = sorted(set(checkpoints) | set(lg.streams()))
            ends = {s: lg.end_offset(s) for s in streams}
        finally:
            lg.close()
            state.close()
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    if last:
        out.print(f"last run: {last['status']} at {last['started_at']:%Y-%m-%d %H:%M:%S} UTC, {last.get('rows') or 0:,} rows")
    else:
        out.print("no run yet")
    t = Table(title=f"streams of {cfg.pipeline}")
    for c in ("stream", "rows", "log end offset", "position"):
        t.add_column(c)
    for s in streams:
        cp = checkpoints.get(s)
        t.add_row(s, f"{cp.rows_total:,}" if cp else "0", str(ends[s]), _short(cp.position) if cp else "-")
    out.print(t)
    d = Table(title="destinations")
    for c in ("destination", "stream", "applied offset", "lag (rows)"):
        d.add_column(c)
    for dest in cfg.destinations:
        for s in streams:
            off = offsets.get((dest.name, s))
            applied = off[0] if off else -1
            d.add_row(dest.name, s, str(applied), f"{max(ends[s] - 1 - applied, 0):,}")
    out.print(d)


def _short(position: Any) -> str:
    import json

    text = json.dumps(position, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()

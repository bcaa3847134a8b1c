"""The ``replicant`` command line.

``replicant run PIPELINE.yml`` syncs until caught up and exits 0, or exits non-zero with a
short message (no traceback unless ``--debug``); ``--follow`` keeps capturing changes until
SIGINT/SIGTERM, then stops cleanly and exits 0. ``replicant status PIPELINE.yml`` shows, per
stream, rows and position, and per destination the applied offset, lag and dead letters.
``replicant replay PIPELINE.yml --destination NAME (--from-start | --offset N | --since
TIME)`` re-delivers from the staging log. ``replicant cdc install|uninstall PIPELINE.yml``
creates or removes what ``trigger`` and ``log`` streams need at the source.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from replicant.errors import ConfigError, ReplicantError, redact
from replicant.results import Observer

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
        err.print(f"error: {e}", markup=False, soft_wrap=True)  # one line per problem, also for grep
        raise typer.Exit(EXIT_CONFIG)
    if isinstance(e, ReplicantError):
        err.print(f"error: {e}", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)
    err.print(f"internal error: {type(e).__name__}: {redact(str(e))}", markup=False)
    if not _State.debug:
        err.print("run again with --debug for the traceback", markup=False)
    raise typer.Exit(EXIT_INTERNAL)


def _load(path: Path, *, secrets_needed: bool = True):
    from replicant.config import load

    return load(path, secrets_needed=secrets_needed)


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
) -> None:
    """Initial sync and catch-up, then exit 0 (non-zero with a message on failure)."""
    from replicant.engine import Engine

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
        engine = Engine(cfg, observer=_Bars(progress))

        def stop(signum: int, frame: Any) -> None:
            if engine.stop_event.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            engine.stop_event.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        with progress:
            result = engine.run(follow=follow)
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
    _report_dead_letters(result)
    if not result.ok:
        for error in result.errors:
            err.print(f"error: {error}", markup=False)
        raise typer.Exit(EXIT_FAILED)


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
) -> None:
    """Re-delivers the staging log to one destination, without reading the source."""
    from replicant.engine import Engine

    try:
        cfg = _load(pipeline)
        chosen = [x for x in (from_start, offset is not None, since is not None) if x]
        if len(chosen) != 1:
            raise ConfigError("replay needs exactly one of --from-start, --offset N or --since TIME")
        if from_start:
            result = Engine(cfg).replay(destination, start="start")
        elif offset is not None:
            result = Engine(cfg).replay(destination, start="offset", offset=offset)
        else:
            result = Engine(cfg).replay(destination, start="since", since=_parse_since(since or ""))
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


def _parse_since(text: str) -> Any:
    from datetime import datetime, timedelta

    from replicant.config import parse_duration

    try:
        ts = datetime.fromisoformat(text)
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        raise ConfigError("bad --since", [("--since", f"{text!r} is neither an ISO 8601 time nor an age like 90m or 2h")]) from None


cdc = typer.Typer(no_args_is_help=True, help="Set up or remove change data capture at the source.")
app.add_typer(cdc, name="cdc")


@contextlib.contextmanager
def _source_streams(cfg: Any) -> Iterator[tuple[Any, list]]:
    """The pipeline's source and its streams as the engine sees them."""
    from replicant.engine import Engine

    engine = Engine(cfg)
    source = engine.new_source()
    try:
        yield source, engine.streams(source)
    finally:
        source.close()


def _cdc(pipeline: Path, install: bool) -> None:
    try:
        with _source_streams(_load(pipeline)) as (source, streams):
            lines = source.install(streams) if install else source.uninstall(streams)
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


@app.command()
def status(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Per stream: rows and position; per destination: applied offset, lag and paused streams (with why)."""
    from replicant.engine import Engine

    try:
        cfg = _load(pipeline, secrets_needed=False)  # status reads the state and the log, not the source
        st = Engine(cfg).status(ask_source=True)
    except Exception as e:  # noqa: BLE001
        _fail(e)
        return
    if as_json:
        import json

        out.print_json(json.dumps(st.to_dict()))
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
        t.add_row(s.name, f"{s.rows:,}", str(s.log_end_offset), _short(s.position) if s.position is not None else "-")
    out.print(t)
    if st.capture is not None:
        out.print(f"change feed position: {_short(st.capture['position'])}")
        for k, v in st.source.items():
            out.print(f"{k}: {v}", markup=False)
    dead = {s.name: s.dead_letters for s in st.streams if s.dead_letters}
    if dead:
        out.print(f"dead letters: {', '.join(f'{s} {n:,}' for s, n in sorted(dead.items()))}")
    d = Table(title="destinations")
    for c in ("destination", "stream", "applied offset", "lag (rows)"):
        d.add_column(c)
    for ds in st.destinations:
        d.add_row(ds.destination, ds.stream, str(ds.applied_offset), f"{ds.lag:,}")
    out.print(d)
    for ds in st.destinations:
        if ds.paused:
            out.print(f"paused: {ds.destination} / {ds.stream} since {ds.paused_at:%Y-%m-%d %H:%M:%S} UTC: {ds.paused}",
                      markup=False)


def _short(position: Any) -> str:
    import json

    text = json.dumps(position, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _memory_pool() -> None:
    """Arrow's default pool (mimalloc) keeps freed pages for reuse; for a pipeline that moves
    one batch after another the system allocator gives them back: measured peak RSS of a 5M-row
    PostgreSQL → DuckDB sync 395 → 337 MB at the same speed. ``ARROW_DEFAULT_MEMORY_POOL``
    still chooses."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())


def main() -> None:
    _memory_pool()
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()

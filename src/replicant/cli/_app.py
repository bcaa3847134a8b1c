"""What every ``replicant`` command shares: the Typer app, the consoles, ``--debug``, and how
an error becomes a message and an exit code."""

from __future__ import annotations

import logging
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from replicant.errors import ConfigError, ReplicantError, redact

app = typer.Typer(add_completion=False, no_args_is_help=True, help="replicant: data pipelines through a durable staging log.")
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERNAL = 3


class _State:
    debug = False


class _ConsoleHandler(logging.Handler):
    """Log records through the stderr console, so they print above live progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            err.print(redact(self.format(record)), markup=False, highlight=False, soft_wrap=True)
        except (Exception, SystemExit):  # noqa: BLE001 - logging must never break the run (rich exits on a broken pipe)
            self.handleError(record)


def setup_logging(debug: bool) -> None:
    """replicant's own loggers at DEBUG with ``--debug``; at INFO when stderr is not a terminal
    (progress lines, retries: a CI log shows what happens while it happens); else WARNING.
    Other libraries' loggers stay at WARNING, so ``--debug`` shows replicant's story."""
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    level = logging.DEBUG if debug else logging.WARNING if err.is_terminal else logging.INFO
    logging.getLogger("replicant").setLevel(level)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out.print(f"replicant {version('replicant')}", markup=False)
        except PackageNotFoundError:  # run from a source tree that is not installed
            from replicant import __version__

            out.print(f"replicant {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs (also after the command).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    _State.debug = debug
    setup_logging(debug)


def hoist_debug(args: list[str]) -> list[str]:
    """``--debug`` is accepted anywhere on the command line (``replicant run --debug p.yml``):
    it moves before the command, where the app's option is (not after ``--``)."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return args
    return ["--debug"] + [a for i, a in enumerate(args) if not (a == "--debug" and i < end)]


def fail(e: BaseException, *, exit_code: int | None = None) -> None:
    """Prints ``e`` as a short message (a traceback too with ``--debug``) and exits: 2 for a
    config error, 1 for another replicant error, 3 for a bug; ``exit_code`` instead when given
    (a run stopped by a signal exits 128 + its number)."""
    if exit_code is not None:
        err.print(f"error: {e}" if isinstance(e, ReplicantError) else f"error: {type(e).__name__}: {redact(str(e))}",
                  markup=False, soft_wrap=True)
        raise typer.Exit(exit_code)
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


def load_config(path: Path, *, secrets_needed: bool = True):
    from replicant.access.secret_store import install_for_pipeline
    from replicant.config import load

    install_for_pipeline(path)  # ${secret:NAME} from the pipeline's encrypted store
    return load(path, secrets_needed=secrets_needed)


def parse_since(text: str, option: str = "--since") -> datetime:
    """``--since``: an ISO 8601 time (UTC when it has no zone) or an age like ``90m``, ``2h``.

    Raises:
        ConfigError: neither, naming the option.
    """
    from replicant.config_values import parse_duration

    try:
        ts = datetime.fromisoformat(text)
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        why = f"{text!r} is not an ISO 8601 time and not a duration (an age like 90m or 2h)"
        raise ConfigError(f"bad {option}", [(option, why)]) from None

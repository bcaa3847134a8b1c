"""What every ``replicant`` command shares: the Typer app, the consoles, ``--debug``, and how
an error becomes a message and an exit code."""

from __future__ import annotations

import logging
import traceback
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


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False) -> None:
    _State.debug = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def fail(e: BaseException) -> None:
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
    from replicant.config import load

    return load(path, secrets_needed=secrets_needed)

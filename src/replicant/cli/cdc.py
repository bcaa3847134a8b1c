"""``replicant cdc install|uninstall``: what trigger and log streams need at the source."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from replicant.cli._app import app, out
from replicant.cli._app import fail as _fail
from replicant.cli._app import load_config as _load

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

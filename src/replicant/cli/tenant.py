"""``replicant tenant drop PIPELINE.yml --tenant ID``: a tenant's rows and state removed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from replicant.cli._app import app, out
from replicant.cli._app import fail as _fail
from replicant.cli._app import load_config as _load

tenant_app = typer.Typer(no_args_is_help=True, help="Per-tenant operations of a pipeline with `tenants:`.")
app.add_typer(tenant_app, name="tenant")


@tenant_app.command("drop")
def tenant_drop(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline file.")],
    tenant: Annotated[str, typer.Option("--tenant", help="The tenant whose rows and state go.")],
    uninstall_cdc: Annotated[bool, typer.Option(
        "--uninstall-cdc", help="Also drop its replication slot and publication (or triggers) at its source.")] = False,
) -> None:
    """Deletes a tenant's rows from the SQL destinations (only its: `_tenant = ID`), its
    checkpoints, offsets and dead letters, and says how to drop its slot (or does, with
    --uninstall-cdc). Stop its feed first: take it out of the file, or stop the run."""
    from replicant.tenants.drop import drop_tenant

    try:
        lines = drop_tenant(_load(pipeline), tenant, uninstall_cdc=uninstall_cdc)
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        _fail(e)
        return
    for line in lines:
        out.print(line.replace("PIPELINE.yml", str(pipeline)), markup=False)

"""The ``replicant`` command line.

``replicant run PIPELINE.yml`` syncs until caught up and exits 0, or exits non-zero with a
short message (no traceback unless ``--debug``); ``--follow`` keeps capturing changes until
SIGINT/SIGTERM, then stops cleanly and exits 0. ``replicant status PIPELINE.yml`` shows, per
stream, rows and position, and per destination the applied offset, lag and dead letters.
``replicant replay PIPELINE.yml --destination NAME (--from-start | --offset N | --since
TIME)`` re-delivers from the staging log. ``replicant cdc install|uninstall PIPELINE.yml``
creates or removes what ``trigger`` and ``log`` streams need at the source.
``replicant dead-letters list|show|retry|discard PIPELINE.yml`` handles rejected records.
from replicant.cli import cdc, dead_letters, decrypt, resync, run, serve, status  # noqa: F401 - each registers its commands on the app
from replicant.cli._app import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERNAL, app, err, hoist_debug
"""

from __future__ import annotations

import os
import sys

from replicant.cli import (  # noqa: F401 - each registers its commands on the app
    access,
    cdc,
    dead_letters,
    decrypt,
    resync,
    run,
    serve,
    status,
    tenant,
    validate,
)
from replicant.cli._app import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERNAL, app, err, hoist_debug

access.audit_commands(app)  # after every command is registered: each mutating one records an audit entry

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERNAL", "app", "main"]


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
        app(args=hoist_debug(sys.argv[1:]), prog_name="replicant")
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)

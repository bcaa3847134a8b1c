"""``replicant run --follow`` of a pipeline with tenants takes changes of the pipeline file."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from replicant.errors import ConfigError

__all__ = ["watch_file"]

log = logging.getLogger(__name__)


def watch_file(runner: Any, path: Path, *, interval: float = 1.0) -> threading.Thread:
    """Checks ``path`` every ``interval`` seconds until ``runner.stop_event`` is set; when it was
    saved again, loads it and hands it to ``runner.reload`` (a tenant added, removed or changed).
    A file that no longer validates is reported and ignored: the running tenants go on."""
    from replicant.config import load

    def stamp() -> tuple[int, int] | None:
        try:
            st = path.stat()
            return st.st_mtime_ns, st.st_size
        except OSError:
            return None

    seen = stamp()

    def loop() -> None:
        nonlocal seen
        while not runner.stop_event.wait(interval):
            now = stamp()
            if now is None or now == seen:
                continue
            seen = now
            try:
                runner.reload(load(path))
            except ConfigError as e:
                log.warning("%s changed but is not valid, the running tenants go on as before: %s", path, e)

    thread = threading.Thread(target=loop, name="watch-pipeline-file", daemon=True)
    thread.start()
    return thread

"""Logs of the service: text or JSON lines (``--log-format json``), and one file per run.

A JSON line carries ``time``, ``level``, ``logger``, ``message`` and, inside a run, the
``pipeline``, ``tenant``, ``run`` (queue entry id) and ``stream`` (when the line is about
one: the logger call's ``extra={"stream": …}``, or the reader thread's stream). Every line
is redacted (no passwords).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from replicant.errors import redact

__all__ = ["JsonFormatter", "RunContext", "run_log", "setup_service_logging", "run_log_path"]


class RunContext(logging.Filter):
    """Adds the current run's pipeline, tenant and entry id to every record of this process
    (a worker runs one entry at a time; the engine's threads log without a context of their own)."""

    current: ClassVar[dict[str, Any]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        for key in ("pipeline", "tenant", "run"):
            if not hasattr(record, key):
                setattr(record, key, self.current.get(key))
        if not hasattr(record, "stream"):
            thread = threading.current_thread().name
            record.stream = thread.removeprefix("reader-") if thread.startswith("reader-") else None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "pipeline": getattr(record, "pipeline", None),
            "tenant": getattr(record, "tenant", None),
            "stream": getattr(record, "stream", None),
            "run": getattr(record, "run", None),
        }
        if record.exc_info:
            line["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        where = " ".join(f"{k}={getattr(record, k)}" for k in ("pipeline", "tenant", "stream", "run")
                         if getattr(record, k, None) is not None)
        text = super().format(record)
        return redact(f"{text} [{where}]" if where else text)


def _formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup_service_logging(log_format: str, *, debug: bool = False) -> None:
    """The process's log lines on stderr, as text or JSON, with the run context."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(log_format))
    handler.addFilter(RunContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("replicant").setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_log_path(logs_dir: Path, entry_id: int) -> Path:
    return logs_dir / "runs" / f"{entry_id}.log"


@contextmanager
def run_log(settings: Any, entry: dict[str, Any]) -> Iterator[None]:
    """While running ``entry``: its context on every record, and its lines also in its run log."""
    path = run_log_path(settings.logs_dir, entry["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_formatter(settings.log_format))
    handler.addFilter(RunContext())
    RunContext.current = {"pipeline": entry["pipeline"], "tenant": entry["tenant"], "run": entry["id"]}
    logger = logging.getLogger("replicant")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        RunContext.current = {}

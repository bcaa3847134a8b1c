"""Replay: re-deliver a destination's streams from the staging log, without touching the source.

``start`` chooses where: the earliest offset the log still holds, an offset, or the first
record at or after a time. A ``merge`` destination ends as it was (upserts by key are
idempotent); a non-transactional one (HTTP, files, NATS) is re-sent whole log records, so
its idempotency keys and file names repeat those of the first delivery.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from replicant.delivery import StreamWriter
from replicant.log.base import Log
from replicant.model import data_schema, log_stream_name
from replicant.plan import log_stream
from replicant.results import Observer, RunResult

__all__ = ["ReplayStart", "replay_into"]

log = logging.getLogger(__name__)

ReplayStart = Literal["start", "offset", "since"]


def replay_into(
    config: Any,
    dest: Any,
    lg: Log,
    state: Any,
    result: RunResult,
    observer: Observer,
    *,
    start: ReplayStart,
    offset: int | None = None,
    since: datetime | None = None,
    tenant: str | None = None,
) -> None:
    """Re-delivers every stream of ``lg`` that ``dest`` takes (of ``tenant``, when given), from
    ``start``; adds the rows delivered to ``result``. ``dest`` is open.

    Raises:
        FatalError: ``offset`` lies before what the log still holds (the message says what it holds).
    """
    prefix = "" if tenant is None else f"{tenant}/"
    names = [n.removeprefix(prefix) for n in lg.streams() if n.startswith(prefix)]
    for name in [n for n in names if not dest.config.streams or n in dest.config.streams]:
        schemas = lg.schemas(log_stream_name(name, tenant))
        if not schemas:
            continue
        stream = log_stream(config, name, data_schema(schemas[-1]), tenant=tenant)
        name = stream.log_name
        dest.prepare(stream)
        if start == "start":
            first = lg.start_offset(name)
        elif start == "offset":
            first = int(offset or 0)
        else:
            assert since is not None
            first = lg.offset_at(name, since)
        end = lg.end_offset(name)
        if first < lg.start_offset(name):
            next(iter(lg.read(name, first, end=first + 1)), None)  # raises, naming what the log holds
        if not dest.capabilities.transactional and first < end:
            first = record_start(lg, name, first)  # requests and files are cut from whole records
        w = StreamWriter(dest, stream, lg, state, config.pipeline, observer.rows_written, start=first)
        w.step(end)
        w.flush_mirror()
        result.rows_written.setdefault(dest.name, {})[stream.name] = w.rows


def record_start(lg: Log, stream: str, offset: int) -> int:
    """The first offset of the log record holding ``offset``. A non-transactional destination
    names its requests and files by whole records; a replay from inside one sends it whole
    again (same batch ids, same file names) instead of a new range overlapping the first."""
    low, step = lg.start_offset(stream), 1024
    while True:
        probe = start = max(offset - step, low)
        for rec in lg.read(stream, probe, end=offset + 1):
            start = rec.offset  # the last one holds ``offset``; only the first can be a slice
        if start > probe or probe == low:
            return start
        step *= 4

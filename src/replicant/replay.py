"""Replay: re-deliver a destination's streams from the staging log, without touching the source.

``start`` chooses where: the earliest offset the log still holds, an offset, or the first
record at or after a time. A ``merge`` destination ends as it was (upserts by key are
idempotent); a non-transactional one (HTTP, files, NATS) is re-sent whole log records, so
its idempotency keys and file names repeat those of the first delivery.

A replay from an offset or a time into a destination that has not applied the records before
that point (a new, empty destination, or one far behind) leaves them out for good: the
destination's applied offset moves to the log's end, so a later ``run`` goes on from there and
never fills the gap. Replay does what it was asked, and says so: a warning per stream (in the
CLI's output and in :attr:`RunResult.warnings`) names the records not delivered and the command
that fills them, ``replicant replay --destination NAME --from-start`` (a merge destination ends
as it would have; an append one gets the replayed range twice).
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
        if first < end:
            gap = _gap(dest, stream, state, config.pipeline, lg.start_offset(name), first)
            if gap:
                msg = (
                    f"{gap:,} records of {stream.name} before offset {first} (the replay's start) were not delivered "
                    f"to {dest.name}, and a later `run` will not deliver them (it goes on from the log's end); to "
                    f"fill them: `replicant replay PIPELINE.yml --destination {dest.name} --from-start`"
                )
                log.info("%s", msg)  # a warning through the result: the CLI prints it once
                result.warnings.append(msg)
        w = StreamWriter(dest, stream, lg, state, config.pipeline, observer.rows_written, start=first)
        w.step(end)
        w.flush_mirror()
        result.delivered(dest.name, stream.name, w.rows)


def _gap(dest: Any, stream: Any, state: Any, pipeline: str, log_start: int, first: int) -> int:
    """How many log offsets before ``first`` (and still in the log) ``dest`` has not applied."""
    if dest.capabilities.transactional:
        applied = dest.applied_offset(stream)
    else:
        off = state.offsets(pipeline, tenant=stream.tenant).get((dest.name, stream.name))
        applied = off.offset if off else -1
    return max(first - max(applied + 1, log_start), 0)


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

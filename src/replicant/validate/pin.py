"""Pinning a comparison to the source's position (``log`` and ``trigger`` streams).

At the start, the source's current position is read (:meth:`Source.current_position`:
PostgreSQL ``pg_current_wal_lsn()``, MariaDB ``SHOW MASTER STATUS``, a trigger shadow table's
highest change). Then, until the ``--wait`` deadline, :func:`pin` polls for

1. the staging log to cover that position: the stream's last position in the log, or the
   change feed's checkpoint in the state store (a feed's heartbeats move it while the stream
   itself is idle), at or past it (:func:`replicant.sources.positions.reached`); this needs a
   running ``run --follow``;
2. the destination to have applied the log's last offset for the stream once (1) holds.

Without a source position (other modes, or a source that cannot tell) the log's last offset at
the start is the pin, as before. When the deadline passes first, the comparison runs anyway and
the result says what was compared: the log offset, the source position it covers, where the
source was, and the lag in the source's own unit (WAL bytes, binlog bytes, changes).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from replicant.errors import ReplicantError, redact
from replicant.model import Position
from replicant.sources.positions import distance, reached, unit

__all__ = ["pin", "source_now"]

log = logging.getLogger(__name__)

_POLL = 0.2  # seconds between looks at a pipeline running in another process


def source_now(source: Any, stream: Any) -> tuple[Position | None, str | None]:
    """(``source``'s current position for ``stream`` or None, why it could not be read)."""
    if stream.mode not in ("log", "trigger"):
        return None, None
    try:
        return source.current_position(stream), None
    except Exception as e:  # a driver error: validate pins to the log alone and says why
        log.debug("reading the source position of %s failed", stream.name, exc_info=True)
        return None, f"the source's current position could not be read ({redact(str(e))}): pinned to the log alone"


def _covered(cfg: Any, state: Any, stream: Any, tenant: str | None, target: Position) -> tuple[int | None, Position | None, bool]:
    """(the log's last offset of ``stream``, the position the log covers for it, whether that
    reaches ``target``): the stream's last position in the log, else the feed's checkpoint."""
    from replicant import runtime
    from replicant.ingest import CAPTURE_CHECKPOINT

    offset, own = None, None
    try:
        lg = runtime.open_pipeline_log(cfg, read_only=True)
    except (ReplicantError, OSError):
        lg = None
    if lg is not None:
        try:
            offset = lg.end_offset(stream.log_name) - 1
            own = lg.last_position(stream.log_name)
        finally:
            lg.close()
    if reached(own, target):
        return offset, own, True
    feed = None
    if stream.mode == "log":
        try:
            cp = state.checkpoint(cfg.pipeline, CAPTURE_CHECKPOINT, tenant=tenant)
        except ReplicantError:
            cp = None
        feed = cp.position if cp else None
        if reached(feed, target):
            return offset, feed, True
    def behind(p: Position | None) -> float:
        d = distance(p, target)
        return float("inf") if d is None else d

    return offset, min((own, feed), key=behind) if feed is not None else own, False


def pin(cfg: Any, state: Any, stream: Any, tenant: str | None, target: Position | None, wait: float,
        clock: Callable[[], float], applied: Callable[[], int], r: Any) -> None:
    """Waits (at most ``wait`` s by ``clock``) as the module docstring says and records on
    ``r`` (a :class:`~replicant.validate.run.StreamResult`): ``log_offset``, ``source_position``
    (what the log covers), ``source_target``, ``source_reached``, ``source_lag``,
    ``applied_offset`` and, when the wait ran out, ``note``."""
    deadline = clock() + wait
    r.source_target = target
    if target is None:
        r.log_offset, r.source_position = _log_end(cfg, stream)
    while True:
        if target is not None:
            r.log_offset, r.source_position, r.source_reached = _covered(cfg, state, stream, tenant, target)
            r.source_lag = distance(r.source_position, target)
        r.applied_offset = applied()
        log_ok = target is None or r.source_reached
        if log_ok and (r.log_offset is None or r.applied_offset >= r.log_offset):
            r.note = None
            return
        if clock() >= deadline:
            break
        time.sleep(_POLL)  # a pipeline in another process: nothing to await but its files and tables
    if target is not None and not r.source_reached:
        lag = f"{r.source_lag} {unit(target)}" if r.source_lag is not None else "unknown"
        running = writer_running(cfg)
        why = {False: "the pipeline is not running (no process holds its staging log)",
               True: f"the log did not reach the source's position within {wait:g} s (the pipeline is running, behind)",
               None: f"the log did not reach the source's position within {wait:g} s (is `replicant run --follow` running?)"}
        r.note = (f"{why[running]}: compared at log offset {r.log_offset}, source position {_js(r.source_position)}, "
                  f"the source at {_js(target)}, lag {lag}")
    else:
        r.note = (f"the destination had applied log offset {r.applied_offset} of {r.log_offset} after {wait:g} s: "
                  f"compared {r.lag} offset(s) behind")


def writer_running(cfg: Any) -> bool | None:
    """Whether a process holds the pipeline's local staging log for writing (a ``run``): its
    ``LOCK`` file's inode among the kernel's held ``flock`` locks (``/proc/locks``; no lock is
    taken, so a ``run`` starting meanwhile is not disturbed). None when it cannot be told (a
    NATS log, no ``/proc``)."""
    from pathlib import Path

    from replicant import runtime

    where = runtime.log_location(cfg)
    if "://" in where:
        return None
    lock = Path(where) / "LOCK"
    try:
        inode = lock.stat().st_ino
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        held = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in held.splitlines():  # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
        for field in line.split():
            if field.count(":") == 2 and field.rsplit(":", 1)[-1].isdigit() and int(field.rsplit(":", 1)[-1]) == inode:
                return True
    return False


def _js(position: Position | None) -> str:
    return json.dumps(position, sort_keys=True, default=str)


def _log_end(cfg: Any, stream: Any) -> tuple[int | None, Position | None]:
    from replicant import runtime

    try:
        lg = runtime.open_pipeline_log(cfg, read_only=True)
    except (ReplicantError, OSError):
        return None, None
    try:
        return lg.end_offset(stream.log_name) - 1, lg.last_position(stream.log_name)
    finally:
        lg.close()

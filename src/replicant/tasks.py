"""Streams as tasks: each stream's read, and each source's change feed, is a unit of work.

:class:`StreamTasks` runs the non-``log`` streams on ``parallelism`` worker threads. Each
worker owns one source instance (its own connection) and reads one stream at a time until it
is caught up; with ``follow``, a caught-up ``cursor``/``snapshot_diff``/``trigger`` stream is
due again ``poll_interval`` later, and ``full`` streams are read once. Inside a task a reader
thread fetches the next batch while the worker appends the previous one (a queue of one), so
memory is bounded by batch size × parallelism, not by table size; the engine makes each
worker's source with ``readers`` (how many read at once), and a source whose batches are
cut by bytes (PostgreSQL's COPY) divides them by it.

:func:`run_capture` runs the ``mode: log`` streams' shared change feed on its own source.

A stream that fails is reported (a :class:`~replicant.results.RunError`) and not read again in
this run; the others go on. In ``follow``, a lost connection is retried with back-off instead.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from replicant.errors import ConnectionError, DiskFullError, FatalError, RetriableError, redact, retry_delay
from replicant.ingest import Ingest
from replicant.log.base import MARKER_TRUNCATE
from replicant.model import ReadBatch, Stream
from replicant.results import Observer, RunError

__all__ = ["StreamTasks", "read_stream", "run_capture"]

log = logging.getLogger(__name__)

_QUEUE_DEPTH = 1
_DONE = object()

ErrorSink = Callable[[RunError], None]


def refilled(ingest: Ingest, source: Any, stream: Stream) -> dict[str, str]:
    """The columns of ``stream`` added since it was last read that fill the rows which already
    existed (:meth:`~replicant.sources.base.Source.filled_columns`), each with why; logged at
    WARNING, since the caller reads the stream again in full."""
    added = ingest.added_columns(stream)
    filled = source.filled_columns(stream, added) if added else {}
    if filled:
        log.warning("stream %s: column(s) %s added since it was last read give(s) the existing rows a value (%s); "
                    "the stream is snapshotted again so that every destination gets it", stream.name,
                    ", ".join(map(repr, filled)), "; ".join(f"{c}: {why}" for c, why in filled.items()))
    return filled


def read_stream(ingest: Ingest, source: Any, stream: Stream, stop: threading.Event, observer: Observer) -> int:
    """Reads ``stream`` from where its log ends until caught up (or ``stop``); returns the rows
    appended. Errors propagate (after the reader thread has stopped)."""
    resume = ingest.resume(stream)
    if resume is not None and stream.mode in ("cursor", "trigger") and refilled(ingest, source, stream):
        # rows whose cursor (or shadow table) did not move would never be read again: start
        # over, after a truncate marker (whose position a crash resumes from), so every
        # destination holds the table as it is now
        from replicant.sources.strategies import strategy

        resume = strategy(stream.mode).snapshot_again(resume)
        ingest.append(stream, None, resume or {}, marker={"kind": MARKER_TRUNCATE})
    # a full read, or any mode's first read (a snapshot), has a row estimate for progress bars
    observer.stream_started(stream.name, source.estimate_rows(stream) if stream.mode == "full" or resume is None else None)
    q: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_DEPTH)
    stop_reader = threading.Event()

    def produce() -> None:
        try:
            for rb in source.read(stream, resume):
                while not stop_reader.is_set():
                    try:
                        q.put(rb, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop_reader.is_set() or stop.is_set():
                    break
            q.put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the appender, which raises it
            q.put(e)

    reader = threading.Thread(target=produce, name=f"reader-{stream.name}", daemon=True)
    reader.start()
    rows = 0
    durable: Any = None  # the position of the last batch made durable, acknowledged at the end
    try:
        while True:
            item = q.get()
            if item is _DONE:
                # the read is over, its cursor closed: the source's connection is free for the
                # acknowledgement (a trigger purge), which must not run beside an open read
                if durable is not None:
                    source.acknowledge(stream, durable)
                return rows
            if isinstance(item, BaseException):
                raise item
            rb: ReadBatch = item
            n = ingest.add_read(source, stream, rb, acknowledge=False)
            durable = rb.position
            rows += n
            observer.rows_read(stream.name, n)
    finally:
        stop_reader.set()
        reader.join(timeout=5)


class StreamTasks:
    """Reads streams on ``parallelism`` workers, once or (``follow``) repeatedly.

    Args:
        ingest: the append path.
        source_factory: makes a source instance; each worker makes its own, lazily, and
            closes it at the end.
        streams: the non-``log`` streams.
        parallelism: how many streams are read at once (at least 1).
        follow: poll ``cursor``/``snapshot_diff``/``trigger`` streams every ``poll_interval``
            until ``stop``.
        on_done: called with a stream's name when it will not be read again in this run.
        on_error: receives each failure.
    """

    def __init__(
        self,
        ingest: Ingest,
        source_factory: Callable[[], Any],
        streams: list[Stream],
        *,
        parallelism: int,
        follow: bool,
        poll_interval: float,
        stop: threading.Event,
        observer: Observer,
        on_done: Callable[[str], None],
        on_error: ErrorSink,
    ) -> None:
        self.ingest = ingest
        self.source_factory = source_factory
        self.parallelism = max(1, parallelism)
        self.follow = follow
        self.poll_interval = poll_interval
        self.stop = stop
        self.observer = observer
        self.on_done = on_done
        self.on_error = on_error
        self.rows: dict[str, int] = {s.name: 0 for s in streams}
        self._due: list[tuple[float, int, Stream]] = []
        self._seq = itertools.count()
        self._running = 0
        self._woken: set[str] = set()  # woken while being read: read again at once
        self._cond = threading.Condition()
        now = time.monotonic()
        for s in streams:
            heapq.heappush(self._due, (now, next(self._seq), s))
            observer.stream_state(s.name, "queued")

    def run(self) -> None:
        """Runs until every stream is done (or ``stop``); returns when all workers ended."""
        workers = [
            threading.Thread(target=self._work, name=f"stream-worker-{i}", daemon=True)
            for i in range(min(self.parallelism, len(self._due)) or 0)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        with self._cond:
            for _, _, s in self._due:  # never reached (stopped): done all the same
                self.on_done(s.name)
            self._due.clear()
            self._cond.notify_all()

    def _next(self) -> Stream | None:
        """The next due stream, waiting for it; None when there is nothing left to do or
        ``stop`` is set (checked at least every half second)."""
        with self._cond:
            while True:
                if self.stop.is_set():
                    return None
                if not self._due:
                    if self._running == 0:
                        self._cond.notify_all()
                        return None
                    self._cond.wait(0.5)
                    continue
                due, _, s = self._due[0]
                wait = due - time.monotonic()
                if wait <= 0:
                    heapq.heappop(self._due)
                    self._running += 1
                    return s
                self._cond.wait(min(wait, 0.5))

    def wake(self, names: list[str]) -> None:
        """Makes ``names`` due now (a source's :meth:`~replicant.sources.base.Source.watch` saw
        something new for them); one being read is read again as soon as it is done."""
        with self._cond:
            wanted = set(names)
            queued = [e for e in self._due if e[2].name in wanted]
            if queued:
                self._due = [e for e in self._due if e[2].name not in wanted]
                now = time.monotonic()
                for _, _, s in queued:
                    self._due.append((now, next(self._seq), s))
                heapq.heapify(self._due)
            self._woken.update(wanted - {e[2].name for e in queued})
            self._cond.notify_all()

    def _finish(self, s: Stream, again_in: float | None) -> None:
        with self._cond:
            self._running -= 1
            if again_in is not None and s.name in self._woken:
                again_in = 0.0
            self._woken.discard(s.name)
            if again_in is not None and not self.stop.is_set():
                heapq.heappush(self._due, (time.monotonic() + again_in, next(self._seq), s))
            else:
                self.on_done(s.name)
            self._cond.notify_all()

    def _work(self) -> None:
        source = None
        failures: dict[str, int] = {}
        try:
            while (s := self._next()) is not None:
                again: float | None = None
                error: str | None = None
                self.observer.stream_state(s.name, "reading")
                try:
                    if source is None:
                        source = self.source_factory()
                    self.rows[s.name] += read_stream(self.ingest, source, s, self.stop, self.observer)
                    failures.pop(s.name, None)
                    if self.follow and s.mode != "full":
                        again = self.poll_interval
                    self.observer.stream_state(s.name, "stopped" if self.stop.is_set() else "caught_up")
                except (RetriableError, ConnectionError) as e:
                    if self.follow and not self.stop.is_set():
                        failures[s.name] = failures.get(s.name, 0) + 1
                        again = retry_delay(failures[s.name])
                        if isinstance(e, DiskFullError):  # like a destination outage: wait for space
                            log.warning("%s; waiting and retrying in %.1f s", e, again)
                        else:
                            log.warning("stream %s failed (%s); retrying in %.1f s", s.name, e, again)
                        _close_quietly(source)
                        source = None
                    else:
                        error = str(e)
                except FatalError as e:
                    error = str(e)
                except Exception as e:  # one stream's failure must not stop the others
                    log.debug("stream %s failed", s.name, exc_info=True)
                    error = f"{type(e).__name__}: {redact(str(e))}"
                    _close_quietly(source)  # its connection may be broken: the next stream gets a fresh one
                    source = None
                if error is not None:
                    self.observer.stream_state(s.name, "failed")
                    self.on_error(RunError("read", error, stream=s.name, tenant=self.ingest.tenant))
                self.observer.stream_finished(s.name, error)
                self._finish(s, again)
        finally:
            if source is not None:
                _close_quietly(source)


def run_capture(
    ingest: Ingest,
    source: Any,
    streams: list[Stream],
    *,
    follow: bool,
    stop: threading.Event,
    observer: Observer,
    on_error: ErrorSink,
) -> dict[str, int]:
    """Runs the ``log`` streams' change feed: each change set is appended, checkpointed, then
    acknowledged (:meth:`Ingest.add_changes`). In ``follow`` a lost connection restarts the
    feed from what is durable, with back-off; a fatal error ends it (and, in ``follow``, the
    run: nothing more would come). Returns rows per stream."""
    by_name = {s.name: s for s in streams}
    rows = dict.fromkeys(by_name, 0)
    for s in streams:
        observer.stream_started(s.name, None)
        observer.stream_state(s.name, "reading")
    error: str | None = None
    failures = 0
    try:
        while True:
            try:
                positions = ingest.feed_positions(streams)
                for s in streams:  # a column added while not capturing (or before a crash)
                    pos = positions.get(s.name)
                    if pos is None or ("snapshot" in pos and (pos["snapshot"] or {}).get("after") is None):
                        continue  # snapshotted from scratch anyway
                    if refilled(ingest, source, s):  # a snapshot half done too: its rows lack the column
                        positions[s.name] = {**pos, "snapshot": {"after": None}}
                feed = source.capture(streams, positions, resume=ingest.capture_resume(), follow=follow, stop=stop)
                for cs in feed:
                    for name, n in ingest.add_changes(source, cs, by_name).items():
                        rows[name] += n
                        observer.rows_read(name, n)
                    failures = 0
                return rows
            except (RetriableError, ConnectionError) as e:
                if not follow or stop.is_set():
                    raise
                failures += 1  # a lost connection: start the feed again from what is durable
                delay = retry_delay(failures)
                if isinstance(e, DiskFullError):
                    log.warning("%s; waiting and retrying in %.1f s", e, delay)
                else:
                    log.warning("capture failed (%s); retrying in %.1f s", e, delay)
                _close_quietly(source)
                if stop.wait(delay):
                    return rows
    except Exception as e:  # reported; the deliveries still drain what is logged
        error = f"capture of {', '.join(by_name)}: {e}"
        log.debug("capture failed", exc_info=True)
        on_error(RunError("capture", error, tenant=ingest.tenant))
        if follow:
            stop.set()  # nothing more will come: end the run with the error
        return rows
    finally:
        for s in streams:
            observer.stream_state(s.name, "failed" if error else ("stopped" if stop.is_set() else "caught_up"))
            observer.stream_finished(s.name, error)


def _close_quietly(obj: Any) -> None:
    if obj is None:
        return
    try:
        obj.close()
    except Exception:  # closing after a failure must not hide the failure
        log.debug("close failed", exc_info=True)

"""Runs one pipeline: it only orchestrates the parts that do the work.

::

    plan (plan.py) ─▶ stream tasks (tasks.py), ``parallelism`` at once ─┐
                      change feed of ``log`` streams (tasks.py) ─────────┤
                                                                         ▼
                                     the one ingest path (ingest.py): tag → log → checkpoint → ack
                                                                         │
                                     delivery threads per destination (delivery.py) ◀──┘
                                     tail the log from the offset the destination applied

Memory is bounded by batch size × parallelism: each stream task holds at most one batch in
flight beside the one being appended, and deliveries read the log back one flush at a time.

``run(follow=True)`` keeps going until :attr:`Engine.stop_event` is set: ``log`` streams
stream continuously, ``cursor``/``snapshot_diff``/``trigger`` streams are polled every
``source.poll_interval``, ``full`` streams are read once. The exactly-once rules are written
where they are implemented: :mod:`replicant.ingest` (source → log) and
:mod:`replicant.delivery` (log → destination).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any, cast

from replicant import memory
from replicant.config import DestinationConfig, PipelineConfig
from replicant.delivery import Delivery
from replicant.errors import ConfigError
from replicant.ingest import CAPTURE_CHECKPOINT, Ingest
from replicant.log.base import Log, Retention
from replicant.model import ConnectorContext, DeadLetter, Stream
from replicant.plan import chosen, plan_streams
from replicant.replay import ReplayStart, replay_into
from replicant.results import Observer, RunError, RunResult
from replicant.status import PipelineStatus, collect
from replicant.tasks import StreamTasks, run_capture
from replicant.transforms.destination import TransformedDestination
from replicant.transforms.placement import at_destination, before_log

__all__ = ["CAPTURE_CHECKPOINT", "Engine", "Observer", "RunError", "RunResult", "default_parallelism"]

log = logging.getLogger(__name__)


def default_parallelism() -> int:
    """Streams read at once when the pipeline file does not say: the cores, at least 2."""
    return max(2, os.cpu_count() or 1)


class Engine:
    """Runs a pipeline once to catch-up (``run``), or until stopped (``follow``).

    Args:
        config: the validated pipeline.
        observer: run events (progress bars, metrics).
        source_factory, destinations_factory, state, log: injected parts (tests, the Python
            API); by default they are built from ``config`` (see :mod:`replicant.runtime`).
            ``source_factory`` is called once per concurrent stream task and once for the
            change feed: each gets its own connection (the default one tells each source
            how many read at once: :attr:`ConnectorContext.readers`).
            ``destinations_factory(context_for)`` builds the destinations, each with
            ``context_for(its config)``.
        tenant: run the feed of this tenant: its source, its log streams, checkpoints and
            destination offsets (identity is pipeline, tenant, stream).
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        observer: Observer | None = None,
        source_factory: Callable[[], Any] | None = None,
        destinations_factory: Callable[[Callable[[DestinationConfig], ConnectorContext]], list[Any]] | None = None,
        state: Any = None,
        log: Log | None = None,
        tenant: str | None = None,
    ) -> None:
        from replicant import runtime

        self._other_streams: frozenset[str] = frozenset()
        if tenant is not None and config.tenants:
            from replicant.tenants.config import every_stream, for_tenant

            self._other_streams = every_stream(config)  # other tenants' stream names: the file may scope them
            config = for_tenant(config, tenant)  # its source settings; ConfigError for an unknown id
        self.config = config
        self.tenant = tenant
        self.observer = observer or Observer()
        self._source_factory: Callable[[int], Any] = (
            (lambda readers: source_factory()) if source_factory is not None
            else (lambda readers: runtime.build_source(config, runtime.source_context(config, tenant, readers=readers))))
        self._destinations_factory = destinations_factory or (lambda context_for: runtime.build_destinations(config, context_for))
        self._state = state
        self._log = log
        self.stop_event = threading.Event()
        self._errors_lock = threading.Lock()

    # ------------------------------------------------------------------ wiring

    def _open_parts(self) -> tuple[Any, Log]:
        from replicant import runtime

        state = self._state if self._state is not None else runtime.open_state(self.config)
        lg = self._log if self._log is not None else runtime.open_pipeline_log(self.config)
        return state, lg

    def _close_parts(self, state: Any, lg: Log) -> None:
        if self._log is None:
            lg.close()
        if self._state is None:
            state.close()

    def new_source(self, readers: int = 1) -> Any:
        """A new source instance for this pipeline (its own connection, opened lazily), one of
        ``readers`` reading at once; the caller closes it."""
        return self._source_factory(readers)

    def streams(self, source: Any) -> list[Stream]:
        """Discovers the source and applies the pipeline's stream settings (:mod:`replicant.plan`);
        a source may restate them first (a derived pipeline: a stateful transform's input
        listed under ``source.streams`` stands for its output streams)."""
        planning = getattr(source, "planning_config", None)
        config = planning(self.config) if planning is not None else self.config
        return plan_streams(config, source.discover(), source.capabilities.modes, tenant=self.tenant,
                            other_streams=self._other_streams)

    @property
    def parallelism(self) -> int:
        return self.config.parallelism or default_parallelism()

    def _reporter(self, result: RunResult) -> Callable[[RunError], None]:
        def report(error: RunError) -> None:
            if error.tenant is None and self.tenant is not None:
                error = dataclasses.replace(error, tenant=self.tenant)
            with self._errors_lock:
                result.errors.append(error)
            self.observer.error(error)

        return report

    def _destination_context(self, state: Any, dest_name: str, result: RunResult) -> ConnectorContext:
        """What a destination is built with: the pipeline, and a dead-letter sink that stores
        its rejected records and counts them in ``result``."""
        return ConnectorContext(self.config.pipeline, dead_letter=self._dead_letter_sink(state, dest_name, result))

    def _dead_letter_sink(self, state: Any, dest_name: str, result: RunResult) -> Callable[[Stream, list[DeadLetter]], None]:
        lock = threading.Lock()

        def sink(stream: Stream, records: list[DeadLetter]) -> None:
            records = [r if r.destination is not None else dataclasses.replace(r, destination=dest_name) for r in records]
            # once: a re-delivery (after a crash, a replay) rejects the same records again
            state.add_dead_letters(self.config.pipeline, stream.name, records, tenant=stream.tenant, once=True)
            with lock:
                per = result.dead_letters.setdefault(dest_name, {})
                per[stream.name] = per.get(stream.name, 0) + len(records)

        return sink

    # ------------------------------------------------------------------ run

    def run(self, *, follow: bool = False) -> RunResult:
        """Syncs every stream until caught up, then returns; with ``follow``, keeps capturing
        until :attr:`stop_event` is set. It never raises for a stream's or destination's
        failure (those are in ``RunResult.errors``); config and connection errors at start-up
        raise."""
        if self.config.tenants and self.tenant is None:
            raise ConfigError("a pipeline with `tenants:` runs one feed per tenant: Engine(config, tenant=ID), or "
                              "replicant.tenants.TenantRunner for all of them")
        started = time.monotonic()
        result = RunResult(self.config.pipeline)
        report = self._reporter(result)
        planner = self.new_source()  # discovery only: the stream tasks open their own
        streams: list[Stream] | None = None
        discovery_error: BaseException | None = None
        try:
            log.debug("discovering the streams of %s", self.config.pipeline)
            streams = self.streams(planner)
            log.debug("planned %d streams: %s", len(streams), ", ".join(f"{s.name} ({s.mode})" for s in streams))
        except ConfigError:  # an invalid pipeline stops before the state store or the log is created
            raise
        except BaseException as e:  # noqa: BLE001 - raised below, once the run is recorded
            discovery_error = e
        finally:
            _close_quietly(planner)
        state, lg = self._open_parts()
        command = "follow" if follow else "run"
        run_id = state.start_run(self.config.pipeline, command=command, tenant=self.tenant)
        result.run_id = run_id
        self.observer.run_started(self.config.pipeline, run_id, command)
        status = "failed"
        destinations: list[Any] = []
        try:
            if discovery_error is not None:
                raise discovery_error
            assert streams is not None
            destinations = [self._transformed(d) for d in
                            self._destinations_factory(lambda dcfg: self._destination_context(state, dcfg.name, result))]
            if any(d.capabilities.in_process_engine for d in destinations):
                memory.return_freed_pages_at_once()  # before the stream tasks' threads (replicant/memory.py)
            self._run(streams, destinations, state, lg, result, report, follow)
            self._apply_retention(lg, streams)
            status = "succeeded" if result.ok else "failed"
            if self.stop_event.is_set() and result.ok and not follow:
                status = "interrupted"
            return result
        except BaseException as e:
            report(RunError("run", str(e)))
            raise
        finally:
            result.seconds = time.monotonic() - started
            state.finish_run(run_id, status, error="\n".join(map(str, result.errors)) or None,
                             rows=sum(result.rows_read.values()))
            for d in destinations:
                _close_quietly(d)
            self._close_parts(state, lg)
            self.observer.run_finished(result, status)

    def _run(
        self, streams: list[Stream], destinations: list[Any], state: Any, lg: Log, result: RunResult,
        report: Callable[[RunError], None], follow: bool,
    ) -> None:
        pre = before_log(self.config, self.tenant)
        ingest = Ingest(self.config.pipeline, lg, state, tenant=self.tenant, transforms=pre)
        logged_streams = [pre.output_stream(s) for s in streams]  # what the log holds: the transforms' output
        done = {s.name: threading.Event() for s in streams}
        deliveries: list[Delivery] = []
        for d in list(destinations):
            parts = self._delivery_parts(d, chosen(d.config, logged_streams), state, result)
            destinations.extend(writer for writer, _ in parts[1:])  # the run closes them with the others
            deliveries.extend(
                Delivery(writer, part, lg, state, self.config.pipeline, done=done, stop=self.stop_event,
                         follow=follow, on_error=report, on_rows=self.observer.rows_written, share=len(parts))
                for writer, part in parts
            )
        threads = [threading.Thread(target=x.run, name=f"delivery-{x.dest.name}-{i}", daemon=True)
                   for i, x in enumerate(deliveries)]
        for t in threads:
            t.start()
        logged = [s for s in streams if s.mode == "log"]
        polled = [s for s in streams if s.mode != "log"]
        capture: threading.Thread | None = None
        capture_source: Any = None
        watcher: threading.Thread | None = None
        watch_source: Any = None
        tasks = StreamTasks(
            # each task's source: one of that many reading at once (it divides its read buffers)
            ingest, partial(self.new_source, max(1, min(self.parallelism, len(polled)))), polled,
            parallelism=self.parallelism, follow=follow,
            # a float once validated: SourceConfig._seconds parses '5s' into seconds
            poll_interval=cast(float, self.config.source.poll_interval), stop=self.stop_event, observer=self.observer,
            on_done=lambda name: done[name].set(), on_error=report,
        )
        captured: dict[str, int] = {}
        try:
            if logged:
                capture_source = self.new_source()

                def feed() -> None:
                    try:
                        captured.update(run_capture(ingest, capture_source, logged, follow=follow, stop=self.stop_event,
                                                    observer=self.observer, on_error=report))
                    finally:
                        for s in logged:
                            done[s.name].set()

                capture = threading.Thread(target=feed, name="capture", daemon=True)
                capture.start()
            if follow and polled:  # a source that can watch (a local folder) wakes its streams at once
                watch_source = self.new_source()
                watcher = threading.Thread(target=watch_source.watch, args=(polled, self.stop_event, tasks.wake),
                                           name="watch", daemon=True)
                watcher.start()
            tasks.run()
        finally:
            for s in polled:
                done[s.name].set()
            if capture is not None:
                while capture.is_alive():
                    capture.join(0.2)
            for t in threads:
                t.join()
            if capture_source is not None:
                _close_quietly(capture_source)
            if watcher is not None:
                watcher.join(5)
                _close_quietly(watch_source)
            result.rows_read.update(tasks.rows)
            result.rows_read.update(captured)
            for x in deliveries:
                for name, n in x.written.items():
                    result.delivered(x.dest.name, name, n)

    def _transformed(self, dest: Any) -> Any:
        """``dest`` behind its ``transforms:`` (:class:`~replicant.transforms.destination.TransformedDestination`)."""
        names = [d.name for d in self.config.destinations]
        if dest.name not in names:
            return dest
        index = names.index(dest.name)
        chain = at_destination(self.config.destinations[index], index)
        return TransformedDestination(dest, chain) if chain else dest

    def _delivery_parts(self, dest: Any, streams: list[Stream], state: Any, result: RunResult) -> list[tuple[Any, list[Stream]]]:
        """``dest`` and its streams, dealt round-robin over up to ``parallelism`` writers where
        the destination takes concurrent writers (a server database loads several tables at
        once; bench/parallel): ``dest`` first, then new objects of its class, each with a
        connection of its own. Not for a tenant's feed: tenants already run at once, each with
        one connection per destination. Each stream has exactly one writer, so its order and
        its offset row's fence are as with one."""
        k = min(self.parallelism, len(streams))
        if k <= 1 or self.tenant is not None or not dest.capabilities.concurrent_writers:
            return [(dest, streams)]  # a tenant's feed keeps one connection per destination (docs/tenants.md)
        base = dest.dest if isinstance(dest, TransformedDestination) else dest
        parts: list[tuple[Any, list[Stream]]] = [(dest, streams[0::k])]
        for i in range(1, k):
            writer = self._transformed(type(base)(base.config, self._destination_context(state, base.name, result)))
            parts.append((writer, streams[i::k]))
        return parts

    def _apply_retention(self, lg: Log, streams: list[Stream]) -> None:
        r = self.config.retention
        if r is None or (r.max_age is None and r.max_bytes is None):
            return
        # numbers once validated: RetentionConfig parses '7d' into seconds and '10GB' into bytes
        retention = Retention(max_age_seconds=cast(float | None, r.max_age), max_bytes=cast(int | None, r.max_bytes))
        for s in streams:
            lg.apply_retention(s.name, retention)

    # ------------------------------------------------------------------ replay, status

    def replay(self, destination: str, *, start: ReplayStart, offset: int | None = None, since: datetime | None = None) -> RunResult:
        """Re-delivers every stream of the log to ``destination`` from the start, an offset or
        a time, without touching the source (:mod:`replicant.replay`)."""
        from replicant import runtime
        from replicant.registry import destination_class

        started = time.monotonic()
        result = RunResult(self.config.pipeline)
        self.config.destination(destination)  # a ConfigError naming the known ones
        index = [d.name for d in self.config.destinations].index(destination)
        dcfg = runtime.resolve_destination_config(self.config, self.config.destinations[index], index)
        state, lg = self._open_parts()  # after the config checks: an invalid file creates nothing
        dest = self._transformed(destination_class(dcfg.type, index)(dcfg, self._destination_context(state, dcfg.name, result)))
        command = f"replay {destination}"
        run_id = state.start_run(self.config.pipeline, command=command, tenant=self.tenant)
        result.run_id = run_id
        self.observer.run_started(self.config.pipeline, run_id, command)
        status = "failed"
        try:
            dest.open()
            replay_into(self.config, dest, lg, state, result, self.observer, start=start, offset=offset, since=since,
                        tenant=self.tenant)
            status = "succeeded"
            return result
        except BaseException as e:
            result.errors.append(RunError("run", str(e), destination=destination))
            raise
        finally:
            result.seconds = time.monotonic() - started
            state.finish_run(run_id, status, error="\n".join(map(str, result.errors)) or None,
                             rows=sum(result.rows_written.get(destination, {}).values()))
            _close_quietly(dest)
            self._close_parts(state, lg)
            self.observer.run_finished(result, status)

    def status(self, *, ask_source: bool = False) -> PipelineStatus:
        """The pipeline's status (:mod:`replicant.status`); with ``ask_source``, also the
        source's change-feed facts (a slot's lag), or why it could not be reached.

        Read-only: a pipeline that never ran (no state file) gets an empty status (no last
        run) and no state store, log or folder is created."""
        from replicant import runtime

        facts: dict[str, Any] = {}
        if self._state is None and not runtime.state_exists(self.config):
            return PipelineStatus(self.config.pipeline, None)  # never ran: nothing to read, nothing created
        state = self._state if self._state is not None else runtime.open_state(self.config)
        lg = self._log if self._log is not None else runtime.open_pipeline_log(self.config, read_only=True)
        try:
            status = collect(self.config, state=state, log=lg)
        finally:
            self._close_parts(state, lg)
        if ask_source and status.capture is not None:
            facts = self.source_facts()
        status.source = facts
        for tenant, capture in status.tenant_captures.items() if ask_source and self.tenant is None else ():
            if tenant in {t.id for t in self.config.tenants or ()}:  # a tenant taken out of the file has no source
                capture["source"] = Engine(self.config, tenant=tenant).source_facts()
        return status

    def source_facts(self) -> dict[str, Any]:
        """The source's change-feed facts; ``{"source": "not reachable (…)"}`` when it cannot
        be reached (status still shows what the log and state know)."""
        from replicant.errors import redact

        try:
            source = self.new_source()
            try:
                return dict(source.cdc_status(self.streams(source)))
            finally:
                _close_quietly(source)
        except Exception as e:  # noqa: BLE001 - status still shows what the log and state know
            return {"source": f"not reachable ({redact(str(e))})"}


def _close_quietly(obj: Any) -> None:
    try:
        obj.close()
    except Exception:  # closing after a failure must not hide the failure
        log.debug("close failed", exc_info=True)

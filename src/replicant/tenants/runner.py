"""Runs the feeds of a pipeline's tenants at once, in one process.

::

    TenantRunner ─┬─ thread "tenant-acme"   ─▶ Engine(for_tenant(cfg, "acme"))   ─┐ its own source, slot or
                  ├─ thread "tenant-globex" ─▶ Engine(for_tenant(cfg, "globex")) ─┤ binlog reader, log streams
                  └─ …                                                             │ (acme/orders), checkpoints
                                                                                   ▼ and destination offsets
                         one state store and one staging log, shared (the log has one writer process)

One tenant's failure (a wrong password, an outage, a table its transforms do not fit) is
reported with its id — :class:`~replicant.results.RunError` ``tenant`` — and retried with
back-off: in ``--follow`` until it works or the run stops, in a run to catch-up ``retries``
times; the other tenants are never held up. With :meth:`TenantRunner.reload` a following
run takes a changed pipeline file: an added tenant starts (its snapshot only: the others have
their checkpoints), a removed one stops, and what is left of it is said (its slot, its rows:
``replicant tenant drop``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from replicant.config import PipelineConfig
from replicant.errors import ConfigError, redact, retry_delay
from replicant.results import Observer, RunError, RunResult, StreamState

if TYPE_CHECKING:
    from replicant.engine import Engine

__all__ = ["TenantObserver", "TenantRunner"]

log = logging.getLogger(__name__)


class TenantObserver(Observer):
    """Passes a tenant's stream events on with the stream named ``tenant/stream`` (its log
    name), so progress, metrics and messages tell tenants apart. Run start and end are the
    runner's own."""

    def __init__(self, inner: Observer, tenant: str) -> None:
        self.inner = inner
        self.tenant = tenant

    def _name(self, stream: str) -> str:
        return f"{self.tenant}/{stream}"

    def stream_state(self, stream: str, state: StreamState) -> None:
        self.inner.stream_state(self._name(stream), state)

    def stream_started(self, stream: str, estimate: int | None) -> None:
        self.inner.stream_started(self._name(stream), estimate)

    def rows_read(self, stream: str, rows: int) -> None:
        self.inner.rows_read(self._name(stream), rows)

    def stream_finished(self, stream: str, error: str | None) -> None:
        self.inner.stream_finished(self._name(stream), error)

    def rows_written(self, destination: str, stream: str, rows: int) -> None:
        self.inner.rows_written(destination, self._name(stream), rows)

    def error(self, error: RunError) -> None:
        self.inner.error(error)


class _Feed:
    """One tenant's thread and what stops it."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.failures = 0


class TenantRunner:
    """Runs every tenant of ``config`` (or only ``tenants``) at once.

    Args:
        config: a pipeline with ``tenants:``.
        observer: run events; a tenant's streams are named ``tenant/stream``.
        tenants: only these tenant ids (``run --tenant``); each must be in the file.
        retries: in a run to catch-up, how many times a failed tenant is tried again.
        delay: seconds before the next attempt after n failures in a row (injected by tests).
        state, log: shared by every tenant's engine; by default opened from ``config``.
        engine_options: passed to each :class:`~replicant.engine.Engine` (tests inject factories).
        engine_type: the engine class of every feed (the service's narrows out paused streams).

    Raises:
        ConfigError: at construction, a tenant id not in the file.
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        observer: Observer | None = None,
        tenants: list[str] | None = None,
        retries: int = 2,
        delay: Callable[[int], float] = retry_delay,
        state: Any = None,
        log: Any = None,
        engine_options: Callable[[str], dict[str, Any]] | None = None,
        engine_type: type[Engine] | None = None,
    ) -> None:
        from replicant.tenants.config import tenant_ids, tenant_of

        if not config.tenants:
            raise ConfigError("the pipeline has no `tenants:`", [("tenants", "required to run tenants")])
        for t in tenants or ():
            tenant_of(config, t)  # a ConfigError naming the known ids
        self.config = config
        self.only = list(tenants) if tenants else None
        self.observer = observer or Observer()
        self.retries = retries
        self.delay = delay
        self.stop_event = threading.Event()
        self._state, self._log = state, log
        self._engine_options = engine_options or (lambda tenant: {})
        self._engine_type = engine_type
        self._feeds: dict[str, _Feed] = {}
        self._lock = threading.Lock()
        self._result = RunResult(config.pipeline)
        self._retired: list[threading.Thread] = []  # feeds of tenants taken out of the file
        self.ids = [t for t in tenant_ids(config) if self.only is None or t in self.only]

    # ------------------------------------------------------------------ run

    def run(self, *, follow: bool = False) -> RunResult:
        """Runs every tenant's feed until caught up (each in its own thread), or with
        ``follow`` until :attr:`stop_event` is set. Never raises for one tenant's failure:
        it is in ``RunResult.errors`` with the tenant's id. ``rows_read`` and ``rows_written``
        are keyed by ``tenant/stream``."""
        from replicant import runtime

        started = time.monotonic()
        state = self._state if self._state is not None else runtime.open_state(self.config)
        lg = self._log if self._log is not None else runtime.open_pipeline_log(self.config)
        self._shared = (state, lg, follow)
        self.observer.run_started(self.config.pipeline, 0, "follow" if follow else "run")
        status = "failed"
        try:
            with self._lock:
                for tenant in self.ids:
                    self._start(tenant)
            while True:
                with self._lock:
                    alive = [f for f in self._feeds.values() if f.thread is not None and f.thread.is_alive()]
                if not alive:
                    break
                if follow:
                    self._take_requests()
                if self.stop_event.wait(0.2):
                    with self._lock:
                        for f in self._feeds.values():
                            f.stop.set()
            for thread in [f.thread for f in list(self._feeds.values())] + self._retired:
                if thread is not None:
                    thread.join()
            result = self._result
            status = "succeeded" if result.ok else "failed"
            if self.stop_event.is_set() and result.ok and not follow:
                status = "interrupted"
            return result
        finally:
            self._result.seconds = time.monotonic() - started
            if self._log is None:
                lg.close()
            if self._state is None:
                state.close()
            self.observer.run_finished(self._result, status)

    def _take_requests(self) -> None:
        """Resyncs asked for by ``replicant resync`` while this run holds the log
        (:mod:`replicant.tenants.requests`): that tenant's feed stops, the marker is appended,
        the feed starts again (its stream is snapshotted anew); the other tenants go on."""
        from replicant.resync import start_over
        from replicant.tenants.requests import pending_resyncs

        _, lg, _ = self._shared
        for path, request in pending_resyncs(self.config):
            tenant, stream = str(request.get("tenant")), str(request.get("stream"))
            with self._lock:
                feed = self._feeds.get(tenant)
            if feed is not None:
                feed.stop.set()
                if feed.thread is not None:
                    feed.thread.join()
            try:
                lines = start_over(self.config, lg, stream, [tenant])
            except ConfigError as e:
                lines = [f"resync of {stream} of tenant {tenant} not done: {e}"]
            with self._lock:
                if feed is not None and self._feeds.get(tenant) is feed:
                    self._start(tenant)
            path.unlink(missing_ok=True)
            for line in lines:
                log.warning("%s", line.replace("on the next run", "now"))

    def _start(self, tenant: str) -> None:
        feed = self._feeds[tenant] = _Feed(tenant)
        feed.thread = threading.Thread(target=self._run_feed, args=(feed,), name=f"tenant-{tenant}", daemon=True)
        feed.thread.start()

    def _run_feed(self, feed: _Feed) -> None:
        """One tenant's engine, started again after a failure (see the module docstring)."""
        from replicant.engine import Engine

        engine_type = self._engine_type or Engine
        state, lg, follow = self._shared
        while not feed.stop.is_set():
            config = self.config  # the newest, after a reload
            failed: list[RunError] = []
            try:
                engine = engine_type(config, tenant=feed.tenant, observer=TenantObserver(self.observer, feed.tenant),
                                state=state, log=lg, **self._engine_options(feed.tenant))
                engine.stop_event = feed.stop
                result = engine.run(follow=follow)
                self._merge(feed.tenant, result)
                failed = list(result.errors)  # already reported to the observer by the engine
            except ConfigError as e:  # this tenant's source or transforms do not fit: no retry helps
                self._report(RunError("run", redact(str(e)), tenant=feed.tenant), final=True)
                return
            except Exception as e:  # noqa: BLE001 - one tenant's failure never stops the others
                failed = [RunError("run", redact(str(e)), tenant=feed.tenant)]
                self.observer.error(failed[0])
            if not failed:
                return
            feed.failures += 1
            if feed.stop.is_set() or (not follow and feed.failures > self.retries):
                for error in failed:
                    self._report(error, final=True, notify=False)
                return
            wait = self.delay(feed.failures)
            log.warning("tenant %s failed (%s); trying again in %.1f s, the other tenants go on",
                        feed.tenant, "; ".join(map(str, failed)), wait)
            if feed.stop.wait(wait):
                if follow:
                    for error in failed:
                        self._report(error, final=True, notify=False)
                return

    def _merge(self, tenant: str, result: RunResult) -> None:
        with self._lock:
            r = self._result
            for name, n in result.rows_read.items():
                key = f"{tenant}/{name}"
                r.rows_read[key] = r.rows_read.get(key, 0) + n
            for dest, per in result.rows_written.items():
                into = r.rows_written.setdefault(dest, {})
                for name, n in per.items():
                    into[f"{tenant}/{name}"] = into.get(f"{tenant}/{name}", 0) + n
            for dest, per in result.dead_letters.items():
                into = r.dead_letters.setdefault(dest, {})
                for name, n in per.items():
                    into[f"{tenant}/{name}"] = into.get(f"{tenant}/{name}", 0) + n
            r.warnings.extend(result.warnings)

    def _report(self, error: RunError, *, final: bool, notify: bool = True) -> None:
        with self._lock:
            if final:
                self._result.errors.append(error)
        if notify:
            self.observer.error(error)

    # ------------------------------------------------------------------ a changed file

    def reload(self, config: PipelineConfig) -> list[str]:
        """Takes a changed pipeline file while running: a tenant added starts (only it
        snapshots), one removed stops, one whose settings changed restarts with them.

        Returns:
            One message per change, saying what is left to clean up for a removed tenant.
        """
        from replicant.tenants.config import tenant_ids

        old = {t.id: t for t in self.config.tenants or ()}
        new = {t.id: t for t in config.tenants or ()}
        messages = []
        with self._lock:
            self.config = config
            wanted = [t for t in tenant_ids(config) if self.only is None or t in self.only]
            for tenant in list(self._feeds):
                if tenant not in new:
                    feed = self._feeds.pop(tenant)
                    feed.stop.set()
                    if feed.thread is not None:
                        self._retired.append(feed.thread)
                    messages.append(removed_message(config.pipeline, tenant))
                elif old.get(tenant) != new[tenant]:
                    self._feeds[tenant].stop.set()  # its thread ends; a new one runs the new settings
                    thread = self._feeds.pop(tenant).thread
                    if thread is not None:
                        thread.join()
                    self._start(tenant)
                    messages.append(f"tenant {tenant}: settings changed; its feed restarted")
            for tenant in wanted:
                if tenant not in self._feeds:
                    self._start(tenant)
                    messages.append(f"tenant {tenant}: added; its streams are snapshotted while the others go on")
            self.ids = wanted
        for m in messages:
            log.warning("%s", m)
        return messages


def removed_message(pipeline: str, tenant: str) -> str:
    """What is left of a tenant taken out of the pipeline file, and how to remove it."""
    return (f"tenant {tenant} is no longer in the pipeline file: its feed stopped. Its rows stay in the destinations, "
            f"its state and staging log stay, and a `log` stream's replication slot (replicant_{pipeline}_"
            f"{tenant.replace('-', '_')}) or binlog position stays at its source: `replicant tenant drop PIPELINE.yml "
            f"--tenant {tenant}` deletes its rows from merge destinations and its state, and says how to drop the slot")

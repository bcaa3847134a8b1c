"""A worker process: claims runs from the queue, runs them with the engine, keeps its lease.

Per claimed entry the worker:

1. loads the pipeline file (as the service runs it: :func:`~replicant.service.catalog.for_service`);
2. opens a :class:`~replicant.state.fenced.FencedStateStore` with the entry's epoch, so a
   takeover by another worker fences every later checkpoint, offset and run write of this one;
3. runs the same functions as the CLI (:class:`~replicant.engine.Engine` ``run``/``replay``,
   :func:`replicant.validate.validate_pipeline`) in a thread, while a heartbeat thread renews the lease
   every third of its time (and stops the run when the lease was lost or a cancel was asked);
4. records the result in the entry (rows per stream and destination, errors, seconds) and
   the run's log lines in ``LOGS/runs/ENTRY.log``; while it runs, each stream's snapshot progress
   (:class:`~replicant.service.progress.ProgressRecorder`, through the fenced store).

SIGTERM drains: the engine's stop event is set (current batches finish, checkpoints are kept),
an unfinished run goes back to the queue and its lease is released, then the process exits.
``kill -9`` leaves the lease to expire: another worker claims the entry (epoch + 1) and the
engine resumes from the checkpoints.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from replicant.engine import Engine
from replicant.errors import FencedError, ReplicantError
from replicant.replay import ReplayStart
from replicant.service.catalog import for_service
from replicant.service.logs import run_log
from replicant.service.progress import ProgressRecorder
from replicant.service.settings import ServiceSettings

__all__ = ["Worker", "run_entry"]

log = logging.getLogger(__name__)


class Worker:
    """Claims and runs queue entries until :attr:`stop` is set.

    Args:
        settings: state URL, lease, logs folder, ``max_running``.
        name: the worker's owner name in leases (default: host, pid and a random suffix).
        poll: seconds between claims while the queue is empty.
    """

    def __init__(self, settings: ServiceSettings, *, name: str | None = None, poll: float = 0.5) -> None:
        from replicant.state import StateStore

        self.settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.poll = poll
        self.stop = threading.Event()
        self.store = StateStore(settings.state_url)
        self._running: threading.Event | None = None  # the stop event of the run under way

    def drain(self) -> None:
        """SIGTERM: claim nothing more, and stop the run under way at once (at its next batch
        boundary; it goes back to the queue), not at the heartbeat's next look."""
        self.stop.set()
        running = self._running
        if running is not None:
            running.set()

    def run_forever(self) -> None:
        """The worker's loop; returns once :attr:`stop` is set and the current run drained."""
        self.store.open()
        host = socket.gethostname()
        lease = self.settings.seconds("lease")
        try:
            while not self.stop.is_set():
                self.store.worker_beat(self.name, host=host, pid=os.getpid(), entry=None)
                entry = self.store.claim(self.name, lease, max_running=self.settings.max_running)
                if entry is None:
                    self.stop.wait(self.poll)
                    continue
                log.info("claimed entry %d (%s %s, epoch %d)", entry["id"], entry["command"], entry["pipeline"], entry["epoch"])
                self.store.worker_beat(self.name, host=host, pid=os.getpid(), entry=entry["id"])
                self._running = threading.Event()
                try:
                    run_entry(self.store, entry, self.settings, self.name, self.stop, self._running)
                finally:
                    self._running = None
        finally:
            self.store.worker_gone(self.name)
            self.store.close()


def run_entry(store: Any, entry: dict[str, Any], settings: ServiceSettings, owner: str, drain: threading.Event,
              stop: threading.Event) -> str:
    """Runs one claimed entry to its end; returns the status recorded (or ``fenced``).

    Args:
        drain: the worker's: once set, the run stops (the heartbeat looks every 0.2 s: a drain
            that came before ``stop`` was known to :meth:`Worker.drain`).
        stop: the run's stop event, which :meth:`Worker.drain` sets at once.
    """
    from replicant.state.fenced import FencedStateStore

    lease = settings.seconds("lease")
    lost = threading.Event()
    cancelled = threading.Event()
    done = threading.Event()

    def heartbeat() -> None:
        renew_at = time.monotonic() + lease / 3
        while not done.wait(0.2):
            if drain.is_set():
                stop.set()
            if time.monotonic() < renew_at:
                continue
            renew_at = time.monotonic() + lease / 3
            try:
                renewed = store.renew_entry(entry["id"], owner, entry["epoch"], lease)
            except ReplicantError as e:  # the store is unreachable: keep trying until the lease is gone
                log.warning("entry %d: lease renewal failed: %s", entry["id"], e)
                continue
            if renewed is None:
                log.warning("entry %d: lease lost (taken over): stopping", entry["id"])
                lost.set()
                stop.set()
                return
            if renewed["cancel"]:
                cancelled.set()
                stop.set()
            try:  # the worker registry too: a worker busy with a long run is still live
                store.worker_beat(owner, host=socket.gethostname(), pid=os.getpid(), entry=entry["id"])
            except ReplicantError as e:
                log.warning("entry %d: worker heartbeat failed: %s", entry["id"], e)

    beat = threading.Thread(target=heartbeat, name=f"lease-{entry['id']}", daemon=True)
    beat.start()
    fenced = FencedStateStore(settings.state_url, entry_id=entry["id"], owner=owner, epoch=entry["epoch"])
    status, error, result = "failed", None, None
    with run_log(settings, entry):
        try:
            log.info("%s of %s started (entry %d, attempt %d, epoch %d, worker %s)", entry["command"], entry["pipeline"],
                     entry["id"], entry["attempts"], entry["epoch"], owner)
            fenced.open()
            result = _execute(entry, settings, fenced, stop, drain)
            status = "succeeded" if not result.get("errors") else "failed"
            if result.get("interrupted"):
                status = "cancelled" if cancelled.is_set() else "queued"
        except FencedError as e:
            lost.set()
            log.warning("entry %d: %s", entry["id"], e)
        except Exception as e:  # noqa: BLE001 - recorded in the entry: the worker goes on with the next
            error = str(e) if isinstance(e, ReplicantError) else f"{type(e).__name__}: {e}"
            log.error("entry %d failed: %s", entry["id"], error)
        finally:
            done.set()
            beat.join()
            fenced.close()
            rows = sum((result or {}).get("rows_read", {}).values())
            log.info("%s of %s ended: %s, %d rows read%s", entry["command"], entry["pipeline"],
                     "lease lost" if lost.is_set() else status, rows, f", {error}" if error else "")
    if lost.is_set():
        return "fenced"
    if status == "queued":
        log.info("entry %d: drained; back in the queue for another worker", entry["id"])
    errors = (result or {}).get("errors") or []
    store.finish_entry(entry["id"], owner, entry["epoch"], status, error=error or ("\n".join(errors) or None),
                       result=result, run_ids=[result["run_id"]] if result and result.get("run_id") else None)
    return status


def _execute(entry: dict[str, Any], settings: ServiceSettings, state: Any, stop: threading.Event,
             drain: threading.Event) -> dict[str, Any]:
    from replicant.config import load
    from replicant.service.secret_provider import install

    install(settings.state_url)  # ${secret:…} from the service's store
    config = for_service(load(entry["path"]), settings.state_url)
    params = entry["params"]
    command = entry["command"]
    paused = [c for c in state.paused_controls(entry["pipeline"]) if c["stream"] is not None]

    def skipped(tenant: str | None) -> set[str]:  # the streams paused for every tenant or for this one
        return {c["stream"] for c in paused if c["tenant"] in (None, tenant)}

    skip = skipped(entry["tenant"])
    # snapshot progress per stream for the API and the dashboard, through the fenced store
    progress = ProgressRecorder(state, entry["pipeline"], entry=entry["id"], tenant=entry["tenant"],
                                tenants=bool(config.tenants))
    engine: Any
    if config.tenants:  # every tenant's feed (or the entry's one), sharing the fenced state store
        from replicant.tenants.runner import TenantRunner

        engine = TenantRunner(config, tenants=[entry["tenant"]] if entry["tenant"] else None, state=state,
                              observer=progress, engine_options=lambda tenant: {"skip": skipped(tenant)},
                              engine_type=_NarrowedEngine)
        engine.stop_event = stop
    else:
        engine = _NarrowedEngine(config, state=state, tenant=entry["tenant"], skip=skip, observer=progress)
        engine.stop_event = stop
    if command in ("run", "follow"):
        result = engine.run(follow=command == "follow")
    elif command == "replay":
        from replicant.tenants.replay import replay_tenants

        since = datetime.fromisoformat(params["since"]) if params.get("since") else None
        start: ReplayStart = "since" if since else "offset" if params.get("offset") is not None else "start"
        if config.tenants:
            result = replay_tenants(config, entry["tenant"], params["destination"], start=start, offset=params.get("offset"),
                                    since=since)
        else:
            result = engine.replay(params["destination"], start=start, offset=params.get("offset"), since=since)
    elif command == "resync":
        from replicant.resync import resync

        for line in resync(config, params["stream"], tenant=entry["tenant"]):
            log.info("%s", line)
        result = engine.run()
    elif command == "retry":
        from replicant.dead_letters import retry_pipeline

        report, _letters = retry_pipeline(config, ids=params.get("ids"), stream=params.get("stream"),
                                          destination=params.get("destination"), tenant=entry["tenant"])
        return {"accepted": report.accepted, "rejected": {str(k): v for k, v in report.rejected.items()},
                "skipped": report.skipped, "errors": report.errors}
    elif command == "validate":
        return _validate(config, params, entry["tenant"])
    else:
        raise ReplicantError(f"unknown command {command!r}")
    return {
        "run_id": result.run_id,
        "rows_read": result.rows_read,
        "rows_written": result.rows_written,
        "dead_letters": result.dead_letters,
        "errors": [str(e) for e in result.errors],
        "warnings": result.warnings,
        "seconds": round(result.seconds, 3),
        "skipped_streams": sorted(skip),
        "interrupted": stop.is_set() and not result.errors,
    }


def _validate(config: Any, params: dict[str, Any], tenant: str | None) -> dict[str, Any]:
    """``replicant validate`` as a run: the same :func:`replicant.validate.validate_pipeline` the
    CLI calls; differences are the run's errors (one line per stream), the report its result."""
    from replicant.validate import validate_pipeline
    from replicant.validate.report import as_dict

    stream = params.get("stream")
    report = validate_pipeline(config, destination=params.get("destination"), streams=[stream] if stream else None,
                               tenant=tenant, repair=bool(params.get("repair")))
    errors = [f"{r.tenant + '/' if r.tenant else ''}{r.stream} at {r.destination}: {r.verdict}{': ' + r.error if r.error else ''}"
              for r in report.results if r.verdict not in ("equal", "repaired", "skipped")]
    return {"validate": as_dict(report), "exit_code": report.exit_code, "errors": errors}


class _NarrowedEngine(Engine):
    """The engine without the streams paused through the service."""

    def __init__(self, config: Any, *, skip: set[str], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._skip = skip

    def streams(self, source: Any) -> Any:
        return [s for s in super().streams(source) if s.name not in self._skip]

"""The ``replicant serve`` process: API, scheduler, folder watch and worker processes.

The main thread waits for signals and runs the service loop (rescan DIR, scheduler tick,
notifications, restart of a worker process that died); uvicorn serves the API in a thread;
runs execute in ``replicant worker`` processes started here (``workers:``), which claim them
from the state store like any worker on another machine. SIGTERM/SIGINT: the API stops, every
worker is sent SIGTERM and drains (its run goes back to the queue), then the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from replicant.errors import ReplicantError
from replicant.model import utcnow
from replicant.service.catalog import Catalog
from replicant.service.notify import Notifier
from replicant.service.scheduler import Scheduler
from replicant.service.settings import ServiceSettings

__all__ = ["Service", "serve", "file_clock"]

log = logging.getLogger(__name__)


def file_clock(path: str) -> Callable[[], datetime]:
    """Tests only: the time written (ISO 8601) in ``path``, or the real time while it is empty."""

    def now() -> datetime:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            text = ""
        return datetime.fromisoformat(text) if text else utcnow()

    return now


class Service:
    """What the API and the loop share: settings, the catalog, the store and the scheduler."""

    def __init__(self, folder: Path, settings: ServiceSettings) -> None:
        from replicant.state import StateStore

        self.folder = folder
        self.settings = settings
        self.now = file_clock(settings.clock_file) if settings.clock_file else utcnow
        self.store = StateStore(settings.state_url)
        self.catalog = Catalog(folder, settings.state_url)
        self.notifier = Notifier(settings.notify, self.now)
        self.scheduler = Scheduler(self.store, self.catalog, self.now, follow_backoff=settings.seconds("follow_backoff"),
                                   on_finished=self.notifier.finished)
        self._statuses: dict[str, tuple[float, tuple[int, int], dict[str, Any]]] = {}
        self._slots: dict[str, dict[str | None, int]] = {}
        self._lock = threading.Lock()
        self.no_auth = False
        from replicant.service.lag_history import LagHistory

        self.lag_history = LagHistory(self)

    def open(self) -> Service:
        self.store.open()
        self.catalog.scan()
        return self

    def close(self) -> None:
        self.store.close()

    def status(self, config: Any, *, max_age: float = 1.0) -> dict[str, Any]:
        """``replicant status --json`` of a pipeline (the same function), cached ``max_age`` seconds
        and while none of its runs was queued or ended since (a finished run shows at once)."""
        from replicant.engine import Engine

        mark = self.store.queue_mark(config.pipeline)
        with self._lock:
            cached = self._statuses.get(config.pipeline)
        if cached is not None and cached[1] == mark and time.monotonic() - cached[0] < max_age:
            return cached[2]
        status = Engine(config, state=self.store).status().to_dict()
        with self._lock:
            self._statuses[config.pipeline] = (time.monotonic(), mark, status)
        return status

    def metrics(self) -> bytes:
        from replicant.service.metrics import render

        return render(self)

    def run_counts(self) -> dict[tuple[str, str, str], tuple[int, float]]:
        """(pipeline, command, status) → (finished runs, seconds of the last one)."""
        counts: dict[tuple[str, str, str], tuple[int, float]] = {}
        for status in ("succeeded", "failed", "cancelled"):
            for e in reversed(self.store.queue_entries(status=status, limit=10_000)):
                key = (e["pipeline"], e["command"], status)
                seconds = float((e["result"] or {}).get("seconds") or 0.0)
                counts[key] = (counts.get(key, (0, 0.0))[0] + 1, seconds)
        return counts

    def rows_written(self, pipeline: str) -> dict[tuple[str, str, str], int]:
        """(tenant or ``""``, destination, stream) → rows the service's runs applied."""
        totals: dict[tuple[str, str, str], int] = {}
        for e in self.store.queue_entries(pipeline=pipeline, limit=100_000):
            for dest, per in ((e["result"] or {}).get("rows_written") or {}).items():
                for stream, n in per.items():
                    key = (e["tenant"] or "", dest, stream)
                    totals[key] = totals.get(key, 0) + int(n)
        return totals

    def slot_facts(self, pipeline: str) -> dict[str | None, int]:
        """Retained WAL bytes per tenant, as last checked (:meth:`check_slots`)."""
        return dict(self._slots.get(pipeline, {}))

    def check_slots(self) -> None:
        """Asks each pipeline with ``log`` streams for its slot's retained WAL (the source's own
        ``cdc_status``, as ``replicant status`` does); notifies over ``slot_lag_bytes``."""
        from replicant.engine import Engine

        for name, entry in list(self.catalog.pipelines.items()):
            if entry.config is None:
                continue
            facts = Engine(entry.config).source_facts()
            retained = next((v for k, v in facts.items() if "retained" in k and isinstance(v, int)), None)
            if retained is None:
                continue
            self._slots[name] = {None: retained}
            if self.settings.slot_lag_bytes is not None:
                self.notifier.slot_lag(name, None, retained, int(self.settings.slot_lag_bytes))

    def step(self) -> None:
        """One pass of the loop: the scheduler, then drift notifications."""
        self.scheduler.tick()
        if self.settings.notify:
            self.notifier.pauses({name: self.store.pipeline_state(name) for name in self.catalog.pipelines})


def _worker_command(folder: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "replicant.cli", "worker", "--dir", str(folder), *args]


def serve(folder: Path, settings: ServiceSettings, *, worker_args: list[str], env: dict[str, str],
          announce: Callable[[str], None], no_auth: bool = False, tls: Any = None) -> int:
    """Runs the service until SIGTERM/SIGINT; returns the exit code. ``tls``: a
    :class:`~replicant.service.tls.TlsOptions` (HTTPS, mTLS with a client CA)."""
    import uvicorn

    from replicant.service.api import create_app
    from replicant.service.auth import is_loopback
    from replicant.service.tls import check_exposure, uvicorn_options

    check_exposure(settings.host, no_auth=no_auth, tls=tls, warn=announce)
    service = Service(folder, settings).open()
    service.no_auth = no_auth
    for entry in service.catalog.broken.values():
        announce(f"error in {entry.path}: {entry.error}")
    app = create_app(service)
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", **uvicorn_options(tls)))
    api = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api", daemon=True)
    api.start()
    scheme = "https" if tls is not None else "http"
    if not no_auth and not service.store.token_rows():
        announce("no API token in the state store: " + ("the API and dashboard are open to this machine; create one with "
                 "`replicant token create`" if is_loopback(settings.host)
                 else "every request is refused until one is created (`replicant token create`)"))
    announce(f"replicant serve: {len(service.catalog.pipelines)} pipelines, API on {scheme}://{settings.host}:{port}/api/v1, "
             f"dashboard on {scheme}://{settings.host}:{port}/")
    stop = threading.Event()
    signalled: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        signalled.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers: list[subprocess.Popen[bytes]] = []
    worker_env = {**os.environ, **env}
    threading.Thread(target=service.lag_history.run, args=(stop,), name="lag-history", daemon=True).start()
    try:
        workers = [subprocess.Popen(_worker_command(folder, worker_args), env=worker_env) for _ in range(settings.workers)]
        last_scan = last_slots = 0.0
        while not stop.is_set():
            started = time.monotonic()
            if started - last_scan >= settings.seconds("rescan"):
                service.catalog.scan()
                last_scan = started
            try:
                service.step()
                if settings.slot_lag_bytes is not None and started - last_slots >= 60:
                    service.check_slots()
                    last_slots = started
            except ReplicantError as e:  # the state store busy or away: the next pass tries again
                log.warning("service loop: %s", e)
            for i, proc in enumerate(workers):
                if proc.poll() is not None:
                    log.warning("worker process %d exited with %s: starting another", proc.pid, proc.returncode)
                    workers[i] = subprocess.Popen(_worker_command(folder, worker_args), env=worker_env)
            stop.wait(max(0.0, settings.seconds("tick") - (time.monotonic() - started)))
    finally:
        server.should_exit = True
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        api.join(timeout=10)
        service.close()
        for sig, old in previous.items():
            signal.signal(sig, old)
    return 0

"""Stopping on SIGINT/SIGTERM in every phase of a run.

A signal handler runs only in the main thread, and only between bytecodes: while the main
thread waits in a C call (libpq connecting to a host that never answers, a socket read)
Python cannot run it, so a handler that merely sets an event is never heard. Here the work
runs in its own thread and the main thread only waits for it, so the handler runs at once:

- the first signal sets the engine's stop event: reading stops at the next batch, deliveries
  finish what the log holds, checkpoints are kept — the run winds down cleanly;
- if it has not ended ``grace`` seconds later (a thread stuck in a driver call), or on a
  second signal, the process exits at once with 128 + the signal number. That is as safe as
  ``kill -9``: nothing acknowledged is lost, and the next run resumes from the checkpoints
  (DESIGN.md, Guarantees).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from replicant.cli._app import err

__all__ = ["DEFAULT_GRACE", "Stopped", "run_until_signalled"]

T = TypeVar("T")

#: Seconds a run may take to wind down after the first signal before the process exits.
DEFAULT_GRACE = 10.0

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped:
    """Which signal stopped the run, if any (``signum`` None: none did)."""

    signum: int | None = None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)


def run_until_signalled(work: Callable[[], T], stop: threading.Event, stopped: Stopped, *, grace: float = DEFAULT_GRACE,
                        before_exit: Callable[[], None] = lambda: None) -> T:
    """Runs ``work`` in a thread until it returns; SIGINT/SIGTERM set ``stop``.

    Returns ``work``'s result or re-raises its exception; ``stopped`` says which signal (if
    any) arrived. Exits the process (``os._exit(128 + signum)``, after ``before_exit``) when
    the work has not ended ``grace`` seconds after the first signal, or on a second signal."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
            box["error"] = e

    def now(signum: int, why: str) -> None:
        before_exit()
        err.print(f"{why}; exiting now (the next run resumes from the last checkpoint)", markup=False)
        sys.stderr.flush()
        os._exit(128 + signum)

    def handler(signum: int, frame: Any) -> None:
        if stopped.signum is not None:
            now(signum, f"{signal.Signals(signum).name} again")
        stopped.signum = signum
        stop.set()
        err.print(f"{signal.Signals(signum).name}: stopping (a second signal, or {grace:g} s, exits at once)", markup=False)

    previous = {sig: signal.signal(sig, handler) for sig in _SIGNALS}
    thread = threading.Thread(target=target, name="replicant-run", daemon=True)
    deadline: float | None = None
    try:
        thread.start()
        while thread.is_alive():
            if stopped.signum is not None and deadline is None:
                deadline = time.monotonic() + grace
            if deadline is not None and time.monotonic() >= deadline:
                now(stopped.signum or signal.SIGTERM, f"still not stopped after {grace:g} s")
            thread.join(0.1)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if "error" in box:
        raise box["error"]
    return box["result"]

"""``replicant serve`` as a real process on a free port, driven over HTTP (httpx)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from server_procs import free_port  # tests/ is on sys.path (its conftest)

T = TypeVar("T")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def wait_for(check: Callable[[], T], *, timeout: float = 60.0, what: str = "condition", every: float = 0.1) -> T:
    """Polls ``check`` until it returns something truthy (returned), or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


class ServeProcess:
    """``replicant serve FOLDER`` with a clock file (the scheduler's time) and its stderr in a file."""

    def __init__(self, folder: Path, *, workers: int = 1, lease: str = "4s", extra: list[str] | None = None,
                 token: str | None = None, scheme: str = "http", client: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.clock_file = folder / ".clock"
        self.clock_file.write_text("")
        self.log_file = folder / "serve.log"
        self.args = [sys.executable, "-m", "replicant.cli", "serve", str(folder), "--port", str(self.port),
                     "--workers", str(workers), "--lease", lease, "--tick", "0.2", "--clock-file", str(self.clock_file),
                     *(extra or [])]
        self.proc: subprocess.Popen[bytes] | None = None
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=f"{scheme}://127.0.0.1:{self.port}", timeout=30.0, headers=headers, **(client or {}))

    def start(self) -> ServeProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, env=env, start_new_session=True)
        try:
            wait_for(self._up, timeout=60, what=f"replicant serve on port {self.port} ({self.log_file})")
        except BaseException:  # never leave a process behind a failed start
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            self.http.close()
            raise
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"replicant serve exited {self.proc.returncode}: {self.log()}")
        try:
            return self.http.get("/api/v1/status").status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-5000:]

    def set_clock(self, when: datetime) -> None:
        self.clock_file.write_text(when.isoformat())

    def stop(self) -> int | None:
        self.http.close()
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            raise AssertionError(f"replicant serve did not stop on SIGTERM: {self.log()}") from None

    # -- API helpers -----------------------------------------------------------------------

    def get(self, path: str, **kwargs: Any) -> Any:
        r = self.http.get(path, **kwargs)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def post(self, path: str, expect: int = 202, **kwargs: Any) -> Any:
        r = self.http.post(path, **kwargs)
        assert r.status_code == expect, (r.status_code, r.text)
        return r.json()

    def runs(self, pipeline: str, **filters: Any) -> list[dict[str, Any]]:
        return self.get("/api/v1/runs", params={"pipeline": pipeline, **filters})

    def wait_run(self, run_id: int, *, timeout: float = 90.0) -> dict[str, Any]:
        """Waits until run ``run_id`` finished; returns its detail."""
        def done() -> dict[str, Any] | None:
            run = self.get(f"/api/v1/runs/{run_id}")
            return run if run["status"] in ("succeeded", "failed", "cancelled") else None

        return wait_for(done, timeout=timeout, what=f"run {run_id} to finish ({self.log_file})")

    def wait_runs(self, pipeline: str, count: int, *, timeout: float = 90.0) -> list[dict[str, Any]]:
        """Waits until ``pipeline`` has ``count`` finished runs; returns them, oldest first."""
        def enough() -> list[dict[str, Any]] | None:
            runs = [r for r in self.runs(pipeline) if r["status"] in ("succeeded", "failed", "cancelled")]
            return sorted(runs, key=lambda r: r["id"]) if len(runs) >= count else None

        return wait_for(enough, timeout=timeout, what=f"{count} finished runs of {pipeline} ({self.log_file})")

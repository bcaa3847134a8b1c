"""Process plumbing for the throwaway test servers (see servers.py).

Free ports, running setup commands as the server's OS user, health polling with a
deadline, log tails for error messages, and a watchdog process that stops a
server when the test process dies without its teardown. No import-time effects.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import psycopg
import pymysql

#: Seconds allowed for a server to start answering connections.
START_TIMEOUT = 90.0


class ServerStartError(RuntimeError):
    """A throwaway server did not start; the message holds the log tail."""


#: Attempts when the chosen port was taken between picking and binding it.
_PORT_ATTEMPTS = 3


def retry_port_races(start, timeout: float):
    """Call ``start(timeout)``, retrying on a new port if the port was grabbed meanwhile.

    A failed attempt's directory is removed on retry; the last one is kept.
    """
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        try:
            return start(timeout)
        except ServerStartError as exc:
            if attempt == _PORT_ATTEMPTS or "already in use" not in str(exc):
                raise
            base = getattr(exc, "base_dir", None)
            if base is not None:
                shutil.rmtree(base, ignore_errors=True)
    raise AssertionError("unreachable")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_root() -> bool:
    return os.geteuid() == 0


def as_user(user: str) -> list[str]:
    """Command prefix to run a program as ``user`` when we are root."""
    return ["runuser", "-u", user, "--"] if is_root() else []


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def run_setup(cmd: list[str], *, cwd: Path, what: str, log: Path | None = None) -> None:
    """Run a setup command; raise ServerStartError with its output on failure."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        extra = f"\n--- log tail ({log}) ---\n{tail(log)}" if log else ""
        raise ServerStartError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}{extra}"
        )


def make_base_dir(prefix: str, owner: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if is_root():
        # The server runs as `owner`; it must be able to enter and write here.
        shutil.chown(base, user=owner, group=owner)
    return base


# Runs in a detached process beside each throwaway server: when the test process
# dies without its teardown (SIGKILL, SIGTERM, a crash), it stops the server and
# removes the directory, so no run leaves servers behind. argv: owner pid, kind,
# base dir, then the stop command (JSON) for "pg" or the pid file name for others.
# Only this run's own server is ever touched (its pid must have base in its argv).
_WATCHDOG = r"""
import json, os, shutil, subprocess, sys, time
owner, kind, base, arg = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
while os.getppid() == owner:
    time.sleep(0.5)
if kind == "pg":
    subprocess.run(json.loads(arg), cwd=base, capture_output=True, check=False)
else:
    try:
        pid = int(open(os.path.join(base, arg)).read().strip())
        if base in open(f"/proc/{pid}/cmdline").read():
            os.kill(pid, 15)
            deadline = time.monotonic() + 60
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.1)
    except (OSError, ValueError):
        pass
shutil.rmtree(base, ignore_errors=True)
"""


def start_watchdog(kind: str, base: Path, stop: list[str] | str) -> subprocess.Popen:
    arg = json.dumps(stop) if kind == "pg" else str(stop)
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), kind, str(base), arg],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_watchdog(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
    if proc is not None:
        proc.wait()


def parse_url(url: str, default_port: int) -> tuple[str, int, str, str | None]:
    parts = urlsplit(url)
    return (
        parts.hostname or "127.0.0.1",
        parts.port or default_port,
        unquote(parts.username) if parts.username else "",
        unquote(parts.password) if parts.password else None,
    )


def url_auth(user: str, password: str | None) -> str:
    return quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")


# --------------------------------------------------------------------------- shared


def stop_process(proc: subprocess.Popen | None, watchdog: subprocess.Popen | None,
                  base_dir: Path | None) -> None:
    """Stop a server child (SIGTERM, SIGKILL after 60 s), its watchdog, and remove its dir."""
    if proc is None:
        return
    stop_watchdog(watchdog)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if base_dir is not None:
        shutil.rmtree(base_dir, ignore_errors=True)


def wait_until(probe, timeout: float, what: str, log: Path) -> None:
    """Call ``probe`` until it returns without error or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            probe()
            return
        except ServerStartError as exc:
            raise ServerStartError(f"{what} did not start: {exc}\n--- log tail ({log}) ---\n"
                                   f"{tail(log)}") from exc
        except (psycopg.Error, pymysql.MySQLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{what} did not accept connections within {timeout:.0f}s: {exc}\n"
                    f"--- log tail ({log}) ---\n{tail(log)}") from exc
        time.sleep(delay)
        delay = min(delay * 2, 0.5)

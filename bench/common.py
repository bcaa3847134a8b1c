"""Shared helpers for the benchmarks: a throwaway server, timed subprocesses, formatting.

Benchmarks measure *whole processes*: every method under test runs as a subprocess,
its wall time is taken from spawn to reaping, and its peak memory is the peak of the
summed RSS of the process and all its descendants (sampled every ``poll`` seconds),
or the largest single process's maximum RSS as reported by GNU ``/usr/bin/time`` if
that is larger (it catches short spikes between two samples). The kernel's
``ru_maxrss`` of our own child cannot be used directly: it inherits the high-water
mark of the (large) benchmark process it was forked from. Database server processes
are not descendants and are not counted.

Nothing here runs at import time.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
GNU_TIME = "/usr/bin/time"


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and shows the output tail."""


@dataclass
class Measurement:
    """One timed subprocess run.

    Attributes:
        seconds: wall time from spawn to exit.
        peak_rss: peak summed RSS of the process tree, bytes.
        peak_anon: peak summed anonymous RSS (RSS without file-backed pages, such as
            memory-mapped files), bytes; sampled only.
        cpu_seconds: user + system CPU of the process and its reaped descendants.
        returncode: exit status (0 on success; a failed run raises instead).
        load: the machine's 1-minute load average just before the run (other work on
            a shared 2-vCPU machine skews absolute times; ratios suffer less).
        rss_breakdown: MB by kind of mapping near the peak (see :func:`rss_breakdown`),
            with ``at_rss``: the tree's RSS when it was taken.
    """

    seconds: float
    peak_rss: int
    peak_anon: int
    cpu_seconds: float
    returncode: int
    load: float = 0.0
    rss_breakdown: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _tree_rss(root: psutil.Process) -> tuple[int, int, list[int]]:
    """(RSS, anonymous RSS, pids) summed over ``root`` and its descendants, bytes.

    Anonymous = RSS minus file-backed and shared pages (``memory_info().shared``):
    memory-mapped files read through the page cache count in RSS but are reclaimable.
    """
    total = anon = 0
    pids = []
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, []
    for proc in procs:
        try:
            mem = proc.memory_info()
        except psutil.Error:
            continue  # exited between listing and sampling
        total += mem.rss
        anon += mem.rss - mem.shared
        pids.append(proc.pid)
    return total, anon, pids


def rss_breakdown(pids: list[int], files_under: Path | None) -> dict[str, float]:
    """Where the RSS of ``pids`` lives, in MB, from ``/proc/PID/smaps``.

    Keys: ``anonymous`` (heap, allocator arenas, Arrow buffers), ``mapped files under
    the work dir`` (e.g. memory-mapped staging-log segments: page cache, reclaimable,
    but counted in RSS), ``libraries`` (.so code and data) and ``other files``.
    """
    out = {"anonymous": 0, "mapped files under the work dir": 0, "libraries": 0, "other files": 0}
    prefix = str(files_under) if files_under else None
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps").read_text()
        except OSError:
            continue
        path, rss = "", 0
        for line in text.splitlines():
            first = line.split(None, 1)[0] if line else ""
            if "-" in first and not first.endswith(":"):  # a mapping header: "addr-addr perms off dev inode path"
                parts = line.split(None, 5)
                path = parts[5] if len(parts) > 5 else ""
            elif first == "Rss:":
                rss = int(line.split()[1])
            elif first == "Anonymous:":
                anon = int(line.split()[1])
                out["anonymous"] += anon
                file_part = rss - anon
                if not file_part or not path.startswith("/"):
                    out["anonymous"] += file_part
                elif prefix and path.startswith(prefix):
                    out["mapped files under the work dir"] += file_part
                elif ".so" in path:
                    out["libraries"] += file_part
                else:
                    out["other files"] += file_part
    return {k: round(v / 1024, 1) for k, v in out.items()}


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def run_measured(
    cmd: list[str],
    *,
    log_prefix: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    poll: float = 0.05,
    timeout: float | None = None,
    files_under: Path | None = None,
) -> Measurement:
    """Run ``cmd`` to completion, measuring wall time, peak tree RSS and CPU.

    stdout and stderr go to ``<log_prefix>.out`` / ``<log_prefix>.err``. The child
    runs in its own session so a timeout can kill the whole group it started. Near the
    peak (each time the RSS grows 5 % past the last breakdown, at most every 0.25 s) the
    RSS is broken down by :func:`rss_breakdown`, ``files_under`` naming the work dir.

    Raises:
        BenchError: the command exited non-zero or ran past ``timeout`` seconds;
            the message holds the tail of its stderr.
    """
    log_prefix.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = Path(f"{log_prefix}.out"), Path(f"{log_prefix}.err")
    maxrss_path = Path(f"{log_prefix}.maxrss")
    maxrss_path.unlink(missing_ok=True)
    if Path(GNU_TIME).exists():
        cmd = [GNU_TIME, "-f", "%M", "-o", str(maxrss_path), *cmd]
    peak = peak_anon = 0
    breakdown: dict[str, float] = {}
    load = os.getloadavg()[0]
    done = threading.Event()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
        root = psutil.Process(proc.pid)

        def sample() -> None:
            nonlocal peak, peak_anon, breakdown
            at, when = 0, 0.0
            while not done.is_set():
                rss, anon, pids = _tree_rss(root)
                peak, peak_anon = max(peak, rss), max(peak_anon, anon)
                if rss > at * 1.05 and time.monotonic() - when >= 0.25:
                    breakdown = {"at_rss": round(rss / MB, 1), **rss_breakdown(pids, files_under)}
                    at, when = rss, time.monotonic()
                done.wait(poll)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timer = None
        if timeout:
            timer = threading.Timer(timeout, lambda: _kill_group(proc.pid))
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        if timer:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        last = next((ln.strip() for ln in reversed(_tail(err_path).splitlines()) if ln.strip()), "")
        raise BenchError(
            f"exit {proc.returncode} after {seconds:.1f}s: {last[:300]}\n"
            f"command: {' '.join(cmd)}\n"
            f"--- stderr tail ({err_path}) ---\n{_tail(err_path)}\n"
            f"--- stdout tail ({out_path}) ---\n{_tail(out_path, 1500)}"
        )
    return Measurement(
        seconds=seconds,
        peak_rss=max(peak, _gnu_time_maxrss(maxrss_path)),
        peak_anon=peak_anon,
        rss_breakdown=breakdown,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        returncode=proc.returncode,
        load=load,
    )


def _gnu_time_maxrss(path: Path) -> int:
    """Bytes from GNU time's ``%M`` (KiB) output file, 0 if absent."""
    try:
        lines = path.read_text().split()
        return int(lines[-1]) * 1024 if lines and lines[-1].isdigit() else 0
    except OSError:
        return 0


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_checked(cmd: list[str], *, what: str, env: dict[str, str] | None = None) -> str:
    """Run a setup command, return its stdout; raise BenchError with its output on failure."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stderr[-3000:]}\n{proc.stdout[-1000:]}")
    return proc.stdout


def compile_replicant() -> None:
    """Writes the bytecode of the replicant package the benchmark runs, as ``pip install`` does
    for a regular install. An editable install under ``PYTHONDONTWRITEBYTECODE`` (set on this
    machine) otherwise compiles its ~60 modules at every start: ~80 ms per ``replicant run``, a
    cost the peer tools, installed regularly, do not pay."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("replicant")
    if spec is not None and spec.origin:
        compileall.compile_dir(str(Path(spec.origin).parent), quiet=1)


def make_workdir(parent: str | None) -> Path:
    """Create the run's work directory (world-traversable: the server runs as postgres). Every
    benchmark starts here, so this also writes replicant's bytecode (:func:`compile_replicant`)."""
    compile_replicant()
    work = Path(tempfile.mkdtemp(prefix="replicant-bench-", dir=parent))
    work.chmod(0o755)
    return work


def start_pg(workdir: Path):
    """Start a throwaway PostgreSQL 15 (``tests/servers.py``) with its data under ``workdir``.

    Returns the ``PgServer`` handle; call ``.stop()`` to shut it down and delete its data.
    """
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import servers  # tests/servers.py: the test suite's throwaway server launcher

    saved = tempfile.tempdir
    tempfile.tempdir = str(workdir)  # start_postgres makes its directory with mkdtemp
    try:
        return servers.start_postgres()
    finally:
        tempfile.tempdir = saved


@contextmanager
def throwaway_pg(parent: str | None) -> Iterator[tuple[Any, Path]]:
    """A work directory (:func:`make_workdir`) and a throwaway PostgreSQL in it (:func:`start_pg`),
    as ``(server, work)``; the server is stopped and the directory removed at the end."""
    work = make_workdir(parent)
    server = start_pg(work)
    try:
        yield server, work
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def cpu_seconds() -> float:
    """User + system CPU-seconds of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_best(script: str, args: list[str], best: dict[str, float]) -> None:
    """Runs ``script --child ARGS`` in a fresh interpreter (one measurement: imports and
    allocator state of its own) and lowers each figure of ``best`` to what the JSON object it
    prints says, when smaller."""
    got = json.loads(subprocess.run([sys.executable, script, "--child", *args], check=True, capture_output=True,
                                    text=True).stdout)
    for key, value in got.items():
        best[key] = min(best.get(key, value), value)


def recreate_database(server, name: str) -> None:
    """Drop (forcibly) and create database ``name`` on ``server``."""
    with server.connect("postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def checkpoint(server) -> None:
    """Flush dirty buffers so one method's writes are not paid for by the next one."""
    with server.connect("postgres") as conn:
        conn.execute("CHECKPOINT")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_info() -> dict:
    """CPU, memory and OS of this machine, for the results file."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def git_commit() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "unknown"


def fmt_rate(rows_per_s: float) -> str:
    if math.isnan(rows_per_s):  # nan
        return "-"
    if rows_per_s >= 1e6:
        return f"{rows_per_s / 1e6:.2f} M"
    return f"{rows_per_s / 1e3:.0f} k"

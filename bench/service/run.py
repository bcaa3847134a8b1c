"""Load test of ``replicant serve``: T tenants × P pipelines (seed 000's shape), ``mode: cursor``,
onboarded at once, then scheduled every minute with a few changed rows per pipeline per minute.

Prints: onboarding time (every pipeline's first run done), the longest gap between two runs of
any pipeline (starvation), API latency p50/p99 under that load, and the RSS of the serve (API)
process and of each worker. Baseline measured in the same run: ``replicant run`` of one of the
same pipelines as a plain CLI process (its wall time and RSS), and the API's p99 with the
service idle before the pipelines are added.

    PYTHONPATH=src .venv/bin/python bench/service/run.py --minutes 3

Defaults: 12 tenants × 12 pipelines of 10,000 rows, 4 workers, 10 minutes.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import MB, REPO, git_commit, machine_info, make_workdir, recreate_database, run_measured, start_pg


def tenant_db(i: int) -> str:
    return f"tenant_{i:02d}"


def seed(server, tenants: int, pipelines: int, rows: int) -> None:
    for t in range(tenants):
        recreate_database(server, tenant_db(t))
        with server.connect(tenant_db(t)) as c:
            for p in range(pipelines):
                c.execute(f"CREATE TABLE p{p:02d} (id integer PRIMARY KEY, amount integer NOT NULL, "
                          f"updated_at timestamptz NOT NULL DEFAULT now())")
                c.execute(f"INSERT INTO p{p:02d} (id, amount) SELECT g, g %% 1000 FROM generate_series(1, %s::int) g",
                          (rows,))
    recreate_database(server, "report")


def write_pipelines(folder: Path, server, tenants: int, pipelines: int) -> list[str]:
    names = []
    for t in range(tenants):
        for p in range(pipelines):
            name = f"t{t:02d}_p{p:02d}"
            (folder / f"{name}.yml").write_text(f"""
pipeline: {name}
source:
  type: postgres
  url: {server.url(tenant_db(t))}
  streams:
    - {{table: p{p:02d}, mode: cursor, cursor: updated_at}}
destinations:
  - {{name: report, type: postgres, url: "{server.url('report')}", write: merge, tables: "t{t:02d}_{{table}}"}}
schedule: {{every: 1m}}
""")
            names.append(name)
    return names


def change_rows(server, tenants: int, pipelines: int, stop: threading.Event, per_minute: int = 5) -> None:
    """Every minute, ``per_minute`` rows of every pipeline's table change."""
    minute = 0
    while not stop.wait(60):
        minute += 1
        for t in range(tenants):
            with server.connect(tenant_db(t)) as c:
                for p in range(pipelines):
                    c.execute(f"UPDATE p{p:02d} SET amount = amount + 1, updated_at = now() "
                              f"WHERE id %% 2000 = %s", (minute % 2000,))


def probe_api(base: str, names: list[str], stop: threading.Event, out: list[float]) -> None:
    paths = ["/api/v1/pipelines", "/api/v1/status", "/api/v1/runs?limit=50"]
    i = 0
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            path = paths[i % 3] if i % 4 else f"/api/v1/runs?pipeline={names[i % len(names)]}"
            started = time.perf_counter()
            client.get(path).raise_for_status()
            out.append(time.perf_counter() - started)
            i += 1
            stop.wait(0.2)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tenants", type=int, default=12)
    ap.add_argument("--pipelines", type=int, default=12)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = make_workdir(args.workdir)
    server = start_pg(work)
    atexit.register(server.stop)
    serve: subprocess.Popen[bytes] | None = None
    try:
        seed(server, args.tenants, args.pipelines, args.rows)
        folder = work / "served"
        folder.mkdir()
        port = 18000 + os.getpid() % 1000
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        log = (work / "serve.log").open("wb")
        serve = subprocess.Popen([sys.executable, "-m", "replicant.cli", "serve", str(folder), "--port", str(port),
                                  "--workers", str(args.workers)], stdout=log, stderr=log, env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/api/v1/status").raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or serve.poll() is not None:
                    raise SystemExit(f"serve did not start: {(work / 'serve.log').read_text()[-3000:]}") from None
                time.sleep(0.2)
        idle: list[float] = []
        stop_idle = threading.Event()
        t = threading.Thread(target=probe_api, args=(base, ["none"], stop_idle, idle))
        t.start()
        time.sleep(10)
        stop_idle.set()
        t.join()

        names = write_pipelines(folder, server, args.tenants, args.pipelines)
        onboarding_started = time.monotonic()
        latencies: list[float] = []
        stop = threading.Event()
        threads = [threading.Thread(target=probe_api, args=(base, names, stop, latencies)),
                   threading.Thread(target=change_rows, args=(server, args.tenants, args.pipelines, stop))]
        for th in threads:
            th.start()
        onboarded = None
        rss: dict[str, float] = {"api": 0.0, "worker": 0.0}
        end = onboarding_started + args.minutes * 60
        while time.monotonic() < end:
            if onboarded is None:
                runs = httpx.get(base + "/api/v1/runs", params={"status": "succeeded", "limit": 1000}, timeout=60).json()
                if len({r["pipeline"] for r in runs}) >= len(names):
                    onboarded = time.monotonic() - onboarding_started
            proc = psutil.Process(serve.pid)
            rss["api"] = max(rss["api"], proc.memory_info().rss / MB)
            for child in proc.children():
                rss["worker"] = max(rss["worker"], child.memory_info().rss / MB)
            time.sleep(2)
        stop.set()
        for th in threads:
            th.join()
        runs = httpx.get(base + "/api/v1/runs", params={"limit": 1000}, timeout=60).json()
        before = runs[-1]["id"] if runs else None
        while before is not None and len(runs) % 1000 == 0:
            more = httpx.get(base + "/api/v1/runs", params={"limit": 1000, "before": before}, timeout=60).json()
            if not more:
                break
            runs += more
            before = more[-1]["id"]
        starts: dict[str, list[datetime]] = {}
        for r in runs:
            if r["started_at"]:
                starts.setdefault(r["pipeline"], []).append(datetime.fromisoformat(r["started_at"]))
        gaps = [(b - a).total_seconds() for s in starts.values() for a, b in zip(sorted(s), sorted(s)[1:])]
        failed = sum(1 for r in runs if r["status"] == "failed")
        started_t = time.monotonic()
        metrics = httpx.get(base + "/metrics", timeout=120)
        metrics_seconds = time.monotonic() - started_t
    finally:
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
    # the baseline: one of the same pipelines as a plain `replicant run` (its own fresh state: an initial sync)
    baseline = run_measured([sys.executable, "-m", "replicant.cli", "run", str(folder / f"{names[0]}.yml")],
                            log_prefix=work / "baseline", env=env)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "commit": git_commit(), "machine": machine_info(),
        "shape": vars(args), "pipelines": len(names), "runs": len(runs), "failed_runs": failed,
        "onboarding_seconds": onboarded, "longest_gap_seconds": max(gaps) if gaps else None,
        "median_gap_seconds": statistics.median(gaps) if gaps else None,
        "api_p50_ms": pct(latencies, 50) * 1000, "api_p99_ms": pct(latencies, 99) * 1000,
        "api_idle_p99_ms": pct(idle, 99) * 1000, "metrics_scrape_seconds": metrics_seconds,
        "metrics_bytes": len(metrics.content), "api_rss_mb": rss["api"], "worker_rss_mb": rss["worker"],
        "baseline_cli_run_seconds": baseline.seconds if baseline else None,
        "baseline_cli_run_rss_mb": baseline.peak_rss / MB if baseline else None,
    }
    print(json.dumps(result, indent=2, default=str))
    out = REPO / "bench" / "results" / f"service-{datetime.now(UTC):%Y%m%d}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"written to {out}")


if __name__ == "__main__":
    main()

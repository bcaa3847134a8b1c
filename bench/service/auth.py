"""Cost of API authentication in ``replicant serve``: latency of ``GET /api/v1/status`` and
``GET /api/v1/pipelines`` with no token (the open loopback mode: the baseline, measured in the
same run), a bearer token with 1 and with N tokens in the store, a tenant-scoped token (lists
filtered) and the dashboard's session cookie.

    PYTHONPATH=src .venv/bin/python bench/service/auth.py --requests 300 --tokens 500
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from replicant.access.tokens import create_token
from replicant.state.store import StateStore

PIPELINE = """pipeline: {name}
source:
  type: sqlite
  url: sqlite:///{name}.db
  streams: [orders]
tenants: [{{id: acme}}, {{id: globex}}]
destinations:
  - {{name: out, type: duckdb, path: {name}.duckdb}}
"""


def serve(folder: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "replicant.cli", "serve", str(folder), "--port", str(port),
                             "--workers", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=2)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("serve did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def measure(client: httpx.Client, path: str, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path)
        times.append(time.perf_counter() - t)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.99) - 1] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--port", type=int, default=18931)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in ("shop", "bank"):
            with sqlite3.connect(folder / f"{name}.db") as c:
                c.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, v INTEGER)")
            (folder / f"{name}.yml").write_text(PIPELINE.format(name=name))
        url = f"sqlite:///{folder / '.replicant' / 'service.db'}"
        (folder / ".replicant").mkdir()
        base = f"http://127.0.0.1:{args.port}"
        results: list[tuple[str, str, float, float]] = []

        def run(label: str, client: httpx.Client) -> None:
            for path in ("/api/v1/status", "/api/v1/pipelines"):
                measure(client, path, 20)  # warm-up
                p50, p99 = measure(client, path, args.requests)
                results.append((label, path, p50, p99))

        proc = serve(folder, args.port)
        try:
            with httpx.Client(base_url=base) as c:
                run("open (no token; baseline)", c)
        finally:
            stop(proc)
        store = StateStore(url).open()
        admin, _ = create_token(store, role="admin", name="bench")
        scoped, _ = create_token(store, role="operator", tenants=["acme"], name="acme")
        store.close()
        proc = serve(folder, args.port)
        try:
            with httpx.Client(base_url=base, headers={"authorization": f"Bearer {admin}"}) as c:
                run("bearer, 2 tokens in store", c)
            with httpx.Client(base_url=base, headers={"authorization": f"Bearer {scoped}"}) as c:
                run("bearer, tenant-scoped", c)
            with httpx.Client(base_url=base) as c:
                c.post("/login", data={"token": admin})
                run("session cookie", c)
        finally:
            stop(proc)
        store = StateStore(url).open()
        for i in range(args.tokens):
            create_token(store, role="viewer", name=f"t{i}")
        store.close()
        proc = serve(folder, args.port)
        try:
            with httpx.Client(base_url=base, headers={"authorization": f"Bearer {admin}"}) as c:
                run(f"bearer, {args.tokens + 2} tokens in store", c)
        finally:
            stop(proc)
    print(f"{'caller':34} {'path':20} {'p50 ms':>8} {'p99 ms':>8}")
    for label, path, p50, p99 in results:
        print(f"{label:34} {path:20} {p50:8.2f} {p99:8.2f}")


if __name__ == "__main__":
    main()

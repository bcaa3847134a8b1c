#!/usr/bin/env python3
"""HTTP push benchmark: the http destination against raw httpx POSTs, one run, one machine.

    .venv/bin/python bench/http_push/run.py [--rows 1000000] [--batch-size 1000]
                                            [--rows-per-write 100000,1000] [--concurrency 4]

Starts a local receiver (the standard library's ThreadingHTTPServer, HTTP/1.1 keep-alive) in
a *separate process*, so client and server do not share a GIL. Builds ``--rows`` change rows
of a 7-column table in Arrow (vectorised), then:

1. ``destination``: ``HttpDestination.write`` on chunks of ``--rows-per-write`` rows (the
   engine calls ``write`` once per log record chunk), ``batch_size`` rows per request;
   encoding (DuckDB), byte-splitting, hashing the idempotency keys and sending are all
   timed. Run once per ``--rows-per-write`` value.
2. ``baseline``: the same number of requests, with bodies of the same records encoded in
   advance (``to_pylist`` + ``json.dumps``; timed separately and printed for reference),
   sent with a bare ``httpx.Client`` from a thread pool of the same concurrency.

Prints rows/s, requests/s and MB/s for each, the destination/baseline time ratio, and the
client process's peak RSS after each phase (``ru_maxrss``; the baseline's pre-encoded bodies
are built after the destination phases, so they do not inflate its figure). The receiver
counts requests and bytes; every phase is checked against it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


# ------------------------------------------------------------------ the receiver process


def serve(port_file: str) -> None:
    """Receiver: answers every POST 200 after reading the body; GET /stats returns counts."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    lock = threading.Lock()
    stats = {"requests": 0, "bytes": 0, "records_hint": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

        def do_POST(self) -> None:  # the stdlib's naming
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            with lock:
                stats["requests"] += 1
                stats["bytes"] += len(body)
            self._reply(b'{"ok":true}')

        def do_GET(self) -> None:
            with lock:
                answer = json.dumps(stats).encode()
                if self.path == "/reset":
                    stats.update(requests=0, bytes=0)
            self._reply(answer)

        def _reply(self, answer: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), Handler)
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


def start_receiver(tmp: Path) -> tuple[subprocess.Popen, str]:
    port_file = tmp / "port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
    deadline = time.monotonic() + 10
    while not (port_file.exists() and port_file.read_text()):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("receiver did not start")
        time.sleep(0.02)
    return proc, f"http://127.0.0.1:{port_file.read_text()}"


# ------------------------------------------------------------------ data


def build_table(rows: int):
    """``rows`` change rows (op insert), built by Arrow and numpy: no per-row Python."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from replicant.model import META_FIELDS, Stream

    ids = np.arange(rows, dtype=np.int64)
    schema = pa.schema(
        [
            pa.field("id", pa.int64()),
            pa.field("name", pa.string()),
            pa.field("amount", pa.decimal128(12, 2)),
            pa.field("qty", pa.int32()),
            pa.field("at", pa.timestamp("us", tz="UTC")),
            pa.field("active", pa.bool_()),
            pa.field("score", pa.float64()),
        ]
    )
    stream = Stream(name="public.orders", table=("public", "orders"), schema=schema, primary_key=("id",))
    id_text = pa.array(ids).cast(pa.string())
    base_ts = 1_700_000_000_000_000
    columns = [
        pa.array(ids),
        pc.binary_join_element_wise("customer ", id_text, ""),
        pa.array((ids % 100_000) * 1.25).cast(pa.decimal128(12, 2)),
        pa.array((ids % 50).astype(np.int32)),
        pa.array(base_ts + ids * 1_000_003, pa.timestamp("us", tz="UTC")),
        pa.array(ids % 3 == 0),
        pa.array(np.random.default_rng(1).random(rows)),
        pa.repeat(pa.scalar("insert"), rows),
        pc.binary_join_element_wise('{"lsn":', id_text, "}", ""),
        pa.array(np.full(rows, base_ts), pa.timestamp("us", tz="UTC")),
    ]
    table = pa.Table.from_arrays(columns, schema=pa.schema(list(schema) + list(META_FIELDS)))
    return stream, table


def baseline_bodies(stream, table, batch_size: int) -> list[tuple[str, bytes]]:
    """The same records as the destination sends, encoded in advance with json.dumps."""
    bodies = []
    for start in range(0, table.num_rows, batch_size):
        piece = table.slice(start, batch_size)
        records = []
        for row in piece.to_pylist():
            data = {k: row[k] for k in stream.schema.names}
            data["amount"] = str(data["amount"])
            data["at"] = data["at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            records.append({"op": row["_op"], "key": {"id": row["id"]}, "data": data, "position": json.loads(row["_pos"]),
                            "ts": row["_ts"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")})
        key = f"baseline-{start}"
        body = json.dumps({"pipeline": "bench", "stream": stream.name, "batch_id": key, "records": records}, separators=(",", ":"))
        bodies.append((key, body.encode()))
    return bodies


# ------------------------------------------------------------------ phases


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def receiver_stats(url: str, reset: bool = False) -> dict:
    import httpx

    return httpx.get(f"{url}/{'reset' if reset else 'stats'}").json()


def run_destination(url: str, stream, table, batch_size: int, rows_per_write: int, concurrency: int) -> float:
    from replicant.config import DestinationConfig
    from replicant.destinations.http import HttpDestination
    from replicant.model import ConnectorContext

    cfg = DestinationConfig.model_validate(
        {"name": "push", "type": "http", "url": f"{url}/push", "batch_size": batch_size, "concurrency": concurrency}
    )
    dest = HttpDestination(cfg, ConnectorContext("bench"))
    dest.open()
    try:
        t0 = time.perf_counter()
        for start in range(0, table.num_rows, rows_per_write):
            chunk = table.slice(start, rows_per_write)
            dest.write(stream, chunk, last_offset=start + chunk.num_rows - 1)
        return time.perf_counter() - t0
    finally:
        dest.close()


def run_baseline(url: str, bodies: list[tuple[str, bytes]], concurrency: int) -> float:
    import httpx

    client = httpx.Client(limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency), timeout=30)

    def post(item: tuple[str, bytes]) -> None:
        key, body = item
        r = client.post(f"{url}/push", content=body, headers={"Content-Type": "application/json", "Idempotency-Key": key})
        r.raise_for_status()

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            t0 = time.perf_counter()
            list(pool.map(post, bodies))
            return time.perf_counter() - t0
    finally:
        client.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=1000, help="rows per request")
    ap.add_argument("--rows-per-write", default="100000,1000", help="comma-separated: rows per write() call, one phase each")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return

    import tempfile

    sys.path.insert(0, str(REPO / "src"))
    stream, table = build_table(args.rows)
    requests = -(-args.rows // args.batch_size)
    print(f"{args.rows:,} rows, {args.batch_size:,} rows per request ({requests:,} requests), concurrency {args.concurrency}, "
          f"cpus {os.cpu_count()}; peak RSS after building the data: {peak_rss_mb():.0f} MB")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_receiver(Path(tmp))
        try:
            for rpw in [int(x) for x in args.rows_per_write.split(",") if x]:
                receiver_stats(url, reset=True)
                seconds = run_destination(url, stream, table, args.batch_size, rpw, args.concurrency)
                got = receiver_stats(url)
                assert got["requests"] == requests, got
                results.append((f"destination, write() per {rpw:,} rows", seconds, got["bytes"], peak_rss_mb()))
            t0 = time.perf_counter()
            bodies = baseline_bodies(stream, table, args.batch_size)
            encode_seconds = time.perf_counter() - t0
            receiver_stats(url, reset=True)
            seconds = run_baseline(url, bodies, args.concurrency)
            got = receiver_stats(url)
            assert got["requests"] == requests, got
            results.append(("baseline: raw httpx POSTs of pre-encoded bodies", seconds, got["bytes"], peak_rss_mb()))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    base = results[-1][1]
    print(f"{'phase':52} {'seconds':>8} {'rows/s':>10} {'req/s':>8} {'MB/s':>7} {'× base':>7} {'peak RSS':>9}")
    for name, seconds, nbytes, rss in results:
        print(f"{name:52} {seconds:8.2f} {args.rows / seconds:10,.0f} {requests / seconds:8,.0f} "
              f"{nbytes / seconds / 1e6:7.1f} {seconds / base:7.2f} {rss:7.0f} MB")
    print(f"(for reference: encoding the baseline bodies with to_pylist + json.dumps alone took {encode_seconds:.2f} s, "
          f"{args.rows / encode_seconds:,.0f} rows/s; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()

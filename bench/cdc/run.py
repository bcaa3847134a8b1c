"""Benchmark: log-based CDC from PostgreSQL under ``replicant run --follow``.

Not a test; nothing asserts. One run, on a throwaway PostgreSQL 15 (``bench/common.py``):

1. ``pgbench -i -s SCALE`` builds the source; ``replicant run p.yml --follow`` (a subprocess)
   snapshots it through the staging log into PostgreSQL (merge; pgbench_history: append) and
   DuckDB (the same), then streams.
2. **Latency at fixed rates**: for each rate, ``pgbench -R TPS -T SECONDS`` (TPC-B: 3
   updates + 1 insert per transaction = 4 row changes), while a probe inserts a row every
   50 ms into a ``probe`` table (also captured) and polls the PostgreSQL destination every
   5 ms: commit-to-destination latency is the time from the probe's commit to its arrival.
   Prints achieved changes/s, p50/p95/p99 latency, the catch-up time after pgbench stops,
   and whether it kept up (p99 under 2 s and caught up within 2 s).
3. **Sustained rate**: ``UPDATE pgbench_accounts`` of every row, in transactions of 100k
   rows, then the time until the PostgreSQL destination has applied all of it; beside it, in
   the same run, the baseline: ``pg_recvlogical`` decoding the same WAL to /dev/null
   (test_decoding, the server's own decoding rate).
4. Stops the follow process with SIGTERM (it must exit 0), checks the destinations equal
   the source, and prints the follow process's peak RSS.

    .venv/bin/python bench/cdc/run.py                 # scale 10 (1M accounts), rates 250..2500 tps
    .venv/bin/python bench/cdc/run.py --scale 5 --rates 250,1250 --seconds 15
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import common  # bench/common.py

TABLES = ("pgbench_accounts", "pgbench_tellers", "pgbench_branches")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=10, help="pgbench scale (100k accounts each)")
    p.add_argument("--rates", default="250,625,1250,2500", help="TPC-B transactions/s to try (x4 = row changes/s)")
    p.add_argument("--seconds", type=int, default=20, help="seconds per rate")
    p.add_argument("--workdir", default=None, help="parent folder of the run's work dir")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    return p.parse_args(argv)


def pg_bin(name: str) -> str:
    sys.path.insert(0, str(common.REPO / "tests"))
    import servers

    return str(servers.find_pg_bindir() / name)


def pipeline(work: Path, src: str, dst: str) -> Path:
    streams = [{"table": f"public.{t}", "mode": "log"} for t in (*TABLES, "pgbench_history", "probe")]
    keyed = [f"public.{t}" for t in (*TABLES, "probe")]
    data = {
        "pipeline": "cdcbench",
        "source": {"type": "postgres", "url": src, "streams": streams, "flush_interval": 0.05, "batch_size": 50_000},
        "destinations": [
            {"name": "pg", "type": "postgres", "url": dst, "write": "merge", "streams": keyed},
            {"name": "pg_history", "type": "postgres", "url": dst, "write": "append", "streams": ["public.pgbench_history"]},
            {"name": "duck", "type": "duckdb", "path": str(work / "dst.duckdb"), "write": "merge", "streams": keyed},
            {"name": "duck_history", "type": "duckdb", "path": str(work / "history.duckdb"), "write": "append",
             "streams": ["public.pgbench_history"]},
        ],
    }
    f = work / "cdcbench.yml"
    f.write_text(json.dumps(data))
    return f


def wait_for(cond, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise common.BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


class Probe:
    """Inserts a row into ``probe`` every 50 ms and times its arrival at the destination."""

    def __init__(self, server, src_db: str, dst_db: str) -> None:
        self.src = server.connect(src_db, autocommit=True)
        self.dst = server.connect(dst_db, autocommit=True)
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            pid = self.src.execute("INSERT INTO probe (t) VALUES (clock_timestamp()) RETURNING id").fetchone()[0]
            committed = time.monotonic()
            while not self.stop.is_set():
                if self.dst.execute("SELECT 1 FROM probe WHERE id = %s", (pid,)).fetchone():
                    self.latencies.append(time.monotonic() - committed)
                    break
                time.sleep(0.005)
            self.stop.wait(0.05)

    def __enter__(self) -> Probe:
        self.latencies = []
        self.stop.clear()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def count(conn, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    work = common.make_workdir(args.workdir)
    server = common.start_pg(work)
    follow = None
    peak = {"rss": 0}
    try:
        common.recreate_database(server, "src")
        common.recreate_database(server, "dst")
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(server.port), "PGUSER": "postgres"}
        common.run_checked([pg_bin("pgbench"), "-i", "-q", "-s", str(args.scale), "src"], what="pgbench -i", env=env)
        src_conn = server.connect("src", autocommit=True)
        dst_conn = server.connect("dst", autocommit=True)
        src_conn.execute("CREATE TABLE probe (id bigserial PRIMARY KEY, t timestamptz)")
        # no key: logical replication needs the full row as its identity (PostgreSQL refuses
        # to publish its updates and deletes otherwise; replicant says so and stops)
        src_conn.execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        f = pipeline(work, server.url("src"), server.url("dst"))
        replicant = str(Path(sys.executable).with_name("replicant"))
        t0 = time.monotonic()
        with open(work / "follow.out", "wb") as out, open(work / "follow.err", "wb") as err:  # the child keeps its copies
            follow = subprocess.Popen([replicant, "run", str(f), "--follow"], stdout=out, stderr=err, start_new_session=True)
        proc = psutil.Process(follow.pid)
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                try:
                    rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                    peak["rss"] = max(peak["rss"], rss)
                except psutil.Error:
                    pass
                sampling.wait(0.05)

        threading.Thread(target=sample, daemon=True).start()
        accounts = args.scale * 100_000

        def snapshot_done() -> bool:
            try:
                return count(dst_conn, "pgbench_accounts") == accounts
            except Exception:  # noqa: BLE001 - the table appears with the first write
                return False

        snap = wait_for(snapshot_done, 1800, "the initial snapshot")
        print(f"initial snapshot of {accounts:,} accounts (+ tellers, branches) through the log: {time.monotonic() - t0:.1f} s "
              f"({accounts / (time.monotonic() - t0):,.0f} rows/s, incl. start-up; {snap:.1f} s waited)")

        results: dict = {"scale": args.scale, "machine": common.machine_info(), "commit": common.git_commit(), "rates": []}
        print(f"\n{'tps':>6} {'changes/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'catch-up s':>10}  kept up   load")
        for tps in [int(x) for x in args.rates.split(",")]:
            load = os.getloadavg()[0]
            with Probe(server, "src", "dst") as probe:
                out = common.run_checked([pg_bin("pgbench"), "-n", "-c", "4", "-j", "2", "-T", str(args.seconds),
                                          "-R", str(tps), "src"], what="pgbench", env=env)
                ended = time.monotonic()
                history = count(src_conn, "pgbench_history")
                catch = wait_for(lambda history=history: count(dst_conn, "pgbench_history") >= history, 600, "catch-up")
                catch = max(catch, 0.0) if time.monotonic() > ended else 0.0
            achieved = next((float(line.split("=")[1].split()[0]) for line in out.splitlines() if line.startswith("tps")), float("nan"))
            lat = probe.latencies
            row = {"tps_target": tps, "tps": achieved, "changes_per_s": achieved * 4, "p50_ms": pct(lat, 0.5) * 1e3,
                   "p95_ms": pct(lat, 0.95) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3, "catch_up_s": catch,
                   "probes": len(lat), "load": load}
            row["kept_up"] = row["p99_ms"] < 2000 and catch < 2.0
            results["rates"].append(row)
            print(f"{tps:>6} {row['changes_per_s']:>10,.0f} {row['p50_ms']:>8.0f} {row['p95_ms']:>8.0f} {row['p99_ms']:>8.0f} "
                  f"{catch:>10.2f}  {'yes' if row['kept_up'] else 'NO':>7}  {load:4.1f}")

        # sustained: every account updated, 100k rows per transaction
        src_conn.execute("SELECT pg_create_logical_replication_slot('baseline', 'test_decoding')")
        start_lsn = src_conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        expected = src_conn.execute("SELECT sum(abalance) + count(*) FROM pgbench_accounts").fetchone()[0]
        t0 = time.monotonic()
        for lo in range(0, accounts, 100_000):
            src_conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid > %s AND aid <= %s", (lo, lo + 100_000))
        committed = time.monotonic() - t0
        end_lsn = src_conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        applied = wait_for(lambda: dst_conn.execute("SELECT sum(abalance) FROM pgbench_accounts").fetchone()[0] == expected,
                           1800, "the bulk update to arrive")
        total = committed + applied
        rate = accounts / total
        t1 = time.monotonic()
        common.run_checked([pg_bin("pg_recvlogical"), "-d", "src", "--slot", "baseline", "--start", "-f", "/dev/null",
                            "--endpos", str(end_lsn), "--no-loop"], what="pg_recvlogical", env=env)
        base_s = time.monotonic() - t1
        src_conn.execute("SELECT pg_drop_replication_slot('baseline')")
        results["sustained"] = {"changes": accounts, "commit_s": committed, "after_commit_s": applied, "changes_per_s": rate,
                                "pg_recvlogical_s": base_s, "pg_recvlogical_changes_per_s": accounts / base_s,
                                "wal": f"{start_lsn}..{end_lsn}"}
        print(f"\nsustained: {accounts:,} updates committed in {committed:.1f} s, applied {applied:.1f} s later: "
              f"{rate:,.0f} changes/s end to end (target ≥ 50,000)")
        print(f"baseline:  pg_recvlogical (test_decoding → /dev/null) decodes the same WAL at {accounts / base_s:,.0f} changes/s "
              f"({base_s:.1f} s); replicant/baseline = {rate / (accounts / base_s):.2f}")

        # stop cleanly, check equality
        t2 = time.monotonic()
        follow.send_signal(signal.SIGTERM)
        code = follow.wait(120)
        sampling.set()
        print(f"\nSIGTERM → exit {code} in {time.monotonic() - t2:.1f} s; follow process peak RSS {peak['rss'] / common.MB:,.0f} MB")
        results["peak_rss_mb"] = peak["rss"] / common.MB
        for t in (*TABLES, "pgbench_history"):
            cols = ", ".join(r[0] for r in src_conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position", (t,)))
            q = f"SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (SELECT ROW({cols})::text AS x FROM {t}) s"
            same = src_conn.execute(q).fetchone()[0] == dst_conn.execute(q).fetchone()[0]
            print(f"  {t}: PostgreSQL destination {'equals' if same else 'DIFFERS FROM'} the source")
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2, default=str))
        return 0
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())

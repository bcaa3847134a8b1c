"""Benchmark: ``mode: snapshot_diff`` against a plain full read of the same table.

Builds a table of ``--rows`` rows (default 5M; pgbench_accounts-like plus a numeric and a
timestamptz column) in its own database, then, each step as a separate measured process
(wall time, peak RSS of the process tree, see ``bench/common.py``):

1. ``full``      the source's plain keyed full read (``SQLSource._read_full``), batches dropped
2. ``baseline``  the first snapshot_diff run (a full snapshot: writes the snapshot files)
3. 1 % of the rows change: 0.8 % updated, 0.1 % deleted, 0.1 % inserted
4. ``diff``      the second snapshot_diff run (read, hash, diff, emit the 1 %)
5. ``full``      the plain read again (the baseline for the ratio is the mean of 1 and 5)

Prints each step's in-process read time (the figure compared), its process wall time and
peak RSS, and the ratio diff / full against the target (≤ 2×). Not a test; nothing asserts.

    .venv/bin/python bench/cdc/snapshot_diff.py                    # local PG on 127.0.0.1:5432
    .venv/bin/python bench/cdc/snapshot_diff.py --throwaway        # a throwaway PG 15
    .venv/bin/python bench/cdc/snapshot_diff.py --rows 500000 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import common  # bench/common.py

DB = "replicant_bench_snapshot_diff"
TARGET = 2.0


# ---------------------------------------------------------------------------- child steps


def _stream(url: str, memory_limit: str, workdir: Path):
    import dataclasses

    from replicant.config import SourceConfig
    from replicant.model import ConnectorContext
    from replicant.registry import source_class
    from replicant.sources.select import resolve_streams

    cfg = SourceConfig(type="postgres", url=url, streams=[{"table": "accounts"}])
    src = source_class("postgres")(cfg, ConnectorContext("bench", workdir=workdir))
    (s,) = resolve_streams(cfg, src.discover())
    s = dataclasses.replace(s, mode="snapshot_diff", options={**s.options, "memory_limit": memory_limit})
    return src, s


def child(args: argparse.Namespace) -> None:
    """One measured step, in its own process; prints a JSON line with its figures."""
    from collections import Counter

    import pyarrow.compute as pc

    src, s = _stream(args.url, args.memory_limit, Path(args.workdir))
    state = Path(args.workdir) / "bench-position.json"
    rows, ops = 0, Counter()
    started = time.monotonic()
    with src:
        if args.child == "full":
            for rb in src._read_full(src._plan(s), None):
                rows += rb.data.num_rows
        else:
            position = json.loads(state.read_text()) if state.exists() else None
            last = None
            for rb in src.read(s, position):
                rows += rb.data.num_rows
                for vc in pc.value_counts(rb.data.column("_op")).to_pylist():  # per batch, not per row
                    ops[vc["values"]] += vc["counts"]
                last = rb
            src.acknowledge(s, last.position)
            state.write_text(json.dumps(last.position))
    seconds = time.monotonic() - started
    print(json.dumps({"rows": rows, "seconds": seconds, "ops": dict(ops)}))


# ---------------------------------------------------------------------------- driver


def _connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def build(admin_url: str, url: str, rows: int, rebuild: bool) -> None:
    with _connect(admin_url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone()
        if exists and rebuild:
            conn.execute(f'DROP DATABASE "{DB}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{DB}"')
    fill = ("INSERT INTO accounts SELECT g, g / 100000 + 1, 0, (g %% 100000) / 100.0, "
            "timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', '' "
            "FROM generate_series(1, %s) g")
    with _connect(url) as conn:
        have = conn.execute("SELECT to_regclass('accounts') IS NOT NULL").fetchone()[0]
        if have and conn.execute("SELECT max(aid) FROM accounts").fetchone()[0] >= rows:
            # undo a previous run's changes to the row count: its inserts and deletes
            conn.execute("DELETE FROM accounts WHERE aid > %s", [rows])
            conn.execute(fill + " WHERE g %% 1000 = 3 ON CONFLICT DO NOTHING", [rows])  # mutate() deletes
            if conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == rows:
                conn.execute("VACUUM ANALYZE accounts")
                print(f"reusing table accounts ({rows:,} rows)")
                return
        started = time.monotonic()
        conn.execute("DROP TABLE IF EXISTS accounts")
        conn.execute(
            "CREATE TABLE accounts (aid integer PRIMARY KEY, bid integer NOT NULL, abalance integer NOT NULL, "
            "amount numeric(12, 2), updated timestamptz, filler char(84))"
        )
        conn.execute(fill, [rows])
        conn.execute("VACUUM ANALYZE accounts")
        print(f"built table accounts ({rows:,} rows) in {time.monotonic() - started:.1f} s")


def mutate(url: str, rows: int) -> int:
    """Changes 1 % of the rows; returns how many changes a diff must find."""
    with _connect(url) as conn:
        up = conn.execute("UPDATE accounts SET abalance = abalance + 1 WHERE aid % 125 = 7").rowcount
        de = conn.execute("DELETE FROM accounts WHERE aid % 1000 = 3").rowcount
        ins = conn.execute(
            "INSERT INTO accounts SELECT g, 1, 0, 1.5, now(), '' FROM generate_series(%s, %s) g",
            [rows + 1, rows + rows // 1000],
        ).rowcount
        conn.execute("VACUUM ANALYZE accounts")
    return up + de + ins


def step(name: str, url: str, workdir: Path, logs: Path, memory_limit: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "full" if name.startswith("full") else "diff",
           "--url", url, "--workdir", str(workdir), "--memory-limit", memory_limit]
    m = common.run_measured(cmd, log_prefix=logs / name, files_under=workdir)
    out = json.loads(Path(f"{logs / name}.out").read_text().strip().splitlines()[-1])
    out.update(wall=m.seconds, peak_rss=m.peak_rss, peak_anon=m.peak_anon, cpu=m.cpu_seconds, load=m.load)
    print(f"  {name:<9} {out['rows']:>10,} rows  read {out['seconds']:7.2f} s  wall {m.seconds:7.2f} s  "
          f"peak RSS {m.peak_rss / common.MB:6.0f} MB (anon {m.peak_anon / common.MB:4.0f} MB)  "
          f"load {m.load:.1f}  {out['ops'] or ''}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", choices=["full", "diff"], help=argparse.SUPPRESS)
    ap.add_argument("--url", help="PostgreSQL server URL (default: postgresql://postgres@127.0.0.1:5432/test)")
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--throwaway", action="store_true", help="start a throwaway PostgreSQL 15 instead")
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--memory-limit", default="512MB", help="DuckDB memory_limit of the diff")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the table even if it exists")
    ap.add_argument("--keep", action="store_true", help="keep the database (default: drop it at the end)")
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    work = common.make_workdir(None)
    server = None
    admin = args.url or "postgresql://postgres@127.0.0.1:5432/test"
    try:
        if args.throwaway:
            server = common.start_pg(work)
            admin = server.url("postgres")
        from urllib.parse import urlsplit, urlunsplit

        p = urlsplit(admin)
        url = urlunsplit(p._replace(path="/" + DB))
        print(f"snapshot_diff benchmark: {args.rows:,} rows, DuckDB memory_limit {args.memory_limit}, "
              f"commit {common.git_commit()}, {common.machine_info()['cpus']} CPUs, "
              f"load {os.getloadavg()[0]:.1f}")
        build(admin, url, args.rows, args.rebuild)
        sd_dir = work / "snapshot"
        sd_dir.mkdir()
        logs = work / "logs"
        r = {"full1": step("full1", url, sd_dir, logs, args.memory_limit)}
        r["baseline"] = step("baseline", url, sd_dir, logs, args.memory_limit)
        changes = mutate(url, args.rows)
        print(f"  changed {changes:,} rows ({changes / args.rows:.1%})")
        r["diff"] = step("diff", url, sd_dir, logs, args.memory_limit)
        r["full2"] = step("full2", url, sd_dir, logs, args.memory_limit)
        full = (r["full1"]["seconds"] + r["full2"]["seconds"]) / 2
        ratio = r["diff"]["seconds"] / full
        found = r["diff"]["rows"]
        disk = sum(f.stat().st_size for f in sd_dir.rglob("*") if f.is_file())
        print()
        print(f"plain full read      {full:7.2f} s  ({common.fmt_rate(args.rows / full)} rows/s; mean of 2)")
        print(f"snapshot_diff (1 %)  {r['diff']['seconds']:7.2f} s  {found:,} changes emitted "
              f"({'all found' if found == changes else f'EXPECTED {changes:,}'})")
        print(f"first run (full)     {r['baseline']['seconds']:7.2f} s")
        print(f"ratio diff / full    {ratio:7.2f}x  target <= {TARGET:.0f}x: {'PASS' if ratio <= TARGET else 'MISS'}")
        print(f"peak RSS             full {max(r['full1']['peak_rss'], r['full2']['peak_rss']) / common.MB:.0f} MB, "
              f"diff {r['diff']['peak_rss'] / common.MB:.0f} MB (anon {r['diff']['peak_anon'] / common.MB:.0f} MB), "
              f"first run {r['baseline']['peak_rss'] / common.MB:.0f} MB")
        print(f"workdir on disk      {disk / common.MB:.0f} MB (previous snapshot)")
    finally:
        if not args.keep:
            try:
                with _connect(admin) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
            except Exception as e:  # noqa: BLE001 - cleanup must not hide the result
                print(f"could not drop {DB}: {e}", file=sys.stderr)
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Staging log benchmark: LocalLog vs NatsLog append and read rates, one run, one machine.

    python3 bench/log/run.py [--rows 1000000] [--batch 100000] [--wide-rows 200000]
                             [--wide-cols 60] [--wide-batch 20000] [--repeat 3] [--only PATTERNS]

Starts a throwaway nats-server with JetStream (tests/servers.py; file storage in the work
directory), then for each dataset (narrow: 11 columns incl. ``_op``/``_pos``/``_ts``; wide:
``--wide-cols`` columns) and each backend (local, local-lz4, nats, nats-lz4) runs one
subprocess that builds the batches in memory, appends them all to an empty log (timed),
closes and reopens the log (timed: NatsLog rebuilds its index from the headers), reads
every record back (timed), then reads again summing a numeric column of every batch (so
lazily mapped pages are really touched). For NATS it also times reading the same messages
with one pull consumer instead of direct gets by sequence (the read path's alternative).
Median of ``--repeat`` runs; peak RSS of the subprocess (the batches held in memory are
part of it; the nats-server process is not). MB/s are of Arrow's in-memory size of the
batches. Writes bench/results/log-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from common import MB, REPO, BenchError, fmt_rate, git_commit, machine_info, make_workdir, median, run_measured

BACKENDS = ["local", "local-lz4", "nats", "nats-lz4"]


# -- the child: one backend, one dataset ------------------------------------------------


def make_batches(rows: int, batch: int, wide_cols: int | None) -> list:
    import numpy as np
    import pyarrow as pa

    from replicant.model import with_meta

    rng = np.random.default_rng(42)
    out = []
    for first in range(0, rows, batch):
        n = min(batch, rows - first)
        if wide_cols is None:
            cols = {
                "id": pa.array(np.arange(first, first + n, dtype=np.int64)),
                "account": pa.array(rng.integers(0, 100_000, n, dtype=np.int32)),
                "amount": pa.array(rng.random(n) * 1000),
                "balance": pa.array(rng.random(n) * 1e6),
                "qty": pa.array(rng.integers(0, 50, n, dtype=np.int64)),
                "flag": pa.array(rng.random(n) < 0.5),
                "code": pa.array(np.char.add("c", rng.integers(0, 1000, n).astype(str)).tolist()),
                "created": pa.array(rng.integers(1_600_000_000_000_000, 1_700_000_000_000_000, n), pa.timestamp("us")),
            }
        else:
            cols = {"id": pa.array(np.arange(first, first + n, dtype=np.int64))}
            for c in range(1, wide_cols):
                kind = c % 3
                if kind == 0:
                    cols[f"i{c}"] = pa.array(rng.integers(0, 1 << 40, n, dtype=np.int64))
                elif kind == 1:
                    cols[f"f{c}"] = pa.array(rng.random(n))
                else:
                    cols[f"s{c}"] = pa.array(np.char.add("value ", rng.integers(0, 10**6, n).astype(str)).tolist())
        data = pa.record_batch(cols)
        out.append(with_meta(data, "snapshot", json.dumps({"chunk": first}), dt.datetime(2026, 11, 21, tzinfo=dt.UTC)))
    return out


def open_backend(backend: str, target: str, read_only: bool = False):
    compression = "lz4" if backend.endswith("-lz4") else None
    if backend.startswith("nats"):
        from replicant.log.nats import NatsLog

        url, prefix = target.rsplit("/", 1)
        return NatsLog(url, prefix=prefix, compression=compression, read_only=read_only)
    from replicant.log.local import LocalLog

    return LocalLog(target, compression=compression, read_only=read_only)


def child(args: argparse.Namespace) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.ipc as ipc

    batches = make_batches(args.rows, args.batch, args.wide_cols)
    nbytes = sum(b.nbytes for b in batches)
    log = open_backend(args.backend, args.target)
    t = time.perf_counter()
    for i, b in enumerate(batches):
        log.append("bench", b, position={"batch": i})
    append_s = time.perf_counter() - t
    log.close()
    del batches

    t = time.perf_counter()
    log = open_backend(args.backend, args.target, read_only=True)
    end = log.end_offset("bench")
    reopen_s = time.perf_counter() - t
    assert end == args.rows, (end, args.rows)

    t = time.perf_counter()
    rows = sum(r.batch.num_rows for r in log.read("bench"))
    read_s = time.perf_counter() - t
    assert rows == args.rows

    t = time.perf_counter()
    total = 0
    for r in log.read("bench"):
        total += pc.sum(r.batch.column("id")).as_py()
    read_sum_s = time.perf_counter() - t
    assert total == args.rows * (args.rows - 1) // 2

    consumer_s = None
    stored = None
    if args.backend.startswith("nats"):
        st = log._stream("bench")
        t = time.perf_counter()
        msgs = log._call(log._scan(st.data_subject, 1, None, headers_only=False))
        parts, rows = [], 0
        for m in msgs:  # reassemble records: parts precede the message with the record headers
            parts.append(m.data)
            if "Replicant-Offset" in (m.headers or {}):
                if parts[-1] or len(parts) > 1:
                    rows += ipc.open_stream(pa.py_buffer(b"".join(parts))).read_next_batch().num_rows
                parts = []
        consumer_s = time.perf_counter() - t
        assert rows == args.rows
        stored = log._call(log._js.stream_info(log.stream_name)).state.bytes
    else:
        stored = sum(p.stat().st_size for p in Path(args.target).rglob("*") if p.is_file())
    log.close()
    print(json.dumps({"nbytes": nbytes, "append_s": append_s, "reopen_s": reopen_s, "read_s": read_s,
                      "read_sum_s": read_sum_s, "consumer_s": consumer_s, "stored": stored}))


# -- the driver -------------------------------------------------------------------------


def start_nats(workdir: Path):
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import servers

    saved = tempfile.tempdir
    tempfile.tempdir = str(workdir)
    try:
        return servers.start_nats()
    finally:
        tempfile.tempdir = saved


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the narrow dataset")
    ap.add_argument("--batch", type=int, default=100_000, help="rows per batch, narrow")
    ap.add_argument("--wide-rows", type=int, default=200_000, help="rows of the wide dataset")
    ap.add_argument("--wide-cols", type=int, default=60, help="columns of the wide dataset")
    ap.add_argument("--wide-batch", type=int, default=20_000, help="rows per batch, wide")
    ap.add_argument("--repeat", type=int, default=3, help="runs per backend and dataset (median reported)")
    ap.add_argument("--only", default="", help="comma-separated glob patterns of backends, e.g. 'nats*'")
    ap.add_argument("--workdir", default=None, help="parent of the run's temp dir (default $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir after the run")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--wide", dest="wide_cols_child", type=int, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        args.wide_cols = args.wide_cols_child
        child(args)
        return 0
    backends = [b for b in BACKENDS if not args.only or any(fnmatch.fnmatch(b, p) for p in args.only.split(","))]
    datasets = {
        "narrow": (args.rows, args.batch, None),
        "wide": (args.wide_rows, args.wide_batch, args.wide_cols),
    }
    work = make_workdir(args.workdir)
    server = start_nats(work)
    results: dict = {"date": dt.date.today().isoformat(), "commit": git_commit(), "machine": machine_info(),
                     "args": {k: v for k, v in vars(args).items() if not k.startswith(("child", "backend", "target", "wide_cols_child"))},
                     "runs": {}}
    python = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
    try:
        for dataset, (rows, batch, cols) in datasets.items():
            print(f"\n{dataset}: {rows:,} rows in {batch:,}-row batches" + (f", {cols} columns" if cols else ", 11 columns"))
            print(f"{'backend':<10} {'append rows/s':>13} {'MB/s':>6} {'reopen s':>8} {'read rows/s':>11} {'MB/s':>6} "
                  f"{'read+sum':>9} {'consumer':>9} {'stored MB':>9} {'peak RSS MB':>11}")
            for backend in backends:
                runs = []
                for i in range(args.repeat):
                    run_id = f"{dataset}-{backend}-{i}"
                    if backend.startswith("nats"):
                        target = f"{server.url}/b{i}_{dataset}_{backend.replace('-', '_')}"
                    else:
                        target = str(work / run_id)
                    cmd = [python, str(Path(__file__).resolve()), "--child", "--backend", backend, "--target", target,
                           "--rows", str(rows), "--batch", str(batch)] + (["--wide", str(cols)] if cols else [])
                    m = run_measured(cmd, log_prefix=work / "logs" / run_id, timeout=900)
                    out = json.loads((work / "logs" / f"{run_id}.out").read_text().strip().splitlines()[-1])
                    out.update(seconds=m.seconds, peak_rss=m.peak_rss, load=m.load)
                    runs.append(out)
                    if backend.startswith("nats"):
                        from replicant.log.nats import delete_nats_log

                        delete_nats_log(target)
                    else:
                        shutil.rmtree(target, ignore_errors=True)
                results["runs"][f"{dataset}/{backend}"] = runs
                med = {k: median([r[k] for r in runs if r.get(k) is not None]) for k in runs[0]}
                mb = med["nbytes"] / MB
                consumer = f"{fmt_rate(rows / med['consumer_s'])}" if runs[0]["consumer_s"] is not None else "-"
                print(f"{backend:<10} {fmt_rate(rows / med['append_s']):>13} {mb / med['append_s']:>6.0f} "
                      f"{med['reopen_s']:>8.2f} {fmt_rate(rows / med['read_s']):>11} {mb / med['read_s']:>6.0f} "
                      f"{fmt_rate(rows / med['read_sum_s']):>9} {consumer:>9} {med['stored'] / MB:>9.0f} "
                      f"{med['peak_rss'] / MB:>11.0f}", flush=True)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = REPO / "bench" / "results" / f"log-{results['date']}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nresults: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

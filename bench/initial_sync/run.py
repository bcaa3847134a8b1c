#!/usr/bin/env python3
"""Initial-sync benchmark: replicant vs the binary COPY pipe vs dlt, one run, one machine.

    python3 bench/initial_sync/run.py [--scale 50] [--wide-rows 1000000] [--rss-scale 200]
                                      [--repeat 3] [--only PATTERNS] [--no-rss-scale]

Starts a throwaway PostgreSQL 15 (tests/servers.py) with its data in a work directory,
builds the sources (pgbench -i -s SCALE; a wide table of 11 types), then times every
method (see methods.py) as a whole subprocess: median wall time of ``--repeat`` runs and
the peak RSS of its process tree. Every copy is verified (row count + per-column
checksums). Prints one table per dataset and the BENCHMARKS.md targets with PASS/MISS,
and writes bench/results/initial_sync-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import datasets
import driver_build
import methods
import pyspy
import report
from common import (
    MB,
    REPO,
    BenchError,
    fmt_rate,
    git_commit,
    machine_info,
    make_workdir,
    recreate_database,
    start_pg,
)

VENV = REPO / "bench" / ".venv-dlt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="methods: " + ", ".join(methods.METHODS))
    ap.add_argument("--scale", type=int, default=50, help="pgbench scale of the narrow table (×100k rows)")
    ap.add_argument("--wide-rows", type=int, default=1_000_000, help="rows of the wide table")
    ap.add_argument("--rss-scale", type=int, default=200, help="pgbench scale of the RSS scaling check")
    ap.add_argument("--no-rss-scale", action="store_true", help="skip the (slow) RSS scaling check")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per method (median reported)")
    ap.add_argument("--only", default="", help="comma-separated glob patterns of methods, e.g. 'copy-*,replicant-pg-*'")
    ap.add_argument("--datasets", default="narrow,wide", help="comma-separated: narrow, wide")
    ap.add_argument("--workdir", default=None, help="parent of the run's temp dir (needs several GB; default $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, pipeline files) after the run")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before one copy is killed")
    ap.add_argument("--results", default=None, help="results JSON path (default bench/results/initial_sync-<date>.json)")
    ap.add_argument("--no-save", action="store_true", help="do not write the results JSON")
    ap.add_argument("--py-spy", action="store_true",
                    help="after timing, profile each selected replicant method once more under py-spy")
    ap.add_argument("--py-spy-native", action="store_true", help="with --py-spy: include native frames")
    ap.add_argument("--report", metavar="RESULTS_JSON", default=None,
                    help="run nothing: print the tables and targets of a saved results file")
    return ap.parse_args(argv)


def reprint(path: Path, con) -> int:
    """Print the tables and targets of a saved results file (recomputed from its figures)."""
    data = json.loads(path.read_text())
    con.print(f"{path}: {data.get('date')}, {data.get('machine')}, {data.get('versions')}")
    items: list[report.Target] = []
    per_ds = {}
    for name, ds in data["datasets"].items():
        results = {m: report.MethodResult.from_json(m, d) for m, d in ds["methods"].items()}
        per_ds[name] = results
        n = max((len(r.seconds) for r in results.values()), default=0)
        con.print(report.dataset_table(f"{name}: {ds['table']}, {ds['rows']:,} rows, median of {ds.get('repeat', n)}",
                                       results))
        con.print(report.breakdown_lines(results))
        items += report.targets(name, results)
    if data.get("rss_scale") and "narrow" in per_ds:
        large = {m: report.MethodResult.from_json(m, d) for m, d in data["rss_scale"]["methods"].items()}
        con.print(report.dataset_table(f"rss-scale: {data['rss_scale']['rows']:,} rows, 1 run", large))
        con.print(report.breakdown_lines(large))
        items += report.rss_scale_targets(per_ds["narrow"], large)
    con.print(report.targets_table(items))
    return 0


def selected_jobs(only: str) -> list[methods.Job]:
    pats = [p.strip() for p in only.split(",") if p.strip()]
    if not pats:
        return list(methods.JOBS)
    jobs = [j for j in methods.JOBS if any(fnmatch.fnmatch(m, p) for m in j.methods for p in pats)]
    if not jobs:
        sys.exit(f"--only {only!r} matches no method; methods: {', '.join(methods.METHODS)}")
    return jobs


def ensure_dlt_venv(con) -> Path:
    """Create bench/.venv-dlt from requirements-dlt.txt if it is missing; return its python."""
    python = VENV / "bin" / "python"
    if python.exists():
        return python
    con.print(f"creating {VENV} (dlt, connectorx) …")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(HERE / "requirements-dlt.txt")], check=True)
    return python


def replicant_available() -> list[str] | None:
    cmd = methods.replicant_command()
    if not cmd:
        return None
    ok = subprocess.run([*cmd, "run", "--help"], capture_output=True, check=False).returncode == 0
    return cmd if ok else None


def versions(dlt_python: Path | None, server) -> dict:
    import duckdb
    import psycopg
    import pyarrow

    out = {"replicant_commit": git_commit(), "duckdb": duckdb.__version__, "pyarrow": pyarrow.__version__,
           "psycopg": psycopg.__version__}
    out.update(driver_build.installed())
    with server.connect() as conn:
        out["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
    if dlt_python:
        freeze = subprocess.run([str(dlt_python), "-m", "pip", "freeze"], capture_output=True, text=True, check=False).stdout
        for line in freeze.splitlines():
            name, _, ver = line.partition("==")
            if name.lower() in ("dlt", "connectorx", "pyarrow", "duckdb", "psycopg2-binary", "sqlalchemy"):
                out[f"dlt_venv.{name.lower()}"] = ver
    return out


def run_dataset(ctx, ds, src_db: str, jobs, repeat: int, con, *, loaded: bool = True) -> dict[str, report.MethodResult]:
    results = {m: report.MethodResult(m, ds.rows) for j in jobs for m in j.methods if loaded or not m.endswith("-loaded")}
    for rep in range(repeat):
        for job in jobs:  # interleaved: a slow drift of the machine hits every method alike
            try:
                for r in job.run(ctx, ds, src_db, rep, loaded=loaded):
                    res = results[r.method]
                    res.reps.append(rep)
                    res.seconds.append(r.measurement.seconds)
                    if r.measurement.peak_rss > res.peak:
                        res.rss_breakdown = r.measurement.rss_breakdown
                    res.peak_rss.append(r.measurement.peak_rss)
                    res.peak_anon.append(r.measurement.peak_anon)
                    res.cpu.append(r.measurement.cpu_seconds)
                    res.load.append(r.measurement.load)
                    res.problems.extend(p for p in r.problems if p not in res.problems)
                    res.info.update(r.info)
                    status = "ok" if not r.problems else "WRONG: " + "; ".join(r.problems[:3])
                    if r.method == "copy-devnull":
                        status = "-"
                    con.print(f"  {ds.name} {rep + 1}/{repeat} {r.method:<30} {r.measurement.seconds:8.2f} s "
                              f"{fmt_rate(ds.rows / r.measurement.seconds):>9} rows/s "
                              f"{r.measurement.peak_rss / MB:7.0f} MB (anon {r.measurement.peak_anon / MB:4.0f})"
                              f"  load {r.measurement.load:4.1f}  {status}")
            except BenchError as exc:
                for m in job.methods:
                    if m in results:
                        results[m].errors.append(str(exc))
                con.print(f"  {ds.name} {rep + 1}/{repeat} {job.name:<30} FAILED: {str(exc).splitlines()[0]}")
    return results


def profile_dataset(ctx, ds, src_db: str, jobs, args, con) -> dict[str, str]:
    wrap = pyspy.wrapper(native=args.py_spy_native)
    out = {}
    for job in jobs:
        if job.needs != "replicant":
            continue
        try:
            for r in job.run(ctx, ds, src_db, 99, wrap=wrap):
                raw = ctx.work / "logs" / f"{ds.name}-{r.method}-99.pyspy.txt"
                text = pyspy.summarize(raw) if raw.exists() else f"(no profile at {raw})"
                out[r.method] = text
                con.print(f"\n[py-spy] {ds.name} {r.method} (profiled run {r.measurement.seconds:.1f} s)\n{text}")
        except BenchError as exc:
            con.print(f"[py-spy] {job.name} FAILED: {str(exc).splitlines()[0]}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    con = report.console()
    if args.report:
        return reprint(Path(args.report), con)
    jobs = selected_jobs(args.only)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    dlt_python = ensure_dlt_venv(con) if any(j.needs == "dlt" for j in jobs) else None
    replicant_cmd = replicant_available()
    if not replicant_cmd and any(j.needs == "replicant" for j in jobs):
        con.print("[warning] `replicant run --help` does not work yet: replicant methods are skipped")
        jobs = [j for j in jobs if j.needs != "replicant"]
    if args.py_spy and not pyspy.available():
        sys.exit("--py-spy: py-spy is not installed (pip install py-spy)")

    work = make_workdir(args.workdir)
    con.print(f"work dir {work}")
    started = time.time()
    server = start_pg(work)
    out: dict = {"benchmark": "initial_sync", "date": dt.datetime.now().isoformat(timespec="seconds"),
                 "args": vars(args), "machine": machine_info(), "datasets": {}, "targets": []}
    all_targets: list[report.Target] = []
    try:
        out["versions"] = versions(dlt_python, server)
        con.print(f"PostgreSQL {out['versions']['postgresql']} on port {server.port}; {out['machine']}")
        ctx = methods.Ctx(server=server, work=work, timeout=args.timeout, replicant_cmd=replicant_cmd,
                          dlt_python=dlt_python)
        recreate_database(server, "src")
        per_ds: dict[str, dict[str, report.MethodResult]] = {}
        for name in names:
            ds = datasets.narrow(args.scale) if name == "narrow" else datasets.wide(args.wide_rows)
            t0 = time.time()
            datasets.build(server, "src", ds, scale=args.scale)
            con.print(f"built {ds.name}: {ds.rows:,} rows of {ds.table} in {time.time() - t0:.0f} s")
            results = run_dataset(ctx, ds, "src", jobs, args.repeat, con)
            per_ds[name] = results
            con.print(report.dataset_table(f"{ds.name}: {ds.table}, {ds.rows:,} rows, median of {args.repeat}", results))
            con.print(report.breakdown_lines(results))
            pipe = results.get("copy-pipe-pk")
            out["datasets"][name] = {"table": ds.table, "rows": ds.rows, "repeat": args.repeat,
                                     "methods": {m: r.to_json(pipe) for m, r in results.items()}}
            all_targets += report.targets(name, results)
            if args.py_spy:
                out["datasets"][name]["profiles"] = profile_dataset(ctx, ds, "src", jobs, args, con)

        scale_jobs = [j for j in jobs if j.name in ("replicant-pg-merge", "replicant-duckdb-merge")]
        if not args.no_rss_scale and scale_jobs and "narrow" in per_ds:
            ds = datasets.narrow(args.rss_scale)
            recreate_database(server, "src_rss")
            t0 = time.time()
            datasets.build(server, "src_rss", ds, scale=args.rss_scale)
            con.print(f"built rss-scale source: {ds.rows:,} rows in {time.time() - t0:.0f} s")
            large = run_dataset(ctx, ds, "src_rss", scale_jobs, 1, con, loaded=False)
            con.print(report.dataset_table(f"rss-scale: {ds.table}, {ds.rows:,} rows, 1 run", large))
            con.print(report.breakdown_lines(large))
            out["rss_scale"] = {"rows": ds.rows, "methods": {m: r.to_json(None) for m, r in large.items()}}
            all_targets += report.rss_scale_targets(per_ds["narrow"], large)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            con.print(f"kept work dir {work}")

    con.print(report.targets_table(all_targets))
    out["targets"] = [t.to_json() for t in all_targets]
    out["elapsed_s"] = round(time.time() - started)
    if not args.no_save:
        path = Path(args.results) if args.results else REPO / "bench" / "results" / f"initial_sync-{dt.date.today()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1, default=str) + "\n")
        con.print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: ``replicant validate`` on a 5M-row table, PG→PG and PG→DuckDB, equal and with
0.1 % of the rows changed, beside one ``COPY … TO STDOUT`` of the source table and beside
reladiff (its own virtualenv: ``python -m venv /tmp/reladiff-venv && /tmp/reladiff-venv/bin/pip
install reladiff psycopg2-binary duckdb``) on the same tables.

Builds ``pgbench_accounts`` (``pgbench -i -s rows/100000``) in its own database, syncs it with
``replicant run`` into a second database and a DuckDB file (not timed), then times each command
as a whole process, one after another. Prints seconds, the ratios, and the targets
(BENCHMARKS.md: 5M equal rows in ≤ 5 s; faster than reladiff, equal and with 0.1 % changed).
Not a test; nothing asserts.

    .venv/bin/python bench/validate/run.py                       # a throwaway PostgreSQL 15
    .venv/bin/python bench/validate/run.py --url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import common  # bench/common.py

SRC, DST = "replicant_bench_validate_src", "replicant_bench_validate_dst"
RELADIFF = Path(os.environ.get("RELADIFF", "/tmp/reladiff-venv/bin/reladiff"))
TARGET_SECONDS = 5.0


def _timed(cmd: list[str], *, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> tuple[float, int, str]:
    """Wall seconds, exit code and the output's last line of ``cmd`` run to completion."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in ok:
        raise common.BenchError(f"{' '.join(cmd[:4])}… exited {proc.returncode}: {proc.stderr[-2000:]}")
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return seconds, proc.returncode, lines[-1] if lines else ""


def _server_url(server, db: str) -> str:
    return server.url(db)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--url", help="an existing PostgreSQL server (any database URL on it); default: a throwaway one")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    work = common.make_workdir(args.workdir)
    tests = str(common.REPO / "tests")
    sys.path.insert(0, tests)
    import servers

    server = servers.existing_postgres(args.url) if args.url else common.start_pg(work)
    try:
        _run(server, work, args.rows, servers.find_pg_bindir())
    finally:
        if not args.url:
            server.stop()


def _run(server, work: Path, rows: int, bindir: Path) -> None:
    common.recreate_database(server, SRC)
    common.recreate_database(server, DST)
    src_url, dst_url = server.url(SRC), server.url(DST)
    env = {**os.environ, "PGPASSWORD": server.password or ""}
    print(f"building pgbench_accounts, {rows:,} rows …", flush=True)
    subprocess.run([str(bindir / "pgbench"), "-i", "-q", "-s", str(max(rows // 100_000, 1)), "-h", server.host, "-p",
                    str(server.port), "-U", server.user, SRC], check=True, env=env, capture_output=True)
    duck = work / "target.duckdb"
    pipeline = work / "validate.yml"
    pipeline.write_text(json.dumps({
        "pipeline": "bench_validate",
        "source": {"type": "postgres", "url": src_url, "streams": [{"table": "public.pgbench_accounts"}]},
        "destinations": [{"name": "pg", "type": "postgres", "url": dst_url}, {"name": "duck", "type": "duckdb", "path": str(duck)}],
    }))
    py = sys.executable
    renv = {**env, "PYTHONPATH": str(common.REPO / "src")}
    t, _, _ = _timed([py, "-m", "replicant.cli", "run", str(pipeline)], env=renv)
    print(f"replicant run (setup, not compared): {t:.1f} s", flush=True)
    common.checkpoint(server)
    with server.connect(SRC) as c:
        c.execute("VACUUM ANALYZE pgbench_accounts")
    with server.connect(DST) as c:
        c.execute("VACUUM ANALYZE pgbench_accounts")

    psql = [str(bindir / "psql"), "-h", server.host, "-p", str(server.port), "-U", server.user, "-d", SRC, "-q"]
    copy = ["sh", "-c", " ".join(f"'{a}'" for a in psql) + " -c 'COPY pgbench_accounts TO STDOUT' > /dev/null"]
    validate = [py, "-m", "replicant.cli", "validate", str(pipeline), "--wait", "0", "--destination"]
    cols = ["-k", "aid", "-c", "bid", "-c", "abalance", "-c", "filler"]
    reladiff = {
        "pg": [str(RELADIFF), src_url, "pgbench_accounts", dst_url, "pgbench_accounts", *cols, "-s"],
        "duck": [str(RELADIFF), src_url, "pgbench_accounts", f"duckdb://{duck}", "pgbench_accounts", *cols, "-s"],
    }
    figures: dict[str, dict[str, float]] = {}
    for case in ("equal", "0.1% changed"):
        if case != "equal":
            with server.connect(SRC) as c:
                changed = c.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 1000 = 0").rowcount
            print(f"changed {changed:,} rows at the source", flush=True)
        f = figures[case] = {}
        f["COPY TO STDOUT"], _, _ = _timed(copy, env=env)
        for dest in ("pg", "duck"):
            f[f"validate {dest}"], code, last = _timed([*validate, dest], env=renv, ok=(0, 1))
            print(f"  validate → {dest}: exit {code}: {last[:120]}", flush=True)
            if RELADIFF.exists():
                f[f"reladiff {dest}"], _, last = _timed(reladiff[dest], env=env, ok=(0, 1))
                print(f"  reladiff → {dest}: {last[:120]}", flush=True)
    print()
    print(f"{'case':<14} {'COPY TO STDOUT':>15} {'validate PG→PG':>15} {'reladiff PG→PG':>15} "
          f"{'validate PG→DuckDB':>19} {'reladiff PG→DuckDB':>19}")
    for case, f in figures.items():
        def cell(k: str, width: int, f: dict[str, float] = f) -> str:
            return f"{f[k]:>{width - 2}.2f} s" if k in f else f"{'-':>{width}}"
        print(f"{case:<14} {cell('COPY TO STDOUT', 15)} {cell('validate pg', 15)} {cell('reladiff pg', 15)} "
              f"{cell('validate duck', 19)} {cell('reladiff duck', 19)}")
    print()
    eq = figures["equal"]
    for dest, label in (("pg", "PG→PG"), ("duck", "PG→DuckDB")):
        v = eq[f"validate {dest}"]
        print(f"target {label}: {rows:,} equal rows in ≤ {TARGET_SECONDS:.0f} s: {v:.2f} s "
              f"({v / eq['COPY TO STDOUT']:.2f}× one COPY TO STDOUT) {'PASS' if v <= TARGET_SECONDS else 'MISS'}")
        for case, f in figures.items():
            if f"reladiff {dest}" in f:
                r = f[f"reladiff {dest}"]
                ok = f[f"validate {dest}"] < r
                print(f"target {label}, {case}: faster than reladiff: {f[f'validate {dest}']:.2f} s vs {r:.2f} s "
                      f"({r / f[f'validate {dest}']:.1f}×) {'PASS' if ok else 'MISS'}")
    out = common.REPO / "bench" / "results" / f"validate-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps({"rows": rows, "figures": figures, "machine": common.machine_info(), "commit": common.git_commit()},
                              indent=2) + "\n")
    print(f"\nwritten to {out.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()

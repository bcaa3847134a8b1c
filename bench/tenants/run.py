#!/usr/bin/env python3
"""Tenants into one shared table: N tenants at once vs the same tenants one after another.

    PYTHONPATH=src python3 bench/tenants/run.py [--tenants 4] [--rows 250000] [--targets pg,duckdb]

Starts a throwaway PostgreSQL (tests/servers.py), builds one database per tenant with a table
shaped like pgbench_accounts (int key, two ints, char(84)), then times as whole subprocesses,
in one run:

* the baseline: a binary ``COPY … TO STDOUT | COPY … FROM STDIN`` pipe per tenant, one after
  another, into one keyed table per tenant (no shared table, no tenant column);
* ``replicant run --tenant T`` for each tenant, one after another (sequential onboarding);
* ``replicant run`` of every tenant at once (one process, one feed per tenant) into the same
  shared table (``write: merge``, key ``(_tenant, aid)``), PostgreSQL and DuckDB.

Every copy is verified by row count and key sum per tenant. Prints seconds, rows/s, the ratio
to the COPY baseline and to the sequential tenants.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from common import (
    MB,
    BenchError,
    Measurement,
    checkpoint,
    fmt_rate,
    recreate_database,
    run_measured,
    throwaway_pg,
)

TARGET_DB = "ten_dst"


def build_sources(server, tenants: int, rows: int) -> None:
    for t in range(tenants):
        recreate_database(server, f"ten_src{t}")
        with server.connect(f"ten_src{t}") as conn:
            conn.execute("CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))")
            conn.execute(f"INSERT INTO accounts SELECT g, g % 1000, {t}, '' FROM generate_series(1, {rows}) g")
            conn.execute("VACUUM ANALYZE")
    checkpoint(server)


def copy_pipe(server, work: Path, tenants: int) -> Measurement:
    recreate_database(server, TARGET_DB)
    with server.connect(TARGET_DB) as conn:
        for t in range(tenants):
            conn.execute(f"CREATE TABLE accounts{t} (aid int PRIMARY KEY, bid int, abalance int, filler char(84))")
    psql = str(Path(server.bindir) / "psql")
    base = f"{psql} -X -q -h {server.host} -p {server.port} -U {server.user}"
    steps = " && ".join(
        f"{base} -d ten_src{t} -c 'COPY accounts TO STDOUT (FORMAT binary)' | "
        f"{base} -d {TARGET_DB} -c 'COPY accounts{t} FROM STDIN (FORMAT binary)'"
        for t in range(tenants)
    )
    return run_measured(["bash", "-c", f"set -o pipefail; {steps}"], log_prefix=work / "logs" / "copy-pipe")


def pipeline(server, work: Path, name: str, target: str, tenants: int) -> Path:
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    url = f"postgresql://{server.user}@{server.host}:{server.port}"
    if target == "pg":
        dest = f"  - {{name: out, type: postgres, url: '{url}/{TARGET_DB}', schema: {name}, write: merge}}\n"
    else:
        dest = "  - {name: out, type: duckdb, path: out.duckdb, write: merge}\n"
    tenant_lines = "".join(f"  - {{id: t{t}, url: '{url}/ten_src{t}'}}\n" for t in range(tenants))
    (folder / "pipeline.yml").write_text(
        f"pipeline: {name}\nsource:\n  type: postgres\n  url: '{url}/ten_src0'\n  streams: [public.accounts]\n"
        f"tenants:\n{tenant_lines}destinations:\n{dest}"
    )
    return folder


def replicant(work: Path, folder: Path, label: str, args: list[str]) -> Measurement:
    exe = Path(sys.executable).with_name("replicant")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "replicant.cli"]
    return run_measured([*cmd, "run", str(folder / "pipeline.yml"), *args], log_prefix=work / "logs" / label, cwd=folder)


def verify(server, folder: Path, target: str, schema: str, tenants: int, rows: int) -> None:
    want = [(f"t{t}", rows, rows * (rows + 1) // 2) for t in range(tenants)]
    sql = "SELECT _tenant, count(*), sum(aid) FROM {} GROUP BY 1 ORDER BY 1"
    if target == "pg":
        with server.connect(TARGET_DB) as conn:
            got = [tuple(r) for r in conn.execute(sql.format(f'"{schema}".accounts')).fetchall()]
    else:
        import duckdb

        with duckdb.connect(str(folder / "out.duckdb"), read_only=True) as con:
            got = [tuple(r) for r in con.execute(sql.format("accounts")).fetchall()]
    if [(t, int(n), int(s)) for t, n, s in got] != want:
        raise BenchError(f"{folder.name}: {got} != {want}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--rows", type=int, default=250_000)
    ap.add_argument("--targets", default="pg,duckdb")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    total = args.tenants * args.rows
    lines: list[tuple[str, Measurement, Measurement | None]] = []
    with throwaway_pg(args.workdir) as (server, work):
        print(f"building {args.tenants} tenants × {args.rows:,} rows …", flush=True)
        build_sources(server, args.tenants, args.rows)
        base = copy_pipe(server, work, args.tenants)
        lines.append(("copy-pipe, one tenant after another (baseline)", base, None))
        for target in args.targets.split(","):
            word = "PG" if target == "pg" else "DuckDB"
            seq_folder = pipeline(server, work, f"seq_{target}", target, args.tenants)
            parts = []
            for t in range(args.tenants):
                checkpoint(server)
                parts.append(replicant(work, seq_folder, f"seq_{target}_t{t}", ["--tenant", f"t{t}"]))
            verify(server, seq_folder, target, f"seq_{target}", args.tenants, args.rows)
            seq = Measurement(seconds=sum(m.seconds for m in parts), peak_rss=max(m.peak_rss for m in parts),
                              peak_anon=max(m.peak_anon for m in parts), cpu_seconds=sum(m.cpu_seconds for m in parts),
                              returncode=0, load=parts[0].load)
            lines.append((f"replicant PG→{word}, --tenant one after another", seq, None))
            checkpoint(server)
            all_folder = pipeline(server, work, f"all_{target}", target, args.tenants)
            m = replicant(work, all_folder, f"all_{target}", [])
            verify(server, all_folder, target, f"all_{target}", args.tenants, args.rows)
            lines.append((f"replicant PG→{word}, all tenants at once", m, seq))
    print(f"\n{args.tenants} tenants × {args.rows:,} rows = {total:,} rows into one shared table "
          "(verified: count and key sum per tenant)\n")
    print(f"| {'method':<48} | {'s':>7} | {'rows/s':>8} | {'× baseline':>10} | {'× sequential':>12} "
          f"| {'client CPU s':>12} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 50}|{'-' * 9}|{'-' * 10}|{'-' * 12}|{'-' * 14}|{'-' * 14}|{'-' * 13}|")
    for label, m, seq in lines:
        vs = f"{seq.seconds / m.seconds:.2f}" if seq else "-"
        print(f"| {label:<48} | {m.seconds:7.2f} | {fmt_rate(total / m.seconds):>8} | "
              f"{base.seconds / m.seconds:10.2f} | {vs:>12} | {m.cpu_seconds:12.1f} | {m.peak_rss / MB:11.0f} |")
    print(f"\n(load before runs: {', '.join(f'{m.load:.1f}' for _, m, _ in lines)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

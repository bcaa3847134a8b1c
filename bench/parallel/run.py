#!/usr/bin/env python3
"""Many tables at once: a tenant onboarding of 12 tables × 500k rows, ``parallelism`` 1 vs 2.

    python3 bench/parallel/run.py [--tables 12] [--rows 500000] [--targets pg,duckdb]

Starts a throwaway PostgreSQL (tests/servers.py), builds TABLES tables shaped like
pgbench_accounts (int key, two ints, char(84)), then times as whole subprocesses, in one run:

* the baseline: a binary ``COPY … TO STDOUT | COPY … FROM STDIN`` pipe per table, one after
  another, into keyed tables;
* ``replicant run`` PostgreSQL → PostgreSQL (write: merge) and PostgreSQL → DuckDB (merge),
  each with ``parallelism: 1`` and ``parallelism: 2``.

Every copy is verified by row count and key sum. Prints seconds, rows/s, the ratio to the
baseline and to parallelism 1, the client's CPU seconds (server processes not counted) and peak
RSS of the process tree.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from common import (
    MB,
    REPO,
    BenchError,
    Measurement,
    checkpoint,
    fmt_rate,
    recreate_database,
    run_measured,
    throwaway_pg,
)

SOURCE_DB = "par_src"
TARGET_DB = "par_dst"


def build_source(server, tables: int, rows: int) -> None:
    recreate_database(server, SOURCE_DB)
    with server.connect(SOURCE_DB) as conn:
        for i in range(tables):
            conn.execute(f"CREATE TABLE t{i:02d} (aid int PRIMARY KEY, bid int, abalance int, filler char(84))")
            conn.execute(f"INSERT INTO t{i:02d} SELECT g, g % 1000, 0, '' FROM generate_series(1, {rows}) g")
        conn.execute("VACUUM ANALYZE")
    checkpoint(server)


def target_tables(server, tables: int) -> None:
    recreate_database(server, TARGET_DB)
    with server.connect(TARGET_DB) as conn:
        for i in range(tables):
            conn.execute(f"CREATE TABLE t{i:02d} (aid int PRIMARY KEY, bid int, abalance int, filler char(84))")


def verify_pg(server, tables: int, rows: int, schema: str = "public") -> None:
    want = (rows, rows * (rows + 1) // 2)
    with server.connect(TARGET_DB) as conn:
        for i in range(tables):
            got = conn.execute(f'SELECT count(*), sum(aid) FROM "{schema}".t{i:02d}').fetchone()
            if tuple(got) != want:
                raise BenchError(f"t{i:02d}: {got} != {want}")


def verify_duckdb(path: Path, tables: int, rows: int) -> None:
    import duckdb

    want = (rows, rows * (rows + 1) // 2)
    with duckdb.connect(str(path), read_only=True) as con:
        for i in range(tables):
            got = con.execute(f"SELECT count(*), sum(aid) FROM t{i:02d}").fetchone()
            if tuple(got) != want:
                raise BenchError(f"duckdb t{i:02d}: {got} != {want}")


def copy_pipe(server, work: Path, tables: int) -> Measurement:
    psql = str(Path(server.bindir) / "psql")
    base = f"{psql} -X -q -h {server.host} -p {server.port} -U {server.user}"
    steps = " && ".join(
        f"{base} -d {SOURCE_DB} -c 'COPY t{i:02d} TO STDOUT (FORMAT binary)' | "
        f"{base} -d {TARGET_DB} -c 'COPY t{i:02d} FROM STDIN (FORMAT binary)'"
        for i in range(tables)
    )
    return run_measured(["bash", "-c", f"set -o pipefail; {steps}"], log_prefix=work / "logs" / "copy-pipe")


def replicant(server, work: Path, target: str, parallelism: int, tables: int) -> tuple[Measurement, Path]:
    name = f"par_{target}_{parallelism}"
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    src = f"postgresql://{server.user}@{server.host}:{server.port}/{SOURCE_DB}"
    if target == "pg":
        dest = (f"  - name: out\n    type: postgres\n    url: postgresql://{server.user}@{server.host}:{server.port}/{TARGET_DB}\n"
                f"    schema: p{parallelism}\n    write: merge\n")
    else:
        dest = "  - name: out\n    type: duckdb\n    path: out.duckdb\n    write: merge\n"
    streams = "".join(f"    - public.t{i:02d}\n" for i in range(tables))
    (folder / "pipeline.yml").write_text(
        f"pipeline: {name}\nparallelism: {parallelism}\nsource:\n  type: postgres\n  url: {src}\n  streams:\n{streams}"
        f"destinations:\n{dest}"
    )
    exe = Path(sys.executable).with_name("replicant")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "replicant.cli"]
    m = run_measured([*cmd, "run", str(folder / "pipeline.yml")], log_prefix=work / "logs" / name, cwd=folder)
    return m, folder


def _median(ms: list[Measurement]) -> Measurement:
    """The repeat with the median wall time; its peak RSS raised to the largest of all repeats."""
    ordered = sorted(ms, key=lambda m: m.seconds)
    mid = ordered[(len(ordered) - 1) // 2]
    return dataclasses.replace(mid, peak_rss=max(m.peak_rss for m in ms))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--tables", type=int, default=12)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--targets", default="pg,duckdb")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds; parallelism 1 and 2 swap order each round (the first run's fresh tables may still be "
                         "vacuumed during the second), medians reported")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    total = args.tables * args.rows
    runs: dict[tuple[str, int], list[Measurement]] = {}
    pipes: list[Measurement] = []
    with throwaway_pg(args.workdir) as (server, work):
        print(f"building {args.tables} tables × {args.rows:,} rows …", flush=True)
        build_source(server, args.tables, args.rows)
        for r in range(args.repeat):
            target_tables(server, args.tables)
            checkpoint(server)
            pipes.append(copy_pipe(server, work, args.tables))
            verify_pg(server, args.tables, args.rows)
            for target in args.targets.split(","):
                for par in ((1, 2) if r % 2 == 0 else (2, 1)):
                    checkpoint(server)
                    m, folder = replicant(server, work, target, par, args.tables)
                    if target == "pg":
                        verify_pg(server, args.tables, args.rows, schema=f"p{par}")
                    else:
                        verify_duckdb(folder / "out.duckdb", args.tables, args.rows)
                    runs.setdefault((target, par), []).append(m)
                    print(f"  round {r + 1}: {target} parallelism {par}: {m.seconds:.2f} s", flush=True)
    base = _median(pipes)
    lines: list[tuple[str, Measurement, Measurement | None]] = [("copy-pipe (sequential, baseline)", base, None)]
    for target in args.targets.split(","):
        first = _median(runs[(target, 1)])
        lines.extend((f"replicant PG→{'PG' if target == 'pg' else 'DuckDB'} merge, parallelism {par}",
                      _median(runs[(target, par)]), None if par == 1 else first) for par in (1, 2))
    print(f"\n{args.tables} tables × {args.rows:,} rows = {total:,} rows (verified: count and key sum per table), "
          f"median of {args.repeat}\n")
    print(f"| {'method':<44} | {'s':>7} | {'rows/s':>8} | {'× baseline':>10} | {'× parallelism 1':>15} "
          f"| {'client CPU s':>12} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 10}|{'-' * 12}|{'-' * 17}|{'-' * 14}|{'-' * 13}|")
    for label, m, first in lines:
        vs1 = f"{first.seconds / m.seconds:.2f}" if first else "-"
        print(f"| {label:<44} | {m.seconds:7.2f} | {fmt_rate(total / m.seconds):>8} | "
              f"{base.seconds / m.seconds:10.2f} | {vs1:>15} | {m.cpu_seconds:12.1f} | {m.peak_rss / MB:11.0f} |")
    print(f"\n(REPO {REPO.name}; load before runs: {', '.join(f'{m.load:.1f}' for _, m, _ in lines)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

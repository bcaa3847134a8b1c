#!/usr/bin/env python3
"""Files source benchmark: one CSV into PostgreSQL and into DuckDB, beside each engine's own
CSV loader, in the same run on the same file.

    PYTHONPATH=src .venv/bin/python bench/files/run.py [--rows 5000000] [--workdir DIR]

A CSV of ``--rows`` rows (id, name, amount, day, note with quoted commas) is generated once.
Then, each a whole subprocess (wall time, peak RSS of its process tree, see bench/common.py):

1. ``replicant run`` → PostgreSQL, a table keyed by ``id`` (``primary_key: [id]``; the origin
   columns left out, so both load the same columns);
2. ``psql -c "\\copy … FROM file CSV HEADER"`` into the same keyed table (truncated first);
3. ``replicant run`` → DuckDB, keyed by ``id``;
4. DuckDB's own ``read_csv`` into a table keyed the same way.

Both loads of a pair are checked to hold the same row count and sum of ``id``. Prints rows/s,
the ratios (targets: ≥ 0.8× psql, ≥ 0.5× DuckDB's read_csv, peak RSS ≤ 256 MB) and writes
bench/results/files-<date>.txt.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from common import MB, REPO, fmt_rate, git_commit, machine_info, make_workdir, recreate_database, run_measured, start_pg

COLUMNS = "id bigint PRIMARY KEY, name text, amount double precision, day date, note text"


def generate(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("amount", pa.float64()), ("day", pa.date32()),
                        ("note", pa.string())])
    with pcsv.CSVWriter(path, schema) as w:
        for start in range(0, rows, 1_000_000):
            ids = np.arange(start + 1, min(rows, start + 1_000_000) + 1)
            w.write_table(pa.table({
                "id": ids,
                "name": pc.binary_join_element_wise("customer ", pa.array(ids).cast(pa.string()), ""),
                "amount": ids * 0.25,
                "day": pa.array((ids % 3650).astype("int32")).cast(pa.date32()),
                "note": pa.array(np.where(ids % 10 == 0, "late, paid twice", "ok")),
            }, schema=schema))


def pipeline(directory: Path, csv: Path, destination: str) -> Path:
    path = directory / "pipeline.yml"
    path.write_text(f"""
pipeline: bench_files
source:
  type: files
  url: {csv.parent}
  streams:
    - {{name: orders, glob: {csv.name}, primary_key: [id], exclude: [_file, _line],
        schema: {{id: int64, amount: double, day: date}}}}
destinations:
  - {destination}
""")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = make_workdir(args.workdir)
    csv = work / "data" / "orders.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    generate(csv, args.rows)
    size_mb = csv.stat().st_size / MB
    python = sys.executable
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    replicant = [python, "-m", "replicant.cli", "run"]
    lines = [f"files bench: {args.rows:,} rows, {size_mb:,.0f} MB CSV; commit {git_commit()}; {machine_info()}"]
    server = start_pg(work)
    try:
        import psycopg

        recreate_database(server, "bench")
        url = server.url("bench")
        results = {}
        run_dir = work / "pg"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        p = pipeline(run_dir, csv, f"{{name: pg, type: postgres, url: '{url}', tables: {{orders: orders}}}}")
        results["replicant → PostgreSQL"] = run_measured([*replicant, str(p)], log_prefix=work / "logs" / "rep_pg", env=env, cwd=run_dir)
        with psycopg.connect(url, autocommit=True) as c:
            rep = c.execute("SELECT count(*), sum(id) FROM orders").fetchone()
            c.execute("DROP TABLE IF EXISTS orders_psql")
            c.execute(f"CREATE TABLE orders_psql ({COLUMNS})")
        psql = str(server.bindir / "psql") if server.bindir else "psql"
        copy = f"\\copy orders_psql (id, name, amount, day, note) FROM '{csv}' CSV HEADER"
        results["psql \\copy → PostgreSQL"] = run_measured([psql, url, "-v", "ON_ERROR_STOP=1", "-c", copy],
                                                           log_prefix=work / "logs" / "psql", env=env)
        with psycopg.connect(url, autocommit=True) as c:
            base = c.execute("SELECT count(*), sum(id) FROM orders_psql").fetchone()
        assert rep == base == (args.rows, args.rows * (args.rows + 1) // 2), (rep, base)

        run_dir = work / "duck"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        p = pipeline(run_dir, csv, "{name: wh, type: duckdb, path: wh.duckdb}")
        results["replicant → DuckDB"] = run_measured([*replicant, str(p)], log_prefix=work / "logs" / "rep_duck", env=env, cwd=run_dir)
        own = (f"import duckdb; c = duckdb.connect('{run_dir / 'own.duckdb'}'); "
               f"c.execute('CREATE TABLE orders ({COLUMNS.replace('double precision', 'double')})'); "
               f"c.execute(\"INSERT INTO orders SELECT * FROM read_csv('{csv}', header = true)\"); c.close()")
        results["DuckDB read_csv → DuckDB"] = run_measured([python, "-c", own], log_prefix=work / "logs" / "duck", env=env)
        import duckdb

        with duckdb.connect(str(run_dir / "wh.duckdb"), read_only=True) as c:
            rep = c.execute("SELECT count(*), sum(id) FROM orders").fetchone()
        with duckdb.connect(str(run_dir / "own.duckdb"), read_only=True) as c:
            base = c.execute("SELECT count(*), sum(id) FROM orders").fetchone()
        assert rep == base, (rep, base)
    finally:
        server.stop()
    for name, m in results.items():
        lines.append(f"  {name:28} {m.seconds:7.1f} s  {fmt_rate(args.rows / m.seconds):>8} rows/s  "
                     f"peak RSS {m.peak_rss / MB:6.0f} MB  (load {m.load:.1f})")
    pg = results["psql \\copy → PostgreSQL"].seconds / results["replicant → PostgreSQL"].seconds
    duck = results["DuckDB read_csv → DuckDB"].seconds / results["replicant → DuckDB"].seconds
    rss = max(results["replicant → PostgreSQL"].peak_rss, results["replicant → DuckDB"].peak_rss) / MB
    lines.append(f"  replicant / psql \\copy: {pg:.2f}x (target >= 0.8) {'PASS' if pg >= 0.8 else 'MISS'}")
    lines.append(f"  replicant / DuckDB read_csv: {duck:.2f}x (target >= 0.5) {'PASS' if duck >= 0.5 else 'MISS'}")
    lines.append(f"  replicant peak RSS: {rss:.0f} MB (target <= 256) {'PASS' if rss <= 256 else 'MISS'}")
    text = "\n".join(lines)
    print(text)
    out = REPO / "bench" / "results" / f"files-{dt.date.today().isoformat()}.txt"
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Client CPU and wall time of the ways to write Arrow batches into PostgreSQL.

    python3 bench/initial_sync/pg_writer.py [--rows 1000000] [--repeat 3] [--workdir DIR]

Why the PostgreSQL destination writes with pgpq over psycopg (docs/measurements.md,
"PostgreSQL destination"). The narrow (pgbench shape) and wide (11 columns, ``numeric(12,2)``
as ``decimal128``) tables of ``datasets.py`` are read once into Arrow, then written into an
empty table with the source's primary key, in 200k-row transactions, by:

* **adbc**: ADBC's ``adbc_ingest`` (binary ``COPY``, encoded by the installed
  ``adbc-driver-postgresql``; its 1.9-1.13 wheels are built without optimisation, see
  ``driver_build.py``), in 16k-row batches as the destination sent them;
* **pgpq**: the destination's own path, :func:`replicant.destinations._pg_copy.copy_into`
  (binary ``COPY`` encoded by pgpq, sent with psycopg);
* **csv**: pyarrow's CSV writer into ``COPY … (FORMAT csv)`` over psycopg: the least client
  CPU, but the server parses text, and the server is the bottleneck of a keyed load.

Each writer runs in a fresh process, interleaved with the others, best of ``--repeat``.
Printed: client CPU-seconds (user + system of the writing process; server CPU not counted)
and wall seconds. A throwaway PostgreSQL 15 runs the server side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import child_best, cpu_seconds, throwaway_pg

WRITERS = ("adbc", "pgpq", "csv")
TRANSACTION_ROWS = 200_000


def _read(src: str, table: str):
    """The table as Arrow, ``numeric`` as ``decimal128`` (what replicant's source delivers)."""
    import adbc_driver_postgresql.dbapi as adbc_pg
    import pyarrow as pa

    with adbc_pg.connect(src) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table}")
        data = cur.fetch_arrow_table()
    for i, f in enumerate(data.schema):
        if isinstance(f.type, pa.BaseExtensionType):  # numeric: arrow.opaque over its text
            text = pa.chunked_array([c.storage for c in data.column(i).chunks])
            data = data.set_column(i, pa.field(f.name, pa.decimal128(12, 2)), text.cast(pa.decimal128(12, 2)))
    return data


def _write(writer: str, dst: str, table: str, data) -> None:
    import pyarrow as pa

    parts = [data.slice(start, TRANSACTION_ROWS) for start in range(0, data.num_rows, TRANSACTION_ROWS)]
    if writer == "adbc":
        import adbc_driver_postgresql.dbapi as adbc_pg

        with adbc_pg.connect(dst, autocommit=False) as conn, conn.cursor() as cur:
            for part in parts:
                cur.adbc_ingest(table, pa.Table.from_batches(part.to_batches(max_chunksize=16_384)), mode="append")
                conn.commit()
        return
    import psycopg

    with psycopg.connect(dst) as conn, conn.cursor() as cur:
        columns = [f'"{n}"' for n in data.column_names]
        for part in parts:
            if writer == "pgpq":
                from replicant.destinations._pg_copy import copy_into, copy_ready

                copy_into(cur, table, columns, copy_ready(part))
            else:
                import pyarrow.csv as pcsv

                options = pcsv.WriteOptions(include_header=False, quoting_style="needed")
                with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT csv)") as copy:
                    for batch in part.to_batches(max_chunksize=32_768):
                        sink = pa.BufferOutputStream()
                        pcsv.write_csv(batch, sink, options)
                        copy.write(sink.getvalue())
            conn.commit()


def _measure(args: argparse.Namespace) -> dict[str, float]:
    """One writer in this process (``--child``)."""
    import psycopg

    data = _read(args.src, args.table)
    with psycopg.connect(args.dst, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {args.table}")
        conn.execute(args.ddl)
        conn.execute(f"ALTER TABLE {args.table} ADD PRIMARY KEY ({args.key})")
        conn.execute("CHECKPOINT")
    import adbc_driver_postgresql.dbapi  # noqa: F401 - imported before the clock starts
    import pyarrow.csv  # noqa: F401

    import replicant.destinations._pg_copy  # noqa: F401

    c0, w0 = cpu_seconds(), time.perf_counter()
    _write(args.writer, args.dst, args.table, data)
    out = {"cpu": cpu_seconds() - c0, "wall": time.perf_counter() - w0}
    with psycopg.connect(args.dst) as conn:
        count = conn.execute(f"SELECT count(*) FROM {args.table}").fetchone()[0]
    if count != data.num_rows:
        raise SystemExit(f"{args.writer}: {count} rows written, {data.num_rows} expected")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of each table (narrow: a multiple of 100k)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("src", "dst", "table", "writer", "ddl", "key"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_measure(args)))
        return 0

    import datasets

    with throwaway_pg(args.workdir) as (server, _work):
        tables = datasets.build_pair(server, args.rows)
        print(f"{args.rows:,} rows per table into an empty keyed table; client CPU-s (wall s), best of {args.repeat}")
        print(f"{'table':<8} " + " ".join(f"{w:>16}" for w in WRITERS))
        for ds in tables:
            with server.connect("src") as conn:
                ddl = _table_ddl(conn, ds.table)
            best: dict[str, dict[str, float]] = {w: {} for w in WRITERS}
            for _ in range(args.repeat):
                for w in WRITERS:  # interleaved: drift hits every writer alike
                    child_best(__file__, ["--src", server.url("src"), "--dst", server.url("dst"), "--table", ds.table,
                                          "--writer", w, "--ddl", ddl, "--key", ds.key], best[w])
            cells = [f"{best[w]['cpu']:6.2f} ({best[w]['wall']:5.2f})" for w in WRITERS]
            print(f"{ds.name:<8} " + " ".join(f"{c:>16}" for c in cells), flush=True)
    return 0


def _table_ddl(conn, table: str) -> str:
    """``CREATE TABLE`` of the source table's columns (types as declared, no key)."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", [table]
    ).fetchall()
    return f"CREATE TABLE {table} (" + ", ".join(f'"{n}" {t}' for n, t in rows) + ")"


if __name__ == "__main__":
    sys.exit(main())

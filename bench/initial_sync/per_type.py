#!/usr/bin/env python3
"""Client CPU per column type of the wide table: which type makes PG→PG copies slow?

    python3 bench/initial_sync/per_type.py [--rows 1000000] [--workdir DIR]

Starts a throwaway PostgreSQL 15, builds the wide table (datasets.py), then for the key
alone and for the key plus each other column: reads ``SELECT id, <column>`` through ADBC's
binary COPY as replicant's PostgreSQL source does (its select expression and batch hint,
numeric(p,s) as text cast to decimal) and bulk-loads the batches into a keyed table
with ``adbc_ingest`` in 200k-row transactions as the PostgreSQL destination does. Prints
the client CPU-seconds (user + system of this process) of each, and the excess over the
key alone, which is what the column costs. Server CPU is not counted; wall times are
printed but are only comparable on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import datasets
from common import cpu_seconds, recreate_database, throwaway_pg

#: PostgreSQL type of each wide column (datasets.wide's DDL), and its pg_type.typname.
TYPNAMES = {"bigint": "int8", "int": "int4", "numeric(12,2)": "numeric"}
TYPES = {"id": "bigint", "i": "int", "b": "bigint", "amount": "numeric(12,2)", "f": "float8", "t": "text",
         "tn": "text", "ts": "timestamptz", "tsn": "timestamp", "flag": "bool", "d": "date"}


def _read(url: str, column: str) -> tuple[list, float, float]:
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa

    from replicant.sources.postgres.source import _COPY_BATCH_BYTES
    from replicant.sources.types import pg_column

    typmod = (12 << 16 | 2) + 4 if column == "amount" else -1
    col = pg_column(column, TYPES[column], TYPNAMES.get(TYPES[column], TYPES[column]), "b", typmod)
    select = "id" if column == "id" else f"id, {col.select.format(column)} AS {column}"
    c0, w0 = cpu_seconds(), time.perf_counter()
    conn = adbc.connect(url, autocommit=True)
    cur = conn.cursor()
    cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(_COPY_BATCH_BYTES)})
    cur.execute(f"SELECT {select} FROM wide")
    batches = []
    for b in cur.fetch_record_batch():
        if column != "id":
            arr = b.column(1)
            if isinstance(arr.type, pa.BaseExtensionType):
                arr = arr.storage
            if arr.type != col.arrow:  # numeric(p,s) arrives as text, cast as the source does
                arr = arr.cast(col.arrow)
            b = pa.RecordBatch.from_arrays([b.column(0), arr], names=b.schema.names)
        batches.append(b)
    cur.close()
    conn.close()
    return batches, cpu_seconds() - c0, time.perf_counter() - w0


def _ingest(url: str, column: str, batches: list) -> tuple[float, float]:
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa

    table = f"w_{column}"
    conn = adbc.connect(url, autocommit=False)
    cur = conn.cursor()
    cur.execute(f"DROP TABLE IF EXISTS {table}")
    cur.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY" + ("" if column == "id" else f", {column} {TYPES[column]}") + ")")
    conn.commit()
    whole = pa.Table.from_batches(batches)
    c0, w0 = cpu_seconds(), time.perf_counter()
    for start in range(0, whole.num_rows, 200_000):
        part = whole.slice(start, 200_000)
        cur.adbc_ingest(table, pa.Table.from_batches(part.to_batches(max_chunksize=16_384)), mode="append")
        conn.commit()
    cpu, wall = cpu_seconds() - c0, time.perf_counter() - w0
    cur.close()
    conn.close()
    return cpu, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    with throwaway_pg(args.workdir) as (server, _work):
        recreate_database(server, "src")
        recreate_database(server, "dst")
        datasets.build(server, "src", datasets.wide(args.rows))
        src, dst = server.url("src"), server.url("dst")
        print(f"{args.rows:,} rows; client CPU-seconds (wall in brackets)")
        print(f"{'column':<22} {'read':>14} {'ingest':>14} {'read + ingest over the key alone':>34}")
        base = None
        for column in TYPES:
            batches, rc, rw = _read(src, column)
            ic, iw = _ingest(dst, column, batches)
            if base is None:
                base = rc + ic
            label = "id (the key alone)" if column == "id" else f"+ {column} {TYPES[column]}"
            print(f"{label:<22} {rc:6.2f} ({rw:5.2f}) {ic:6.2f} ({iw:5.2f}) {rc + ic - base:+34.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Client CPU of ADBC's PostgreSQL and SQLite drivers, release by release: is a build optimised?

    python3 bench/initial_sync/driver_build.py [--versions 1.8.0,1.13.0] [--rows 1000000] [--workdir DIR]

ADBC's Python wheels 1.9.0 to 1.13.0 (x86_64 manylinux, both drivers) carry C++ compiled
without optimisation: trivial helpers (``__bswap_32``, ``std::unique_ptr::operator->``) are
out-of-line functions that spill their arguments to the stack, the ``-O0`` signature. The
last optimised release is 1.8.0. Its ``adbc_ingest`` writes Arrow decimals with the wrong scale
(1.10 arrives as 110.00), maps ``arrow.uuid`` to ``bytea`` and aborts the process when its
connection is lost; replicant's PostgreSQL destination writes with pgpq instead, and the
source only reads, so pyproject.toml pins the PostgreSQL driver to 1.8.0 (the suite passes
with it). The SQLite driver still follows the newest release. This script is how to check a
newer release before moving the pin.

For each release in ``--versions`` it downloads the two driver wheels (``pip download
--no-deps``, into the work dir), counts the ``-O0`` tell in each shared library (the bytes of
``mov %rdi,-0x..(%rbp)``: tens in an optimised build, thousands in an unoptimised one), and
loads each library through the installed driver manager (``dbapi.connect(driver=PATH)``), in
a fresh process per measurement, to time:

* **pg read**: the narrow (pgbench shape) and wide 1M-row tables of ``datasets.py``, read
  with ``SELECT *`` through ADBC's binary ``COPY`` and the batch hint of replicant's
  PostgreSQL source (which reads ``numeric(p,s)`` as ``::text`` instead; here the driver
  decodes it);
* **pg ingest**: the read batches ``adbc_ingest``ed into an empty table without a key, in
  200k-row transactions of 16k-row batches, as the PostgreSQL destination's fast path does;
* **sqlite ingest**: the same batches into a SQLite file.

Printed: client CPU-seconds (user + system of the measuring process; server CPU is not
counted) and wall seconds, best of ``--repeat``. A throwaway PostgreSQL 15 runs the server side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import child_best, cpu_seconds, throwaway_pg

#: ``mov %rdi, disp8(%rbp)``: an unoptimised function storing its first argument on its frame.
O0_TELL = b"\x48\x89\x7d"
DRIVERS = {"postgresql": "adbc_driver_postgresql", "sqlite": "adbc_driver_sqlite"}


def fetch_driver(version: str, kind: str, work: Path) -> Path:
    """The shared library of ``adbc-driver-<kind>==version``, downloaded and unpacked under ``work``."""
    package = DRIVERS[kind]
    into = work / f"{kind}-{version}"
    if not into.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        f"{package.replace('_', '-')}=={version}", "-d", str(into)], check=True)
        wheel = next(into.glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(into)
    return next((into / package).glob("lib*.so"))


def o0_tell(library: Path) -> int:
    return library.read_bytes().count(O0_TELL)


def installed() -> dict[str, str | int]:
    """The ADBC PostgreSQL driver replicant loads here: its release and the ``-O0`` tell of its
    library (for a results file: a ``PYTHONPATH`` override can pair a release's Python package
    with another release's library)."""
    import adbc_driver_postgresql

    library = Path(adbc_driver_postgresql._driver_path())
    return {"adbc_driver_postgresql": adbc_driver_postgresql.__version__,
            "adbc_driver_postgresql.o0_tell": o0_tell(library)}


def _measure(args: argparse.Namespace) -> dict[str, float]:
    """One measurement in this process (``--child``): read, then ingest, with one driver build."""
    import adbc_driver_manager.dbapi as dbapi
    import pyarrow as pa

    from replicant.sources.postgres.source import _COPY_BATCH_BYTES

    out: dict[str, float] = {}
    conn = dbapi.connect(driver=args.pg_driver, db_kwargs={"uri": args.src}, autocommit=True)
    cur = conn.cursor()
    cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(_COPY_BATCH_BYTES)})
    c0, w0 = cpu_seconds(), time.perf_counter()
    cur.execute(f"SELECT * FROM {args.table}")
    batches = list(cur.fetch_record_batch())
    out["pg read cpu"], out["pg read wall"] = cpu_seconds() - c0, time.perf_counter() - w0
    cur.close()
    conn.close()
    whole = pa.Table.from_batches(batches)
    # numeric arrives as text from the driver; the bench ingests what was read, as it was read
    targets = [("pg", args.pg_driver, {"uri": args.dst}), ("sqlite", args.sqlite_driver, {"uri": args.sqlite_path})]
    for name, driver, kwargs in targets:
        conn = dbapi.connect(driver=driver, db_kwargs=kwargs, autocommit=False)
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {args.table}_copy")
        conn.commit()
        cur.adbc_ingest(f"{args.table}_copy", whole.schema.empty_table(), mode="create")
        conn.commit()
        c0, w0 = cpu_seconds(), time.perf_counter()
        for start in range(0, whole.num_rows, 200_000):
            part = whole.slice(start, 200_000)
            cur.adbc_ingest(f"{args.table}_copy", pa.Table.from_batches(part.to_batches(max_chunksize=16_384)), mode="append")
            conn.commit()
        out[f"{name} ingest cpu"], out[f"{name} ingest wall"] = cpu_seconds() - c0, time.perf_counter() - w0
        cur.close()
        conn.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", default="1.8.0,1.13.0", help="comma-separated driver releases")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("src", "dst", "table", "pg-driver", "sqlite-driver", "sqlite-path"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_measure(args)))
        return 0

    import datasets

    with throwaway_pg(args.workdir) as (server, work):
        tables = datasets.build_pair(server, args.rows)
        versions = [v.strip() for v in args.versions.split(",") if v.strip()]
        libs = {(v, k): fetch_driver(v, k, work) for v in versions for k in DRIVERS}
        print(f"{args.rows:,} rows per table; client CPU-s (wall s), best of {args.repeat}")
        for v in versions:
            print(f"  {v}: -O0 tell postgresql {o0_tell(libs[(v, 'postgresql')])}, sqlite {o0_tell(libs[(v, 'sqlite')])}")
        steps = ("pg read", "pg ingest", "sqlite ingest")
        print(f"{'table':<8} {'driver':<8} " + " ".join(f"{s:>16}" for s in steps))
        for ds in tables:
            best: dict[str, dict[str, float]] = {v: {} for v in versions}
            for _ in range(args.repeat):
                for v in versions:  # interleaved: drift hits every release alike
                    child_best(__file__, ["--src", server.url("src"), "--dst", server.url("dst"), "--table", ds.table,
                                          "--pg-driver", str(libs[(v, "postgresql")]),
                                          "--sqlite-driver", str(libs[(v, "sqlite")]),
                                          "--sqlite-path", str(work / f"{ds.table}.sqlite")], best[v])
            for v in versions:
                cells = [f"{best[v][s + ' cpu']:6.2f} ({best[v][s + ' wall']:5.2f})" for s in steps]
                print(f"{ds.name:<8} {v:<8} " + " ".join(f"{c:>16}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

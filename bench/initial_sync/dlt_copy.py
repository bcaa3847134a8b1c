"""Copy one PostgreSQL table with dlt (``sql_table``, connectorx backend): the comparison.

Runs inside the benchmark's own virtualenv (bench/.venv-dlt, see requirements-dlt.txt),
never in replicant's environment. Uses dlt's defaults otherwise (connectorx reads the
whole table into one Arrow table, dlt's default loader file format per destination),
as a user following dlt's documentation would.

    python dlt_copy.py --source-url postgresql://postgres:x@127.0.0.1:5432/src \
        --table pgbench_accounts --primary-key aid --write merge \
        --destination postgres --dest-url postgresql://postgres:x@127.0.0.1:5432/dst \
        --dataset bench --pipelines-dir /tmp/dlt
    ... --destination duckdb --duckdb-path /tmp/dlt.duckdb

dlt needs a password in PostgreSQL URLs even under trust auth: pass a dummy one.
Prints the load info to stderr; exits non-zero on any failed job.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-url", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--schema", default="public")
    ap.add_argument("--primary-key", required=True)
    ap.add_argument("--write", choices=["append", "merge"], required=True)
    ap.add_argument("--destination", choices=["postgres", "duckdb"], required=True)
    ap.add_argument("--dest-url")
    ap.add_argument("--duckdb-path")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--pipeline-name", default="bench_dlt")
    ap.add_argument("--pipelines-dir", required=True)
    ap.add_argument("--loader-file-format", default=None,
                    help="override dlt's default (e.g. csv for postgres)")
    args = ap.parse_args()

    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt
    from dlt.sources.sql_database import sql_table

    if args.destination == "postgres":
        dest = dlt.destinations.postgres(credentials=args.dest_url)
    else:
        dest = dlt.destinations.duckdb(credentials=args.duckdb_path)

    resource = sql_table(
        credentials=args.source_url,
        table=args.table,
        schema=args.schema,
        backend="connectorx",
        write_disposition=args.write,
        primary_key=args.primary_key,  # dlt's merge needs the key hint
    )
    pipeline = dlt.pipeline(
        pipeline_name=args.pipeline_name,
        destination=dest,
        dataset_name=args.dataset,
        pipelines_dir=args.pipelines_dir,
    )
    kwargs = {"loader_file_format": args.loader_file_format} if args.loader_file_format else {}
    info = pipeline.run(resource, **kwargs)
    print(info, file=sys.stderr)
    info.raise_on_failed_jobs()
    formats = sorted({job.job_file_info.file_format
                      for package in info.load_packages
                      for jobs in package.jobs.values() for job in jobs})
    print(f"loader file formats: {', '.join(formats)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The read floor: a table read through replicant's PostgreSQL source, and nothing else.

    python3 bench/initial_sync/read_floor.py --url postgresql://… --table pgbench_accounts

The ``replicant-read`` method of ``run.py`` times this script as a whole subprocess, from
spawn to exit, as it times ``replicant run``. It does what every run of that table does
before any destination sees a row: start the interpreter, import the source, discover the
table and read it the way a ``full`` snapshot does (``PostgresSource.read``, ADBC's binary
``COPY``, its batch hint and casts). The batches are dropped. No run can be faster than
this, so a target that this alone misses cannot be met by work on the log or the
destinations. Prints the rows read as JSON; ``run.py`` checks them against the table.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--table", required=True)
    args = parser.parse_args()

    from replicant.config import SourceConfig
    from replicant.model import ConnectorContext
    from replicant.sources.postgres import PostgresSource

    config = SourceConfig(type="postgres", url=args.url, streams=[{"table": args.table}])
    rows = 0
    with PostgresSource(config, ConnectorContext("read_floor")) as source:
        stream = next(s for s in source.discover() if s.table[-1] == args.table)
        for batch in source.read(stream, None):
            rows += batch.data.num_rows
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()

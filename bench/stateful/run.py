"""Stateful transforms: a derived ``aggregate`` over N upstream changes, end to end.

An upstream staging log is written directly (no source read: the bench is about the derived
side): ``--changes`` change rows in batches of ``--batch`` on a ``transactions`` table of
``--keys`` rows (first inserts, then a mix of updates that often move a row to another group,
and deletes). The derived pipeline (``source: {type: pipeline}``, ``aggregate`` by
``client_id`` with sum/FILTER, count, avg, min, max, into DuckDB with ``write: merge``) is
run once and timed: changes/s, and the state's size and rows. Baseline in the same run: the
same GROUP BY run once by DuckDB over the final table.

    PYTHONPATH=src .venv/bin/python bench/stateful/run.py --changes 200000
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from replicant.config import load
from replicant.engine import Engine
from replicant.log import open_log
from replicant.model import META_FIELDS
from replicant.transforms.base import KEY_METADATA

VALUES = {"deposits": "sum(amount) FILTER (WHERE kind = 'deposit')", "n": "count(*)", "avg_amount": "avg(amount)",
          "lo": "min(amount)", "hi": "max(amount)"}


def _batch(ids: np.ndarray, clients: np.ndarray, amounts: np.ndarray, kinds: np.ndarray, op: np.ndarray) -> pa.RecordBatch:
    n = len(ids)
    schema = pa.schema([("id", pa.int64()), ("client_id", pa.int64()), ("kind", pa.string()), ("amount", pa.float64()),
                        *META_FIELDS], metadata={KEY_METADATA: b"id"})
    return pa.RecordBatch.from_arrays([
        pa.array(ids), pa.array(clients), pa.array(kinds), pa.array(amounts), pa.array(op),
        pa.repeat(pa.scalar("{}"), n), pa.repeat(pa.scalar(datetime(2026, 1, 1, tzinfo=UTC), pa.timestamp("us", tz="UTC")), n),
    ], schema=schema)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--groups", type=int, default=1_000)
    ap.add_argument("--batch", type=int, default=10_000)
    args = ap.parse_args()
    rng = np.random.default_rng(1206)
    folder = Path(tempfile.mkdtemp(prefix="bench-stateful-"))
    with sqlite3.connect(folder / "bank.db") as c:  # the upstream's file needs a source; it is never read here
        c.execute("CREATE TABLE transactions (id INTEGER PRIMARY KEY, client_id INTEGER, kind TEXT, amount DOUBLE)")
    (folder / "bank.yml").write_text("pipeline: bank\nsource: {type: sqlite, url: sqlite:///bank.db, streams: "
                                     "[{table: transactions, mode: snapshot_diff}]}\n"
                                     "destinations: [{name: wh, type: duckdb, path: bank.duckdb}]\n")
    values = "\n".join(f'        {k}: "{v}"' for k, v in VALUES.items())
    (folder / "totals.yml").write_text(f"""pipeline: totals
source: {{type: pipeline, pipeline: bank.yml}}
transforms:
  - aggregate:
      by: [client_id]
      values:
{values}
    as: client_totals
destinations:
  - {{name: wh, type: duckdb, path: totals.duckdb, write: merge}}
""")
    lg = open_log(folder / ".replicant" / "bank" / "log")
    live = np.zeros(args.keys, bool)
    client = np.zeros(args.keys, np.int64)
    amount = np.zeros(args.keys)
    kind = np.array(["deposit"] * args.keys, dtype=object)
    written = 0
    t0 = time.perf_counter()
    while written < args.changes:
        n = min(args.batch, args.changes - written)
        ids = rng.integers(0, args.keys, n) if written >= args.keys else np.arange(written, written + n) % args.keys
        ids = np.unique(ids)
        n = len(ids)
        delete = live[ids] & (rng.random(n) < 0.15)
        op = np.where(delete, "delete", np.where(live[ids], "update", "insert"))
        client[ids] = np.where(delete, client[ids], rng.integers(0, args.groups, n))
        amount[ids] = np.where(delete, amount[ids], rng.integers(0, 10_000, n) / 100)
        kind[ids] = np.where(rng.random(n) < 0.7, "deposit", "fee")
        live[ids] = ~delete
        lg.append("transactions", _batch(ids, client[ids], amount[ids], kind[ids].astype(str), op),
                  position={"bench": written + n})
        written += n
    lg.close()
    print(f"upstream log: {written:,} changes written in {time.perf_counter() - t0:.1f} s ({args.keys:,} keys, "
          f"{args.groups:,} groups)")
    t = time.perf_counter()
    result = Engine(load(folder / "totals.yml")).run()
    took = time.perf_counter() - t
    assert result.ok, result.errors
    state = folder / ".replicant" / "totals" / "stateful" / "state.duckdb"
    with duckdb.connect(str(state), read_only=True) as con:
        rows = con.execute('SELECT count(*) FROM "aggregate:client_totals.rows"').fetchone()[0]  # type: ignore[index]
    print(f"derived aggregate: {written:,} changes in {took:.1f} s = {written / took:,.0f} changes/s "
          f"(run incl. start-up and delivery to DuckDB); state {state.stat().st_size / 1e6:.1f} MB, {rows:,} rows")
    table = pa.table({"id": np.flatnonzero(live), "client_id": client[live], "kind": kind[live].astype(str), "amount": amount[live]})
    con = duckdb.connect()
    con.register("final_rows", table)
    con.execute("CREATE TABLE transactions AS SELECT * FROM final_rows")
    sel = ", ".join(f"{v} AS {k}" for k, v in VALUES.items())
    t = time.perf_counter()
    want = con.execute(f"SELECT client_id, {sel} FROM transactions GROUP BY client_id ORDER BY 1").fetchall()
    group_by = time.perf_counter() - t
    with duckdb.connect(str(folder / "totals.duckdb"), read_only=True) as d:
        got = d.execute(f"SELECT client_id, {', '.join(VALUES)} FROM client_totals ORDER BY 1").fetchall()
    same, detail = _compare(got, want)
    print(f"baseline: DuckDB GROUP BY once over the final table ({len(table):,} rows): {group_by * 1000:.1f} ms; "
          f"derived output equal to it: {same} ({detail})")


def _compare(got: list[tuple], want: list[tuple]) -> tuple[bool, str]:
    """Equal groups, equal integers, floats equal to a relative 1e-9 (sums of doubles in a
    different order differ in their last bits); says what differs."""
    if [r[0] for r in got] != [r[0] for r in want]:
        return False, f"groups differ: {len(got)} derived, {len(want)} recomputed"
    worst, wrong = 0.0, 0
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g[1:], w[1:], strict=True):
            if isinstance(a, float) and isinstance(b, float):
                rel = abs(a - b) / max(abs(a), abs(b), 1e-300)
                worst = max(worst, rel)
                wrong += rel > 1e-9
            elif a != b:
                wrong += 1
    return wrong == 0, f"{len(got):,} groups; {wrong} values differ; largest relative float difference {worst:.1e}"


if __name__ == "__main__":
    main()

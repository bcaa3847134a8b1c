"""How the singer source parses a tap's output, beside the per-record ways, in the same run.

N RECORD lines of two interleaved streams (an int key, text, a decimal, a date-time, a bool;
a STATE every 10,000 lines) are parsed into typed Arrow batches per stream:

- ``replicant``: :meth:`SingerSource._change_sets` — one ``pyarrow.json.read_json`` over the
  block for types and streams, one per stream with its schema (no record as a Python object);
- ``json+from_pylist``: ``json.loads`` per line, records grouped per stream in Python, then
  ``pa.Table.from_pylist`` with the schema and the same casts;
- ``orjson+from_pylist``: the same with orjson, when it is installed.

Prints lines/s of each and the ratio. ``PYTHONPATH=src .venv/bin/python bench/sources/singer_parse.py
--lines 500000``
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import pyarrow as pa

from replicant.config import SourceConfig
from replicant.model import ConnectorContext, Stream
from replicant.sources.singer import SingerSource, arrow_schema

SCHEMA = {"type": "object", "properties": {
    "id": {"type": "integer"}, "name": {"type": ["null", "string"]},
    "price": {"type": ["null", "number"], "multipleOf": 0.01},
    "at": {"type": "string", "format": "date-time"}, "ok": {"type": "boolean"}}}


def _lines(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        stream = "orders" if i % 3 else "refunds"
        out.append(json.dumps({"type": "RECORD", "stream": stream, "record": {
            "id": i, "name": f"customer {i % 997}", "price": round(i % 10_000 / 100, 2),
            "at": f"2024-01-{1 + i % 28:02d}T10:{i % 60:02d}:00+00:00", "ok": bool(i % 2)}}).encode())
        if i % 10_000 == 9_999:
            out.append(json.dumps({"type": "STATE", "value": {"done": i}}).encode())
    return out


def _streams() -> dict[str, Stream]:
    schema, _ = arrow_schema(SCHEMA)
    return {n: Stream(name=n, table=(n,), schema=schema, primary_key=("id",), mode="log") for n in ("orders", "refunds")}


def replicant(lines: list[bytes], streams: dict[str, Stream], block: int) -> int:
    src = SingerSource(SourceConfig.model_validate({"type": "singer", "command": ["true"]}), ConnectorContext("bench"))
    rows, pos = 0, {"state": None}
    for start in range(0, len(lines), block):
        for cs in src._change_sets(lines[start:start + block], streams, pos):
            pos = cs.position
            rows += sum(b.num_rows for b in cs.batches.values())
    return rows


def per_record(lines: list[bytes], streams: dict[str, Stream], block: int, loads: Any) -> int:
    rows = 0
    for start in range(0, len(lines), block):
        grouped: dict[str, list[dict[str, Any]]] = {}
        for line in lines[start:start + block]:
            msg = loads(line)
            if msg["type"] == "RECORD":
                grouped.setdefault(msg["stream"], []).append(msg["record"])
        for name, records in grouped.items():
            s = streams[name]
            raw = pa.Table.from_pylist(records, schema=pa.schema([pa.field(f.name, pa.string() if pa.types.is_timestamp(f.type)
                                                                           else pa.float64() if pa.types.is_decimal(f.type)
                                                                           else f.type) for f in s.schema]))
            table = raw.cast(s.schema)
            rows += table.num_rows
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument("--block", type=int, default=25_000, help="lines per parsed block (the source's batch_size)")
    args = ap.parse_args()
    lines, streams = _lines(args.lines), _streams()
    ways: list[tuple[str, Any]] = [("replicant (pyarrow.json)", lambda: replicant(lines, streams, args.block)),
                                   ("json.loads + from_pylist", lambda: per_record(lines, streams, args.block, json.loads))]
    try:
        import orjson

        ways.append(("orjson + from_pylist", lambda: per_record(lines, streams, args.block, orjson.loads)))
    except ImportError:
        print("orjson is not installed: its line is left out")
    results = {}
    for name, fn in ways:
        fn()  # warm
        started = time.perf_counter()
        rows = fn()
        seconds = time.perf_counter() - started
        results[name] = seconds
        print(f"{name:28s} {rows:>9,d} rows  {seconds:6.2f} s  {rows / seconds:>12,.0f} rows/s")
    base = results["json.loads + from_pylist"]
    print(f"replicant vs json.loads + from_pylist: {base / results['replicant (pyarrow.json)']:.2f}x")


if __name__ == "__main__":
    main()

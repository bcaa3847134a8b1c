"""A Singer tap over the toy source's Arrow files (``<folder>/<table>.arrow``), for the singer
source's conformance handle: run as ``python singer_toy_tap.py --config C [--catalog K]
[--state S] [--discover]``.

Config: ``folder``, ``password`` (must be ``toy-secret``: anything else fails like a refused
login, naming the folder), ``state_every`` (a STATE after that many records of a stream).
Types as a tap declares them in JSON schema: integers, numbers (``multipleOf`` for decimals),
``date`` and ``date-time`` strings (times written in UTC with an offset, as the spec asks),
strings, booleans. STATE: ``{"bookmarks": {stream: {"rows": N}}}``, the rows of a stream done.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

PASSWORD = "toy-secret"


def _json_type(t: pa.DataType) -> dict[str, Any]:
    if pa.types.is_integer(t):
        return {"type": ["null", "integer"]}
    if pa.types.is_decimal(t):
        return {"type": ["null", "number"], "multipleOf": float(f"1e-{t.scale}") if t.scale else 1}
    if pa.types.is_floating(t):
        return {"type": ["null", "number"]}
    if pa.types.is_boolean(t):
        return {"type": ["null", "boolean"]}
    if pa.types.is_date(t):
        return {"type": ["null", "string"], "format": "date"}
    if pa.types.is_timestamp(t):
        return {"type": ["null", "string"], "format": "date-time"}
    return {"type": ["null", "string"]}


def _value(v: Any) -> Any:
    if isinstance(v, Decimal):
        return float(v)  # its repr is the shortest text that reads back as the same number
    if isinstance(v, datetime):
        return v.isoformat() + ("" if v.tzinfo else "+00:00")
    if isinstance(v, date):
        return v.isoformat()
    return v


def _tables(folder: Path) -> dict[str, pa.Schema]:
    return {p.stem: pa.ipc.open_file(p).schema for p in sorted(folder.glob("*.arrow"))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--catalog")
    ap.add_argument("--state")
    ap.add_argument("--discover", action="store_true")
    args = ap.parse_args()
    config = json.loads(Path(args.config).read_text())
    folder = Path(config["folder"])
    if config.get("password") != PASSWORD or not folder.is_dir():
        print(f"toy tap: password authentication failed for the store at {folder}", file=sys.stderr)
        return 1
    tables = _tables(folder)
    if args.discover:
        streams = []
        for name, schema in tables.items():
            key = [k for k in (schema.metadata or {}).get(b"primary_key", b"").decode().split(",") if k]
            streams.append({"tap_stream_id": name, "stream": name, "key_properties": key,
                            "schema": {"type": "object", "properties": {f.name: _json_type(f.type) for f in schema}},
                            "metadata": [{"breadcrumb": [], "metadata": {"table-key-properties": key}}]})
        print(json.dumps({"streams": streams}))
        return 0
    catalog = json.loads(Path(args.catalog).read_text()) if args.catalog else {"streams": []}
    state = json.loads(Path(args.state).read_text()) if args.state else {}
    bookmarks: dict[str, Any] = dict(state.get("bookmarks") or {})
    every = int(config.get("state_every", 1000))
    for entry in catalog["streams"]:
        name = entry["tap_stream_id"]
        if not entry.get("selected") or name not in tables:
            continue
        print(json.dumps({"type": "SCHEMA", "stream": name, "schema": entry["schema"],
                          "key_properties": entry.get("key_properties", [])}))
        done = int((bookmarks.get(name) or {}).get("rows", 0))
        table = pa.ipc.open_file(folder / f"{name}.arrow").read_all()
        for i, row in enumerate(table.slice(done).to_pylist(), start=done + 1):
            print(json.dumps({"type": "RECORD", "stream": name, "record": {k: _value(v) for k, v in row.items()}}))
            if i % every == 0:
                bookmarks[name] = {"rows": i}
                print(json.dumps({"type": "STATE", "value": {"bookmarks": bookmarks}}))
        bookmarks[name] = {"rows": table.num_rows}
        print(json.dumps({"type": "STATE", "value": {"bookmarks": bookmarks}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

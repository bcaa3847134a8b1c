"""validate for sources that are not SQL databases: a files source and an http source read in
full through the source contract, compared with DuckDB and with a CSV files destination (whose
text is decoded by the stream's types); the planted destination differences found exactly and
``--repair`` converging; a source without a full read (a Singer tap) refused with a clear reason."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import duckdb
import pytest

from replicant.config import parse
from replicant.engine import Engine
from replicant.validate import validate_pipeline
from sources.http_api import Api

ORDERS = "id,customer,amount,placed\n" + "".join(
    f"{i},customer {i % 7},{i * 3 // 2}.{i % 100:02d},2024-03-{1 + i % 28:02d} 10:{i % 60:02d}:00\n" for i in range(1, 201))


def _files_source(tmp_path: Path) -> dict:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "orders-1.csv").write_text(ORDERS)
    return {"type": "files", "url": str(tmp_path / "in"),
            "streams": [{"name": "orders", "glob": "orders-*.csv", "format": "csv", "primary_key": ["id"],
                         "exclude": ["_file", "_line"], "schema": {"amount": "decimal(12,2)"}}]}


def _http_source(api: Api) -> dict:
    api.put("orders", [{"id": i, "customer": f"customer {i % 7}", "amount": i * 1.25, "placed": f"2024-03-{1 + i % 28:02d}"}
                       for i in range(1, 201)])
    return {"type": "http", "base_url": api.url,
            "streams": [{"name": "orders", "path": "/link/orders", "params": {"limit": 50},
                         "paginate": {"type": "link_header"}, "primary_key": ["id"]}]}


def _destination(kind: str, tmp_path: Path) -> dict:
    if kind == "duckdb":
        return {"name": "dst", "type": "duckdb", "path": str(tmp_path / "dst.duckdb"), "write": "merge"}
    return {"name": "dst", "type": "files", "path": str(tmp_path / "lake"), "format": "csv"}


def _plant(kind: str, tmp_path: Path) -> None:
    """Destination side: order 17's customer changed, order 40 gone, an order 999 that the source lacks."""
    if kind == "duckdb":
        with duckdb.connect(str(tmp_path / "dst.duckdb")) as con:
            con.execute("UPDATE orders SET customer = 'someone else' WHERE id = 17")
            con.execute("DELETE FROM orders WHERE id = 40")
            con.execute("INSERT INTO orders SELECT 999, customer, amount, placed FROM orders WHERE id = 1")
        return
    for data in (tmp_path / "lake" / "orders").rglob("*.csv"):  # one file per delivered batch
        with data.open(newline="") as f:
            header, *rows = list(csv.reader(f))
        at, out = header.index("id"), [header]
        for row in rows:
            if row[at] == "40":
                continue
            if row[at] == "17":
                row[header.index("customer")] = "someone else"
            out.append(row)
            if row[at] == "1":
                out.append(["999", *row[1:]])
        with data.open("w", newline="") as f:
            csv.writer(f).writerows(out)


def _found(result) -> set[tuple[str, str]]:
    return {(d.kind, json.dumps(d.key, sort_keys=True)) for r in result.results for d in r.comparison.differences}


@pytest.mark.parametrize("kind", ["duckdb", "files_csv"])
@pytest.mark.parametrize("source", ["files", "http"])
def test_a_files_or_http_source_validates_against_duckdb_and_csv_and_repair_converges(
        source: str, kind: str, tmp_path: Path, api: Api) -> None:
    src = _files_source(tmp_path) if source == "files" else _http_source(api)
    cfg = parse({"pipeline": "v", "source": src, "destinations": [_destination(kind, tmp_path)]}, base_dir=tmp_path)
    result = Engine(cfg).run()
    assert result.ok, result.errors

    equal = validate_pipeline(cfg, wait=0)
    assert [(r.stream, r.verdict, r.comparison.source_rows, r.comparison.destination_rows) for r in equal.results] == \
        [("orders", "equal", 200, 200)], [r.error for r in equal.results]
    assert equal.exit_code == 0

    _plant(kind, tmp_path)
    planted = validate_pipeline(cfg, wait=0)
    assert {(k, json.loads(key)["id"]) for k, key in _found(planted)} == {
        ("different", "17"), ("missing", "40"), ("extra", "999")}
    assert planted.exit_code == 1

    repaired = validate_pipeline(cfg, repair=True, wait=0)
    assert repaired.results[0].found == 3
    assert _found(repaired) == set() and repaired.exit_code == 0
    assert validate_pipeline(cfg, wait=0).exit_code == 0


_TAP = """
import json, sys
schema = {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": ["null", "string"]}}}
if "--discover" in sys.argv:
    print(json.dumps({"streams": [{"tap_stream_id": "things", "stream": "things", "schema": schema,
                                   "key_properties": ["id"], "metadata": [{"breadcrumb": [], "metadata": {}}]}]}))
    sys.exit(0)
print(json.dumps({"type": "SCHEMA", "stream": "things", "key_properties": ["id"], "schema": schema}))
for i in range(1, 11):
    print(json.dumps({"type": "RECORD", "stream": "things", "record": {"id": i, "name": f"thing {i}"}}))
"""


def test_a_source_without_a_full_read_is_refused_with_the_reason(tmp_path: Path) -> None:
    tap = tmp_path / "tap.py"
    tap.write_text(_TAP)
    cfg = parse({"pipeline": "v", "source": {"type": "singer", "command": [sys.executable, str(tap)], "streams": ["things"]},
                 "destinations": [_destination("duckdb", tmp_path)]}, base_dir=tmp_path)
    result = Engine(cfg).run()
    assert result.ok, result.errors
    refused = validate_pipeline(cfg, wait=0)
    assert refused.exit_code == 2
    [r] = refused.results
    assert r.verdict == "error" and "a singer source has no full read to compare" in r.error

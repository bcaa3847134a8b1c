"""Identity is (pipeline, tenant, stream): two tenants' feeds of the same pipeline keep their
own log streams, checkpoints, runs and destination offsets while writing the same tables."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import duckdb

from replicant.config import parse
from replicant.engine import Engine
from replicant.log import open_log
from replicant.state import StateStore


def _source_db(path: Path, rows: list[tuple[int, str]]) -> None:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        con.executemany("INSERT INTO orders VALUES (?, ?)", rows)


def _config(tmp_path: Path, db: str) -> object:
    return parse({
        "pipeline": "shop",
        "source": {"type": "sqlite", "url": f"sqlite:///{db}", "streams": ["orders"]},
        "destinations": [
            {"name": "w", "type": "duckdb", "path": "w.duckdb", "write": "merge"},
            {"name": "lake", "type": "files", "path": "lake", "format": "jsonl"},
        ],
    }, base_dir=tmp_path)


def test_two_tenants_keep_their_own_log_checkpoints_and_offsets(tmp_path: Path) -> None:
    _source_db(tmp_path / "acme.db", [(1, "a1"), (2, "a2"), (3, "a3")])
    _source_db(tmp_path / "globex.db", [(11, "g1"), (12, "g2")])
    acme, globex = _config(tmp_path, "acme.db"), _config(tmp_path, "globex.db")

    first = Engine(acme, tenant="acme").run()
    second = Engine(globex, tenant="globex").run()
    assert first.ok and second.ok, (first.errors, second.errors)
    assert first.rows_read == {"orders": 3} and second.rows_read == {"orders": 2}
    # globex was delivered although acme's offsets were already far along: its own offsets
    assert second.rows_written == {"w": {"orders": 2}, "lake": {"orders": 2}}

    home = tmp_path / ".replicant" / "shop"
    lg = open_log(str(home / "log"), read_only=True)
    try:
        assert sorted(lg.streams()) == ["acme/orders", "globex/orders"]
    finally:
        lg.close()
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert con.execute("SELECT id, v FROM orders ORDER BY id").fetchall() == [
            (1, "a1"), (2, "a2"), (3, "a3"), (11, "g1"), (12, "g2")]
        offsets = dict(con.execute("SELECT stream, log_offset FROM _replicant_offsets").fetchall())
    assert set(offsets) == {"acme/orders", "globex/orders"}
    lake = sorted(p.relative_to(tmp_path / "lake").parts[0] for p in (tmp_path / "lake").rglob("*.jsonl"))
    # one folder per tenant's stream: ``tenant/name`` is not a safe folder name, so it is kept
    # readable with a hash suffix (files destination docstring)
    assert len(set(lake)) == 2 and {f.split("~")[0] for f in lake} == {"acme_orders", "globex_orders"}, lake
    rows = [json.loads(line) for p in (tmp_path / "lake").rglob("*.jsonl") for line in p.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [1, 2, 3, 11, 12]

    with StateStore(f"sqlite:///{home / 'state.db'}") as state:
        saved = state.pipeline_state("shop")
        assert set(saved.tenants) == {"acme", "globex"}
        assert saved.tenant("acme").checkpoints["orders"].rows_total == 3
        assert saved.tenant("globex").checkpoints["orders"].rows_total == 2
        assert {r["tenant"] for r in state.runs("shop")} == {"acme", "globex"}
        assert state.offsets("shop", tenant="acme")[("lake", "orders")].offset >= 0

    again = Engine(acme, tenant="acme").run()  # a new snapshot of acme only, merged: nothing doubles
    assert again.ok and again.rows_read == {"orders": 3}
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM orders").fetchone() == (5,)

    st = Engine(globex, tenant="globex").status().to_dict()
    per_tenant = {(s["tenant"], s["name"]): s["rows"] for s in st["streams"]}
    assert per_tenant == {("acme", "orders"): 6, ("globex", "orders"): 2}
    assert all(d["lag"] == 0 for d in st["destinations"]), st["destinations"]

    replayed = Engine(globex, tenant="globex").replay("w", start="start")
    assert replayed.ok and replayed.rows_written == {"w": {"orders": 2}}

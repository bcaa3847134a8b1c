"""validate on a pipeline with ``tenants:``: each tenant's source is compared with its own rows
of the shared destination table (``_tenant`` scopes them), under the tenant's own transforms;
a difference planted in one tenant's rows is found there only, and ``--repair`` heals it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb

from replicant.config import parse
from replicant.tenants.runner import TenantRunner
from replicant.validate import validate_pipeline


def _source(path: Path, n: int, *, column: str) -> None:
    with sqlite3.connect(path) as con:
        con.execute(f"CREATE TABLE orders (id INTEGER PRIMARY KEY, {column} TEXT, total NUMERIC(10,2))")
        con.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(i, f"item {i}", f"{i}.50") for i in range(1, n + 1)])


def test_every_tenant_is_validated_against_its_own_rows_and_repair_heals_one(tmp_path: Path) -> None:
    _source(tmp_path / "acme.db", 120, column="label")
    _source(tmp_path / "globex.db", 80, column="title")  # an older app version: the column is named differently
    _source(tmp_path / "initech.db", 50, column="label")
    cfg = parse({
        "pipeline": "shop",
        "source": {"type": "sqlite", "url": "sqlite:///acme.db", "streams": [{"table": "orders"}]},
        "tenants": [
            {"id": "acme"},
            {"id": "globex", "url": "sqlite:///globex.db", "transforms": [{"rename": {"title": "label"}}]},
            {"id": "initech", "url": "sqlite:///initech.db"},
        ],
        "transforms": [{"rename": {"label": "name"}}],
        "destinations": [{"name": "w", "type": "duckdb", "path": "w.duckdb", "write": "merge", "tables": {"orders": "all_orders"}}],
    }, base_dir=tmp_path)
    assert TenantRunner(cfg).run().ok

    report = validate_pipeline(cfg, wait=0)
    assert report.exit_code == 0, [(r.tenant, r.stream, r.verdict, r.error) for r in report.results]
    counts = {r.tenant: r.comparison.source_rows for r in report.results if r.comparison is not None}
    assert counts == {"acme": 120, "globex": 80, "initech": 50}

    with duckdb.connect(str(tmp_path / "w.duckdb")) as d:
        d.execute("UPDATE all_orders SET name = 'tampered' WHERE _tenant = 'globex' AND id = 7")
        d.execute("DELETE FROM all_orders WHERE _tenant = 'globex' AND id = 9")
        d.execute("INSERT INTO all_orders SELECT * REPLACE (id + 1000 AS id) FROM all_orders WHERE _tenant = 'globex' AND id = 1")
    found = validate_pipeline(cfg, wait=0)
    assert found.exit_code == 1
    diffs = {r.tenant: sorted((d.kind, d.key["id"]) for d in r.comparison.differences)
             for r in found.results if r.comparison is not None}
    assert diffs == {"acme": [], "globex": [("different", "7"), ("extra", "1001"), ("missing", "9")], "initech": []}

    repaired = validate_pipeline(cfg, wait=0, tenant="globex", repair=True)
    assert repaired.exit_code == 0, [(r.verdict, r.error) for r in repaired.results]
    assert validate_pipeline(cfg, wait=0).exit_code == 0
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as d:
        assert d.execute("SELECT _tenant, count(*) FROM all_orders GROUP BY 1 ORDER BY 1").fetchall() == [
            ("acme", 120), ("globex", 80), ("initech", 50)]
        assert d.execute("SELECT name FROM all_orders WHERE _tenant = 'globex' AND id = 7").fetchone() == ("item 7",)

"""validate understands the pipeline: renamed columns compared under their mapping, dropped
ones skipped, ``mask: hash`` and deterministic ``encrypt`` recomputed on the source side,
other masks listed as unverified; ``--tenant`` scopes a destination table with ``_tenant``;
a change in flight when first seen is not reported."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import pytest

from replicant.config import parse
from replicant.engine import Engine
from replicant.validate import validate_pipeline
from replicant.validate.compare import compare
from replicant.validate.sides import Column, Side, duckdb_connection

KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def _customers(path: Path) -> None:
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE customers (CustomerId INTEGER PRIMARY KEY, name TEXT, email TEXT, phone TEXT, fax TEXT, "
                  "city TEXT, note TEXT)")
        c.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?, ?)",
                      [(i, f"name {i}", f"u{i}@example.com", f"+1 555 {i:04d}", "fax", f"city {i % 7}", None if i % 3 else "")
                       for i in range(1, 301)])


@pytest.fixture
def masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("REPLICANT_MASK_KEY", "test-mask-key")
    monkeypatch.setenv("PII_KEY", KEY)
    _customers(tmp_path / "crm.db")
    cfg = parse({
        "pipeline": "crm",
        "source": {"type": "sqlite", "url": "sqlite:///crm.db", "streams": [{"table": "customers"}]},
        "transforms": [
            {"rename": {"CustomerId": "customer_id", "city": "town"}},
            {"drop": ["fax"]},
            {"mask": {"email": "hash", "name": "redact"}},
            {"encrypt": {"phone": {"key": "${env:PII_KEY}", "deterministic": True},
                         "note": {"key": "${env:PII_KEY}"}}},
        ],
        "destinations": [{"name": "wh", "type": "duckdb", "path": "wh.duckdb"}, {"name": "lite", "type": "sqlite", "path": "lite.db"}],
    }, base_dir=tmp_path)
    assert Engine(cfg).run().ok
    return cfg, tmp_path


def test_renames_drops_masks_and_encryption_are_understood(masked) -> None:
    cfg, base = masked
    report = validate_pipeline(cfg, wait=0)
    assert report.exit_code == 0, [(r.destination, r.error) for r in report.results]
    for r in report.results:
        assert r.mode == "client"
        assert r.unverified == {"name": "mask: redact", "note": "encrypt (not deterministic)"}
        assert r.comparison is not None and r.comparison.source_rows == 300

    with sqlite3.connect(base / "crm.db") as c:
        c.execute("UPDATE customers SET email = 'new@example.com' WHERE CustomerId = 5")  # a hashed column
        c.execute("UPDATE customers SET phone = '+1 555 9999' WHERE CustomerId = 6")  # an encrypted one
        c.execute("UPDATE customers SET city = 'elsewhere' WHERE CustomerId = 7")  # a renamed one
        c.execute("UPDATE customers SET fax = 'changed', name = 'changed' WHERE CustomerId = 8")  # dropped, redacted
    found = validate_pipeline(cfg, wait=0)
    for r in found.results:
        assert r.comparison is not None
        assert [(d.kind, d.key) for d in r.comparison.differences] == [
            ("different", {"customer_id": "5"}), ("different", {"customer_id": "6"}), ("different", {"customer_id": "7"})]
    repaired = validate_pipeline(cfg, repair=True, wait=0, destination="wh")
    assert repaired.exit_code == 0
    assert validate_pipeline(cfg, wait=0).exit_code == 0  # the repair went through the log to every destination


def test_tenant_scopes_the_destination_rows(tmp_path: Path) -> None:
    """Until tenants arrive, a destination table with a ``_tenant`` column built by hand: the
    rows of ``--tenant acme`` are compared with the pipeline's source, the others are not."""
    _customers(tmp_path / "crm.db")
    cfg = parse({"pipeline": "crm", "source": {"type": "sqlite", "url": "sqlite:///crm.db", "streams": [{"table": "customers"}]},
                 "destinations": [{"name": "wh", "type": "duckdb", "path": "wh.duckdb"}]}, base_dir=tmp_path)
    assert Engine(cfg).run().ok
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as d:
        d.execute("ALTER TABLE customers ADD COLUMN _tenant VARCHAR DEFAULT 'acme'")
        d.execute("UPDATE customers SET _tenant = 'acme'")
        d.execute("INSERT INTO customers SELECT CustomerId + 1000, name, email, phone, fax, city, note, 'globex' FROM customers")
    whole = validate_pipeline(cfg, wait=0)
    assert {d.kind for r in whole.results for d in r.comparison.differences} == {"extra"}  # globex's rows
    acme = validate_pipeline(cfg, wait=0, tenant="acme")
    assert acme.exit_code == 0 and acme.results[0].tenant == "acme"
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as d:
        d.execute("UPDATE customers SET city = 'moved' WHERE CustomerId = 9 AND _tenant = 'acme'")
        d.execute("DELETE FROM customers WHERE _tenant = 'globex' AND CustomerId = 1010")  # not acme's business
    got = validate_pipeline(cfg, wait=0, tenant="acme")
    assert [(d.kind, d.key) for d in got.results[0].comparison.differences] == [("different", {"CustomerId": "9"})]


def test_a_change_in_flight_is_not_a_difference() -> None:
    """The first look finds a row the destination has not applied yet; by the second look (after
    ``before_recheck``: the wait for the destination) it has: nothing is reported."""
    import pyarrow as pa

    rows = pa.table({"id": pa.array(range(100), pa.int64()), "v": pa.array([f"v{i}" for i in range(100)])})
    behind = rows.set_column(1, "v", pa.array([f"v{i}" if i != 42 else "old" for i in range(100)]))
    cols = [Column("id", pa.field("id", pa.int64()), '"id"'), Column("v", pa.field("v", pa.string()), '"v"')]
    src_exec, src_close = duckdb_connection(None, "source", tables={"t": rows})
    dst_exec, dst_close = duckdb_connection(None, "destination", tables={"t": behind, "applied": rows})
    src = Side("source", "duckdb", src_exec, "t", cols[:1], cols[1:], close=src_close)
    dst = Side("destination", "duckdb", dst_exec, "t", cols[:1], cols[1:], close=dst_close)
    try:
        assert [d.key for d in compare(src, dst).differences] == [{"id": "42"}]  # really different
        applied = []

        def catch_up() -> None:
            dst.relation = "applied"  # the destination applied the change meanwhile
            applied.append(True)

        assert compare(src, dst, before_recheck=catch_up).differences == []
        assert applied == [True]
    finally:
        src.close()
        dst.close()


def test_repair_refuses_a_key_computed_by_a_transform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hashed key is compared (the source side is hashed too), but --repair cannot find a
    destination key's row at the source: it says so (exit 2) instead of appending nothing."""
    monkeypatch.setenv("REPLICANT_MASK_KEY", "test-mask-key")
    _customers(tmp_path / "crm.db")
    cfg = parse({"pipeline": "crm", "source": {"type": "sqlite", "url": "sqlite:///crm.db", "streams": [{"table": "customers"}]},
                 "transforms": [{"mask": {"CustomerId": "hash"}}],
                 "destinations": [{"name": "wh", "type": "duckdb", "path": "wh.duckdb"}]}, base_dir=tmp_path)
    assert Engine(cfg).run().ok
    assert validate_pipeline(cfg, wait=0).exit_code == 0
    with sqlite3.connect(tmp_path / "crm.db") as c:
        c.execute("UPDATE customers SET city = 'moved' WHERE CustomerId = 3")
    found = validate_pipeline(cfg, wait=0)
    assert found.exit_code == 1 and len(found.results[0].comparison.differences) == 1
    refused = validate_pipeline(cfg, wait=0, repair=True)
    assert refused.exit_code == 2
    assert "key column 'CustomerId' is computed by a transform" in (refused.results[0].error or "")


def test_pinned_to_the_log_end_waits_for_the_destination(tmp_path: Path) -> None:
    """The log holds a change the destination has not applied: validate waits (here: until the
    injected clock's second tick delivers it) and compares at the log's end; without the
    delivery it compares anyway and reports the lag."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from replicant import runtime
    from replicant.ingest import Ingest
    from replicant.model import with_meta
    from replicant.validate.repair import deliver_all

    with sqlite3.connect(tmp_path / "s.db") as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        c.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(50)])
    cfg = parse({"pipeline": "pin", "source": {"type": "sqlite", "url": "sqlite:///s.db", "streams": [{"table": "t"}]},
                 "destinations": [{"name": "lite", "type": "sqlite", "path": "d.db"}]}, base_dir=tmp_path)
    assert Engine(cfg).run().ok
    engine = Engine(cfg)
    source = engine.new_source()
    try:
        stream = engine.streams(source)[0]
    finally:
        source.close()
    state, lg = runtime.open_state(cfg), runtime.open_pipeline_log(cfg)
    try:  # the pipeline read a row again and has not delivered it yet
        batch = pa.RecordBatch.from_pydict({"id": [7], "v": ["v7"]}, schema=stream.schema)
        Ingest(cfg.pipeline, lg, state).append(stream, with_meta(batch, "update", "{}", datetime.now(UTC)),
                                               lg.last_position(stream.log_name) or {})
        end = lg.end_offset(stream.log_name) - 1
    finally:
        lg.close()
        state.close()

    behind = validate_pipeline(cfg, wait=0)
    assert behind.exit_code == 0
    assert (behind.results[0].log_offset, behind.results[0].lag) == (end, 1)

    ticks = []

    def clock() -> float:
        ticks.append(1)
        if len(ticks) == 2:  # while validate waits, the destination catches up
            s, log = runtime.open_state(cfg), runtime.open_pipeline_log(cfg)
            try:
                deliver_all(cfg, log, s, [stream], None)
            finally:
                log.close()
                s.close()
        return float(len(ticks))

    caught = validate_pipeline(cfg, wait=60, clock=clock)
    assert caught.exit_code == 0 and len(ticks) >= 2
    assert (caught.results[0].applied_offset, caught.results[0].lag) == (end, 0)

"""DuckDB destination: conformance, type mapping, keyed tables, file errors, settings."""

from __future__ import annotations

import datetime as dt
import decimal
import os
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from replicant.config import DestinationConfig
from replicant.destinations import duckdb as duckdb_dest
from replicant.destinations.duckdb import DEFAULT_MEMORY_LIMIT, MERGE_SLICE_ROWS, DuckDBDestination, default_threads
from replicant.errors import ConnectionError, FatalError
from replicant.model import DIALECT_KEY, SQL_TYPE_KEY, ConnectorContext

from . import conformance as cf

PIPELINE = "p1"


def _dest(path: Path | None, write: str, schema: str | None = None) -> DuckDBDestination:
    cfg = DestinationConfig(name="wh", type="duckdb", write=write, path=str(path) if path else None, schema=schema)
    return DuckDBDestination(cfg, ConnectorContext(PIPELINE))


def _reader(path: Path) -> duckdb.DuckDBPyConnection:
    """A second connection to the file (same settings, so DuckDB shares the open instance)."""
    return duckdb.connect(str(path), config={"memory_limit": DEFAULT_MEMORY_LIMIT, "threads": default_threads()})


def _harness(path: Path) -> cf.Harness:
    def rows(table: str, schema: str | None = None) -> list[tuple] | None:
        con = _reader(path)
        try:
            found = con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?", [schema or "main", table]
            ).fetchone()[0]
            if not found:
                return None
            q = '"' + (schema or "main").replace('"', '""') + '"."' + table.replace('"', '""') + '"'
            return sorted(con.execute(f"SELECT * FROM {q}").fetchall(), key=repr)
        finally:
            con.close()

    def columns(table: str, schema: str | None = None) -> list[str]:
        con = _reader(path)
        try:
            return [
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? ORDER BY column_index",
                    [schema or "main", table],
                ).fetchall()
            ]
        finally:
            con.close()

    return cf.Harness(make=lambda write, schema=None: _dest(path, write, schema), rows=rows, columns=columns)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


@pytest.fixture
def h(path: Path) -> cf.Harness:
    return _harness(path)


def test_tables_have_no_key_constraint_but_merge_by_key(path: Path) -> None:
    s = cf.make_stream("items", cf.ITEMS)
    d = _dest(path, "merge")
    d.open()
    try:
        d.prepare(s)
        d.write(s, cf.changes(s, [{"id": 1, "name": "a", "qty": 1}], "read"), last_offset=0)
        d.write(s, cf.changes(s, [{"id": 1, "name": "b", "qty": 2}], "update"), last_offset=1)
    finally:
        d.close()
    con = _reader(path)
    try:
        assert con.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'items' AND constraint_type = 'PRIMARY KEY'"
        ).fetchone() == (0,)
    finally:
        con.close()
    assert _harness(path).rows("items") == [(1, "b", 2)]


def test_merge_into_existing_keyed_table(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR, qty INTEGER)")
    con.execute("INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)")
    con.close()
    s = cf.make_stream("items", cf.ITEMS)
    d = _dest(path, "merge")
    d.open()
    try:
        d.prepare(s)
        d.write(
            s,
            cf.changes(s, [{"id": 1, "name": "A", "qty": 10}, {"id": 2}, {"id": 3, "name": "c", "qty": 3}], ["update", "delete", "insert"]),
            last_offset=0,
        )
        d.write(s, cf.changes(s, [{"id": 3, "name": "C", "qty": 30}], ["update"]), last_offset=1)
    finally:
        d.close()
    assert _harness(path).rows("items") == [(1, "A", 10), (3, "C", 30)]


def _big_changes(s: cf.Stream, ids: pa.Array, ops: list[str], name: str) -> pa.Table:
    n = len(ids)
    return pa.table({
        "id": ids, "name": pa.array([name] * n), "qty": pa.array([7] * n, pa.int32()),
        "_op": pa.array(ops), "_pos": pa.array(['{"i":0}'] * n), "_ts": pa.array([cf.TS] * n, pa.timestamp("us", tz="UTC")),
    }, schema=s.change_schema)


@pytest.mark.parametrize("slice_rows", [MERGE_SLICE_ROWS, 7_000])
def test_a_write_larger_than_a_merge_slice_merges_into_a_loaded_table(
    path: Path, slice_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A default-sized write (122,880 rows) merged into a loaded table runs its DELETE … USING
    in slices (a whole write's keys against a loaded 5M-row table ran out of the 24MB memory
    limit in bench/initial_sync's merge-into-loaded; this table is smaller, it checks the
    slicing): updates, deletes and inserts on either side of each slice's edge all land, once."""
    monkeypatch.setattr(duckdb_dest, "MERGE_SLICE_ROWS", slice_rows)
    s = cf.make_stream("items", cf.ITEMS)
    d = _dest(path, "merge")
    d.open()
    try:
        d.prepare(s)
        d.connection.execute("INSERT INTO items SELECT i, repeat('x', 84), 1 FROM range(300000) t(i)")
        n = DuckDBDestination.default_batch_rows
        ids = pa.array(range(250_000, 250_000 + n), pa.int64())  # the first 50,000 exist, the rest are new
        ops = ["delete" if i % 10 == 0 else "update" for i in range(n)]
        d.write(s, _big_changes(s, ids, ops, "y" * 84), last_offset=n - 1)
        assert d.applied_offset(s) == n - 1
    finally:
        d.close()
    con = _reader(path)
    try:
        total, ys, deleted_gone = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE name = repeat('y', 84)), "
            "count(*) FILTER (WHERE id >= 250000 AND (id - 250000) % 10 = 0) FROM items").fetchone()
    finally:
        con.close()
    deletes = (n + 9) // 10
    assert (total, ys, deleted_gone) == (250_000 + n - deletes, n - deletes, 0)


def test_type_mapping_is_exact(path: Path) -> None:
    u = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    pg = {DIALECT_KEY: b"postgresql"}

    def f(name: str, t: pa.DataType, declared: str | None = None) -> pa.Field:
        return pa.field(name, t, metadata={SQL_TYPE_KEY: declared.encode()} if declared else None)

    fields = [
        f("id", pa.int32(), "integer"),
        f("n4020", pa.decimal256(40, 20), "numeric(40,20)"),
        f("n122", pa.decimal128(12, 2), "numeric(12,2)"),
        f("nfree", pa.string(), "numeric"),
        f("r", pa.float32(), "real"),
        f("d", pa.float64(), "double precision"),
        f("c5", pa.string(), "character(5)"),
        f("ts", pa.timestamp("us"), "timestamp without time zone"),
        f("tstz", pa.timestamp("us", tz="UTC"), "timestamp with time zone"),
        f("iv", pa.month_day_nano_interval(), "interval"),
        f("u", pa.string(), "uuid"),
        f("ub", pa.binary(16), "uuid"),
        f("j", pa.string(), "jsonb"),
        f("by", pa.binary(), "bytea"),
        f("ai", pa.list_(pa.int32()), "integer[]"),
        f("at", pa.list_(pa.string()), "text[]"),
        f("m", pa.string(), "mood"),
        f("h", pa.float16()),
        f("u64", pa.uint64()),
    ]
    s = cf.make_stream("alltypes", fields, metadata=pg)
    row = {
        "id": 1,
        "n4020": decimal.Decimal("12345678901234567890.12345678901234567890"),
        "n122": decimal.Decimal("1234567890.12"),
        "nfree": "123456789012345678901234567890.123456789012345",
        "r": float("nan"),
        "d": float("-inf"),
        "c5": "ab   ",
        "ts": dt.datetime(1900, 1, 1, 0, 0, 0, 1),
        "tstz": dt.datetime(2024, 2, 29, 18, 29, 59, 999999, tzinfo=dt.UTC),
        "iv": pa.MonthDayNano([14, 3, 14_706_789_000_000]),
        "u": str(u),
        "ub": u.bytes,
        "j": '{"k": {"z": 1, "a": [true]}}',
        "by": b"\x00\xff\x10",
        "ai": [1, None, -3],
        "at": ["a b", None, "", 'q"uote'],
        "m": "happy",
        "h": 1.5,
        "u64": 2**64 - 1,
    }
    d = _dest(path, "merge")
    d.open()
    try:
        d.prepare(s)
        d.write(s, cf.changes(s, [row, {"id": 2}], "read"), last_offset=0)  # fast path: plain INSERT
        d.write(s, cf.changes(s, [row | {"id": 3}], "update"), last_offset=1)  # merge path
    finally:
        d.close()
    con = _reader(path)
    try:
        types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'alltypes'").fetchall())
        got = [tuple(r.values()) for r in con.sql("SELECT * FROM alltypes ORDER BY id").to_arrow_table().to_pylist()]
    finally:
        con.close()
    assert types == {
        "id": "INTEGER", "n4020": "VARCHAR", "n122": "DECIMAL(12,2)", "nfree": "VARCHAR", "r": "FLOAT", "d": "DOUBLE",
        "c5": "VARCHAR", "ts": "TIMESTAMP", "tstz": "TIMESTAMP WITH TIME ZONE", "iv": "INTERVAL", "u": "UUID", "ub": "UUID",
        "j": "JSON", "by": "BLOB", "ai": "INTEGER[]", "at": "VARCHAR[]", "m": "VARCHAR", "h": "FLOAT", "u64": "UBIGINT",
    }
    first = dict(zip([x.name for x in fields], got[0]))
    assert first["n4020"] == "12345678901234567890.12345678901234567890"
    assert first["n122"] == decimal.Decimal("1234567890.12")
    assert first["nfree"] == "123456789012345678901234567890.123456789012345"
    assert first["r"] != first["r"] and first["d"] == float("-inf")
    assert first["c5"] == "ab   "
    assert first["ts"] == dt.datetime(1900, 1, 1, 0, 0, 0, 1)
    assert first["tstz"] == dt.datetime(2024, 2, 29, 18, 29, 59, 999999, tzinfo=dt.UTC)
    assert first["iv"] == pa.MonthDayNano([14, 3, 14_706_789_000_000])
    assert str(first["u"]) == str(u) and str(first["ub"]) == str(u)
    assert first["j"] == '{"k": {"z": 1, "a": [true]}}'
    assert first["by"] == b"\x00\xff\x10"
    assert first["ai"] == [1, None, -3] and first["at"] == ["a b", None, "", 'q"uote']
    assert first["m"] == "happy" and first["h"] == 1.5 and first["u64"] == 2**64 - 1
    assert got[1] == (2,) + (None,) * (len(fields) - 1)
    assert str(got[2][1:]) == str(got[0][1:])  # compared as text: NaN != NaN


def test_interval_keeps_months_days_and_micros(path: Path) -> None:
    s = cf.make_stream("iv", [pa.field("id", pa.int32()), pa.field("iv", pa.month_day_nano_interval())])
    d = _dest(path, "append")
    d.open()
    try:
        d.prepare(s)
        d.write(s, cf.changes(s, [{"id": 1, "iv": pa.MonthDayNano([-1, 2, -1000])}], "insert"), last_offset=0)
    finally:
        d.close()
    con = _reader(path)
    try:
        row = con.execute("SELECT datepart('month', iv), datepart('day', iv), datepart('microseconds', iv) FROM iv").fetchone()
        assert row == (-1, 2, -1)
    finally:
        con.close()


def test_default_path_is_pipeline_name_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    d = _dest(None, "append")
    assert d.path == f"{PIPELINE}.duckdb"
    d.open()
    d.close()
    assert (tmp_path / f"{PIPELINE}.duckdb").exists()


def test_memory_limit_is_set(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICANT_DUCKDB_MEMORY_LIMIT", "32MB")
    d = _dest(path, "append")
    d.open()
    try:
        limit = d.query("SELECT current_setting('memory_limit')")[0][0]
    finally:
        d.close()
    assert limit.startswith("30.5 MiB")


def test_duckdb_leaves_a_core_to_the_pipeline(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB's threads default to one fewer than the cores (at least one); an explicit number wins."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    assert default_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert default_threads() == 1
    monkeypatch.undo()
    for d, expected in ((_dest(path, "append"), default_threads()),
                        (DuckDBDestination(DestinationConfig(name="wh", type="duckdb", write="append", path=str(path)),
                                           ConnectorContext(PIPELINE), threads=2), 2)):
        d.open()
        try:
            assert d.query("SELECT current_setting('threads')")[0][0] == expected
        finally:
            d.close()


def test_locked_file_is_connection_error(path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ok', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        d = _dest(path, "append")
        with pytest.raises(ConnectionError, match=r"warehouse\.duckdb"):
            d.open()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()


def test_write_error_names_stream_and_table(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE items (id BIGINT, name VARCHAR, qty UTINYINT)")
    con.close()
    s = cf.make_stream("items", cf.ITEMS)
    d = _dest(path, "append")
    d.open()
    try:
        d.prepare(s)
        with pytest.raises(FatalError, match=r"stream 'items', table main\.items"):
            d.write(s, cf.changes(s, [{"id": 1, "name": "a", "qty": -5}], "insert"), last_offset=0)
        assert d.applied_offset(s) == -1
    finally:
        d.close()


def test_infinity_sentinels_become_duckdb_infinity(path: Path) -> None:
    """PostgreSQL sources deliver ±infinity as ± the integer's max: DuckDB's own encoding."""
    m = 2**63 - 1
    s = cf.make_stream(
        "inf",
        [
            pa.field("id", pa.int32()),
            pa.field("ts", pa.timestamp("us")),
            pa.field("tz", pa.timestamp("us", tz="UTC")),
            pa.field("d", pa.date32()),
        ],
    )
    data = pa.table(
        {
            "id": pa.array([1, 2], pa.int32()),
            "ts": pa.array([m, -m], pa.timestamp("us")),
            "tz": pa.array([-m, m], pa.timestamp("us", tz="UTC")),
            "d": pa.array([2**31 - 1, -(2**31 - 1)], pa.date32()),
        }
    )
    meta = cf.changes(s, [{"id": 1}, {"id": 2}], "insert")
    table = pa.Table.from_arrays(list(data.columns) + meta.columns[-3:], schema=s.change_schema)
    d = _dest(path, "merge")
    d.open()
    try:
        d.prepare(s)
        d.write(s, table, last_offset=0)
    finally:
        d.close()
    con = _reader(path)
    try:
        got = con.execute("SELECT id, ts::VARCHAR, tz::VARCHAR, d::VARCHAR FROM inf ORDER BY id").fetchall()
    finally:
        con.close()
    assert got == [(1, "infinity", "-infinity", "infinity"), (2, "-infinity", "infinity", "-infinity")]

"""The engine end to end on real servers: cursor mode across runs (with a late commit
inside the look-back), replace keeping the old table readable until the swap, the exact
PostgreSQL → PostgreSQL type round trip, and hostile identifiers into every destination."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from compare import fetch
from replicant.config import parse
from replicant.engine import Engine, Observer


def _cfg(tmp_path: Path, source: dict, dest: dict, name: str = "t"):
    return parse({"pipeline": name, "source": source, "destinations": [dest]}, base_dir=tmp_path)


def _exec(url: str, *sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        for s in sql:
            c.execute(s)


# ---------------------------------------------------------------- cursor mode


def test_cursor_mode_picks_up_inserts_updates_and_late_commits(tmp_path: Path, pg_url: str) -> None:
    _exec(
        pg_url,
        "CREATE TABLE customers (id int PRIMARY KEY, name text, updated_at timestamptz NOT NULL)",
        "INSERT INTO customers SELECT g, 'c' || g, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' "
        "FROM generate_series(1, 5000) g",
    )
    dst = tmp_path / "d.duckdb"
    cfg = _cfg(
        tmp_path,
        {"type": "postgres", "url": pg_url, "batch_size": 700,
         "streams": [{"table": "customers", "mode": "cursor", "cursor": "updated_at", "lookback": "10m"}]},
        {"name": "d", "type": "duckdb", "path": str(dst), "write": "merge"},
    )
    cols = ["id", "name", "updated_at"]
    r1 = Engine(cfg).run()
    assert r1.ok, r1.errors
    assert r1.rows_read["customers"] == 5000
    assert fetch("duckdb", str(dst), "customers", cols) == fetch("postgres", pg_url, "customers", cols)

    # an insert and an update, both with newer cursor values
    _exec(
        pg_url,
        "INSERT INTO customers VALUES (5001, 'new', timestamptz '2026-01-02 00:00:00+00')",
        "UPDATE customers SET name = 'changed', updated_at = timestamptz '2026-01-02 00:00:01+00' WHERE id = 17",
    )
    r2 = Engine(cfg).run()
    assert r2.ok, r2.errors
    assert r2.rows_read["customers"] == 2, "only the changed rows are read (and rows in the look-back are not re-emitted)"
    assert fetch("duckdb", str(dst), "customers", cols) == fetch("postgres", pg_url, "customers", cols)

    # a late commit: its cursor value is older than the newest seen, but inside the 10-minute look-back
    _exec(pg_url, "INSERT INTO customers VALUES (6000, 'late', timestamptz '2026-01-01 23:58:00+00')")
    r3 = Engine(cfg).run()
    assert r3.ok, r3.errors
    assert r3.rows_read["customers"] == 1
    assert fetch("duckdb", str(dst), "customers", cols) == fetch("postgres", pg_url, "customers", cols)

    # outside the look-back a late row is not seen (the documented limit of cursor mode)
    _exec(pg_url, "INSERT INTO customers VALUES (7000, 'too late', timestamptz '2026-01-01 00:00:00+00')")
    r4 = Engine(cfg).run()
    assert r4.ok and r4.rows_read["customers"] == 0
    assert (7000,) not in [r[:1] for r in fetch("duckdb", str(dst), "customers", ["id"])]


# ---------------------------------------------------------------- replace


class _ReadDuringReplace(Observer):
    """Reads the destination table each time rows are written, before the swap."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[int] = []

    def rows_written(self, destination: str, stream: str, rows: int) -> None:
        with psycopg.connect(self.url) as c:
            self.seen.append(c.execute("SELECT count(*) FROM items").fetchone()[0])


def test_replace_keeps_old_table_readable_until_swap(tmp_path: Path, pg_url: str, pg_server) -> None:
    _exec(pg_url, "CREATE TABLE items (id int PRIMARY KEY, v text)",
          "INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 300) g")
    dst_name = pg_url.rsplit("/", 1)[1] + "_r"
    _exec(pg_server.url("postgres"), f'CREATE DATABASE "{dst_name}"')
    dst = pg_server.url(dst_name)
    cfg = _cfg(tmp_path, {"type": "postgres", "url": pg_url, "batch_size": 50, "streams": ["items"]},
               {"name": "d", "type": "postgres", "url": dst, "write": "replace", "batch_size": 50})
    assert Engine(cfg).run().ok
    _exec(pg_url, "INSERT INTO items SELECT g, 'w' || g FROM generate_series(301, 1000) g")
    obs = _ReadDuringReplace(dst)
    r = Engine(cfg, observer=obs).run()
    assert r.ok, r.errors
    assert len(obs.seen) >= 10, "the snapshot was written in several transactions"
    assert set(obs.seen) == {300}, "readers saw the old table, whole, until the swap"
    assert fetch("postgres", dst, "items", ["id", "v"]) == fetch("postgres", pg_url, "items", ["id", "v"])


# ---------------------------------------------------------------- PG → PG types

TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE alltypes (
  id bigint PRIMARY KEY,
  i2 smallint, i4 integer, i8 bigint,
  n_big numeric(40,20), n_free numeric, n_small numeric(12,2),
  f4 real, f8 double precision,
  t text, vc varchar(20), ch char(5),
  b boolean, d date, tm time, ts timestamp, tstz timestamptz, iv interval,
  u uuid, j json, jb jsonb, by bytea,
  ai integer[], at text[],
  m mood
);
INSERT INTO alltypes VALUES
 (1, -32768, -2147483648, -9223372036854775808, 12345678901234567890.12345678901234567890,
  123456789012345678901234567890.123456789012345, 1234567890.12,
  1.5, 3.141592653589793, 'text ü 😀', 'varchar', 'ab', true, '2024-02-29', '23:59:59.999999',
  '2024-01-01 12:34:56.789012', '2024-06-01 00:00:00.000001+02', '1 year 2 mons 3 days 04:05:06.789',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"b": {"c": null}}', '\\x00ff10',
  '{1,NULL,3}', '{"x",NULL,"y z"}', 'happy'),
 (2, 32767, 2147483647, 9223372036854775807, -0.00000000000000000001, -1e-30, -0.01,
  'NaN', '-Infinity', '', '', '     ', false, '0001-01-01', '00:00:00', '1970-01-01 00:00:00',
  '1970-01-01 00:00:00+00', '-3 days', '00000000-0000-0000-0000-000000000000', '[]', '{}', '\\x',
  '{}', '{}', 'sad'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"""


def test_postgres_to_postgres_types_round_trip_exactly(tmp_path: Path, pg_url: str, pg_server) -> None:
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(TYPES_DDL)
    dst_name = pg_url.rsplit("/", 1)[1] + "_t"
    _exec(pg_server.url("postgres"), f'CREATE DATABASE "{dst_name}"')
    dst = pg_server.url(dst_name)
    for write in ("merge", "replace"):
        cfg = _cfg(tmp_path, {"type": "postgres", "url": pg_url, "streams": ["alltypes"]},
                   {"name": "d", "type": "postgres", "url": dst, "write": write}, name=f"types_{write}")
        r = Engine(cfg).run()
        assert r.ok, r.errors
        with psycopg.connect(dst) as c:
            # same declared types, column by column
            types = c.execute(
                "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns "
                "JOIN pg_attribute ON attrelid = 'alltypes'::regclass AND attname = column_name "
                "WHERE table_name = 'alltypes' ORDER BY ordinal_position"
            ).fetchall()
        with psycopg.connect(pg_url) as c:
            src_types = c.execute(
                "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns "
                "JOIN pg_attribute ON attrelid = 'alltypes'::regclass AND attname = column_name "
                "WHERE table_name = 'alltypes' ORDER BY ordinal_position"
            ).fetchall()
        src_types = [(n, "text" if t == "mood" else t) for n, t in src_types]
        types = [(n, "text" if t == "mood" else t) for n, t in types]
        assert types == src_types
        # the same values, compared as PostgreSQL text, row by row and column by column
        cols = [n for n, _ in src_types]
        sel = "SELECT " + ", ".join(f'"{n}"::text' for n in cols) + " FROM alltypes ORDER BY id"
        with psycopg.connect(pg_url) as a, psycopg.connect(dst) as b:
            assert b.execute(sel).fetchall() == a.execute(sel).fetchall()


# ---------------------------------------------------------------- hostile identifiers

HOSTILE_TABLE = 'Order "Details" ü'
HOSTILE_COLS = ["Id", "select", 'naïve "quoted" col', "with space", "MixedCase"]


@pytest.mark.parametrize("dkind", ["duckdb", "postgres", "mysql", "sqlite"])
def test_hostile_identifiers_round_trip(tmp_path: Path, pg_url: str, dkind: str, request) -> None:
    q = lambda n: '"' + n.replace('"', '""') + '"'  # noqa: E731
    _exec(
        pg_url,
        f"CREATE TABLE {q(HOSTILE_TABLE)} ({q('Id')} int PRIMARY KEY, {q('select')} text, "
        f"{q(HOSTILE_COLS[2])} int, {q('with space')} date, {q('MixedCase')} boolean)",
        f"INSERT INTO {q(HOSTILE_TABLE)} SELECT g, 'v' || g, g * 2, date '2024-01-01' + g, g % 2 = 0 "
        "FROM generate_series(1, 250) g",
    )
    if dkind == "postgres":
        dst = request.getfixturevalue("pg_server").url(pg_url.rsplit("/", 1)[1])  # same db, other schema
        dest = {"name": "d", "type": "postgres", "url": dst, "schema": "Dest Schema", "write": "merge"}
        target, schema = dst, "Dest Schema"
    elif dkind == "mysql":
        target, schema = request.getfixturevalue("mysql_url"), None
        dest = {"name": "d", "type": "mysql", "url": target, "write": "merge"}
    else:
        target, schema = str(tmp_path / f"d.{dkind}"), None
        dest = {"name": "d", "type": dkind, "path": target, "write": "merge"}
    cfg = _cfg(tmp_path, {"type": "postgres", "url": pg_url, "streams": [HOSTILE_TABLE]}, dest)
    r = Engine(cfg).run()
    assert r.ok, r.errors
    assert r.rows_read[HOSTILE_TABLE] == 250
    got = fetch(dkind, target, HOSTILE_TABLE, HOSTILE_COLS, schema=schema)
    assert got == fetch("postgres", pg_url, HOSTILE_TABLE, HOSTILE_COLS)


# ---------------------------------------------------------------- cursor mode: soft deletes


def test_cursor_soft_delete_column_deletes_at_the_destination(tmp_path: Path) -> None:
    import sqlite3

    src = tmp_path / "src.db"
    with sqlite3.connect(src) as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, updated_at INTEGER NOT NULL, deleted_at INTEGER)")
        c.executemany("INSERT INTO t VALUES (?, ?, ?, NULL)", [(i, f"n{i}", i) for i in range(1, 101)])
    dst = tmp_path / "d.duckdb"
    cfg = _cfg(
        tmp_path,
        {"type": "sqlite", "url": f"sqlite:///{src}",
         "streams": [{"table": "t", "mode": "cursor", "cursor": "updated_at", "soft_delete": "deleted_at"}]},
        {"name": "d", "type": "duckdb", "path": str(dst), "write": "merge"},
    )
    assert Engine(cfg).run().ok
    assert len(fetch("duckdb", str(dst), "t", ["id"])) == 100
    with sqlite3.connect(src) as c:
        c.execute("UPDATE t SET deleted_at = 500, updated_at = 500 WHERE id IN (3, 4)")
        c.execute("UPDATE t SET name = 'kept', updated_at = 501 WHERE id = 5")
    r = Engine(cfg).run()
    assert r.ok and r.rows_read["t"] == 3
    rows = {int(i): n for i, n in fetch("duckdb", str(dst), "t", ["id", "name"])}
    assert 3 not in rows and 4 not in rows and rows[5] == "kept" and len(rows) == 98

    bad = parse({"pipeline": "p", "source": {"type": "sqlite", "url": f"sqlite:///{src}",
                 "streams": [{"table": "t", "mode": "cursor", "cursor": "updated_at", "soft_delete": "deleted"}]},
                 "destinations": [{"name": "d", "type": "duckdb", "path": str(dst)}]}, base_dir=tmp_path)
    with pytest.raises(Exception, match=r"soft_delete.*did you mean 'deleted_at'"):
        Engine(bad).run()


# ---------------------------------------------------------------- memory: readers at once


@pytest.mark.parametrize(("tables", "parallelism", "readers"), [(3, 2, 2), (1, 2, 1), (3, 1, 1)])
def test_each_stream_task_source_is_told_how_many_read_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                tables: int, parallelism: int, readers: int) -> None:
    """The stream tasks' sources learn how many of them read at once (``parallelism``, at most
    one per stream), so a source dividing its read buffers by it keeps a run's memory at what
    one read holds (the PostgreSQL source's COPY batches: tests/sources/test_pg_source.py)."""
    import sqlite3

    from replicant import runtime

    src = tmp_path / "src.db"
    with sqlite3.connect(src) as c:
        for i in range(tables):
            c.execute(f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY, v TEXT)")
            c.executemany(f"INSERT INTO t{i} VALUES (?, ?)", [(j, f"v{j}") for j in range(50)])
    told: list[int] = []
    real = runtime.source_context

    def recording(*args, **kw):
        context = real(*args, **kw)
        told.append(context.readers)
        return context

    monkeypatch.setattr(runtime, "source_context", recording)
    cfg = parse({"pipeline": "readers", "parallelism": parallelism,
                 "source": {"type": "sqlite", "url": f"sqlite:///{src}"},
                 "destinations": [{"name": "d", "type": "duckdb", "path": str(tmp_path / "d.duckdb")}]}, base_dir=tmp_path)
    result = Engine(cfg).run()
    assert result.ok and sum(result.rows_read.values()) == 50 * tables
    # discovery's source reads alone; each task's source is one of ``readers``
    assert told[0] == 1 and set(told[1:]) == {readers} and len(told) == 1 + min(parallelism, tables)

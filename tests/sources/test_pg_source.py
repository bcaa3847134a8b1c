"""PostgreSQL source specifics: every type read into Arrow exactly, partitions and views
under ``streams: all``, keys of every keyable type, a value that does not fit its type."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal

import psycopg
import pyarrow as pa
import pytest

from replicant.errors import ConfigError, FatalError
from replicant.model import SQL_TYPE_KEY

from .dbs import CONTEXT, Db, data_of, read_all

DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE alltypes (
  id bigint PRIMARY KEY,
  i2 smallint, i4 integer, i8 bigint, dom posint,
  n_big numeric(40,20), n_free numeric, n_small numeric(12,2), n_huge numeric(60,5),
  f4 real, f8 double precision,
  t text, vc varchar(20), ch char(5),
  b boolean, d date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval,
  u uuid, j json, jb jsonb, by bytea,
  ai integer[], at text[], an numeric(6,2)[], m mood, ma mood[], money1 money, inet1 inet
);
"""
ROW1 = (
    "(1, -32768, -2147483648, -9223372036854775808, 7, 12345678901234567890.12345678901234567890, "
    "-123456789012345678901234567890.123456789012345, 1234567890.12, 1234567890123456789012345678901234567890.12345, "
    "1.5, 3.141592653589793, 'text ü 😀', 'varchar', 'ab', true, '2024-02-29', '23:59:59.999999', '12:34:56.5+05:30', "
    "'2024-01-01 12:34:56.789012', '2024-06-01 00:00:00.000001+02', '1 year 2 mons 3 days 04:05:06.789', "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{\"b\": {\"c\": null}}', '\\x00ff10', "
    "'{1,NULL,3}', '{\"x\",NULL,\"y z\"}', '{1.50,NULL}', 'happy', '{sad,happy}', 12.34, '192.168.0.1/24')"
)
NULLS = "(2" + ", NULL" * 31 + ")"


def test_every_type_is_read_into_arrow_exactly(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(DDL)
        c.execute(f"INSERT INTO alltypes VALUES {ROW1}, {NULLS}")
    db = Db("postgres", pg_url)
    src, (s,) = db.streams(["alltypes"])
    with src:
        expected_types = {
            "id": pa.int64(), "i2": pa.int16(), "i4": pa.int32(), "i8": pa.int64(), "dom": pa.int32(),
            "n_big": pa.decimal256(40, 20), "n_free": pa.string(), "n_small": pa.decimal128(12, 2),
            "n_huge": pa.decimal256(60, 5), "f4": pa.float32(), "f8": pa.float64(),
            "t": pa.string(), "vc": pa.string(), "ch": pa.string(), "b": pa.bool_(), "d": pa.date32(),
            "tm": pa.time64("us"), "tmtz": pa.string(), "ts": pa.timestamp("us"), "tstz": pa.timestamp("us", tz="UTC"),
            "iv": pa.month_day_nano_interval(), "u": pa.string(), "j": pa.string(), "jb": pa.string(),
            "by": pa.binary(), "ai": pa.list_(pa.int32()), "at": pa.list_(pa.string()),
            "an": pa.list_(pa.decimal128(6, 2)), "m": pa.string(), "ma": pa.list_(pa.string()),
            "money1": pa.string(), "inet1": pa.string(),
        }
        assert {f.name: f.type for f in s.schema} == expected_types
        sql_types = {f.name: f.metadata[SQL_TYPE_KEY].decode() for f in s.schema}
        assert sql_types["n_big"] == "numeric(40,20)" and sql_types["vc"] == "character varying(20)"
        assert sql_types["ch"] == "character(5)" and sql_types["ai"] == "integer[]" and sql_types["m"] == "mood"
        assert sql_types["tstz"] == "timestamp with time zone" and sql_types["dom"] == "integer"
        batches = read_all(src, s)
    rows = data_of(batches).to_pylist()
    assert rows[1] == {"id": 2, **{k: None for k in expected_types if k != "id"}}
    r = rows[0]
    assert r["n_big"] == Decimal("12345678901234567890.12345678901234567890")
    assert r["n_free"] == "-123456789012345678901234567890.123456789012345"
    assert r["n_huge"] == Decimal("1234567890123456789012345678901234567890.12345")
    assert r["n_small"] == Decimal("1234567890.12")
    assert (r["i2"], r["i4"], r["i8"], r["dom"]) == (-32768, -2147483648, -9223372036854775808, 7)
    assert r["f4"] == 1.5 and r["f8"] == 3.141592653589793
    assert (r["t"], r["vc"], r["ch"]) == ("text ü 😀", "varchar", "ab   ")
    assert r["b"] is True and r["d"] == date(2024, 2, 29) and r["tm"] == time(23, 59, 59, 999999)
    assert r["tmtz"] == "12:34:56.5+05:30"
    assert r["ts"] == datetime(2024, 1, 1, 12, 34, 56, 789012)
    assert r["tstz"] == datetime(2024, 5, 31, 22, 0, 0, 1, tzinfo=UTC)
    assert r["iv"] == pa.MonthDayNano([14, 3, ((4 * 60 + 5) * 60 + 6) * 10**9 + 789 * 10**6])
    assert r["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert r["j"] == '{"a": [1, 2]}' and r["jb"] == '{"b": {"c": null}}'
    assert r["by"] == b"\x00\xff\x10"
    assert r["ai"] == [1, None, 3] and r["at"] == ["x", None, "y z"] and r["an"] == [Decimal("1.50"), None]
    assert r["m"] == "happy" and r["ma"] == ["sad", "happy"]
    assert r["money1"] == "12.34" and r["inet1"] == "192.168.0.1/24"


def test_all_reads_a_partitioned_table_once_and_skips_views_and_own_tables(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("""
            CREATE TABLE payment (id int, paid date, amount numeric(5,2), PRIMARY KEY (paid, id)) PARTITION BY RANGE (paid);
            CREATE TABLE payment_p1 PARTITION OF payment FOR VALUES FROM ('2022-01-01') TO ('2022-02-01');
            CREATE TABLE payment_p2 PARTITION OF payment FOR VALUES FROM ('2022-02-01') TO ('2022-03-01');
            INSERT INTO payment SELECT g, date '2022-01-01' + g % 50, g FROM generate_series(1, 100) g;
            CREATE VIEW big_payments AS SELECT * FROM payment WHERE amount > 50;
            CREATE TABLE _replicant_shadow (id int PRIMARY KEY);
            CREATE SCHEMA sales;
            CREATE TABLE sales.orders (id int PRIMARY KEY);
        """)
    db = Db("postgres", pg_url)
    src, streams = db.streams("all", chunk_size=30, batch_size=7)
    with src:
        assert sorted(s.name for s in streams) == ["payment", "sales.orders"]
        payment = next(s for s in streams if s.name == "payment")
        assert payment.primary_key == ("paid", "id") and payment.options["kind"] == "partitioned"
        got = data_of(read_all(src, payment))
    assert got.num_rows == 100 and len(set(got.column("id").to_pylist())) == 100
    # listed explicitly, a view and a partition are readable too (the view without a key)
    src, (view, part) = db.streams(["big_payments", "payment_p2"])
    with src:
        assert view.options["kind"] == "view" and part.options["kind"] == "partition"
        assert data_of(read_all(src, view)).num_rows == 50
        assert 0 < data_of(read_all(src, part)).num_rows < 100


@pytest.mark.parametrize(
    ("ddl", "values"),
    [
        ("uuid", ["00000000-0000-0000-0000-000000000001", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "ffffffff-0000-0000-0000-000000000000"]),
        ("numeric(20,5)", ["-1.5", "0.00001", "123456789012345.12345"]),
        ("numeric(12,2)", ["-1234567890.12", "-0.01", "9999999999.99"]),
        ("timestamptz", ["2024-01-01 00:00:00+00", "2024-01-01 00:00:00.000001+00", "2024-03-01 12:00:00+05"]),
        ("bytea", ["\\x00", "\\x0001", "\\xff"]),
        ("mood", ["happy", "sad", "ok"]),
        ("char(3)", ["a", "a b", "b"]),
        ("date", ["1999-12-31", "2000-01-01", "0001-01-01"]),
    ],
)
def test_keys_of_every_keyable_type_page_correctly(pg_url: str, ddl: str, values: list[str]) -> None:
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        c.execute(f"CREATE TABLE k (a {ddl} NOT NULL, b int NOT NULL, PRIMARY KEY (a, b))")
        c.cursor().executemany("INSERT INTO k VALUES (%s, %s)", [(v, i) for v in values for i in range(3)])
        order = c.execute("SELECT a::text, b FROM k ORDER BY a, b").fetchall()
    db = Db("postgres", pg_url)
    src, (s,) = db.streams(["k"], batch_size=2, chunk_size=3)
    with src:
        batches = read_all(src, s)
        full = data_of(batches)
        assert full.num_rows == 9 and [b.data.num_rows for b in batches] == [2, 1] * 3 + [0]
        for cut in range(1, len(batches)):
            rest = read_all(src, s, batches[cut - 1].position)
            assert pa.concat_tables([data_of(batches[:cut]), data_of(rest)]).equals(full), cut
    assert full.column("b").to_pylist() == [b for _, b in order]


def test_numerics_read_exactly_through_their_text(pg_url: str) -> None:
    """numeric(p,s) travels as the server's text and is cast to the decimal in Arrow:
    extremes of each width, negatives, scale 0 and 18, NULLs, decimal256, over batches."""
    values = {
        "a": ["999999999999999999", "-999999999999999999", "0", "-1", None],  # numeric(18,0)
        "b": ["0.999999999999999999", "-0.000000000000000001", "0.5", None, "0"],  # numeric(18,18)
        "c": ["99999999999999.9999", "-99999999999999.9999", "0.0001", "-0.0001", None],  # numeric(18,4)
        "d": ["-1.50", "0.01", None, "1234567890.12", "-9999999999.99"],  # numeric(12,2)
        "e": ["-" + "9" * 30 + "." + "9" * 10, "0.0000000001", None, "1" + "0" * 29, "0"],  # numeric(40,10)
    }
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE u (id int PRIMARY KEY, a numeric(18,0), b numeric(18,18), c numeric(18,4), "
                  "d numeric(12,2), e numeric(40,10))")
        c.cursor().executemany("INSERT INTO u VALUES (%s, %s, %s, %s, %s, %s)",
                               [(i, *(values[k][i] for k in "abcde")) for i in range(5)])
    src, (s,) = Db("postgres", pg_url).streams(["u"], batch_size=2)
    with src:
        t = data_of(read_all(src, s))
    assert t.schema.field("b").type == pa.decimal128(18, 18) and t.schema.field("e").type == pa.decimal256(40, 10)
    for k in "abcde":
        assert t.column(k).to_pylist() == [None if v is None else Decimal(v) for v in values[k]], k


def test_a_value_that_does_not_fit_its_type_stops_the_stream_naming_the_column(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE n (id int PRIMARY KEY, price numeric(6,2)); INSERT INTO n VALUES (1, 'NaN')")
    src, (s,) = Db("postgres", pg_url).streams(["n"])
    with src, pytest.raises(FatalError) as e:
        read_all(src, s)
    assert "'price'" in str(e.value) and "nan" in str(e.value).lower() and "exclude the column" in str(e.value)


def test_infinities_and_numeric_specials_are_kept(pg_url: str) -> None:
    """±infinity become ±max of the Arrow integer (DuckDB's encoding of infinity); an
    unconstrained numeric keeps PostgreSQL's own text for NaN and ±Infinity."""
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE inf (id int PRIMARY KEY, a timestamp, b timestamptz, c date, n numeric)")
        c.execute("INSERT INTO inf VALUES (1, 'infinity', '-infinity', 'infinity', 'NaN'), "
                  "(2, '-infinity', 'infinity', '-infinity', 'Infinity'), (3, '2020-01-01', '2020-01-01', '2020-01-01', '-Infinity'), "
                  "(4, NULL, NULL, NULL, 1.50)")
    src, (s,) = Db("postgres", pg_url).streams(["inf"])
    with src:
        t = data_of(read_all(src, s))
    top64, top32 = 2**63 - 1, 2**31 - 1
    assert t.column("a").cast(pa.int64()).to_pylist() == [top64, -top64, 1577836800000000, None]
    assert t.column("b").cast(pa.int64()).to_pylist() == [-top64, top64, 1577836800000000, None]
    assert t.column("c").cast(pa.int32()).to_pylist() == [top32, -top32, 18262, None]
    assert t.column("n").to_pylist() == ["NaN", "Infinity", "-Infinity", "1.50"]


def test_wrong_password_is_a_connection_error_without_it(pg_server, pg_url: str) -> None:
    import os

    from replicant.config import SourceConfig
    from replicant.errors import ConnectionError
    from replicant.sources.postgres import PostgresSource
    from servers import PASSWORD_ROLE

    if os.environ.get("REPLICANT_TEST_PG_URL"):
        pytest.skip("needs the throwaway server's pg_hba, which asks PASSWORD_ROLE for a password")
    dbname = pg_url.rsplit("/", 1)[1]
    with pg_server.connect(dbname) as c:
        c.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 'right-one'")
    try:
        url = f"postgresql://{PASSWORD_ROLE}:wr0ng%40s3cret@{pg_server.host}:{pg_server.port}/{dbname}"
        with PostgresSource(SourceConfig(type="postgres", url=url), CONTEXT) as src, pytest.raises(ConnectionError) as e:
            src.discover()
        text = str(e.value)
        assert "wr0ng" not in text and "s3cret" not in text
        assert PASSWORD_ROLE in text and str(pg_server.port) in text and dbname in text
        assert "password authentication failed" in text
    finally:
        with pg_server.connect(dbname) as c:
            c.execute(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")


def test_tables_without_select_privilege(pg_server, pg_url: str) -> None:
    import uuid

    dbname = pg_url.rsplit("/", 1)[1]
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} LOGIN")
        c.execute("CREATE TABLE open_t (id int PRIMARY KEY); CREATE TABLE secret_t (id int PRIMARY KEY)")
        c.execute(f"GRANT SELECT ON open_t TO {role}")
    try:
        db = Db("postgres", f"postgresql://{role}@{pg_server.host}:{pg_server.port}/{dbname}")
        src, streams = db.streams("all")
        with src:
            assert [s.name for s in streams] == ["open_t"]
        with pytest.raises(ConfigError) as e:
            db.streams(["open_t", "secret_t"])
        assert dict(e.value.problems)["source.streams[1].table"].startswith("no SELECT privilege on 'secret_t'")
    finally:
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute(f"DROP OWNED BY {role}")
            c.execute(f"DROP ROLE {role}")


def test_copy_batches_shrink_with_the_readers_running_at_once(pg_url: str) -> None:
    """ADBC cuts COPY into batches of about 4 MB for a source reading alone, and divides that by
    the readers running at once (ConnectorContext.readers), down to 1 MB: at parallelism 2 a
    run holds what one read would (12 tables × 500k rows at parallelism 2 peaked at 270–280 MB
    RSS with 4 MB each, 251–254 MB with 2 MB)."""
    from dataclasses import replace

    from .dbs import CONTEXT

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))")
        c.execute("INSERT INTO accounts SELECT g, g % 10, 0, '' FROM generate_series(1, 200000) g")
    db = Db("postgres", pg_url)

    def first_batch_bytes(readers: int) -> int:
        src, (s,) = db.streams(["accounts"], context=replace(CONTEXT, readers=readers))
        with src:
            plan = src._plan(s)
            return next(iter(src._batches(src._query(plan, [], [], None), [], plan, 1_000_000))).nbytes

    alone, two, many = first_batch_bytes(1), first_batch_bytes(2), first_batch_bytes(16)
    assert 3e6 < alone < 5e6, alone
    assert 1.8 < alone / two < 2.2, (alone, two)
    assert 3.6 < alone / many < 4.4, (alone, many)  # 16 readers: never below 1 MB each


def test_a_connection_lost_during_a_read_is_retriable_and_the_process_goes_on(pg_url: str) -> None:
    """The server ends the source's backend in the middle of a COPY: the read raises a
    RetriableError naming the table (the run retries it) and the process lives on. The error
    comes through Arrow's reader without a SQLSTATE (OSError with driver 1.13, ValueError with
    1.8): before, 1.13's escaped unclassified and 1.8's stopped the stream as fatal."""
    from dataclasses import replace

    from replicant.errors import RetriableError

    from .dbs import CONTEXT

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))")
        # 60 MB of COPY: far more than the sockets buffer once the reader stops taking it
        c.execute("INSERT INTO accounts SELECT g, g % 10, 0, '' FROM generate_series(1, 500000) g")
    db = Db("postgres", pg_url)
    src, (s,) = db.streams(["accounts"], context=replace(CONTEXT, readers=16))  # 1 MB batches
    with src:
        plan = src._plan(s)
        batches = src._batches(src._query(plan, [], [], None), [], plan, 1_000_000)
        seen = [next(batches).num_rows]
        with psycopg.connect(pg_url, autocommit=True) as c:
            ended = c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE query LIKE 'COPY%' AND pid <> pg_backend_pid()").fetchall()
        assert ended == [(True,)]
        with pytest.raises(RetriableError, match="accounts") as e:
            seen.extend(b.num_rows for b in batches)
        assert sum(seen) < 500_000, seen
        assert "terminating connection" in str(e.value) or "closed the connection" in str(e.value), e.value
    with src:  # the source connects again and reads the whole table
        assert sum(b.data.num_rows for b in read_all(src, s)) == 500_000

"""PostgreSQL destination: conformance, exact same-dialect type round trip, fast path,
staging casts, errors."""

from __future__ import annotations

import decimal
import uuid
from collections.abc import Iterator

import psycopg
import pyarrow as pa
import pyarrow.compute
import pytest

from replicant.config import DestinationConfig
from replicant.destinations.postgres import PostgresDestination
from replicant.errors import ConnectionError, FatalError, RetriableError
from replicant.model import DIALECT_KEY, SQL_TYPE_KEY, ConnectorContext, Stream

from . import conformance as cf
from ._pg_source import read_pg_table

PIPELINE = "p1"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _dest(url: str, write: str, schema: str | None = None, name: str = "pg") -> PostgresDestination:
    cfg = DestinationConfig(name=name, type="postgres", write=write, url=url, schema=schema)
    return PostgresDestination(cfg, ConnectorContext(PIPELINE))


def _write_once(url: str, write: str, stream: Stream, data: pa.Table, schema: str | None = None) -> int:
    """Prepares ``stream`` and writes ``data`` with a new destination object; returns how many
    batches went through the staging table instead of a direct COPY."""
    d = _dest(url, write, schema=schema)
    d.open()
    try:
        d.prepare(stream)
        d.write(stream, data, last_offset=0)
        return d.staged_batches
    finally:
        d.close()


def _harness(url: str) -> cf.Harness:
    def rows(table: str, schema: str | None = None) -> list[tuple] | None:
        with psycopg.connect(url, autocommit=True) as c:
            q = f"{_quote(schema or 'public') + '.' + _quote(table)}"
            if c.execute("SELECT to_regclass(%s)", [q]).fetchone()[0] is None:
                return None
            return sorted(c.execute(f"SELECT * FROM {q}").fetchall(), key=repr)

    def columns(table: str, schema: str | None = None) -> list[str]:
        with psycopg.connect(url, autocommit=True) as c:
            return [
                r[0]
                for r in c.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                    "ORDER BY ordinal_position",
                    [schema or "public", table],
                )
            ]

    return cf.Harness(make=lambda write, schema=None: _dest(url, write, schema), rows=rows, columns=columns)


@pytest.fixture
def h(pg_url: str) -> cf.Harness:
    return _harness(pg_url)


def test_offset_atomic_on_fast_path(h: cf.Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the direct COPY of a snapshot batch rolls the COPY back too."""
    s = cf.make_stream("items", cf.ITEMS)
    d = h.make("merge")
    d.open()
    try:
        d.prepare(s)
        with monkeypatch.context() as m:
            h.fail_after_data(d, m)
            with pytest.raises(RuntimeError, match="injected"):
                d.write(s, cf.changes(s, [{"id": 1, "name": "a", "qty": 1}], "read"), last_offset=0)
        assert d.applied_offset(s) == -1
        assert h.rows("items") == []
    finally:
        d.close()


def test_replace_old_table_readable_from_second_connection(pg_url: str) -> None:
    s = cf.make_stream("items", cf.ITEMS)
    d = _dest(pg_url, "replace")
    d.open()
    try:
        d.prepare(s)
        d.begin_replace(s)
        d.write(s, cf.changes(s, [{"id": 1, "name": "v1", "qty": 1}], "read"), last_offset=0)
        d.commit_replace(s, last_offset=1)
        d.begin_replace(s)
        d.write(s, cf.changes(s, [{"id": 2, "name": "v2", "qty": 2}], "read"), last_offset=2)
        with psycopg.connect(pg_url, autocommit=True) as reader:  # another session, mid-replace
            assert reader.execute("SELECT id, name FROM items").fetchall() == [(1, "v1")]
            d.commit_replace(s, last_offset=3)
            assert reader.execute("SELECT id, name FROM items").fetchall() == [(2, "v2")]
            # the primary key moved with the table; the next replace can create its own
            pk = reader.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'items'::regclass AND contype = 'p'").fetchone()
            assert pk == (1,)
        d.begin_replace(s)
        d.write(s, cf.changes(s, [{"id": 3, "name": "v3", "qty": 3}], "read"), last_offset=4)
        d.commit_replace(s, last_offset=5)
        assert d.applied_offset(s) == 5
    finally:
        d.close()
    assert _harness(pg_url).rows("items") == [(3, "v3", 3)]


def test_long_table_name_pending_never_clips_to_live_name(pg_url: str) -> None:
    name = "t" * 63
    pending = _dest(pg_url, "replace").pending_name(name)
    assert pending != name and len(pending.encode()) <= 63
    s = cf.make_stream(name, cf.ITEMS)
    d = _dest(pg_url, "replace")
    d.open()
    try:
        d.prepare(s)
        d.begin_replace(s)
        d.write(s, cf.changes(s, [{"id": 1, "name": "a", "qty": 1}], "read"), last_offset=0)
        d.commit_replace(s, last_offset=1)
        d.begin_replace(s)
        d.commit_replace(s, last_offset=2)
    finally:
        d.close()
    assert _harness(pg_url).rows(name) == []


def test_fast_path_falls_back_to_upsert_when_key_exists(pg_url: str) -> None:
    """The fast path assumes an empty table; if a key turns up anyway it upserts instead."""
    s = cf.make_stream("items", cf.ITEMS)
    d = _dest(pg_url, "merge")
    d.open()
    try:
        d.prepare(s)  # empty now: fast path armed
        with psycopg.connect(pg_url, autocommit=True) as other:
            other.execute("INSERT INTO items VALUES (1, 'other', 0)")
        d.write(s, cf.changes(s, [{"id": 1, "name": "mine", "qty": 1}, {"id": 2, "name": "b", "qty": 2}], "read"), last_offset=0)
        assert d.applied_offset(s) == 0
    finally:
        d.close()
    assert _harness(pg_url).rows("items") == [(1, "mine", 1), (2, "b", 2)]


def test_merge_into_table_without_unique_key(pg_url: str) -> None:
    """An existing table without a unique index on the key: delete + insert instead of ON CONFLICT."""
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE items (id bigint, name text, qty integer)")
        c.execute("INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)")
    s = cf.make_stream("items", cf.ITEMS)
    d = _dest(pg_url, "merge")
    d.open()
    try:
        d.prepare(s)
        d.write(
            s,
            cf.changes(
                s,
                [{"id": 1, "name": "A", "qty": 10}, {"id": 2, "name": None, "qty": None}, {"id": 3, "name": "c", "qty": 3}],
                ["update", "delete", "insert"],
            ),
            last_offset=0,
        )
    finally:
        d.close()
    assert _harness(pg_url).rows("items") == [(1, "A", 10), (3, "c", 3)]


def test_bad_login_is_connection_error_without_password(pg_server) -> None:
    url = f"postgresql://nobody:S3cr3t-pw@{pg_server.host}:{pg_server.port}/postgres"
    d = _dest(url, "append")
    with pytest.raises(ConnectionError) as e:
        d.open()
    text = str(e.value)
    assert "S3cr3t-pw" not in text and "S3cr3t-pw" not in repr(e.value)
    assert f"port {pg_server.port}" in text and "nobody" in text and "postgres" in text


def test_unreachable_server_is_connection_error(pg_server) -> None:
    from servers import free_port

    d = _dest(f"postgresql://postgres:pw123456@127.0.0.1:{free_port()}/x", "append")
    with pytest.raises(ConnectionError, match=r"host 127\.0\.0\.1") as e:
        d.open()
    assert "pw123456" not in str(e.value)


def test_lost_connection_is_retriable_and_reconnects(pg_url: str) -> None:
    s = cf.make_stream("items", cf.ITEMS)
    d = _dest(pg_url, "merge")
    d.open()
    try:
        d.prepare(s)
        d.write(s, cf.changes(s, [{"id": 1, "name": "a", "qty": 1}], "insert"), last_offset=0)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(RetriableError):
            d.write(s, cf.changes(s, [{"id": 2, "name": "b", "qty": 2}], "insert"), last_offset=1)
        d.write(s, cf.changes(s, [{"id": 2, "name": "b", "qty": 2}], "insert"), last_offset=1)  # reconnected
        assert d.applied_offset(s) == 1
    finally:
        d.close()
    assert _harness(pg_url).rows("items") == [(1, "a", 1), (2, "b", 2)]


@pytest.mark.parametrize(
    ("state", "kind"),
    [("40001", RetriableError), ("40P01", RetriableError), ("08006", RetriableError), ("53300", RetriableError),
     ("28P01", ConnectionError), ("23505", FatalError), ("08P01", FatalError), ("42P01", FatalError)],
)
def test_error_translation_table(state: str, kind: type) -> None:
    import psycopg.errors

    driver_error = psycopg.errors.lookup(state)("boom")  # psycopg's class for the SQLSTATE
    assert driver_error.sqlstate == state
    err = _dest("postgresql://u@h/db", "merge").translate(driver_error, "destination 'x', stream 's'")
    assert type(err) is kind
    assert "stream 's'" in str(err)


def test_data_error_names_stream_and_table(pg_url: str) -> None:
    s = cf.make_stream("items", [pa.field("id", pa.int64()), pa.field("code", pa.string())])
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE items (id bigint PRIMARY KEY, code varchar(3))")
    d = _dest(pg_url, "merge")
    d.open()
    try:
        d.prepare(s)
        with pytest.raises(FatalError, match=r"stream 'items'.*table public\.items.*too long"):
            d.write(s, cf.changes(s, [{"id": 1, "code": "abcd"}], "insert"), last_offset=0)
        assert d.applied_offset(s) == -1
    finally:
        d.close()


# --------------------------------------------------------------------------- type round trip

_ALL_TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE alltypes (
    id integer PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint,
    n4020 numeric(40,20), n122 numeric(12,2), nfree numeric,
    r real, d double precision,
    t text, vc varchar(10), c5 char(5),
    b boolean, dt date, tm time, ts timestamp, tstz timestamptz, iv interval,
    u uuid, j json, jb jsonb, by bytea,
    ai integer[], at text[],
    m mood
);
INSERT INTO alltypes VALUES
 (1, -32768, -2147483648, -9223372036854775808,
  '12345678901234567890.12345678901234567890', 1234567890.12, '123456789012345678901234567890.123456789012345',
  3.4028235e38, 1.7976931348623157e308,
  'héllo "wörld"', 'abc', 'ab',
  true, '0001-01-01', '00:00:00', '1900-01-01 00:00:00.000001', '2024-02-29 23:59:59.999999+05:30', '1 year 2 mons 3 days 04:05:06.789',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.50, "x"], "b": null}', '{"k": {"z": 1, "a": [true]}}', '\\x00ff10',
  '{1,NULL,-3}', '{"a b",NULL,"","q\\"uote","c,omma"}',
  'happy'),
 (2, 32767, 2147483647, 9223372036854775807,
  '-0.00000000000000000001', -0.01, '-0.000000000000000000000000000000000001',
  'NaN', 'Infinity',
  '', '', '     ',
  false, '9999-12-31', '23:59:59.999999', '2262-04-11 23:47:16.854775', '1970-01-01 00:00:00+00', '-1 mons +2 days -00:00:00.000001',
  '00000000-0000-0000-0000-000000000000', '[]', '[]', '\\x',
  '{}', '{}',
  'sad'),
 (3, 0, 0, 0, 0, 0, 'NaN', '-Infinity', '-0', 'x', 'x', 'x    ', NULL, 'infinity', NULL, '-infinity', 'infinity', '0 seconds',
  NULL, 'null', 'null', NULL, '{NULL}', '{NULL}', NULL),
 (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (5, NULL, NULL, NULL, NULL, NULL, 'Infinity', NULL, NULL, NULL, NULL, NULL, NULL, '-infinity', NULL, 'infinity', '-infinity', NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"""

_ROWS_AS_TEXT = "SELECT id, ARRAY[{cols}]::text[] FROM {table} ORDER BY id"


def _text_rows(url: str, table: str, columns: list[str]) -> list[tuple]:
    cols = ", ".join(f"{_quote(c)}::text" for c in columns)
    with psycopg.connect(url, autocommit=True, options="-c TimeZone=UTC") as c:
        return c.execute(_ROWS_AS_TEXT.format(cols=cols, table=_quote(table))).fetchall()


def _types(url: str, table: str) -> dict[str, str]:
    with psycopg.connect(url, autocommit=True) as c:
        return dict(
            c.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                [table],
            ).fetchall()
        )


@pytest.fixture
def source_url(pg_server, pg_url: str) -> Iterator[str]:
    """A second database holding the all-types table (the destination is ``pg_url``)."""
    name = f"src_{uuid.uuid4().hex[:10]}"
    pg_server.create_database(name)
    try:
        with psycopg.connect(pg_server.url(name), autocommit=True) as c:
            c.execute(_ALL_TYPES_DDL)
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


@pytest.mark.parametrize("enum_at_destination", [False, True], ids=["enum-as-text", "enum-exists"])
def test_same_dialect_round_trip_is_exact(source_url: str, pg_url: str, enum_at_destination: bool) -> None:
    if enum_at_destination:
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    stream, table = read_pg_table(source_url, "alltypes")
    assert table.schema.metadata[DIALECT_KEY] == b"postgresql"
    columns = [f.name for f in stream.schema]
    d = _dest(pg_url, "merge")
    d.open()
    try:
        d.prepare(stream)
        d.write(stream, table, last_offset=0)  # snapshot reads: fast path (direct COPY where possible)
        expected = _text_rows(source_url, "alltypes", columns)
        assert _text_rows(pg_url, "alltypes", columns) == expected
        # the same rows as updates go through the staging table and ON CONFLICT
        updates = table.set_column(table.schema.get_field_index("_op"), "_op", pa.array(["update"] * table.num_rows))
        d.write(stream, updates, last_offset=1)
        assert _text_rows(pg_url, "alltypes", columns) == expected
    finally:
        d.close()
    src_types, dst_types = _types(source_url, "alltypes"), _types(pg_url, "alltypes")
    if not enum_at_destination:
        assert dst_types.pop("m") == "text"
        src_types.pop("m")
    assert dst_types == src_types


def test_round_trip_direct_copy_without_staging(source_url: str, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the columns that need an SQL cast (unconstrained numeric as text; numeric(40,20),
    a decimal256, which the COPY encoder does not write: it travels as text too), every type
    goes straight in by binary COPY — uuid and jsonb text included — and stays exact."""
    stream, table = read_pg_table(source_url, "alltypes")
    assert pa.types.is_decimal256(table.schema.field("n4020").type)
    keep = [f for f in stream.schema if f.name not in ("nfree", "n4020")]
    stream = Stream(
        name=stream.name, table=stream.table, schema=pa.schema(keep, metadata=stream.schema.metadata), primary_key=stream.primary_key
    )
    table = table.drop_columns(["nfree", "n4020"])
    table = table.filter(pa.compute.is_in(table["id"], pa.array([1, 2, 4], table.schema.field("id").type)))  # no ±infinity
    columns = [f.name for f in keep]
    for write in ("append", "merge"):
        assert _write_once(pg_url, write, stream, table, schema=write) == 0
        with psycopg.connect(pg_url, autocommit=True, options="-c TimeZone=UTC") as c:
            got = c.execute(
                f"SELECT id, ARRAY[{', '.join(f'{_quote(x)}::text' for x in columns)}]::text[] FROM {write}.alltypes ORDER BY id"
            ).fetchall()
        assert got == [r for r in _text_rows(source_url, "alltypes", columns) if r[0] in (1, 2, 4)]


def test_uuid_and_jsonb_text_direct_or_staged(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, u uuid, jb jsonb)")
    s = cf.make_stream("t", [pa.field("id", pa.int32()), pa.field("u", pa.large_string()), pa.field("jb", pa.string())])
    d = _dest(pg_url, "merge")
    d.open()
    try:
        d.prepare(s)
        canonical = [
            {"id": 1, "u": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "jb": '{"b": [1, 2], "a": "\u00e9"}'},
            {"id": 2, "u": None, "jb": None},
        ]
        d.write(s, cf.changes(s, canonical, "read"), last_offset=0)
        assert d.staged_batches == 0  # direct COPY: uuid bytes and jsonb version-1 binary built in Arrow
        braces = [{"id": 3, "u": "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12}", "jb": "[]"}]
        d.write(s, cf.changes(s, braces, "insert"), last_offset=1)
        assert d.staged_batches == 1  # not canonical: staged, the server parses it
    finally:
        d.close()
    assert _text_rows(pg_url, "t", ["u", "jb"]) == [
        (1, ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", '{"a": "é", "b": [1, 2]}']),
        (2, [None, None]),
        (3, ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12", "[]"]),
    ]


def test_append_and_replace_round_trip_with_declared_types(source_url: str, pg_url: str) -> None:
    stream, table = read_pg_table(source_url, "alltypes")
    columns = [f.name for f in stream.schema]
    for write, schema in (("append", "app"), ("replace", "rep")):
        d = _dest(pg_url, write, schema=schema)
        d.open()
        try:
            d.prepare(stream)
            if write == "replace":
                d.begin_replace(stream)
            d.write(stream, table, last_offset=0)
            if write == "replace":
                d.commit_replace(stream, last_offset=0)
        finally:
            d.close()
        with psycopg.connect(pg_url, autocommit=True, options="-c TimeZone=UTC") as c:
            got = c.execute(
                f"SELECT id, ARRAY[{', '.join(f'{_quote(x)}::text' for x in columns)}]::text[] FROM {schema}.alltypes ORDER BY id"
            ).fetchall()
        assert got == _text_rows(source_url, "alltypes", columns)


def test_arrow_mapping_without_declared_types(pg_url: str) -> None:
    """A schema from another dialect: types mapped from Arrow, values exact."""
    fields = [
        pa.field("id", pa.int64()),
        pa.field("u8", pa.uint8()),
        pa.field("u64", pa.uint64()),
        pa.field("f16", pa.float16()),
        pa.field("dec", pa.decimal256(50, 10)),
        pa.field("money", pa.string(), metadata={SQL_TYPE_KEY: b"DECIMAL(65,30)"}),
        pa.field("doc", pa.string(), metadata={SQL_TYPE_KEY: b"json"}),
        pa.field("uid", pa.binary(16), metadata={SQL_TYPE_KEY: b"uuid"}),
        pa.field("dict", pa.dictionary(pa.int8(), pa.string())),
        pa.field("d64", pa.date64()),
        pa.field("dur", pa.duration("us")),
        pa.field("lst", pa.large_list(pa.int64())),
        pa.field("st", pa.struct([("a", pa.int32()), ("b", pa.string())])),
        pa.field("nested", pa.list_(pa.list_(pa.int32()))),
        pa.field("tsn", pa.timestamp("ns", tz="Europe/Paris")),
    ]
    s = Stream(name="x", table=("x",), schema=pa.schema(fields, metadata={DIALECT_KEY: b"mysql"}), primary_key=("id",))
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    rows = [
        {"id": 1, "u8": 255, "u64": 2**64 - 1, "f16": 1.5, "dec": decimal.Decimal("1234567890123456789012345678901234567890.0123456789"),
         "money": "12345678901234567890123456789012345.123456789012345678901234567890", "doc": '{"a": 1}', "uid": u.bytes,
         "dict": "x", "d64": 86400000 * 365, "dur": 1_500_000, "lst": [1, None, 2**40], "st": {"a": 1, "b": "q"},
         "nested": [[1, 2], [3]], "tsn": 1_700_000_000_123_456_789},
        {k.name: None for k in fields} | {"id": 2},
    ]
    table = cf.changes(s, rows, "insert")
    d = _dest(pg_url, "merge")
    d.open()
    try:
        d.prepare(s)
        d.write(s, table, last_offset=0)
    finally:
        d.close()
    types = _types(pg_url, "x")
    assert types == {
        "id": "bigint", "u8": "smallint", "u64": "numeric(20,0)", "f16": "real", "dec": "numeric(50,10)", "money": "numeric",
        "doc": "jsonb", "uid": "uuid", "dict": "text", "d64": "date", "dur": "interval", "lst": "bigint[]", "st": "jsonb",
        "nested": "jsonb", "tsn": "timestamp with time zone",
    }
    got = _text_rows(pg_url, "x", [f.name for f in fields])
    assert got[0][1] == [
        "1", "255", "18446744073709551615", "1.5", "1234567890123456789012345678901234567890.0123456789",
        "12345678901234567890123456789012345.123456789012345678901234567890", '{"a": 1}', str(u), "x", "1971-01-01",
        "00:00:01.5", "{1,NULL,1099511627776}", '{"a": 1, "b": "q"}', "[[1, 2], [3]]", "2023-11-14 22:13:20.123456+00",
    ]
    assert got[1][1] == ["2"] + [None] * (len(fields) - 1)


def test_staged_columns_cast_into_existing_types(pg_url: str) -> None:
    """Strings into uuid/jsonb/numeric/interval/inet/enum columns go through the staging table."""
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TYPE color AS ENUM ('red', 'green')")
        c.execute(
            "CREATE TABLE t (id int PRIMARY KEY, u uuid, j jsonb, n numeric, iv interval, ip inet, col color, big bigint, vc varchar(4)[])"
        )
    fields = [pa.field("id", pa.int32()), pa.field("u", pa.string()), pa.field("j", pa.string()), pa.field("n", pa.string()),
              pa.field("iv", pa.string()), pa.field("ip", pa.string()), pa.field("col", pa.string()), pa.field("big", pa.int16()),
              pa.field("vc", pa.list_(pa.string()))]
    s = cf.make_stream("t", fields)
    row = {"id": 1, "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "j": '{"b": 1, "a": 2}', "n": "NaN", "iv": "1 day 2 hours",
           "ip": "10.0.0.1/8", "col": "green", "big": -5, "vc": ["ab", None]}
    for write in ("append", "merge"):
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("TRUNCATE t")
        d = _dest(pg_url, write)
        d.open()
        try:
            d.prepare(s)
            d.write(s, cf.changes(s, [row], "insert"), last_offset=0)
        finally:
            d.close()
        assert _text_rows(pg_url, "t", [f.name for f in fields])[0][1] == [
            "1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            '{"a": 2, "b": 1}',
            "NaN",
            "1 day 02:00:00",
            "10.0.0.1/8",
            "green",
            "-5",
            "{ab,NULL}",
        ]


def test_declared_type_is_validated_before_use(pg_url: str) -> None:
    """A declared type the server cannot parse as one type name is never spliced into DDL."""
    hostile = "int; DROP TABLE victim; --"
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE victim (x int)")
    f = pa.field("v", pa.int32(), metadata={SQL_TYPE_KEY: hostile.encode()})
    s = Stream(
        name="t",
        table=("t",),
        schema=pa.schema([pa.field("id", pa.int32()), f], metadata={DIALECT_KEY: b"postgresql"}),
        primary_key=("id",),
    )
    d = _dest(pg_url, "merge")
    d.open()
    try:
        d.prepare(s)
    finally:
        d.close()
    assert _types(pg_url, "t")["v"] == "integer"
    assert _harness(pg_url).rows("victim") == []


def test_upsert_skips_unchanged_rows_and_compares_json_as_text(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, j json, p point, n text)")
    s = cf.make_stream(
        "t", [pa.field("id", pa.int32()), pa.field("j", pa.string()), pa.field("p", pa.string()), pa.field("n", pa.string())]
    )
    d = _dest(pg_url, "merge")
    d.open()
    try:
        d.prepare(s)
        rows = [{"id": 1, "j": '{"a": 1}', "p": "(1,2)", "n": "x"}, {"id": 2, "j": "[]", "p": "(0,0)", "n": None}]
        d.write(s, cf.changes(s, rows, "insert"), last_offset=0)
        with psycopg.connect(pg_url, autocommit=True) as c:
            before = dict(c.execute("SELECT id, xmin::text FROM t").fetchall())
        d.write(s, cf.changes(s, [rows[0], rows[1] | {"j": '{"a": 2}'}], "update"), last_offset=1)
        d.write(s, cf.changes(s, [rows[0] | {"p": "(9,9)"}], "update"), last_offset=2)
        with psycopg.connect(pg_url, autocommit=True) as c:
            after = dict(c.execute("SELECT id, xmin::text FROM t").fetchall())
            assert c.execute("SELECT id, j::text, p::text, n FROM t ORDER BY id").fetchall() == [
                (1, '{"a": 1}', "(9,9)", "x"), (2, '{"a": 2}', "(0,0)", None)
            ]
    finally:
        d.close()
    assert after[2] != before[2] and after[1] != before[1]


def test_identical_redelivery_writes_no_new_row_versions(pg_url: str) -> None:
    s = cf.make_stream("items", cf.ITEMS)
    rows = [{"id": i, "name": f"n{i}", "qty": i} for i in range(100)]
    d = _dest(pg_url, "merge")
    d.open()
    try:
        d.prepare(s)
        d.write(s, cf.changes(s, rows, "read"), last_offset=0)
        with psycopg.connect(pg_url, autocommit=True) as c:
            before = c.execute("SELECT array_agg(xmin::text ORDER BY id) FROM items").fetchone()
        d.write(s, cf.changes(s, rows, "update"), last_offset=1)
        with psycopg.connect(pg_url, autocommit=True) as c:
            assert c.execute("SELECT array_agg(xmin::text ORDER BY id) FROM items").fetchone() == before
        assert d.applied_offset(s) == 1
    finally:
        d.close()


def test_batches_of_new_keys_are_copied_until_a_key_exists(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed snapshot / insert-only changes into a loaded keyed table go by plain COPY;
    the first batch meeting an existing key is rolled back and upserted, and staging is
    used from then on."""
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE items (id bigint PRIMARY KEY, name text, qty integer)")
        c.execute("INSERT INTO items VALUES (1, 'old', 1)")
    s = cf.make_stream("items", cf.ITEMS)
    d = _dest(pg_url, "merge")
    d.open()
    try:
        d.prepare(s)  # not empty: no snapshot fast path
        d.write(s, cf.changes(s, [{"id": 2, "name": "b", "qty": 2}, {"id": 3, "name": "c", "qty": 3}], ["read", "insert"]), last_offset=0)
        assert (d.staged_batches, d.staged_rows) == (0, 0)
        d.write(
            s, cf.changes(s, [{"id": 4, "name": "d", "qty": 4}, {"id": 1, "name": "new", "qty": 10}], ["insert", "update"]), last_offset=1
        )
        assert (d.staged_batches, d.staged_rows) == (1, 2)  # the COPY met key 1: rolled back, upserted
        d.write(s, cf.changes(s, [{"id": 5, "name": "e", "qty": 5}], "insert"), last_offset=2)
        assert (d.staged_batches, d.staged_rows) == (2, 3)  # no more optimistic COPY for this object
        assert d.applied_offset(s) == 2
    finally:
        d.close()
    assert _harness(pg_url).rows("items") == [(1, "new", 10), (2, "b", 2), (3, "c", 3), (4, "d", 4), (5, "e", 5)]


def test_types_the_copy_encoder_lacks_arrive_exact(pg_url: str) -> None:
    """Types pgpq has no encoder for: month-day-nano intervals go direct as ``interval_recv``'s
    16 bytes (nanoseconds truncated), ``arrow.uuid`` as its 16 bytes, nanosecond times and
    timestamps as microseconds; ``timestamptz[]`` and ``interval[]`` (no matching element
    encoder) are staged and cast by the server. Values exact, the NULLs kept."""
    mdn = pa.MonthDayNano
    fields = [
        pa.field("id", pa.int32()),
        pa.field("iv", pa.month_day_nano_interval()),
        pa.field("u", pa.uuid()),
        pa.field("tm", pa.time64("ns")),
        pa.field("ts", pa.timestamp("ns", tz="UTC")),
        pa.field("dur", pa.duration("ns")),
    ]
    s = cf.make_stream("direct", fields)
    u = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    rows = [
        {"id": 1, "iv": mdn([14, -3, 4 * 3600 * 10**9 + 5_000_001_999]), "u": u.bytes, "tm": 86_399_999_999_999,
         "ts": 1_700_000_000_123_456_789, "dur": -1_500},
        {"id": 2, "iv": mdn([0, 0, -1_999]), "u": None, "tm": None, "ts": None, "dur": None},
    ]
    arrays = {f.name: pa.array([r[f.name] for r in rows], f.type.storage_type if f.name == "u" else f.type) for f in fields}
    arrays["u"] = pa.ExtensionArray.from_storage(pa.uuid(), arrays["u"])
    data = cf.changes(s, [{"id": r["id"]} for r in rows], "read")
    data = pa.table([arrays[n] if n in arrays else data.column(n) for n in data.column_names], names=data.column_names)
    for write in ("append", "merge"):
        assert _write_once(pg_url, write, s, data, schema=write) == 0
        with psycopg.connect(pg_url, autocommit=True) as c:
            got = c.execute(f"SELECT iv::text, u::text, tm::text, ts::text, dur::text FROM {write}.direct ORDER BY id").fetchall()
        assert got == [
            ("1 year 2 mons -3 days +04:00:05.000001", str(u), "23:59:59.999999", "2023-11-14 22:13:20.123456+00", "-00:00:00.000001"),
            ("-00:00:00.000001", None, None, None, None),
        ]

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE arrays (id int PRIMARY KEY, tz timestamptz[], ivs interval[])")
    fields = [pa.field("id", pa.int32()), pa.field("tz", pa.list_(pa.timestamp("us", tz="UTC"))),
              pa.field("ivs", pa.list_(pa.month_day_nano_interval()))]
    s = cf.make_stream("arrays", fields)
    rows = [
        {"id": 1, "tz": [1_700_000_000_000_001, None], "ivs": [mdn([1, 2, 3_000_000]), None, mdn([0, -1, -4_000])]},
        {"id": 2, "tz": None, "ivs": []},
    ]
    assert _write_once(pg_url, "merge", s, cf.changes(s, rows, "insert")) == 1
    with psycopg.connect(pg_url, autocommit=True) as c:
        got = c.execute("SELECT tz::text, ivs::text FROM arrays ORDER BY id").fetchall()
    assert got == [
        ('{"2023-11-14 22:13:20.000001+00",NULL}', '{"1 mon 2 days 00:00:00.003",NULL,"-1 days -00:00:00.000004"}'),
        (None, "{}"),
    ]


def test_interval_lists_as_text_of_a_sliced_batch() -> None:
    """A batch sliced out of a larger one (offsets not starting at 0, NULL lists and elements)
    turns into the same interval text as the same rows built on their own."""
    from replicant.destinations._pg_types import normalize

    mdn = pa.MonthDayNano
    lists = [[mdn([9, 9, 9])], None, [mdn([1, -2, 3_000_004_000]), None], [], [mdn([0, 0, -1_500])], None]
    t = pa.list_(pa.month_day_nano_interval())
    sliced = normalize(pa.table({"v": pa.array(lists, t)}).slice(1, 4))
    alone = normalize(pa.table({"v": pa.array(lists[1:5], t)}))
    assert sliced.column("v").to_pylist() == alone.column("v").to_pylist() == [
        None, ["1 mons -2 days 3.000004000 secs", None], [], ["0 mons 0 days -0.000001500 secs"],
    ]

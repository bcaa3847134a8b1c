"""Schema drift (``evolve``) and ``truncate`` in the four SQL destinations.

Every test runs against DuckDB, PostgreSQL, MariaDB and SQLite; tables are read back through
a second connection (see each destination's own test module for the readers).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pyarrow as pa
import pytest

from replicant.config import DestinationConfig
from replicant.destinations import drift
from replicant.destinations.mysql import MySQLDestination
from replicant.destinations.sqlite import SQLiteDestination
from replicant.errors import SchemaDriftError
from replicant.model import DIALECT_KEY, SQL_TYPE_KEY, ConnectorContext, Stream

from . import conformance as cf
from . import test_duckdb, test_mysql, test_postgres, test_sqlite
from .conformance import changes

KINDS = ["duckdb", "postgres", "mysql", "sqlite"]


@dataclass
class Target:
    """One destination kind under test: the conformance harness, plus column types."""

    kind: str
    h: cf.Harness
    types: Any  #: types(table) -> {column: declared/catalog type, lower case}

    def make(self, write: str) -> Any:
        d = self.h.make(write)
        d.open()
        return d


def _duckdb(path: Path) -> Target:
    def types(table: str) -> dict[str, str]:
        con = test_duckdb._reader(path)
        try:
            rows = con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index", [table]
            ).fetchall()
        finally:
            con.close()
        return {c: t.lower() for c, t in rows}

    return Target("duckdb", test_duckdb._harness(path), types)


def _postgres(url: str) -> Target:
    def types(table: str) -> dict[str, str]:
        with psycopg.connect(url, autocommit=True) as c:
            rows = c.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                [f'public."{table}"'],
            ).fetchall()
        return {c: t.lower() for c, t in rows}

    return Target("postgres", test_postgres._harness(url), types)


def _mysql(url: str) -> Target:
    db = unquote(urlsplit(url).path.lstrip("/"))

    def make(write: str, schema: str | None = None) -> MySQLDestination:
        return MySQLDestination(DestinationConfig(name="my", type="mysql", url=url, write=write, schema=schema), ConnectorContext("p"))

    def rows(table: str, schema: str | None = None) -> list[tuple] | None:
        found = test_mysql._query(url, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (db,))
        if not any(r[0] == table for r in found):
            return None
        return sorted(test_mysql._query(url, f"SELECT * FROM {test_mysql._q(table)}"), key=repr)

    def columns(table: str, schema: str | None = None) -> list[str]:
        return list(test_mysql._column_types(url, table))

    def types(table: str) -> dict[str, str]:
        return {c: t.lower() for c, t in test_mysql._column_types(url, table).items()}

    return Target("mysql", cf.Harness(make=make, rows=rows, columns=columns), types)


def _sqlite(path: Path) -> Target:
    def make(write: str, schema: str | None = None) -> SQLiteDestination:
        return SQLiteDestination(DestinationConfig(name="lite", type="sqlite", path=str(path), write=write), ConnectorContext("p"))

    def rows(table: str, schema: str | None = None) -> list[tuple] | None:
        if not test_sqlite._query(path, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)):
            return None
        return sorted(test_sqlite._query(path, f"SELECT * FROM {test_sqlite._q(table)}"), key=repr)

    def columns(table: str, schema: str | None = None) -> list[str]:
        return [r[0] for r in test_sqlite._query(path, "SELECT name FROM pragma_table_info(?)", (table,))]

    def types(table: str) -> dict[str, str]:
        return {r[0]: r[1].lower() for r in test_sqlite._query(path, "SELECT name, type FROM pragma_table_info(?)", (table,))}

    return Target("sqlite", cf.Harness(make=make, rows=rows, columns=columns), types)


@pytest.fixture(params=KINDS)
def t(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    kind = request.param
    if kind == "duckdb":
        return _duckdb(tmp_path / "warehouse.duckdb")
    if kind == "postgres":
        return _postgres(request.getfixturevalue("pg_url"))
    if kind == "mysql":
        return _mysql(request.getfixturevalue("mysql_url"))
    return _sqlite(request.getfixturevalue("sqlite_path"))


# ------------------------------------------------------------------ schemas

#: The declared types a source of the destination's own dialect reports, v1 → v2.
DECLARED = {
    "postgres": (
        "postgresql",
        {
            "qty": ("integer", "bigint"),
            "name": ("character varying(10)", "character varying(40)"),
            "price": ("numeric(10,2)", "numeric(12,2)"),
        },
    ),
    "mysql": (
        "mysql",
        {"qty": ("int(11)", "bigint(20)"), "name": ("varchar(10)", "varchar(40)"), "price": ("decimal(10,2)", "decimal(12,2)")},
    ),
    "sqlite": ("sqlite", {"qty": ("INTEGER", "BIGINT"), "name": ("VARCHAR(10)", "VARCHAR(40)")}),
    "duckdb": (
        "postgresql",
        {
            "qty": ("integer", "bigint"),
            "name": ("character varying(10)", "character varying(40)"),
            "price": ("numeric(10,2)", "numeric(12,2)"),
        },
    ),
}


def _field(kind: str, name: str, type_: pa.DataType, version: int, nullable: bool = True) -> pa.Field:
    sql = DECLARED[kind][1].get(name)
    meta = {SQL_TYPE_KEY: sql[version - 1].encode()} if sql else None
    return pa.field(name, type_, nullable, metadata=meta)


def _stream(kind: str, fields: list[pa.Field], key: tuple[str, ...] = ("id",)) -> Stream:
    return cf.make_stream("items", fields, key=key, metadata={DIALECT_KEY: DECLARED[kind][0].encode()})


def v1(kind: str) -> Stream:
    return _stream(
        kind,
        [
            pa.field("id", pa.int64(), False),
            _field(kind, "name", pa.string(), 1),
            _field(kind, "qty", pa.int32(), 1),
            _field(kind, "price", pa.decimal128(10, 2), 1),
        ],
    )


def v2(kind: str) -> Stream:
    """v1 with qty int32 → int64, name varchar(10) → varchar(40), price decimal(10,2) →
    decimal(12,2) and a new nullable column ``note``."""
    return _stream(
        kind,
        [
            pa.field("id", pa.int64(), False),
            _field(kind, "name", pa.large_string(), 2),
            _field(kind, "qty", pa.int64(), 2),
            _field(kind, "price", pa.decimal128(12, 2), 2),
            pa.field("note", pa.string()),
        ],
    )


def _norm(rows: list[tuple] | None) -> list[tuple]:
    """Rows with decimals as Decimal (SQLite stores them as exact text) and ints as int."""
    out = [
        tuple(Decimal(v) if isinstance(v, str) and v.replace(".", "", 1).lstrip("-").isdigit() and "." in v else v for v in r)
        for r in rows or []
    ]
    return sorted(out, key=repr)


V1_ROWS = [
    {"id": 1, "name": "a", "qty": 1, "price": Decimal("1.10")},
    {"id": 2, "name": "b", "qty": 2, "price": Decimal("2.20")},
    {"id": 3, "name": "c", "qty": 3, "price": Decimal("3.30")},
]
LONG = "x" * 30  # fits varchar(40), not varchar(10)
BIG = 2**40  # fits bigint, not integer
WIDE = Decimal("1234567890.25")  # fits decimal(12,2), not decimal(10,2)


# ------------------------------------------------------------------ evolve: applied


@pytest.mark.parametrize("write", ["merge", "append"])
def test_evolve_adds_and_widens(t: Target, write: str) -> None:
    s1, s2 = v1(t.kind), v2(t.kind)
    d = t.make(write)
    try:
        d.prepare(s1)
        d.write(s1, changes(s1, V1_ROWS, "read"), last_offset=2)
        d.evolve(s2, s1)
        d.write(
            s2,
            changes(
                s2,
                [
                    {"id": 1, "name": LONG, "qty": BIG, "price": WIDE, "note": "n1"},
                    {"id": 4, "name": "d", "qty": 4, "price": Decimal("4.40"), "note": None},
                    {"id": 3, "name": None, "qty": None, "price": None, "note": None},
                ],
                ["update", "insert", "delete"],
            ),
            last_offset=5,
        )
        assert d.applied_offset(s2) == 5
    finally:
        d.close()
    assert t.h.columns("items") == ["id", "name", "qty", "price", "note"]
    new = [(4, "d", 4, Decimal("4.40"), None), (1, LONG, BIG, WIDE, "n1")]
    if write == "merge":
        expected = [(2, "b", 2, Decimal("2.20"), None)] + new
    else:
        expected = [(r["id"], r["name"], r["qty"], r["price"], None) for r in V1_ROWS] + new
    assert _norm(t.h.rows("items")) == _norm(expected)
    types = t.types("items")
    if t.kind == "postgres":
        assert (types["qty"], types["name"], types["price"]) == ("bigint", "character varying(40)", "numeric(12,2)")
    elif t.kind == "mysql":
        assert (types["qty"], types["name"], types["price"]) == ("bigint(20)", "varchar(40)", "decimal(12,2)")
    elif t.kind == "duckdb":
        assert (types["qty"], types["price"]) == ("bigint", "decimal(12,2)")
    else:  # SQLite stores by affinity: the declared names stay, the values fit
        assert types["qty"] == "integer"


def test_evolve_is_idempotent_and_survives_a_new_object(t: Target) -> None:
    s1, s2 = v1(t.kind), v2(t.kind)
    d = t.make("merge")
    try:
        d.prepare(s1)
        d.write(s1, changes(s1, V1_ROWS[:1], "insert"), last_offset=0)
        d.evolve(s2, s1)
        d.evolve(s2, s1)  # again: nothing left to do
        before = t.types("items")
    finally:
        d.close()
    d = t.make("merge")  # after a crash: a new object evolves again, then writes v2
    try:
        d.evolve(s2, s1)
        assert t.types("items") == before
        d.write(s2, changes(s2, [{"id": 1, "name": LONG, "qty": BIG, "price": WIDE, "note": "z"}], "update"), last_offset=1)
    finally:
        d.close()
    assert _norm(t.h.rows("items")) == _norm([(1, LONG, BIG, WIDE, "z")])


def test_prepare_adds_new_nullable_columns(t: Target) -> None:
    """``prepare`` with a stream that has more columns than the table adds them (no evolve)."""
    s1 = v1(t.kind)
    s3 = _stream(t.kind, list(s1.schema) + [pa.field("extra", pa.int32())])
    d = t.make("merge")
    try:
        d.prepare(s1)
        d.write(s1, changes(s1, V1_ROWS[:1], "insert"), last_offset=0)
    finally:
        d.close()
    d = t.make("merge")
    try:
        d.prepare(s3)
        d.write(s3, changes(s3, [{"id": 1, "name": "a", "qty": 1, "price": Decimal("1.10"), "extra": 7}], "update"), last_offset=1)
    finally:
        d.close()
    assert t.h.columns("items") == ["id", "name", "qty", "price", "extra"]
    assert _norm(t.h.rows("items")) == _norm([(1, "a", 1, Decimal("1.10"), 7)])


@pytest.mark.parametrize("write", ["merge", "append"])
def test_dropped_column_is_kept_and_written_null(t: Target, write: str) -> None:
    s1 = v1(t.kind)
    s2 = _stream(t.kind, [f for f in s1.schema if f.name != "qty"])
    d = t.make(write)
    try:
        d.prepare(s1)
        d.write(s1, changes(s1, V1_ROWS[:2], "insert"), last_offset=0)
        d.evolve(s2, s1)
        d.write(
            s2,
            changes(s2, [{"id": 1, "name": "a2", "price": Decimal("1.10")}, {"id": 5, "name": "e", "price": None}], ["update", "insert"]),
            last_offset=1,
        )
    finally:
        d.close()
    assert t.h.columns("items") == ["id", "name", "qty", "price"]  # never dropped
    new = [(1, "a2", None, Decimal("1.10")), (5, "e", None, None)]
    if write == "merge":
        expected = [(2, "b", 2, Decimal("2.20"))] + new
    else:
        expected = [(1, "a", 1, Decimal("1.10")), (2, "b", 2, Decimal("2.20"))] + new
    assert _norm(t.h.rows("items")) == _norm(expected)
    # a new object prepared with the new stream (a restart) writes NULL there too
    d = t.make(write)
    try:
        d.prepare(s2)
        d.write(s2, changes(s2, [{"id": 2, "name": "b2", "price": Decimal("2.20")}], "update"), last_offset=2)
    finally:
        d.close()
    got = _norm(t.h.rows("items"))
    assert (2, "b2", None, Decimal("2.20")) in got
    if write == "merge":
        assert (2, "b", 2, Decimal("2.20")) not in got


# ------------------------------------------------------------------ evolve: refused


def _refused(t: Target, new_fields: list[pa.Field], match: str, key: tuple[str, ...] = ("id",)) -> SchemaDriftError:
    s1 = v1(t.kind)
    s2 = _stream(t.kind, new_fields, key=key)
    d = t.make("merge")
    try:
        d.prepare(s1)
        d.write(s1, changes(s1, V1_ROWS[:1], "insert"), last_offset=0)
        before = (t.h.columns("items"), t.types("items"))
        with pytest.raises(SchemaDriftError, match=match) as e:
            d.evolve(s2, s1)
        assert (t.h.columns("items"), t.types("items")) == before  # nothing changed
        # the destination still writes the old version
        d.write(s1, changes(s1, V1_ROWS[1:2], "insert"), last_offset=1)
        assert d.applied_offset(s1) == 1
    finally:
        d.close()
    return e.value


def test_narrowed_type_is_refused(t: Target) -> None:
    fields = [f.with_type(pa.int16()) if f.name == "qty" else f for f in v1(t.kind).schema]
    e = _refused(t, fields, "column qty changed")
    assert "replay" in str(e)


def test_incompatible_type_is_refused(t: Target) -> None:
    fields = [pa.field("price", pa.string()) if f.name == "price" else f for f in v1(t.kind).schema]
    _refused(t, fields, r"column price changed from (decimal\(10,2\)|numeric\(10,2\)) to text")


def test_narrowed_declared_type_is_refused(t: Target) -> None:
    if t.kind in ("duckdb",):
        pytest.skip("DuckDB maps Arrow types only: varchar(10) and varchar(5) are both VARCHAR")
    short = {"postgres": "character varying(5)", "mysql": "varchar(5)", "sqlite": "VARCHAR(5)"}[t.kind]
    fields = [f.with_metadata({SQL_TYPE_KEY: short.encode()}) if f.name == "name" else f for f in v1(t.kind).schema]
    _refused(t, fields, "column name changed")


def test_renamed_column_is_refused(t: Target) -> None:
    fields = [f.with_name("title") if f.name == "name" else f for f in v1(t.kind).schema]
    e = _refused(t, fields, "column name looks renamed to title")
    assert "rename the column" in str(e)


def test_new_not_null_column_is_refused(t: Target) -> None:
    fields = list(v1(t.kind).schema) + [pa.field("must", pa.int32(), nullable=False)]
    _refused(t, fields, "column must was added as NOT NULL")


def test_changed_primary_key_is_refused(t: Target) -> None:
    _refused(t, list(v1(t.kind).schema), r"primary key changed from \(id\) to \(id, name\)", key=("id", "name"))


def test_every_refusal_is_reported_at_once(t: Target) -> None:
    fields = [f.with_name("title") if f.name == "name" else f.with_type(pa.int8()) if f.name == "qty" else f for f in v1(t.kind).schema]
    e = _refused(t, fields, "column qty changed")
    assert "looks renamed to title" in str(e)


def test_rename_done_by_hand_is_accepted(t: Target) -> None:
    """After the user renames the column in the destination, evolve follows."""
    s1 = v1(t.kind)
    s2 = _stream(t.kind, [f.with_name("title") if f.name == "name" else f for f in s1.schema])
    d = t.make("merge")
    try:
        d.prepare(s1)
        d.write(s1, changes(s1, V1_ROWS[:1], "insert"), last_offset=0)
        with pytest.raises(SchemaDriftError):
            d.evolve(s2, s1)
    finally:
        d.close()
    _execute(t, 'ALTER TABLE items RENAME COLUMN name TO title')
    d = t.make("merge")
    try:
        d.evolve(s2, s1)
        d.write(s2, changes(s2, [{"id": 2, "title": "t2", "qty": 2, "price": None}], "insert"), last_offset=1)
    finally:
        d.close()
    assert t.h.columns("items") == ["id", "title", "qty", "price"]
    assert _norm(t.h.rows("items")) == _norm([(1, "a", 1, Decimal("1.10")), (2, "t2", 2, None)])


def _execute(t: Target, sql: str) -> None:
    h = t.h
    if t.kind == "duckdb":
        d = h.make("merge")  # a second connection to the same file, closed before the next test step
        d.open()
        try:
            d.execute(sql)
        finally:
            d.close()
    elif t.kind == "postgres":
        d = h.make("merge")
        url = d.config.url.get_secret_value()
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(sql)
    elif t.kind == "mysql":
        d = h.make("merge")
        url = d.config.url.get_secret_value()
        test_mysql._query(url, sql)
    else:
        d = h.make("merge")
        test_sqlite._query(Path(d.config.path), sql)


# ------------------------------------------------------------------ truncate


@pytest.mark.parametrize("write", ["merge", "append"])
def test_truncate_empties_the_table_and_records_the_offset(t: Target, write: str) -> None:
    s = v1(t.kind)
    d = t.make(write)
    try:
        d.prepare(s)
        d.write(s, changes(s, V1_ROWS, "insert"), last_offset=2)
        d.truncate(s, last_offset=3)
        assert d.applied_offset(s) == 3
        assert t.h.rows("items") == []
        d.write(s, changes(s, [{"id": 9, "name": "after", "qty": 9, "price": None}], "insert"), last_offset=4)
        assert d.applied_offset(s) == 4
    finally:
        d.close()
    assert _norm(t.h.rows("items")) == [(9, "after", 9, None)]
    d = t.make(write)  # a new object (a restart) keeps what was written after the truncate
    try:
        d.prepare(s)
        assert d.applied_offset(s) == 4
    finally:
        d.close()
    assert _norm(t.h.rows("items")) == [(9, "after", 9, None)]


def test_truncate_and_offset_commit_together(t: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    s = v1(t.kind)
    d = t.make("merge")
    try:
        d.prepare(s)
        d.write(s, changes(s, V1_ROWS, "insert"), last_offset=2)
        with monkeypatch.context() as m:
            t.h.fail_after_data(d, m)
            with pytest.raises(Exception, match="injected failure"):
                d.truncate(s, last_offset=3)
        assert d.applied_offset(s) == 2
        assert len(t.h.rows("items")) == 3  # the delete was rolled back with the offset
        d.truncate(s, last_offset=3)
        assert d.applied_offset(s) == 3
    finally:
        d.close()
    assert t.h.rows("items") == []


def test_truncate_of_a_table_not_prepared_yet(t: Target) -> None:
    """A new object (after a restart) may meet a truncate marker before any write."""
    s = v1(t.kind)
    d = t.make("merge")
    try:
        d.prepare(s)
        d.write(s, changes(s, V1_ROWS, "insert"), last_offset=0)
    finally:
        d.close()
    d = t.make("merge")
    try:
        d.truncate(s, last_offset=1)
        assert d.applied_offset(s) == 1
    finally:
        d.close()
    assert t.h.rows("items") == []


# ------------------------------------------------------------------ rules (no server)


@pytest.mark.parametrize(
    ("old", "new", "wider"),
    [
        (pa.int8(), pa.int16(), True),
        (pa.int32(), pa.int64(), True),
        (pa.int64(), pa.int32(), False),
        (pa.uint16(), pa.int32(), True),
        (pa.uint32(), pa.int32(), False),
        (pa.int32(), pa.uint64(), False),
        (pa.float32(), pa.float64(), True),
        (pa.float64(), pa.float32(), False),
        (pa.decimal128(10, 2), pa.decimal128(12, 2), True),
        (pa.decimal128(10, 2), pa.decimal128(11, 3), True),
        (pa.decimal128(10, 2), pa.decimal128(10, 3), False),  # one integer digit lost
        (pa.decimal128(10, 2), pa.decimal128(12, 1), False),
        (pa.string(), pa.large_string(), True),
        (pa.timestamp("ms", tz="UTC"), pa.timestamp("us", tz="UTC"), True),
        (pa.timestamp("us"), pa.timestamp("ms"), False),
        (pa.timestamp("us"), pa.timestamp("us", tz="UTC"), False),
        (pa.string(), pa.binary(), False),
        (pa.int64(), pa.string(), False),
    ],
)
def test_arrow_widening_rules(old: pa.DataType, new: pa.DataType, wider: bool) -> None:
    assert drift.arrow_wider(old, new) is wider


@pytest.mark.parametrize(
    ("old", "new", "dialect", "wider"),
    [
        ("varchar(10)", "varchar(40)", "mysql", True),
        ("varchar(40)", "varchar(10)", "mysql", False),
        ("character varying(10)", "text", "postgresql", True),
        ("varchar(100)", "text", "mysql", True),
        ("varchar(70000)", "text", "mysql", False),
        ("text", "varchar(10)", "postgresql", False),
        ("int(11)", "bigint(20)", "mysql", True),
        ("integer", "bigint", "postgresql", True),
        ("bigint", "integer", "postgresql", False),
        ("int unsigned", "bigint", "mysql", True),
        ("int unsigned", "int", "mysql", False),
        ("numeric(10,2)", "numeric(12,2)", "postgresql", True),
        ("numeric(10,2)", "numeric", "postgresql", True),
        ("numeric", "numeric(10,2)", "postgresql", False),
        ("decimal(10,2)", "decimal(10,3)", "mysql", False),
        ("timestamp(3) with time zone", "timestamp with time zone", "postgresql", True),
        ("timestamp with time zone", "timestamp(3) with time zone", "postgresql", False),
        ("datetime", "datetime(6)", "mysql", True),
        ("real", "double precision", "postgresql", True),
        ("json", "jsonb", "postgresql", False),
        ("varbinary(10)", "varchar(20)", "mysql", False),
        ("varbinary(10)", "blob", "mysql", True),
    ],
)
def test_declared_widening_rules(old: str, new: str, dialect: str, wider: bool) -> None:
    assert drift.sql_wider(old, new, dialect) is wider


# ------------------------------------------------------------------ keys, replace, missing tables

_KEY_TYPES = {
    "postgres": ("integer", "bigint"),
    "mysql": ("int(11)", "bigint(20)"),
    "sqlite": ("INTEGER", "BIGINT"),
    "duckdb": ("integer", "bigint"),
}


def _keyed(kind: str, version: int) -> Stream:
    sql = _KEY_TYPES[kind][version - 1]
    id_field = pa.field("id", pa.int32() if version == 1 else pa.int64(), False, metadata={SQL_TYPE_KEY: sql.encode()})
    return _stream(kind, [id_field, pa.field("v", pa.string())])


def test_key_column_widens(t: Target) -> None:
    """``id`` integer → bigint, the usual migration of a growing table: the key stays a key."""
    s1, s2 = _keyed(t.kind, 1), _keyed(t.kind, 2)
    d = t.make("merge")
    try:
        d.prepare(s1)
        d.write(s1, changes(s1, [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}], "insert"), last_offset=0)
        d.evolve(s2, s1)
        d.write(
            s2,
            changes(s2, [{"id": BIG, "v": "big"}, {"id": 1, "v": "a2"}, {"id": 2, "v": None}], ["insert", "update", "delete"]),
            last_offset=1,
        )
        d.write(s2, changes(s2, [{"id": BIG, "v": "big2"}], "update"), last_offset=2)
    finally:
        d.close()
    assert t.h.rows("items") == [(1, "a2"), (BIG, "big2")]
    if t.kind in ("postgres", "mysql", "duckdb"):
        assert t.types("items")["id"] in ("bigint", "bigint(20)")


@pytest.mark.parametrize("first", ["evolve", "truncate"])
def test_replace_pending_table_follows(t: Target, first: str) -> None:
    """A drift or a truncate in the middle of a ``replace`` reaches the pending table too."""
    s1, s2 = v1(t.kind), v2(t.kind)
    d = t.make("replace")
    try:
        d.prepare(s1)
        d.begin_replace(s1)
        d.write(s1, changes(s1, V1_ROWS[:1], "read"), last_offset=0)
        if first == "truncate":
            d.truncate(s1, last_offset=1)
            assert d.applied_offset(s1) == 1
        d.evolve(s2, s1)
        d.write(s2, changes(s2, [{"id": 2, "name": LONG, "qty": BIG, "price": WIDE, "note": "n"}], "read"), last_offset=2)
        d.commit_replace(s2, last_offset=3)
        assert d.applied_offset(s2) == 3
    finally:
        d.close()
    assert t.h.columns("items") == ["id", "name", "qty", "price", "note"]
    rows = [(2, LONG, BIG, WIDE, "n")]
    if first == "evolve":
        rows.insert(0, (1, "a", 1, Decimal("1.10"), None))
    assert _norm(t.h.rows("items")) == _norm(rows)


def test_evolve_creates_a_missing_table(t: Target) -> None:
    s1, s2 = v1(t.kind), v2(t.kind)
    d = t.make("merge")
    try:
        d.evolve(s2, s1)
        d.write(s2, changes(s2, [{"id": 1, "name": "a", "qty": 1, "price": None, "note": "x"}], "insert"), last_offset=0)
    finally:
        d.close()
    assert t.h.rows("items") == [(1, "a", 1, None, "x")]


def test_key_change_recorded_in_the_log_schema_is_refused() -> None:
    """The delivery builds the new version from the log record's schema, which carries the
    key in its metadata while ``primary_key`` is the previous version's."""
    md1 = {b"replicant.primary_key": b"id"}
    md2 = {b"replicant.primary_key": b"id,name"}
    fields = [pa.field("id", pa.int64(), False), pa.field("name", pa.string())]
    s1 = cf.make_stream("items", fields, metadata=md1)
    s2 = cf.make_stream("items", fields, metadata=md2)
    with pytest.raises(SchemaDriftError, match=r"primary key changed from \(id\) to \(id, name\)"):
        drift.plan("wh", s2, s1, ["id", "name"], dialect=None)
    assert drift.plan("wh", s1, s1, ["id", "name"], dialect=None) == drift.Plan()


def test_plan_adds_a_column_the_table_lacks() -> None:
    """A column of both versions that the table does not have (never prepared) is added."""
    fields = [pa.field("id", pa.int64(), False), pa.field("a", pa.int32(), False)]
    s1 = cf.make_stream("items", fields)
    s2 = cf.make_stream("items", [fields[0], pa.field("a", pa.int64(), False)])
    p = drift.plan("wh", s2, s1, ["id"], dialect=None)
    assert [(f.name, f.type, f.nullable) for f in p.added] == [("a", pa.int64(), True)]
    assert p.widened == [] and p.kept == []

"""``resolve_streams``: ``all`` versus a list, name matching, and every problem reported at once."""

from __future__ import annotations

import pyarrow as pa
import pytest

from replicant.config import SourceConfig
from replicant.errors import ConfigError
from replicant.model import DIALECT_KEY, SQL_TYPE_KEY, Stream
from replicant.sources.select import parse_lookback, resolve_streams, split_name


def _stream(name: str, table: tuple[str, ...], cols: dict[str, pa.DataType], pk=(), kind="table", notnull=()) -> Stream:
    fields = [pa.field(c, t, c not in pk and c not in notnull, metadata={SQL_TYPE_KEY: b"x"}) for c, t in cols.items()]
    return Stream(name, table, pa.schema(fields, metadata={DIALECT_KEY: b"postgresql"}), tuple(pk), options={"kind": kind})


COLS = {"id": pa.int32(), "name": pa.string(), "updated_at": pa.timestamp("us"), "version": pa.int64()}
DISCOVERED = [
    _stream("album", ("public", "album"), COLS, pk=("id",)),
    _stream("Order Details", ("public", "Order Details"), COLS, pk=("id",)),
    _stream("payment", ("public", "payment"), COLS, pk=("id",), kind="partitioned"),
    _stream("payment_p1", ("public", "payment_p1"), COLS, pk=("id",), kind="partition"),
    _stream("big_albums", ("public", "big_albums"), COLS, kind="view"),
    _stream("_replicant_keys", ("public", "_replicant_keys"), COLS, pk=("id",)),
    _stream("nokey", ("public", "nokey"), COLS, notnull=("version",)),
    _stream("sales.orders", ("sales", "orders"), COLS, pk=("id",)),
    _stream("a.b", ("public", "a.b"), COLS, pk=("id",)),
]


def _cfg(streams, **kw) -> SourceConfig:
    return SourceConfig(type="postgres", url="postgresql://u@h/db", streams=streams, **kw)


def test_all_takes_tables_and_partitioned_parents_only() -> None:
    got = resolve_streams(_cfg("all", default_mode="full", batch_size=10, chunk_size=20), DISCOVERED)
    assert [s.name for s in got] == ["album", "Order Details", "payment", "nokey", "sales.orders", "a.b"]
    assert all(s.mode == "full" and s.options["batch_size"] == 10 and s.options["chunk_size"] == 20 for s in got)
    only_sales = resolve_streams(_cfg("all", schema="sales"), DISCOVERED)
    assert [s.name for s in only_sales] == ["sales.orders"]
    with pytest.raises(ConfigError, match="found no tables in schema 'nowhere'"):
        resolve_streams(_cfg("all", schema="nowhere"), DISCOVERED)
    with pytest.raises(ConfigError) as e:
        resolve_streams(_cfg("all", default_mode="cursor"), DISCOVERED)
    assert e.value.problems[0][0] == "source.default_mode"


@pytest.mark.parametrize(
    ("written", "table"),
    [
        ("album", ("public", "album")),
        ("public.album", ("public", "album")),
        ('"public"."album"', ("public", "album")),
        ("ALBUM", ("public", "album")),
        ("Order Details", ("public", "Order Details")),
        ('"Order Details"', ("public", "Order Details")),
        ("order details", ("public", "Order Details")),
        ("sales.orders", ("sales", "orders")),
        ("a.b", ("public", "a.b")),
        ('public."a.b"', ("public", "a.b")),
    ],
)
def test_names_match_exactly_then_case_insensitively(written: str, table: tuple[str, ...]) -> None:
    (s,) = resolve_streams(_cfg([written]), DISCOVERED)
    assert s.name == written and s.table == table


def test_ambiguous_case_insensitive_match_is_refused() -> None:
    two = [_stream("Album", ("public", "Album"), COLS, pk=("id",)), _stream("ALBUM", ("public", "ALBUM"), COLS, pk=("id",))]
    assert resolve_streams(_cfg(["Album"]), two)[0].table == ("public", "Album")
    with pytest.raises(ConfigError) as e:
        resolve_streams(_cfg(["album"]), two)
    assert "ambiguous" in e.value.problems[0][1]


def test_every_problem_is_reported_once_with_its_key_path() -> None:
    with pytest.raises(ConfigError) as e:
        resolve_streams(
            _cfg([
                "albm",
                {"table": "album", "include": ["nme"]},
                {"table": "nokey", "mode": "cursor", "cursor": "updated_at"},
                {"table": "Order Details", "mode": "cursor", "cursor": "updatd_at"},
                {"table": "sales.orders", "exclude": ["id"]},
                "orders",
                {"table": "payment", "primary_key": ["id", "nope"]},
                {"table": "a.b", "mode": "cursor", "cursor": "version", "lookback": "1h"},
                "ALBUM",
            ]),
            DISCOVERED,
        )
    problems = e.value.problems
    assert [k for k, _ in problems] == [
        "source.streams[0].table",
        "source.streams[1].include",
        "source.streams[2].primary_key",
        "source.streams[3].cursor",
        "source.streams[4].exclude",
        "source.streams[5].table",
        "source.streams[6].primary_key",
        "source.streams[7].lookback",
        "source.streams[8].table",
    ]
    text = dict(problems)
    assert text["source.streams[0].table"] == "no table 'albm' (did you mean 'album'?)"
    assert text["source.streams[1].include"] == "no column 'nme' in album (did you mean 'name'?)"
    assert "no primary key" in text["source.streams[2].primary_key"]
    assert "(did you mean 'updated_at'?)" in text["source.streams[3].cursor"]
    assert "cannot exclude key or cursor column(s) 'id'" in text["source.streams[4].exclude"]
    assert text["source.streams[5].table"] == "no table 'orders' in the default schema (did you mean 'sales.orders'?)"
    assert "no column 'nope'" in text["source.streams[6].primary_key"]
    assert "cursor is numeric" in text["source.streams[7].lookback"]
    assert "already listed at source.streams[1]" in text["source.streams[8].table"]
    assert "source.streams[0].table: no table 'albm'" in str(e.value)


def test_stream_settings_are_applied() -> None:
    cfg = _cfg(
        [
            {"table": "nokey", "mode": "cursor", "cursor": "updated_at", "primary_key": ["version"], "lookback": "5m",
             "chunk_size": 7, "include": ["name"]},
            {"table": "album", "exclude": ["version"]},
        ],
        batch_size=3,
    )
    cur, full = resolve_streams(cfg, DISCOVERED)
    assert cur.mode == "cursor" and cur.cursor == "updated_at" and cur.primary_key == ("version",)
    assert cur.schema.names == ["name", "updated_at", "version"]  # table order; key and cursor kept
    assert cur.options == {"kind": "table", "batch_size": 3, "chunk_size": 7, "lookback": 300}
    assert cur.schema.metadata[DIALECT_KEY] == b"postgresql"
    assert full.schema.names == ["id", "name", "updated_at"] and full.options["chunk_size"] == 1_000_000


def test_nullable_override_key_cannot_page_a_cursor() -> None:
    with pytest.raises(ConfigError, match="nullable"):
        resolve_streams(_cfg([{"table": "nokey", "mode": "cursor", "cursor": "updated_at", "primary_key": ["name"]}]),
                        DISCOVERED)


@pytest.mark.parametrize(
    ("value", "temporal", "expected"),
    [(30, True, 30), (1.5, True, 1.5), ("90", True, 90), ("5m", True, 300), ("1h", True, 3600), ("2d", True, 172800),
     ("1.5h", True, 5400), ("10", False, 10), (7, False, 7), ("0", True, 0)],
)
def test_parse_lookback(value, temporal: bool, expected) -> None:
    assert parse_lookback(value, temporal=temporal) == expected


@pytest.mark.parametrize(("value", "temporal"), [("5m", False), ("-1", True), (-3, True), ("soon", True), (True, True)])
def test_parse_lookback_rejects(value, temporal: bool) -> None:
    with pytest.raises(ValueError, match=r"look-back|the cursor is numeric"):
        parse_lookback(value, temporal=temporal)


def test_split_name() -> None:
    assert split_name("a.b") == ("a", "b")
    assert split_name('"a.b"') == ("a.b",)
    assert split_name('"x""y".`z``w`') == ('x"y', "z`w")
    assert split_name('Order "Details" ü') is None
    assert split_name("a..b") is None

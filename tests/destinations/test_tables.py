"""``tables:``: a destination's target-table mapping or template, through real destinations."""

from __future__ import annotations

from pathlib import Path

import adbc_driver_sqlite.dbapi as adbc
import duckdb
import pyarrow as pa
import pytest

from replicant.config import DestinationConfig, parse
from replicant.destinations.duckdb import DuckDBDestination
from replicant.destinations.files import FilesDestination
from replicant.destinations.sqlite import SQLiteDestination
from replicant.errors import ConfigError
from replicant.model import ConnectorContext, Stream

from .conformance import changes

FIELDS = [pa.field("id", pa.int64()), pa.field("name", pa.string())]
ORDERS = Stream(name="public.orders", table=("public", "orders"), schema=pa.schema(FIELDS), primary_key=("id",))
ITEMS = Stream(name="shop.items", table=("shop", "items"), schema=pa.schema(FIELDS), primary_key=("id",))


def _load(dest, streams: list[Stream]) -> None:
    dest.open()
    try:
        for i, s in enumerate(streams):
            dest.prepare(s)
            dest.write(s, changes(s, [{"id": i, "name": s.name}], "insert"), last_offset=i)
            if dest.capabilities.transactional:
                assert dest.applied_offset(s) == i
    finally:
        dest.close()


def test_mapping_names_some_tables_and_leaves_the_others(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    cfg = DestinationConfig(name="lite", type="sqlite", path=str(path), write="merge", tables={"public.orders": "Order History"})
    _load(SQLiteDestination(cfg, ConnectorContext("p")), [ORDERS, ITEMS])
    con = adbc.connect(str(path))  # the destination is closed: one SQLite library at a time
    try:
        with con.cursor() as cur:
            cur.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            assert [r[0] for r in cur.fetchall()] == ["Order History", "_replicant_offsets", "items"]
            cur.execute('SELECT id, name FROM "Order History"')
            assert cur.fetchall() == [(0, "public.orders")]
            cur.execute("SELECT id, name FROM items")
            assert cur.fetchall() == [(1, "shop.items")]
    finally:
        con.close()


def test_template_with_schema_and_table(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    cfg = DestinationConfig(name="wh", type="duckdb", path=str(path), write="merge", tables="raw_{schema}__{table}")
    _load(DuckDBDestination(cfg, ConnectorContext("p")), [ORDERS, ITEMS])
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = sorted(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall())
        assert names == ["_replicant_offsets", "raw_public__orders", "raw_shop__items"]
        assert con.execute("SELECT id, name FROM raw_shop__items").fetchall() == [(1, "shop.items")]
    finally:
        con.close()


def test_template_names_the_folder_of_a_files_destination(tmp_path: Path) -> None:
    cfg = DestinationConfig.model_validate(
        {"name": "out", "type": "files", "path": str(tmp_path), "format": "jsonl", "tables": "{stream}_v2"}
    )
    _load(FilesDestination(cfg, ConnectorContext("p")), [ORDERS])
    assert [p.name for p in tmp_path.iterdir()] == ["public.orders_v2"]
    assert len(list((tmp_path / "public.orders_v2").rglob("*.jsonl*"))) == 1


@pytest.mark.parametrize(
    ("tables", "problem"),
    [
        ("{schema}_{tabel}", "unknown placeholder {tabel}"),
        ("{0}", "unknown placeholder {0}"),
        ("{table!r}", "takes no format"),
        ("orders_{table", "not a valid template"),
        ({"public.orders": " "}, "empty table name"),
    ],
)
def test_bad_tables_are_refused_with_the_key_path(tables: object, problem: str) -> None:
    data = {
        "pipeline": "p",
        "source": {"type": "sqlite", "url": "sqlite:///a.db"},
        "destinations": [{"name": "ok"}, {"name": "wh", "tables": tables}],
    }
    with pytest.raises(ConfigError) as e:
        parse(data)
    problems = dict(e.value.problems)
    assert list(problems) == ["destinations[1].tables"]
    assert problem in problems["destinations[1].tables"]


def test_a_typo_in_a_placeholder_suggests_the_known_one() -> None:
    data = {"pipeline": "p", "source": {"type": "sqlite", "url": "sqlite:///a.db"}, "destinations": [{"name": "wh", "tables": "{tabel}"}]}
    with pytest.raises(ConfigError) as e:
        parse(data)
    assert "table" in dict(e.value.problems)["destinations[0].tables"].split("{tabel}", 1)[1]

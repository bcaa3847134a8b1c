"""Every source × destination × write mode on Chinook: all 11 tables equal in count and content.

Content is compared through independent drivers (psycopg, PyMySQL, sqlite3, duckdb), each
value normalised (see ``compare.norm``) so that dialect representations compare equal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from compare import fetch
from replicant.config import parse
from replicant.engine import Engine

SOURCES = ["postgres", "mysql", "sqlite"]
DESTINATIONS = ["duckdb", "postgres", "mysql", "sqlite"]
WRITES = ["append", "merge", "replace"]

CHINOOK_SNAKE = {
    "album", "artist", "customer", "employee", "genre", "invoice", "invoice_line",
    "media_type", "playlist", "playlist_track", "track",
}


@pytest.fixture
def source_target(request, tmp_path):
    kind = request.param
    if kind == "postgres":
        return kind, request.getfixturevalue("chinook_pg_url")
    if kind == "mysql":
        return kind, request.getfixturevalue("chinook_mysql_url")
    return kind, str(request.getfixturevalue("chinook_sqlite_path"))


@pytest.fixture
def dest_target(request, tmp_path):
    kind = request.param
    if kind == "postgres":
        return kind, request.getfixturevalue("pg_url")
    if kind == "mysql":
        return kind, request.getfixturevalue("mysql_url")
    return kind, str(tmp_path / f"dest.{'duckdb' if kind == 'duckdb' else 'db'}")


def _pipeline(tmp_path: Path, src: tuple[str, str], dst: tuple[str, str], write: str):
    skind, starget = src
    dkind, dtarget = dst
    surl = f"sqlite:///{starget}" if skind == "sqlite" else starget
    dest: dict = {"name": "dst", "type": dkind, "write": write}
    if dkind in ("duckdb", "sqlite"):
        dest["path"] = dtarget
    else:
        dest["url"] = dtarget
    return parse(
        {
            "pipeline": f"m_{skind}_{dkind}_{write}",
            "source": {"type": skind, "url": surl, "streams": "all", "batch_size": 1000},
            "destinations": [dest],
        },
        base_dir=tmp_path,
    )


def _tables(kind: str, target: str) -> dict[str, list[str]]:
    url = f"sqlite:///{target}" if kind == "sqlite" else target.replace("postgresql://", "postgresql+psycopg://").replace(
        "mysql://", "mysql+pymysql://"
    )
    eng = sa.create_engine(url)
    try:
        insp = sa.inspect(eng)
        return {t: [c["name"] for c in insp.get_columns(t)] for t in insp.get_table_names()}
    finally:
        eng.dispose()


def _assert_equal(src, dst, chinook_counts):
    skind, starget = src
    dkind, dtarget = dst
    tables = _tables(skind, starget)
    assert {t.lower().replace("_", "") for t in tables} == {t.replace("_", "") for t in CHINOOK_SNAKE}
    for table, columns in tables.items():
        expected = fetch(skind, starget, table, columns)
        snake = next(t for t in CHINOOK_SNAKE if t.replace("_", "") == table.lower().replace("_", ""))
        assert len(expected) == chinook_counts[snake]
        got = fetch(dkind, dtarget, table, columns)
        assert len(got) == len(expected), f"{table}: {len(got)} rows, expected {len(expected)}"
        assert got == expected, f"{table}: content differs"


@pytest.mark.parametrize("write", WRITES)
@pytest.mark.parametrize("dest_target", DESTINATIONS, indirect=True)
@pytest.mark.parametrize("source_target", SOURCES, indirect=True)
def test_chinook(tmp_path, source_target, dest_target, write, chinook_counts):
    cfg = _pipeline(tmp_path, source_target, dest_target, write)
    result = Engine(cfg).run()
    assert result.ok, result.errors
    assert sum(result.rows_read.values()) == sum(chinook_counts.values())
    _assert_equal(source_target, dest_target, chinook_counts)
    if write != "append":
        # a second run reloads every table; merge and replace leave the same content
        again = Engine(cfg).run()
        assert again.ok, again.errors
        _assert_equal(source_target, dest_target, chinook_counts)

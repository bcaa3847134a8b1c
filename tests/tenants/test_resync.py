"""``replicant resync`` of ordinary PostgreSQL streams (``log`` and ``cursor``): the stream is
snapshotted again and every destination converges to the source — rows deleted at the source
(which a cursor never sees) and rows lost or changed at the destination included — while the
other streams keep their positions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from replicant.config import parse
from replicant.engine import Engine
from replicant.errors import ConfigError
from replicant.resync import resync

pytestmark = pytest.mark.slow


def _setup(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as con:
        for t in ("events", "items", "other"):
            con.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text NOT NULL, "
                        "updated_at timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00')")
            con.execute(f"INSERT INTO {t} (id, v) SELECT g, '{t}-' || g FROM generate_series(1, 500) g")


def _config(tmp_path: Path, url: str, pg_dest: str) -> Any:
    return parse({
        "pipeline": "shop",
        "source": {"type": "postgres", "url": url, "streams": [
            {"table": "public.events", "mode": "log"},
            {"table": "public.items", "mode": "cursor", "cursor": "updated_at"},
            {"table": "public.other", "mode": "cursor", "cursor": "updated_at"},
        ]},
        "destinations": [{"name": "w", "type": "duckdb", "path": "w.duckdb", "write": "merge"},
                         {"name": "pg", "type": "postgres", "url": pg_dest, "write": "merge"}],
    }, base_dir=tmp_path)


def _source(url: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as con:
        return con.execute(f"SELECT id, v FROM {table} ORDER BY id").fetchall()


def _duck(tmp_path: Path, table: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        return con.execute(f"SELECT id, v FROM {table} ORDER BY id").fetchall()


def _pg(url: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as con:
        return con.execute(f"SELECT id, v FROM {table} ORDER BY id").fetchall()


def test_resync_of_log_and_cursor_streams_converges_and_leaves_the_others(tmp_path: Path, pg_url: str, pg_server: Any) -> None:
    import uuid

    _setup(pg_url)
    dest = f"dest_{uuid.uuid4().hex[:10]}"
    pg_server.create_database(dest)
    pg_dest = pg_server.url(dest)
    try:
        cfg = _config(tmp_path, pg_url, pg_dest)
        first = Engine(cfg).run()
        assert first.ok, first.errors
        with psycopg.connect(pg_url, autocommit=True) as con:
            con.execute("DELETE FROM items WHERE id <= 50")  # a cursor never sees a delete
            con.execute("UPDATE items SET v = 'quiet' WHERE id = 60")  # nor a change that leaves the cursor alone
            con.execute("UPDATE other SET v = 'quiet' WHERE id = 1")  # not resynced: stays as it was delivered
        with duckdb.connect(str(tmp_path / "w.duckdb")) as con:  # the destination lost and changed rows of the log stream
            con.execute("DELETE FROM events WHERE id > 450")
            con.execute("UPDATE events SET v = 'damaged' WHERE id = 7")
        with psycopg.connect(pg_dest, autocommit=True) as con:
            con.execute("DELETE FROM events WHERE id > 450")

        with pytest.raises(ConfigError) as e:
            resync(cfg, "public.item")
        assert "did you mean 'public.items'" in str(e.value.problems)
        lines = resync(cfg, "public.items") + resync(cfg, "public.events")
        assert lines == ["public.items: emptied and read again from the start on the next run",
                         "public.events: emptied and snapshotted again by the change feed on the next run"]
        with psycopg.connect(pg_url, autocommit=True) as con:  # changes after the resync are captured as ever
            con.execute("INSERT INTO events (id, v) VALUES (501, 'new')")
            con.execute("DELETE FROM events WHERE id = 2")

        second = Engine(cfg).run()
        assert second.ok, second.errors
        assert second.rows_read.get("public.other", 0) == 0  # the other streams keep their positions
        for table in ("events", "items"):
            expected = _source(pg_url, table)
            assert _duck(tmp_path, table) == expected, table
            assert _pg(pg_dest, table) == expected, table
        assert (1, "other-1") in _duck(tmp_path, "other")
        third = Engine(cfg).run()  # nothing is read twice afterwards
        assert third.ok and third.rows_read.get("public.items", 0) == 0
    finally:
        with psycopg.connect(pg_url, autocommit=True) as con:
            con.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'replicant_shop'")
        pg_server.drop_database(dest)

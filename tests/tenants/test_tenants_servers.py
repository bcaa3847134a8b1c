"""Tenants on real servers: Chinook in two PostgreSQL tenants and one MariaDB tenant (whose
PascalCase tables and columns get tenant-scoped transforms), consolidated into PostgreSQL and
DuckDB under renamed tables and columns, every stream in ``mode: log``.

* every tenant's rows equal its source under the mapping; a tenant with a wrong password is
  reported (never its password) and the others finish; ``tenant drop`` leaves the others alone;
* under ``--follow``, a tenant added to the file is snapshotted while the changes of the
  others keep arriving (its snapshot is held on a table lock, so "while" is certain).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pymysql
import pytest

from replicant.config import parse
from replicant.tenants.drop import drop_tenant
from replicant.tenants.runner import TenantRunner

pytestmark = pytest.mark.slow

#: target table → (its columns, the PostgreSQL source's table and columns, the MariaDB source's)
MAPPING: dict[str, tuple[list[str], tuple[str, list[str]], tuple[str, list[str]]]] = {
    "artists": (["artist_id", "artist_name"], ("artist", ["artist_id", "name"]), ("Artist", ["ArtistId", "Name"])),
    "albums": (["album_id", "album_title", "artist_id"], ("album", ["album_id", "title", "artist_id"]),
               ("Album", ["AlbumId", "Title", "ArtistId"])),
    "tracks": (["track_id", "track_name", "album_id", "genre_id", "composer", "milliseconds", "price"],
               ("track", ["track_id", "name", "album_id", "genre_id", "composer", "milliseconds", "unit_price"]),
               ("Track", ["TrackId", "Name", "AlbumId", "GenreId", "Composer", "Milliseconds", "UnitPrice"])),
}
PG_STREAMS = [f"public.{t}" for t in ("artist", "album", "track")]
MY_STREAMS = ["Artist", "Album", "Track"]


def _mysql_tenant(tenant: str, url: str) -> dict[str, Any]:
    """A MariaDB tenant: its own type and streams, and transforms to the PostgreSQL names."""
    renames = []
    for _, (_, pg_cols), (my_table, my_cols) in MAPPING.values():
        renames.append({"rename": dict(zip(my_cols, pg_cols, strict=True)), "streams": [my_table]})
    renames.append({"drop": ["MediaTypeId", "Bytes"], "streams": ["Track"]})
    return {"id": tenant, "type": "mysql", "url": url, "streams": [{"table": t, "mode": "log"} for t in MY_STREAMS],
            "transforms": renames}


def _pipeline(tmp_path: Path, tenants: list[dict[str, Any]], pg_dest: str) -> dict[str, Any]:
    tables = {s: target for target, (_, (pg_t, _), (my_t, _)) in MAPPING.items() for s in (f"public.{pg_t}", my_t)}
    return {
        "pipeline": "consolidate",
        "source": {"type": "postgres", "url": "postgresql://nobody@localhost:1/none",
                   "streams": [{"table": t, "mode": "log"} for t in PG_STREAMS], "poll_interval": "0.2s"},
        "tenants": tenants,
        "transforms": [
            {"rename": {"name": "artist_name"}, "streams": ["public.artist", "Artist"]},
            {"rename": {"title": "album_title"}, "streams": ["public.album", "Album"]},
            {"rename": {"name": "track_name", "unit_price": "price"}, "streams": ["public.track", "Track"]},
            {"drop": ["media_type_id", "bytes"], "streams": ["public.track"]},
        ],
        "destinations": [
            {"name": "pg", "type": "postgres", "url": pg_dest, "write": "merge", "tables": tables},
            {"name": "lake", "type": "duckdb", "path": "lake.duckdb", "write": "merge", "tables": tables},
        ],
    }


def _pg_tenant(tenant: str, url: str) -> dict[str, Any]:
    return {"id": tenant, "url": url}


def _source_rows(url: str, target: str) -> list[tuple[Any, ...]]:
    _, (pg_table, pg_cols), (my_table, my_cols) = MAPPING[target]
    if url.startswith("mysql"):
        from urllib.parse import urlsplit

        u = urlsplit(url)
        con = pymysql.connect(host=u.hostname, port=u.port, user=u.username, password=u.password or "", database=u.path[1:])
        try:
            with con.cursor() as cur:
                cur.execute(f"SELECT {', '.join(f'`{c}`' for c in my_cols)} FROM `{my_table}`")
                rows = list(cur.fetchall())
        finally:
            con.close()
    else:
        with psycopg.connect(url) as con:
            rows = con.execute(f"SELECT {', '.join(pg_cols)} FROM {pg_table}").fetchall()
    return sorted(tuple(_canon(v) for v in r) for r in rows)


def _dest_rows(query: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]], target: str, tenant: str) -> list[tuple[Any, ...]]:
    cols = MAPPING[target][0]
    rows = query(f"SELECT {', '.join(cols)} FROM {target} WHERE _tenant = {{}}", (tenant,))
    return sorted(tuple(_canon(v) for v in r) for r in rows)


def _canon(v: Any) -> Any:
    return Decimal(str(v)) if isinstance(v, (Decimal, float)) else v


def _pg_query(url: str) -> Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]:
    def query(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as con:
            try:
                return con.execute(sql.replace("{}", "%s"), params).fetchall()
            except psycopg.errors.UndefinedTable:
                return []
    return query


def _duck_query(path: Path) -> Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]:
    def query(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(path), read_only=True) as con:
            return con.execute(sql.replace("{}", "?"), params).fetchall()
    return query


def _wait(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def second_chinook_pg(pg_server: Any, _chinook_pg_template: str, request: pytest.FixtureRequest) -> Iterator[str]:
    import uuid

    name = f"chinook2_{uuid.uuid4().hex[:10]}"
    pg_server.create_database(name, template=_chinook_pg_template)
    yield pg_server.url(name)
    try:
        pg_server.drop_database(name)
    except psycopg.Error:
        pass


def _vary(acme: str, globex: str, initech: str) -> None:
    """Three tenants whose data differ (the same keys, other rows)."""
    with psycopg.connect(globex, autocommit=True) as con:
        con.execute("DELETE FROM playlist_track WHERE track_id IN (SELECT track_id FROM track WHERE album_id > 300)")
        con.execute("DELETE FROM invoice_line WHERE track_id IN (SELECT track_id FROM track WHERE album_id > 300)")
        con.execute("DELETE FROM track WHERE album_id > 300")
        con.execute("UPDATE artist SET name = name || ' (globex)' WHERE artist_id % 5 = 0")
    from urllib.parse import urlsplit

    u = urlsplit(initech)
    con = pymysql.connect(host=u.hostname, port=u.port, user=u.username, password=u.password or "", database=u.path[1:],
                          autocommit=True)
    try:
        with con.cursor() as cur:
            cur.execute("UPDATE Track SET UnitPrice = UnitPrice + 0.01, Composer = NULL WHERE TrackId % 7 = 0")
    finally:
        con.close()


def _assert_equal(tenants: dict[str, str], pg_dest: str, lake: Path | None) -> None:
    for tenant, url in tenants.items():
        for target in MAPPING:
            expected = _source_rows(url, target)
            assert expected, (tenant, target)
            assert _dest_rows(_pg_query(pg_dest), target, tenant) == expected, (tenant, target, "pg")
            if lake is not None:
                assert _dest_rows(_duck_query(lake), target, tenant) == expected, (tenant, target, "duckdb")


def test_three_tenants_consolidate_and_a_wrong_password_stops_none_and_drop_leaves_the_others(
    tmp_path: Path, chinook_pg_url: str, second_chinook_pg: str, chinook_mysql_url: str, pg_url: str, pg_server: Any,
) -> None:
    _vary(chinook_pg_url, second_chinook_pg, chinook_mysql_url)
    from servers import PASSWORD_ROLE  # the throwaway server asks this role for a password (it need not exist)

    wrong = f"postgresql://{PASSWORD_ROLE}:not-the-password-x9@{pg_server.host}:{pg_server.port}/postgres"
    cfg = parse(_pipeline(tmp_path, [_pg_tenant("acme", chinook_pg_url), _pg_tenant("globex", second_chinook_pg),
                                     _mysql_tenant("initech", chinook_mysql_url), _pg_tenant("broken", wrong)], pg_url),
                base_dir=tmp_path)
    attempts: list[int] = []
    result = TenantRunner(cfg, retries=2, delay=lambda n: attempts.append(n) or 0.05).run()
    assert [e.tenant for e in result.errors] == ["broken"], result.errors
    assert "not-the-password-x9" not in str(result.errors[0]) and "broken" in str(result.errors[0])
    assert attempts == [1, 2]  # reported and retried
    tenants = {"acme": chinook_pg_url, "globex": second_chinook_pg, "initech": chinook_mysql_url}
    _assert_equal(tenants, pg_url, tmp_path / "lake.duckdb")
    assert result.rows_read["initech/Track"] == 3503 and result.rows_read["acme/public.track"] == 3503
    from replicant.engine import Engine

    status = Engine(cfg).status(ask_source=True)  # per tenant: its change feed and its slot
    assert sorted(status.tenant_captures) == ["acme", "globex", "initech"]
    assert status.tenant_captures["globex"]["source"]["slot"] == "replicant_consolidate_globex"
    assert status.tenant_captures["acme"]["source"]["slot active"] is False

    before = {t: {target: _dest_rows(_pg_query(pg_url), target, t) for target in MAPPING} for t in ("acme", "initech")}
    lines = drop_tenant(cfg, "globex")
    assert any("rows of tenant globex deleted" in line for line in lines), lines
    assert any("replicant_consolidate_globex" in line for line in lines), lines  # how to drop its slot
    for target in MAPPING:
        assert _dest_rows(_pg_query(pg_url), target, "globex") == []
        assert _dest_rows(_duck_query(tmp_path / "lake.duckdb"), target, "globex") == []
        for t in ("acme", "initech"):
            assert _dest_rows(_pg_query(pg_url), target, t) == before[t][target]
    _assert_equal({"acme": chinook_pg_url, "initech": chinook_mysql_url}, pg_url, tmp_path / "lake.duckdb")
    with psycopg.connect(second_chinook_pg, autocommit=True) as con:  # its slot stays until dropped (the lines say how)
        assert con.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                           "WHERE slot_name = 'replicant_consolidate_globex'").rowcount == 1
    without = parse(_pipeline(tmp_path, [_pg_tenant("acme", chinook_pg_url), _mysql_tenant("initech", chinook_mysql_url)],
                              pg_url), base_dir=tmp_path)
    with psycopg.connect(chinook_pg_url, autocommit=True) as con:
        con.execute("UPDATE artist SET name = 'after the drop' WHERE artist_id = 1")
    assert TenantRunner(without).run().ok  # the others go on from their positions
    _assert_equal({"acme": chinook_pg_url, "initech": chinook_mysql_url}, pg_url, tmp_path / "lake.duckdb")


def test_a_tenant_added_under_follow_is_onboarded_while_the_others_flow(
    tmp_path: Path, chinook_pg_url: str, second_chinook_pg: str, chinook_mysql_url: str, pg_url: str,
) -> None:
    first = [_pg_tenant("acme", chinook_pg_url), _mysql_tenant("initech", chinook_mysql_url)]
    cfg = parse(_pipeline(tmp_path, first, pg_url), base_dir=tmp_path)
    runner = TenantRunner(cfg, delay=lambda n: 0.2)
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(runner.run(follow=True)), daemon=True)
    thread.start()
    try:
        query = _pg_query(pg_url)
        _wait(lambda: len(_dest_rows(query, "tracks", "acme")) == 3503 and len(_dest_rows(query, "tracks", "initech")) == 3503,
              "the first two tenants' snapshots")

        lock = psycopg.connect(second_chinook_pg)  # globex's snapshot waits on its track table
        lock.execute("LOCK TABLE track IN ACCESS EXCLUSIVE MODE")
        try:
            messages = runner.reload(parse(_pipeline(tmp_path, [*first, _pg_tenant("globex", second_chinook_pg)], pg_url),
                                           base_dir=tmp_path))
            assert messages == ["tenant globex: added; its streams are snapshotted while the others go on"]
            with psycopg.connect(chinook_pg_url, autocommit=True) as con:
                con.execute("INSERT INTO artist VALUES (9001, 'arrived while globex onboards')")
                con.execute("UPDATE album SET title = 'retitled' WHERE album_id = 1")
            _wait(lambda: (9001, "arrived while globex onboards") in _dest_rows(query, "artists", "acme")
                  and (1, "retitled", 1) in _dest_rows(query, "albums", "acme"), "acme's changes")
            assert _dest_rows(query, "tracks", "globex") == []  # still onboarding: its snapshot is held by the lock
            assert thread.is_alive()
        finally:
            lock.rollback()
            lock.close()
        _wait(lambda: len(_dest_rows(query, "tracks", "globex")) == 3503, "globex's snapshot")
        with psycopg.connect(second_chinook_pg, autocommit=True) as con:  # and then globex's own changes
            con.execute("DELETE FROM playlist_track WHERE track_id = 1")
            con.execute("DELETE FROM invoice_line WHERE track_id = 1")
            con.execute("DELETE FROM track WHERE track_id = 1")
        _wait(lambda: len(_dest_rows(query, "tracks", "globex")) == 3502, "globex's delete")
    finally:
        runner.stop_event.set()
        thread.join(60)
    assert not thread.is_alive() and done and done[0].ok, done and done[0].errors
    _assert_equal({"acme": chinook_pg_url, "initech": chinook_mysql_url, "globex": second_chinook_pg}, pg_url,
                  tmp_path / "lake.duckdb")

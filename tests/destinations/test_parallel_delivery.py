"""Delivery workers per destination: a destination that takes concurrent writers (PostgreSQL)
gets up to ``parallelism`` writers, each its own object and connection, each stream written by
exactly one; DuckDB (one writer to its file) keeps one."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from replicant.config import parse
from replicant.destinations.duckdb import DuckDBDestination
from replicant.destinations.postgres import PostgresDestination
from replicant.engine import Engine

TABLES = [f"t{i}" for i in range(5)]


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src.db"
    with sqlite3.connect(src) as c:
        for i, t in enumerate(TABLES):
            c.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, name TEXT)")
            c.executemany(f"INSERT INTO {t} VALUES (?, ?)", [(k, f"{t}-{k}") for k in range(1, 1001 + i)])
    return src


def _writers(monkeypatch: pytest.MonkeyPatch, cls: type) -> dict[str, list[int]]:
    """Per stream, the objects (ids) that prepared it, and the threads they did it on."""
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()
    prepare = cls.prepare

    def spy(self: Any, stream: Any) -> Any:
        with lock:
            seen.setdefault(stream.name, []).append(id(self))
        return prepare(self, stream)

    monkeypatch.setattr(cls, "prepare", spy)
    return seen


@pytest.mark.parametrize("parallelism", [1, 2, 3])
def test_postgres_streams_are_dealt_over_parallelism_writers(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, parallelism: int
) -> None:
    seen = _writers(monkeypatch, PostgresDestination)
    cfg = parse({
        "pipeline": "p", "parallelism": parallelism,
        "source": {"type": "sqlite", "url": f"sqlite:///{_source(tmp_path)}", "streams": [{"table": t} for t in TABLES]},
        "destinations": [{"name": "pg", "type": "postgres", "url": pg_url, "write": "merge"}],
    }, base_dir=tmp_path)
    result = Engine(cfg).run()
    assert result.ok, result.errors
    assert sorted(seen) == TABLES and all(len(ids) == 1 for ids in seen.values())  # one writer per stream
    assert len({ids[0] for ids in seen.values()}) == parallelism
    assert result.rows_written == {"pg": {t: 1000 + i for i, t in enumerate(TABLES)}}
    with psycopg.connect(pg_url, autocommit=True) as c:
        for i, t in enumerate(TABLES):
            assert c.execute(f"SELECT count(*), count(DISTINCT id), sum(id) FROM {t}").fetchone() == (
                1000 + i, 1000 + i, (1000 + i) * (1001 + i) // 2)
            key = c.execute(f"SELECT count(*) FROM pg_constraint WHERE conrelid = '{t}'::regclass AND contype = 'p'")
            assert key.fetchone() == (1,)


def test_duckdb_keeps_one_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _writers(monkeypatch, DuckDBDestination)
    cfg = parse({
        "pipeline": "p", "parallelism": 3,
        "source": {"type": "sqlite", "url": f"sqlite:///{_source(tmp_path)}", "streams": [{"table": t} for t in TABLES]},
        "destinations": [{"name": "wh", "type": "duckdb", "path": str(tmp_path / "wh.duckdb"), "write": "merge"}],
    }, base_dir=tmp_path)
    result = Engine(cfg).run()
    assert result.ok, result.errors
    assert len({ids[0] for ids in seen.values()}) == 1
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as c:
        assert [c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES] == [1000 + i for i in range(5)]


def test_a_tenants_feed_keeps_one_writer_per_destination(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tenants already run at once, each with one connection per destination (docs/tenants.md):
    ``parallelism`` does not multiply those."""
    from replicant.tenants.runner import TenantRunner

    seen = _writers(monkeypatch, PostgresDestination)
    for tenant in ("acme", "globex"):
        (tmp_path / tenant).mkdir()
        _source(tmp_path / tenant).rename(tmp_path / f"{tenant}.db")
    cfg = parse({
        "pipeline": "p", "parallelism": 3,
        "source": {"type": "sqlite", "url": "sqlite:///acme.db", "streams": [{"table": t} for t in TABLES]},
        "tenants": [{"id": "acme"}, {"id": "globex", "url": "sqlite:///globex.db"}],
        "destinations": [{"name": "pg", "type": "postgres", "url": pg_url, "write": "merge"}],
    }, base_dir=tmp_path)
    result = TenantRunner(cfg).run()
    assert result.ok, result.errors
    assert sorted(seen) == TABLES and all(len(ids) == 2 for ids in seen.values())  # once per tenant
    assert len({i for ids in seen.values() for i in ids}) == 2  # one writer object per tenant
    with psycopg.connect(pg_url, autocommit=True) as c:
        assert c.execute("SELECT count(*), count(DISTINCT _tenant) FROM t4").fetchone() == (2 * 1004, 2)

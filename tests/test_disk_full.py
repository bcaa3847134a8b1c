"""A full disk under the staging log (``ENOSPC``) is waited out like a destination outage:
``run --follow`` logs a warning and retries with back-off until there is space, losing
nothing; a plain ``run`` stops with a clear error, and the next run completes the copy.

The full disk is injected at the log's one write call (``write_all`` in
:mod:`replicant.log.segments`), which fails ``n`` times with ``OSError(ENOSPC)``."""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from compare import fetch
from replicant.config import parse
from replicant.engine import Engine
from replicant.log import segments


def _disk_full(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Makes the next ``times`` log writes fail with ENOSPC; returns the failure count."""
    real = segments.write_all
    failed = [0]

    def write_all(fd: int, data: memoryview | bytes) -> None:
        if failed[0] < times:
            failed[0] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(segments, "write_all", write_all)
    return failed


def _source(tmp_path: Path) -> Path:
    db = tmp_path / "src.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, v INTEGER NOT NULL)")
        c.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"n{i}", i) for i in range(1, 2001)])
    return db


def _cfg(tmp_path: Path, db: Path, mode: str, dest: dict | None = None) -> object:
    stream = {"table": "items", "mode": mode} | ({"cursor": "v"} if mode == "cursor" else {})
    dest = dest or {"name": "w", "type": "duckdb", "path": str(tmp_path / "w.duckdb")}
    return parse({"pipeline": "full", "source": {"type": "sqlite", "url": f"sqlite:///{db}", "batch_size": 500,
                                                  "poll_interval": 0.1, "streams": [stream]},
                  "destinations": [dest]}, base_dir=tmp_path)


def _poll(check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not reached before the deadline"
        time.sleep(0.1)


def _rows(kind: str, where: str) -> list:
    try:
        return fetch(kind, where, "items", ["id", "name", "v"])
    except Exception:  # noqa: BLE001 - the table is not there yet
        return []


def test_follow_waits_out_a_full_disk_and_loses_nothing(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Polled while running through PostgreSQL (an in-process reader of a DuckDB or SQLite
    destination would share the open destination's file locks)."""
    db = _source(tmp_path)
    engine = Engine(_cfg(tmp_path, db, "cursor", {"name": "w", "type": "postgres", "url": pg_url}))
    failed = _disk_full(monkeypatch, 2)
    caplog.set_level(logging.WARNING, logger="replicant")
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", engine.run(follow=True)), daemon=True)
    t.start()
    try:
        _poll(lambda: _rows("postgres", pg_url) == _rows("sqlite", str(db)), 60)
        assert failed[0] == 2
        # still following after the outage: a new row arrives
        with sqlite3.connect(db) as c:
            c.execute("INSERT INTO items VALUES (5000, 'late', 5000)")
        _poll(lambda: _rows("postgres", pg_url) == _rows("sqlite", str(db)), 60)
    finally:
        engine.stop_event.set()
        t.join(60)
    assert not t.is_alive()
    assert out["r"].ok, out["r"].errors
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith(f"disk full at {tmp_path}") and "waiting and retrying in" in m for m in warnings), warnings


def test_run_on_a_full_disk_fails_clearly_and_the_next_run_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _source(tmp_path)
    cfg = _cfg(tmp_path, db, "full")
    failed = _disk_full(monkeypatch, 3)
    r1 = Engine(cfg).run()
    assert failed[0] >= 1
    assert not r1.ok
    assert any("disk full at" in str(e) and "No space left on device" in str(e) for e in r1.errors), r1.errors
    monkeypatch.undo()
    r2 = Engine(cfg).run()
    assert r2.ok, r2.errors
    assert _rows("duckdb", str(tmp_path / "w.duckdb")) == _rows("sqlite", str(db))

"""``validate --repair`` killed with SIGKILL at random instants (comparing, re-reading,
appending to the log, delivering): a later ``validate --repair`` converges, every destination
ends equal to the source, checked by an independent read of both."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = 30_000
KILLS = 4


def _validate(cwd: Path, *args: str, kill_after: float | None = None) -> int | None:
    """``replicant validate p.yml ARGS``: its exit code, or None when it was killed."""
    proc = subprocess.Popen([sys.executable, "-m", "replicant.cli", "validate", "p.yml", "--wait", "0", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        return proc.wait(timeout=kill_after if kill_after is not None else 600)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            raise
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return None


def _rows_sqlite(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as c:
        return c.execute("SELECT id, name, amount FROM items ORDER BY id").fetchall()


def _rows_duckdb(path: Path) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as c:
        return [(i, n, float(a)) for i, n, a in c.execute("SELECT id, name, amount FROM items ORDER BY id").fetchall()]


@pytest.mark.slow
def test_validate_repair_survives_sigkill(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "src.db") as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount REAL)")
        c.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"n{i}", i / 8) for i in range(ROWS)])
    (tmp_path / "p.yml").write_text(
        "pipeline: crash\nsource: {type: sqlite, url: 'sqlite:///src.db', streams: [{table: items}]}\n"
        "destinations:\n  - {name: wh, type: duckdb, path: wh.duckdb}\n  - {name: lite, type: sqlite, path: lite.db}\n")
    run = subprocess.run([sys.executable, "-m", "replicant.cli", "run", "p.yml"], cwd=tmp_path, capture_output=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=600)
    assert run.returncode == 0, run.stderr
    rnd = random.Random(1212)
    with sqlite3.connect(tmp_path / "src.db") as c:  # many differences: the repair takes a while
        c.executemany("UPDATE items SET name = ? WHERE id = ?", [(f"changed {i}", i) for i in rnd.sample(range(ROWS), 6000)])
        c.execute("DELETE FROM items WHERE id % 50 = 7")
        c.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"new {i}", 1.5) for i in range(ROWS, ROWS + 800)])
    killed, started = 0, time.monotonic()
    for _ in range(3 * KILLS):
        if killed == KILLS:
            break
        if _validate(tmp_path, "--repair", kill_after=rnd.uniform(0.5, 5.0)) is None:
            killed += 1
        assert time.monotonic() - started < 600, "crash loop took too long"
    assert killed >= 1
    assert _validate(tmp_path, "--repair") == 0
    assert _validate(tmp_path) == 0
    want = _rows_sqlite(tmp_path / "src.db")
    assert _rows_duckdb(tmp_path / "wh.duckdb") == want
    assert _rows_sqlite(tmp_path / "lite.db") == want

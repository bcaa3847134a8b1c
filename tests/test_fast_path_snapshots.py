"""Issue 9 item 5: a failed delivery leaves two snapshots of a ``full`` stream in the log; the
next run must write each key once (the "fresh table" fast path holds for one snapshot only)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from compare import fetch
from replicant.config import parse
from replicant.engine import Engine

_HOLD = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS held (x INT)")
print("ready", flush=True)
sys.stdin.read()
"""


def test_merge_after_a_failed_delivery_writes_each_key_once(tmp_path: Path) -> None:
    src = tmp_path / "src.db"
    with sqlite3.connect(src) as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        c.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i}") for i in range(1, 5)])
    dst = tmp_path / "d.duckdb"
    cfg = parse(
        {"pipeline": "p", "source": {"type": "sqlite", "url": f"sqlite:///{src}", "streams": [{"table": "t", "mode": "full"}]},
         "destinations": [{"name": "d", "type": "duckdb", "path": str(dst), "write": "merge"}]},
        base_dir=tmp_path,
    )
    # another process holds the DuckDB file: run 1 reads into the log, delivery fails
    with subprocess.Popen([sys.executable, "-c", _HOLD, str(dst)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == "ready"
            r1 = Engine(cfg).run()
            assert not r1.ok
            assert r1.rows_read["t"] == 4
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
    with sqlite3.connect(src) as c:
        c.execute("UPDATE t SET name = 'changed' WHERE id = 2")
    # run 2: a second snapshot joins the first in the log; both reach the fresh table
    r2 = Engine(cfg).run()
    assert r2.ok, r2.errors
    assert r2.rows_read["t"] == 4
    rows = sorted((int(i), n) for i, n in fetch("duckdb", str(dst), "t", ["id", "name"]))
    assert rows == [(1, "n1"), (2, "changed"), (3, "n3"), (4, "n4")]

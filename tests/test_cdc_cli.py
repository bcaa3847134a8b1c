"""`replicant cdc install|uninstall` and trigger-based capture through the CLI, end to end:
install creates triggers and shadow tables, `run` carries inserts, updates and deletes
into the destination, uninstall removes what install made."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from compare import fetch

CLI = [sys.executable, "-m", "replicant.cli"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_cdc_install_run_and_uninstall_with_triggers(tmp_path: Path) -> None:
    src = tmp_path / "src.db"
    with sqlite3.connect(src) as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        c.executemany("INSERT INTO items VALUES (?, ?)", [(i, f"item {i}") for i in range(1, 201)])
    f = tmp_path / "p.yml"
    f.write_text(yaml.safe_dump({
        "pipeline": "trig",
        "source": {"type": "sqlite", "url": "sqlite:///src.db", "streams": [{"table": "items", "mode": "trigger"}]},
        "destinations": [{"name": "d", "type": "sqlite", "path": "d.db", "write": "merge"}],
    }))
    before = _run("run", str(f))
    assert before.returncode == 1 and "replicant cdc install" in before.stderr, "reading without the triggers says what to do"

    p = _run("cdc", "install", str(f))
    assert p.returncode == 0, p.stderr
    assert "created" in p.stdout and "items" in p.stdout
    with sqlite3.connect(src) as c:
        triggers = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    assert len(triggers) == 3

    assert _run("run", str(f)).returncode == 0
    cols = ["id", "name"]
    assert fetch("sqlite", str(tmp_path / "d.db"), "items", cols) == fetch("sqlite", str(src), "items", cols)

    with sqlite3.connect(src) as c:
        c.execute("UPDATE items SET name = 'changed' WHERE id = 7")
        c.execute("DELETE FROM items WHERE id IN (8, 9)")
        c.execute("INSERT INTO items VALUES (500, 'new')")
    p = _run("run", str(f))
    assert p.returncode == 0, p.stderr
    got = fetch("sqlite", str(tmp_path / "d.db"), "items", cols)
    assert got == fetch("sqlite", str(src), "items", cols) and len(got) == 199

    p = _run("cdc", "uninstall", str(f))
    assert p.returncode == 0, p.stderr
    with sqlite3.connect(src) as c:
        # (sqlite_sequence, made by AUTOINCREMENT, is SQLite's own and cannot be dropped)
        left = c.execute("SELECT name FROM sqlite_master WHERE type IN ('trigger', 'table') AND name NOT LIKE 'sqlite_%'").fetchall()
    assert [r[0] for r in left] == ["items"], "triggers and the shadow table are gone"

"""Dead letters from the command line, end to end against a real HTTP receiver.

* ``replicant run`` counts only the rows a destination accepted as written; dead-lettered ones
  are reported on their own line, once (issue 9 item 17: they were counted as written and the
  warning printed twice).
* ``replicant dead-letters list|show|retry|discard``: filters, JSON output, the full record,
  re-sending through the destination (accepted ones leave the store, rejected ones stay with
  the new reason and one more attempt), discarding by id or by filter.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from http_receiver import Receiver
from replicant.state import StateStore

CLI = [sys.executable, "-m", "replicant.cli"]
ENV = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=ENV, timeout=120)


def _source(path: Path, n: int) -> None:
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, updated_at INTEGER NOT NULL)")
        c.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", [(i, f"item {i}", i * 0.25, i) for i in range(1, n + 1)])


def _pipeline(tmp: Path, url: str, *, name: str = "dl", extra: list[dict] | None = None) -> Path:
    src = tmp / "src.db"
    f = tmp / "p.yml"
    f.write_text(yaml.safe_dump({
        "pipeline": name,
        "source": {"type": "sqlite", "url": f"sqlite:///{src}", "batch_size": 500,
                   "streams": [{"table": "items", "mode": "cursor", "cursor": "updated_at"}]},
        "destinations": [{"name": "push", "type": "http", "url": url, "batch_size": 100}, *(extra or [])],
    }))
    return f


def _summary(stdout: str) -> dict[str, list[str]]:
    """The run's summary table: stream → its cells."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) > 1 and cells[0] and not cells[0].startswith(("stream", "━", "─")):
            rows[cells[0]] = cells[1:]
    return rows


def _letters(tmp: Path, pipeline: str = "dl") -> list[dict[str, Any]]:
    with StateStore(f"sqlite:///{tmp / '.replicant' / pipeline / 'state.db'}") as st:
        return st.dead_letters(pipeline, limit=10_000)


def test_run_counts_only_accepted_rows_and_warns_once(tmp_path: Path) -> None:
    """Failed before the fix: the table said 1,000 rows went to ``push`` although 200 were
    rejected, and stderr carried the rejection three times (twice logged by the destination,
    once by the CLI)."""
    _source(tmp_path / "src.db", 1000)
    with Receiver(reject=lambda r: r["key"]["id"] in (7, 507), reject_status=422) as rcv:
        p = _cli("run", str(_pipeline(tmp_path, rcv.url)))
    assert p.returncode == 0, p.stderr
    assert _summary(p.stdout)["items"] == ["1,000", "800"], p.stdout
    rejected_lines = [line for line in p.stderr.splitlines() if "rejected" in line]
    assert rejected_lines == ["warning: 200 records of items rejected by push: in dead letters (see `replicant status`)"], p.stderr

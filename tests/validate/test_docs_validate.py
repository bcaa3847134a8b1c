"""docs/validate.md: its example pipeline, run as the page shows, prints what the page shows."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_validate_page_example(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "validate.md").read_text()
    [pipeline] = [b for b in re.findall(r"```yaml\n(.*?)```", page, re.S) if "pipeline: shop" in b]
    [console] = [b for b in re.findall(r"```console\n(.*?)```", page, re.S) if "replicant run shop.yml" in b]
    (tmp_path / "shop.yml").write_text(pipeline)
    with sqlite3.connect(tmp_path / "shop.db") as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price NUMERIC(6,2))")
        c.executemany("INSERT INTO items VALUES (?, ?, ?)", [(1, "tea", 3.5), (2, "jam", 2.5), (3, "bread", 1.25)])
    outputs: list[str] = []
    for command in [ln[2:] for ln in console.splitlines() if ln.startswith("$ ")]:
        if command.startswith("sqlite3 "):
            sql = command.split('"')[1]
            with sqlite3.connect(tmp_path / "shop.db") as c:
                c.execute(sql)
            continue
        args = command.split()[1:]
        done = subprocess.run([sys.executable, "-m", "replicant.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}, timeout=300)
        assert done.returncode in (0, 1), done.stderr
        if args[0] == "validate":
            outputs.append(done.stdout)
    shown = [ln for ln in console.splitlines() if ln and not ln.startswith("$ ")]
    got = [ln for out in outputs for ln in out.splitlines()]

    def timeless(line: str) -> str:
        return re.sub(r"\d+\.\d\d s", "N s", line)

    assert [timeless(x) for x in got] == [timeless(x) for x in shown]
    assert (tmp_path / "proof.html").read_text().count("<tr") == 2

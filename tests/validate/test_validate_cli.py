"""``replicant validate`` from the command line: exit codes, the keys listed, the reports,
``status``; destinations that cannot be queried; the comparison of a change in flight."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[2]


def replicant(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicant.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}, timeout=300)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    with sqlite3.connect(tmp_path / "shop.db") as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price NUMERIC(8,2))")
        c.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"item {i}", i / 4) for i in range(1, 1001)])
    head = ("pipeline: shop\n"
            "source: {type: sqlite, url: 'sqlite:///shop.db', streams: [{table: items}]}\n"
            "destinations:\n"
            "  - {name: warehouse, type: duckdb, path: warehouse.duckdb}\n")
    (tmp_path / "run.yml").write_text(head)
    (tmp_path / "shop.yml").write_text(head + "  - {name: push, type: http, url: 'http://127.0.0.1:9/push'}\n")  # the same pipeline
    done = replicant("run", "run.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path


def test_exit_codes_keys_reports_and_status(shop: Path) -> None:
    ok = replicant("validate", "run.yml", "--report", "ok.json", cwd=shop)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "items at warehouse: equal (1,000 source rows, 1,000 destination rows" in ok.stdout
    assert json.loads((shop / "ok.json").read_text())["verdict"] == "equal"

    with duckdb.connect(str(shop / "warehouse.duckdb")) as d:
        d.execute("UPDATE items SET name = 'changed' WHERE id = 17")
        d.execute("DELETE FROM items WHERE id = 400")
    bad = replicant("validate", "run.yml", "--report", "bad.html", cwd=shop)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert '  different: {"id": "17"}' in bad.stdout and '  missing: {"id": "400"}' in bad.stdout
    page = (shop / "bad.html").read_text()
    assert "<h1>Validation of shop: differences</h1>" in page and "{&quot;id&quot;: &quot;400&quot;}" in page

    status = replicant("status", "run.yml", "--json", cwd=shop)
    [row] = [d for d in json.loads(status.stdout)["destinations"] if d["destination"] == "warehouse"]
    assert row["verdict"] == "differences: 2" and row["validated_at"]

    fixed = replicant("validate", "run.yml", "--repair", cwd=shop)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "2 found and 2 changes appended by --repair" in fixed.stdout
    assert replicant("validate", "run.yml", cwd=shop).returncode == 0


def test_a_destination_that_cannot_be_queried_exits_2(shop: Path) -> None:
    named = replicant("validate", "shop.yml", "--destination", "push", cwd=shop)
    assert named.returncode == 2
    assert "push: could not validate: a http destination cannot be queried" in named.stdout
    every = replicant("validate", "shop.yml", cwd=shop)  # the others are validated, push is skipped
    assert every.returncode == 0, every.stdout + every.stderr
    assert "push: skipped: a http destination cannot be queried" in every.stdout


def test_nats_destination_exits_2(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "s.db") as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    (tmp_path / "p.yml").write_text("pipeline: p\nsource: {type: sqlite, url: 'sqlite:///s.db', streams: all}\n"
                                    "destinations: [{name: events, type: nats, url: 'nats://127.0.0.1:9'}]\n")
    got = replicant("validate", "p.yml", "--destination", "events", cwd=tmp_path)
    assert got.returncode == 2 and "a nats destination cannot be queried" in got.stdout


def test_unknown_destination_is_a_config_error(shop: Path) -> None:
    got = replicant("validate", "shop.yml", "--destination", "nope", cwd=shop)
    assert got.returncode == 2 and "nope" in got.stderr

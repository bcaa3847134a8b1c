"""``python: module:Class`` with keyed state in a derived pipeline: the fraud-score example of
docs/transforms.md (its class and its pipeline file, verbatim) runs against a real SQLite
upstream into DuckDB; the running counts equal the source's GROUP BY and the score follows
the documented rule."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import duckdb
import pytest

from replicant.config import load
from replicant.engine import Engine

DOCS = Path(__file__).resolve().parents[2] / "docs" / "transforms.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOCS.read_text(), re.S)


def run(path: Path) -> None:
    result = Engine(load(path)).run()
    assert result.ok, result.errors


def test_fraud_score_example_keeps_keyed_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [cls] = [b for b in blocks("python") if "class FraudScore" in b]
    [pipeline] = [b for b in blocks("yaml") if "fraud:FraudScore" in b]
    (tmp_path / "fraud.py").write_text(cls)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "fraud.yml").write_text(pipeline)
    with sqlite3.connect(tmp_path / "pay.db") as c:
        c.execute("CREATE TABLE payments (id INTEGER PRIMARY KEY, card TEXT, amount DOUBLE)")
        c.executemany("INSERT INTO payments VALUES (?, ?, ?)", [(1, "A", 10.0), (2, "A", 20.0), (3, "B", 5.0)])
    (tmp_path / "payments.yml").write_text("""
pipeline: payments
source: {type: sqlite, url: sqlite:///pay.db, streams: [{table: payments, mode: snapshot_diff}]}
destinations: [{name: wh, type: duckdb, path: payments.duckdb}]
""")

    def step(*sql: str) -> list[tuple]:
        with sqlite3.connect(tmp_path / "pay.db") as c:
            for s in sql:
                c.execute(s)
            want = c.execute("SELECT card, count(*), sum(amount) FROM payments GROUP BY card ORDER BY card").fetchall()
        run(tmp_path / "payments.yml")
        run(tmp_path / "fraud.yml")
        with duckdb.connect(str(tmp_path / "fraud.duckdb"), read_only=True) as c:
            got = c.execute("SELECT card, payments, total, score FROM card_scores ORDER BY card").fetchall()
        assert [r[:3] for r in got] == want
        return got

    assert step() == [("A", 2, 30.0, 0.0), ("B", 1, 5.0, 0.0)]
    # card A's mean before was 15: a 90 payment scores 6; B is untouched, C is new
    assert step("INSERT INTO payments VALUES (4, 'A', 90.0), (5, 'C', 1.0)") == [
        ("A", 3, 120.0, 6.0), ("B", 1, 5.0, 0.0), ("C", 1, 1.0, 0.0)]
    assert step("INSERT INTO payments VALUES (6, 'B', 10.0)")[1] == ("B", 2, 15.0, 2.0)

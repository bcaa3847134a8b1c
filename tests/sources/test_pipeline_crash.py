"""Crash test of a derived pipeline: its ``run --follow`` is SIGKILLed at random instants while
the upstream keeps receiving changes and running; at the end its destinations equal the
source exactly. A ``merge`` destination must equal the source table; an ``append``
destination must hold every row of the upstream log exactly once (a doubled or lost
delivery would show in its count per upstream ``_pos`` and ``_op``).
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pytest

from cdc._pipelines import Follow
from compare import fetch
from replicant.config import load
from replicant.engine import Engine
from replicant.log import open_log

KILLS = 6
COLS = ["id", "name", "balance"]

pytestmark = pytest.mark.slow


def _changes(db: Path, rng: random.Random, stop: threading.Event, upstream: Path, errors: list[BaseException]) -> None:
    """Changes the source and runs the upstream pipeline, again and again, until ``stop``."""
    next_id = 100_000
    try:
        while not stop.is_set():
            with sqlite3.connect(db) as c:
                for _ in range(rng.randint(1, 30)):
                    kind = rng.random()
                    if kind < 0.4:
                        c.execute("INSERT INTO accounts VALUES (?, ?, ?)", (next_id, f"i{next_id}", rng.randint(0, 999)))
                        next_id += 1
                    elif kind < 0.8:
                        c.execute("UPDATE accounts SET balance = ?, name = ? WHERE id = (SELECT id FROM accounts ORDER BY "
                                  "random() LIMIT 1)", (rng.randint(0, 999), f"u{rng.randint(0, 9)}"))
                    else:
                        c.execute("DELETE FROM accounts WHERE id = (SELECT id FROM accounts ORDER BY random() LIMIT 1)")
            result = Engine(load(upstream)).run()
            assert result.ok, result.errors
    except BaseException as e:  # noqa: BLE001 - re-raised by the test thread through `errors`
        errors.append(e)


def test_derived_follow_survives_sigkill_while_the_upstream_changes(tmp_path: Path) -> None:
    rng = random.Random(20261206)
    db = tmp_path / "bank.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, balance INTEGER)")
        c.executemany("INSERT INTO accounts VALUES (?, ?, ?)", [(i, f"n{i}", i % 1000) for i in range(1, 20_001)])
    upstream = tmp_path / "bank.yml"
    upstream.write_text("""
pipeline: bank
source:
  type: sqlite
  url: sqlite:///bank.db
  batch_size: 2000
  streams: [{table: accounts, mode: snapshot_diff}]
destinations: [{name: wh, type: duckdb, path: bank.duckdb}]
""")
    derived = tmp_path / "copy.yml"
    derived.write_text("""
pipeline: copy
source: {type: pipeline, pipeline: bank.yml, streams: [accounts]}
destinations:
  - {name: wh, type: duckdb, path: copy.duckdb, write: merge, batch_size: 3000}
  - {name: history, type: duckdb, path: history.duckdb, write: append, batch_size: 3000}
""")
    assert Engine(load(upstream)).run().ok
    stop = threading.Event()
    errors: list[BaseException] = []
    writer = threading.Thread(target=_changes, args=(db, rng, stop, upstream, errors), daemon=True)
    writer.start()
    kills = 0
    try:
        for i in range(KILLS):
            follow = Follow(derived, f"kill{i}")
            stop.wait(rng.uniform(0.5, 4.0))  # a random instant: snapshot, catch-up or tailing
            if follow.kill():
                kills += 1
            else:
                raise AssertionError(follow.output())
    finally:
        stop.set()
        writer.join(120)
    assert not errors, errors
    assert kills == KILLS
    result = Engine(load(derived)).run()  # catch up with the upstream's last run
    assert result.ok, result.errors
    assert fetch("duckdb", str(tmp_path / "copy.duckdb"), "accounts", COLS) == fetch("sqlite", str(db), "accounts", COLS)
    expected: Counter[tuple[int, str, int]] = Counter()  # every non-delete row the upstream logged
    for rec in open_log(tmp_path / ".replicant" / "bank" / "log", read_only=True).read("accounts"):
        if rec.batch is not None:
            rows = rec.batch.filter(pc.not_equal(rec.batch.column("_op"), "delete")).select(COLS).to_pylist()
            expected.update(tuple(r.values()) for r in rows)
    with duckdb.connect(str(tmp_path / "history.duckdb"), read_only=True) as con:
        got = Counter(con.execute("SELECT id, name, balance FROM accounts").fetchall())
    assert sum(expected.values()) > 20_000
    assert got == expected

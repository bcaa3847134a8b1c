"""Exactly once for stateful transforms: a derived pipeline with an ``aggregate`` and a
``join`` whose ``run --follow`` is SIGKILLed at random instants while the upstream keeps
changing (inserts, updates that move rows between groups and accounts, deletes on both
tables); at the end every aggregate and join equals the SQL computed on the source, and a
python transform that counts changes per client (not idempotent) has counted each upstream
change exactly once. And the
case a random kill rarely hits, made on purpose: state committed behind the derived log (a
kill between the output's append and the state's commit)."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import threading
from pathlib import Path

import duckdb
import pytest

from cdc._pipelines import Follow
from replicant.config import load
from replicant.engine import Engine

KILLS = 10

AGG_SOURCE = ("SELECT client_id, sum(amount) FILTER (WHERE kind = 'deposit'), count(*), min(amount), max(amount) "
              "FROM transactions GROUP BY client_id ORDER BY client_id")
AGG_DEST = "SELECT client_id, deposits, n, lo, hi FROM client_totals ORDER BY client_id"
JOIN_SOURCE = ("SELECT t.id, t.client_id, t.amount, a.branch FROM transactions t JOIN accounts a ON t.account_id = a.id "
               "ORDER BY t.id")
JOIN_DEST = "SELECT id, client_id, amount, branch FROM enriched ORDER BY id"


def setup(folder: Path, n: int) -> tuple[Path, Path]:
    with sqlite3.connect(folder / "bank.db") as c:
        c.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, client_id INTEGER, branch TEXT)")
        c.execute("CREATE TABLE transactions (id INTEGER PRIMARY KEY, account_id INTEGER, client_id INTEGER, kind TEXT, "
                  "amount INTEGER)")
        c.executemany("INSERT INTO accounts VALUES (?, ?, ?)", [(i, i % 50, f"b{i % 7}") for i in range(200)])
        c.executemany("INSERT INTO transactions VALUES (?, ?, ?, ?, ?)",
                      [(i, i % 210, i % 60, "deposit" if i % 3 else "fee", i % 997) for i in range(n)])
    (folder / "bank.yml").write_text("""
pipeline: bank
source:
  type: sqlite
  url: sqlite:///bank.db
  batch_size: 1000
  streams: [{table: accounts, mode: snapshot_diff}, {table: transactions, mode: snapshot_diff}]
destinations: [{name: wh, type: duckdb, path: bank.duckdb}]
""")
    (folder / "derived.yml").write_text("""
pipeline: derived
source: {type: pipeline, pipeline: bank.yml}
transforms:
  - aggregate:
      by: [client_id]
      values: {deposits: "sum(amount) FILTER (WHERE kind = 'deposit')", n: "count(*)", lo: "min(amount)", hi: "max(amount)"}
    streams: [transactions]
    as: client_totals
  - join: {with: accounts, on: {account_id: id}, columns: [branch]}
    streams: [transactions]
    as: enriched
  - python: crash_counter:ChangeCounter
    streams: [transactions]
    as: change_counts
destinations:
  - {name: wh, type: duckdb, path: derived.duckdb, write: merge, streams: [client_totals, enriched, change_counts]}
""")
    (folder / "crash_counter.py").write_text(COUNTER)
    return folder / "bank.yml", folder / "derived.yml"


#: Not idempotent, unlike aggregate and join: a change applied twice to its state counts twice.
COUNTER = """
import pyarrow as pa
import pyarrow.compute as pc


class ChangeCounter:
    key = ["client_id"]
    state_key = ["client_id"]
    state_schema = pa.schema([("client_id", pa.int64()), ("changes", pa.int64())])

    def output_schema(self, schema):
        return self.state_schema

    def process(self, batch, state):
        rows = pa.table({"client_id": batch["client_id"]}).filter(pc.is_valid(batch["client_id"]))
        counts = rows.group_by("client_id").aggregate([([], "count_all")])
        t = counts.join(state.get(counts.select(["client_id"])), "client_id", join_type="left outer")
        out = pa.table({"client_id": t["client_id"], "changes": pc.add(pc.fill_null(t["changes"], 0), t["count_all"])})
        state.put(out)
        return out
"""


def change_counts_equal_the_upstream_log(folder: Path) -> None:
    """Each upstream change row counted exactly once by the python transform's state."""
    from collections import Counter

    from replicant.log import open_log

    want: Counter[int] = Counter()
    for rec in open_log(folder / ".replicant" / "bank" / "log", read_only=True).read("transactions"):
        if rec.batch is not None:
            want.update(v for v in rec.batch.column("client_id").to_pylist() if v is not None)
    with duckdb.connect(str(folder / "derived.duckdb"), read_only=True) as d:
        got = dict(d.execute("SELECT client_id, changes FROM change_counts").fetchall())
    assert got == dict(want)


def change(db: Path, rng: random.Random, count: int, next_id: int) -> int:
    """``count`` random changes on both tables; the next free transaction id."""
    with sqlite3.connect(db) as c:
        for _ in range(count):
            k = rng.random()
            if k < 0.35:
                c.execute("INSERT INTO transactions VALUES (?, ?, ?, ?, ?)", (next_id, rng.randint(0, 220), rng.randint(0, 70),
                                                                              rng.choice(["deposit", "fee"]), rng.randint(0, 999)))
                next_id += 1
            elif k < 0.6:  # an update, often moving the row to another group and account
                c.execute("UPDATE transactions SET client_id = ?, account_id = ?, amount = ? WHERE id = "
                          "(SELECT id FROM transactions ORDER BY random() LIMIT 1)",
                          (rng.randint(0, 70), rng.randint(0, 220), rng.randint(0, 999)))
            elif k < 0.8:
                c.execute("DELETE FROM transactions WHERE id = (SELECT id FROM transactions ORDER BY random() LIMIT 1)")
            elif k < 0.9:
                c.execute("UPDATE accounts SET branch = ?, client_id = ? WHERE id = ?",
                          (f"r{rng.randint(0, 9)}", rng.randint(0, 70), rng.randint(0, 220)))
            elif k < 0.95:
                c.execute("DELETE FROM accounts WHERE id = ?", (rng.randint(0, 220),))
            else:
                c.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?, ?)", (rng.randint(0, 220), rng.randint(0, 70), "new"))
    return next_id


def assert_equal_to_source(folder: Path) -> None:
    with sqlite3.connect(folder / "bank.db") as c:
        agg, join = c.execute(AGG_SOURCE).fetchall(), c.execute(JOIN_SOURCE).fetchall()
    with duckdb.connect(str(folder / "derived.duckdb"), read_only=True) as d:
        assert [tuple(r) for r in d.execute(AGG_DEST).fetchall()] == agg
        assert [tuple(r) for r in d.execute(JOIN_DEST).fetchall()] == join


def run(path: Path) -> None:
    result = Engine(load(path)).run()
    assert result.ok, result.errors


@pytest.mark.slow
def test_stateful_follow_survives_sigkill_while_the_upstream_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")  # the follow subprocesses
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = random.Random(1206)
    bank, derived = setup(tmp_path, 20_000)
    run(bank)
    stop = threading.Event()
    errors: list[BaseException] = []

    def upstream() -> None:
        next_id = 1_000_000
        try:
            while not stop.is_set():
                next_id = change(tmp_path / "bank.db", rng, rng.randint(1, 40), next_id)
                run(bank)
        except BaseException as e:  # noqa: BLE001 - re-raised by the test thread through `errors`
            errors.append(e)

    writer = threading.Thread(target=upstream, daemon=True)
    writer.start()
    kills = 0
    try:
        for i in range(KILLS):
            follow = Follow(derived, f"kill{i}")
            stop.wait(rng.uniform(0.5, 3.5))  # a random instant: first catch-up, tailing, or state catch-up
            if follow.kill():
                kills += 1
            else:
                raise AssertionError(follow.output())
    finally:
        stop.set()
        writer.join(120)
    assert not errors, errors
    assert kills == KILLS
    run(derived)  # catch up with the upstream's last run
    assert_equal_to_source(tmp_path)
    change_counts_equal_the_upstream_log(tmp_path)


def test_state_committed_behind_the_log_is_caught_up_without_emitting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill after the output's append but before the state's commit leaves the state behind
    the derived log: made here by putting back an older copy of the state file. The next run
    re-applies the upstream records between to the state without emitting them again."""
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = random.Random(7)
    bank, derived = setup(tmp_path, 2_000)
    run(bank)
    run(derived)
    state = tmp_path / ".replicant" / "derived" / "stateful" / "state.duckdb"
    shutil.copy(state, tmp_path / "old.duckdb")
    next_id = change(tmp_path / "bank.db", rng, 200, 1_000_000)
    run(bank)
    run(derived)  # state and log both move on
    shutil.copy(tmp_path / "old.duckdb", state)  # the state as a crash before its commit left it
    change(tmp_path / "bank.db", rng, 200, next_id)
    run(bank)
    run(derived)
    assert_equal_to_source(tmp_path)
    change_counts_equal_the_upstream_log(tmp_path)

"""Config errors of stateful transforms name the key path: found when the file is read
(an expression that does not parse, an unknown key, a bad `how`) or when the run plans its
streams against the upstream log (a missing column, a join not on the other stream's key,
a python class without its methods)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from replicant.config import load
from replicant.engine import Engine
from replicant.errors import ConfigError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    with sqlite3.connect(tmp_path / "bank.db") as c:
        c.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, branch TEXT)")
        c.execute("CREATE TABLE transactions (id INTEGER PRIMARY KEY, account_id INTEGER, amount DOUBLE)")
        c.execute("INSERT INTO accounts VALUES (1, 'x')")
        c.execute("INSERT INTO transactions VALUES (1, 1, 2.5)")
    (tmp_path / "bank.yml").write_text("""
pipeline: bank
source: {type: sqlite, url: sqlite:///bank.db, streams: [{table: accounts, mode: snapshot_diff},
                                                          {table: transactions, mode: snapshot_diff}]}
destinations: [{name: wh, type: duckdb, path: bank.duckdb}]
""")
    assert Engine(load(tmp_path / "bank.yml")).run().ok
    (tmp_path / "badclass.py").write_text("class NoProcess:\n    key = ['id']\n")
    return tmp_path


def problems(folder: Path, transforms: str) -> list[tuple[str, str]]:
    (folder / "d.yml").write_text(f"""
pipeline: d
source: {{type: pipeline, pipeline: bank.yml}}
transforms:
{transforms}
destinations: [{{name: wh, type: duckdb, path: d.duckdb, write: merge}}]
""")
    with pytest.raises(ConfigError) as e:
        Engine(load(folder / "d.yml")).run()
    return list(e.value.problems)


@pytest.mark.parametrize(("transforms", "path", "says"), [
    ('  - aggregate: {by: [account_id], values: {total: "sum(amount"}}\n    streams: [transactions]',
     "transforms[0].aggregate.values.total", "does not parse"),
    ("  - aggregate: {by: [account_id], values: {n: count(*)}, having: x}\n    streams: [transactions]",
     "transforms[0].aggregate.having", "unknown key"),
    ("  - join: {with: accounts, on: {account_id: id}, how: outer}\n    streams: [transactions]",
     "transforms[0].join.how", "inner or left"),
    ("  - aggregate: {by: [nope], values: {n: count(*)}}\n    streams: [transactions]",
     "transforms[0].aggregate", "no column 'nope'"),
    ("  - select: [id]\n  - join: {with: accounts, on: {account_id: branch}}\n    streams: [transactions]",
     "transforms[1].join", "must map to the key of 'accounts'"),
    ("  - python: badclass:NoProcess\n    streams: [transactions]", "transforms[0].python", "has no 'state_key'"),
])
def test_stateful_config_errors_name_the_key_path(folder: Path, transforms: str, path: str, says: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("badclass", None)
    found = problems(folder, transforms)
    assert any(p == path and says in msg for p, msg in found), found

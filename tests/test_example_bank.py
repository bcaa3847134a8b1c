"""examples/bank: the chain bank → enriched (join) → deposits (aggregate) → tax (join + derive),
run as it is on a copy of the folder; after inserts, updates that move rows (a transaction to
another account, an account to another client), and deletes (a transaction, an account, a
whole client's history), each derived table equals the same SQL computed on the source."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import duckdb

from replicant.config import load
from replicant.engine import Engine

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bank"

ENRICHED = ("SELECT t.id, t.account_id, t.kind, t.amount, a.client_id, a.branch FROM transactions t "
            "JOIN accounts a ON t.account_id = a.id ORDER BY t.id")
DEPOSITS = ("SELECT a.client_id, coalesce(sum(t.amount) FILTER (WHERE t.kind = 'deposit'), 0), count(*) "
            "FROM transactions t JOIN accounts a ON t.account_id = a.id GROUP BY a.client_id ORDER BY 1")
TAX = ("SELECT d.client_id, c.name, d.deposits, round(d.deposits * c.tax_rate, 2) FROM "
       "(SELECT a.client_id, coalesce(sum(t.amount) FILTER (WHERE t.kind = 'deposit'), 0) AS deposits FROM transactions t "
       "JOIN accounts a ON t.account_id = a.id GROUP BY a.client_id) d JOIN clients c ON d.client_id = c.id ORDER BY 1")
DERIVED = {
    "enriched": (ENRICHED, "SELECT id, account_id, kind, amount, client_id, branch FROM enriched ORDER BY id"),
    "deposits": (DEPOSITS, "SELECT client_id, deposits, transactions FROM client_deposits ORDER BY 1"),
    "tax": (TAX, "SELECT client_id, name, deposits, tax_estimate FROM client_tax ORDER BY 1"),
}


def test_bank_chain_equals_sql_on_the_source(tmp_path: Path) -> None:
    folder = tmp_path / "bank"
    shutil.copytree(EXAMPLE, folder)
    with sqlite3.connect(folder / "bank.db") as c:
        c.executescript((folder / "schema.sql").read_text())
    steps = [
        (),
        ("INSERT INTO transactions VALUES (8, 11, 'deposit', 1000), (9, 20, 'withdrawal', 3)",
         "INSERT INTO clients VALUES (4, 'Di', 0.1)", "INSERT INTO accounts VALUES (40, 4, 'west')",
         "INSERT INTO transactions VALUES (10, 40, 'deposit', 70)"),
        ("UPDATE transactions SET account_id = 30 WHERE id = 3",),  # a transaction moves to another client's account
        ("UPDATE accounts SET client_id = 2 WHERE id = 11",),  # an account moves to another client
        ("UPDATE clients SET tax_rate = 0.5 WHERE id = 2", "UPDATE transactions SET amount = 90 WHERE id = 4"),
        ("DELETE FROM transactions WHERE id = 1",),
        ("DELETE FROM accounts WHERE id = 40",),  # Di's only account: her transactions leave every derived table
        ("DELETE FROM transactions WHERE account_id IN (20, 11)",),  # Bo's whole history: his group is deleted
    ]
    for sql in steps:
        with sqlite3.connect(folder / "bank.db") as c:
            for s in sql:
                c.execute(s)
        for name in ("bank", "enriched", "deposits", "tax"):
            result = Engine(load(folder / f"{name}.yml")).run()
            assert result.ok, (name, result.errors)
        with sqlite3.connect(folder / "bank.db") as c:
            want = {name: c.execute(q).fetchall() for name, (q, _) in DERIVED.items()}
        for name, (_, q) in DERIVED.items():
            with duckdb.connect(str(folder / f"{name}.duckdb"), read_only=True) as d:
                assert [tuple(r) for r in d.execute(q).fetchall()] == want[name], (name, sql)
    assert [r[0] for r in want["tax"]] == [1, 3]  # Di (no account) and Bo (no transactions) are gone

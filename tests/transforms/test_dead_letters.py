"""Dead letters of a destination with ``transforms:`` hold rows as the transforms made them;
``replicant dead-letters retry`` re-sends them in that shape (a derived column kept)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from ._pipelines import make_shop

COLUMNS = ('"id" INTEGER PRIMARY KEY, "name" TEXT, "email" TEXT, "phone" TEXT, "country" TEXT, "total" REAL, '
           '"status" TEXT, "updated_at" TEXT, "label" TEXT')


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "replicant.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


def test_retry_resends_a_dead_letter_in_the_destination_s_transformed_shape(tmp_path: Path) -> None:
    make_shop(tmp_path / "shop.db")
    (tmp_path / "p.yml").write_text(yaml.safe_dump({
        "pipeline": "dl", "source": {"type": "sqlite", "url": "sqlite:///shop.db", "streams": ["customers"]},
        "destinations": [{"name": "strict", "type": "sqlite", "path": "strict.sqlite",
                          "transforms": [{"derive": {"label": "upper(name)"}}]}],
    }))
    with sqlite3.connect(tmp_path / "strict.sqlite") as c:  # the user's rule: labels of two letters
        c.execute(f"CREATE TABLE customers ({COLUMNS} CHECK (length(label) <= 2))")
    done = _cli(tmp_path, "run", "p.yml")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "strict.sqlite") as c:
        assert c.execute("SELECT id, label FROM customers ORDER BY id").fetchall() == [(2, "BO"), (3, "CY")]
        c.execute("ALTER TABLE customers RENAME TO old")  # the rule relaxed: the same table without it
        c.execute(f"CREATE TABLE customers ({COLUMNS})")
        c.execute("INSERT INTO customers SELECT * FROM old")
        c.execute("DROP TABLE old")
    done = _cli(tmp_path, "dead-letters", "retry", "p.yml", "--all")
    assert done.returncode == 0, done.stderr
    assert "1 accepted" in done.stdout, done.stdout
    with sqlite3.connect(tmp_path / "strict.sqlite") as c:
        assert c.execute("SELECT id, name, label FROM customers ORDER BY id").fetchall() == [
            (1, "Ada", "ADA"), (2, "Bo", "BO"), (3, "Cy", "CY")], "the derived column is re-sent too"

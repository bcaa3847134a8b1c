"""The docs show code that runs: the connector walk-through is the toy source the conformance
suites run, verbatim, and its conformance line is the suite's own."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_connector_walkthrough_is_the_tested_toy_source() -> None:
    blocks = _python_blocks(ROOT / "docs" / "connectors.md")
    toy = (ROOT / "tests" / "sources" / "toy.py").read_text()
    assert toy in blocks, "docs/connectors.md must show tests/sources/toy.py verbatim"
    assert len(toy.splitlines()) < 100


def test_connector_conformance_line_is_the_suites() -> None:
    blocks = _python_blocks(ROOT / "docs" / "connectors.md")
    suite = (ROOT / "tests" / "sources" / "test_conformance.py").read_text()
    line = next(b.strip() for b in blocks if b.startswith("SOURCES"))
    assert line in suite.splitlines()


def test_bad_records_example_dead_letters_the_record_and_writes_the_rest(tmp_path: Path) -> None:
    """docs/bad-records.md: its pipeline file, run as it is, sets the rejected record aside."""
    import sqlite3

    from replicant.config import parse
    from replicant.engine import Engine
    from replicant.state.store import StateStore
    from replicant.yaml_load import load_yaml

    [example] = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "bad-records.md").read_text(), re.S)
    with sqlite3.connect(tmp_path / "shop.db") as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        c.executemany("INSERT INTO items VALUES (?, ?)", [(1, "tea"), (2, "far too long a name"), (3, "jam")])
    with sqlite3.connect(tmp_path / "warehouse.sqlite") as c:  # a table the user made, with a rule
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT CHECK (length(name) <= 10))")
    result = Engine(parse(load_yaml(example), base_dir=tmp_path)).run()
    assert result.ok, result.errors
    assert result.dead_letters == {"warehouse": {"items": 1}}
    with sqlite3.connect(tmp_path / "warehouse.sqlite") as c:
        assert c.execute("SELECT id, name FROM items ORDER BY id").fetchall() == [(1, "tea"), (3, "jam")]
    with StateStore(f"sqlite:///{tmp_path / '.replicant' / 'shop' / 'state.db'}") as st:
        [letter] = st.dead_letters("shop")
    assert letter["payload"]["data"] == {"id": 2, "name": "far too long a name"}
    assert "CHECK constraint failed" in letter["reason"] and letter["origin"].startswith("log offset ")


def test_types_lossless_forms_example_prints_what_it_shows(capsys) -> None:
    """docs/types.md, *Values outside ordinary ranges*: the example runs and prints its last line."""
    block = next(b for b in _python_blocks(ROOT / "docs" / "types.md") if "row_json" in b)
    exec(compile(block, "docs/types.md", "exec"), {})  # the documentation's own example
    shown = block.strip().splitlines()[-1].removeprefix("# ")
    assert capsys.readouterr().out.strip() == shown

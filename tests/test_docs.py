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


def test_types_lossless_forms_example_prints_what_it_shows(capsys) -> None:
    """docs/types.md, *Values outside ordinary ranges*: the example runs and prints its last line."""
    block = next(b for b in _python_blocks(ROOT / "docs" / "types.md") if "row_json" in b)
    exec(compile(block, "docs/types.md", "exec"), {})  # the documentation's own example
    shown = block.strip().splitlines()[-1].removeprefix("# ")
    assert capsys.readouterr().out.strip() == shown

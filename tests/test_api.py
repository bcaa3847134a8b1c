"""The Python API: the curated ``replicant.__all__``, a cheap import, and the docs' example run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

import replicant

ROOT = Path(__file__).resolve().parents[1]
CHINOOK = ROOT / "examples" / "chinook"

EXPECTED_API = {
    "ChangeSet", "ConfigError", "ConnectionError", "ConnectorContext", "DeadLetter", "Destination", "Engine",
    "FatalError", "Observer", "Pipeline", "PipelineConfig", "PipelineStatus", "ReadBatch", "RecordError",
    "ReplicantError", "RetriableError", "RunError", "RunResult", "SchemaDriftError", "Source", "Stream",
    "__version__", "load", "parse", "run",
}


def test_all_is_the_curated_api_and_every_name_resolves() -> None:
    assert set(replicant.__all__) == EXPECTED_API
    assert len(replicant.__all__) == len(set(replicant.__all__))
    for name in replicant.__all__:
        assert getattr(replicant, name) is not None, name
    assert replicant.Engine.__module__ == "replicant.engine"
    assert issubclass(replicant.Source, object) and replicant.Source.__module__ == "replicant.sources.base"
    with pytest.raises(AttributeError):
        _ = replicant.NoSuchThing  # type: ignore[attr-defined]


def test_import_opens_nothing_and_loads_no_engine() -> None:
    code = (
        "import sys, threading, replicant\n"
        "heavy = [m for m in ('replicant.engine', 'duckdb', 'sqlalchemy', 'psycopg', 'replicant.sources.base') if m in sys.modules]\n"
        "print(heavy, threading.active_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] 1", out


def test_package_is_typed() -> None:
    assert (Path(replicant.__file__).parent / "py.typed").exists()


def _blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def test_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(CHINOOK / "chinook.sqlite", tmp_path / "chinook.sqlite")
    (tmp_path / "examples" / "chinook").mkdir(parents=True)
    for f in ("pipeline.yml", "chinook.sqlite"):
        shutil.copy(CHINOOK / f, tmp_path / "examples" / "chinook" / f)
    monkeypatch.chdir(tmp_path)
    blocks = _blocks((ROOT / "docs" / "python-api.md").read_text())
    assert len(blocks) >= 2
    namespace: dict[str, object] = {}
    for code in blocks:
        exec(compile(code, "docs/python-api.md", "exec"), namespace)  # the docs' own example
    printed = capsys.readouterr().out
    assert "{'Album': 347, 'Artist': 275}" in printed or "{'Artist': 275, 'Album': 347}" in printed
    assert "Track: +" in printed  # the observer example ran the whole file
    with duckdb.connect(str(tmp_path / "chinook.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from Album").fetchone() == (347,)
    with duckdb.connect(str(tmp_path / "examples" / "chinook" / "chinook.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from Track").fetchone() == (3503,)


def test_pipeline_status_and_replay(tmp_path: Path) -> None:
    shutil.copy(CHINOOK / "chinook.sqlite", tmp_path / "chinook.sqlite")
    p = replicant.Pipeline({
        "pipeline": "api",
        "source": {"type": "sqlite", "url": "sqlite:///chinook.sqlite", "streams": ["Genre", "MediaType"]},
        "destinations": [{"name": "w", "type": "duckdb", "path": "w.duckdb", "write": "append"}],
    }, base_dir=tmp_path)
    assert repr(p) == "Pipeline('api')"
    first = p.run()
    assert first.ok and first.rows_read == {"Genre": 25, "MediaType": 5} and first.run_id is not None
    st = p.status().to_dict()
    assert {s["name"]: s["rows"] for s in st["streams"]} == {"Genre": 25, "MediaType": 5}
    assert st["last_run"]["status"] == "succeeded"
    assert all(d["lag"] == 0 for d in st["destinations"])
    replayed = p.replay("w", from_start=True)
    assert replayed.ok and replayed.rows_written["w"] == {"Genre": 25, "MediaType": 5}
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from Genre").fetchone() == (50,)  # append: the replay appended again
    with pytest.raises(replicant.ConfigError):
        p.replay("w")


def test_invalid_pipeline_raises_config_error_with_key_path(tmp_path: Path) -> None:
    with pytest.raises(replicant.ConfigError) as e:
        replicant.Pipeline({"pipeline": "x", "source": {"type": "sqlite"}, "destinations": [{"name": "d", "wirte": "merge"}]})
    assert "destinations[0].wirte" in str(e.value)

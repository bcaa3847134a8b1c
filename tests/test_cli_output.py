"""What the command line prints: ``--debug`` anywhere (with replicant's debug logs),
``--version``, and progress lines when stderr is not a terminal (CI logs)."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest

from test_cli import REPO, replicant


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "examples" / "chinook", tmp_path / "chinook", ignore=shutil.ignore_patterns("*.duckdb*", ".replicant"))
    return tmp_path / "chinook" / "pipeline.yml"


@pytest.mark.parametrize("where", ["before", "after", "last"])
def test_debug_is_accepted_anywhere_and_shows_debug_logs(demo: Path, where: str) -> None:
    args = {"before": ["--debug", "run", str(demo)], "after": ["run", "--debug", str(demo)],
            "last": ["run", str(demo), "--debug"]}[where]
    r = replicant(*args)
    assert r.returncode == 0, r.stderr
    assert re.search(r"DEBUG replicant\.engine: planned 11 streams: Album \(full\)", r.stderr), r.stderr
    assert "DEBUG replicant.delivery: opening destination warehouse" in r.stderr


def test_debug_after_the_command_shows_the_traceback(tmp_path: Path) -> None:
    p = tmp_path / "p.yml"
    p.write_text("pipeline: x\nsource: {type: sqlite, url: 'sqlite:///nowhere/none.db', streams: all}\n"
                 "destinations: [{name: w}]\n", encoding="utf-8")
    r = replicant("run", str(p), "--debug")
    assert r.returncode != 0
    assert "Traceback" in r.stderr


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    r = replicant("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"replicant {version('replicant')}"


def test_without_a_terminal_progress_is_logged_while_it_happens(demo: Path) -> None:
    r = replicant("run", str(demo), "--progress-interval", "0")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert any(re.fullmatch(r"\S+ INFO replicant\.progress: read Track: done, 3,503 rows in \d+\.\d s", x) for x in lines), r.stderr
    assert any(re.fullmatch(r"\S+ INFO replicant\.progress: wrote warehouse/Track: 3,503 rows \([\d,]+ rows/s\)", x)
               for x in lines), r.stderr
    assert "━" not in r.stderr  # no progress bar drawn into a log


def test_progress_lines_come_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    from replicant.cli._progress import ProgressLines

    now = [100.0]
    p = ProgressLines(interval=10, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="replicant.progress")
    p.stream_started("public.film", 3000)
    for _ in range(3):  # 3 batches inside one interval: no line
        now[0] += 1
        p.rows_read("public.film", 1000)
    now[0] += 7  # 10 s after the start
    p.rows_read("public.film", 1000)
    p.rows_written("w", "public.film", 500)
    now[0] += 10
    p.rows_written("w", "public.film", 500)
    p.stream_finished("public.film", None)
    p.run_finished(None, "succeeded")
    assert [r.getMessage() for r in caplog.records] == [
        "read public.film: started (about 3,000 rows)",
        "read public.film: 4,000 rows (400 rows/s)",
        "wrote w/public.film: 1,000 rows (100 rows/s)",
        "read public.film: done, 4,000 rows in 20.0 s",
    ]

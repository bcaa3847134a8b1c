"""docs/service.md: its replicant.yml and pipeline file, served as they are (only the Slack URL
replaced by a local receiver), sync Chinook and show the pipeline in the API."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb

from http_receiver import Receiver
from replicant.service.settings import load_settings

from .serve_proc import ServeProcess

ROOT = Path(__file__).resolve().parents[2]


def test_the_service_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "service.md").read_text(), re.S)
    [settings] = [b for b in blocks if b.startswith("# replicant.yml")]
    [pipeline] = [b for b in blocks if b.startswith("pipeline: chinook")]
    with Receiver() as receiver:
        (tmp_path / "replicant.yml").write_text(settings.replace("https://hooks.slack.com/services/T000/B000/XXXX",
                                                                 receiver.url))
        (tmp_path / "chinook.yml").write_text(pipeline)
        shutil.copy(ROOT / "examples" / "chinook" / "chinook.sqlite", tmp_path)
        assert load_settings(tmp_path).workers == 2
        serve = ServeProcess(tmp_path, workers=2)  # --port (free) and --lease override the file
        serve.start()
        try:
            [run] = serve.wait_runs("chinook", 1)
            assert run["status"] == "succeeded"
            [listed] = serve.get("/api/v1/pipelines")
            assert listed["schedule"]["every"] == 300 and listed["schedule"]["jitter"] == 10
        finally:
            assert serve.stop() == 0, serve.log()
    with duckdb.connect(str(tmp_path / "chinook.duckdb"), read_only=True) as con:
        assert con.execute('SELECT count(*) FROM "Track"').fetchone() == (3503,)

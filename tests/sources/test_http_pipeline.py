"""The http source in whole pipelines (log, checkpoints, a DuckDB destination), and its crash
test: ``replicant run`` SIGKILLed mid-pagination at random instants, resumed, the destination
equal to the API's records with nothing lost or doubled."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from replicant.config import load
from replicant.engine import Engine

from .http_api import Api, items


def _pipeline(tmp_path: Path, api: Api, limit: int = 10) -> Path:
    path = tmp_path / "api.yml"
    path.write_text(f"""
pipeline: api
source:
  type: http
  base_url: {api.url}
  auth: {{type: bearer, token: "${{env:HTTP_TEST_TOKEN}}"}}
  streams:
    - name: items
      path: /cursor/items
      params: {{limit: {limit}}}
      records: $.items[*]
      paginate: {{type: cursor, cursor_path: $.next_cursor}}
      incremental: {{cursor_path: updated_at, param: since}}
      primary_key: [id]
    - name: snapshot
      path: /json_link/items
      params: {{limit: {limit}}}
      records: $.data[*]
      paginate: {{type: json_link, next_path: $.links.next}}
      primary_key: [id]
destinations:
  - {{name: wh, type: duckdb, path: wh.duckdb, write: merge}}
""")
    return path


def _rows(tmp_path: Path, table: str) -> list[tuple]:
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        return sorted(con.execute(f"SELECT id, name, updated_at FROM {table}").fetchall())


def _expected(api: Api) -> list[tuple]:
    return sorted((r["id"], r["name"], r["updated_at"]) for r in api.resources["items"])


def test_a_pipeline_loads_every_record_once_and_later_runs_fetch_only_new_ones(
        api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from .http_api import TOKEN

    monkeypatch.setenv("HTTP_TEST_TOKEN", TOKEN)
    api.auth = "bearer"
    api.put("items", items(45, updated="2024-01-01T00:00:00Z"))
    path = _pipeline(tmp_path, api)
    result = Engine(load(path)).run()
    assert result.ok, result.errors
    assert _rows(tmp_path, "items") == _expected(api) == _rows(tmp_path, "snapshot")
    api.put("items", items(4, start=46, updated="2024-02-01T00:00:00Z") + [
        {**items(1, start=3)[0], "name": "renamed", "updated_at": "2024-02-02T00:00:00Z"}])
    api.served.clear()
    api.log.clear()
    result = Engine(load(path)).run()
    assert result.ok, result.errors
    assert _rows(tmp_path, "items") == _expected(api) == _rows(tmp_path, "snapshot")
    incremental = [q for q in api.log if q.startswith("/cursor/")]
    assert all("since=2024-01-01T00%3A00%3A00Z" in q for q in incremental[1:])  # [0]: discovery's sample
    assert len(incremental) == 2  # discovery and the one page of the five new or changed records


@pytest.mark.slow
def test_kill_9_mid_pagination_resumes_from_the_last_durable_page(
        api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from .http_api import TOKEN

    monkeypatch.setenv("HTTP_TEST_TOKEN", TOKEN)
    rng = random.Random(20261206)
    api.auth = "bearer"
    api.delay = 0.02  # every run takes seconds: the kills land mid-pagination
    api.put("items", items(3000, updated="2024-01-01T00:00:00Z"))
    path = _pipeline(tmp_path, api, limit=25)
    kills = 0
    for i in range(6):
        if i == 3:  # new and changed records between crashes
            api.put("items", items(200, start=3001, updated="2024-03-01T00:00:00Z") + [
                {**r, "name": r["name"] + "!", "updated_at": "2024-03-02T00:00:00Z"} for r in items(50, start=100)])
        err = tmp_path / f"run{i}.err"
        with open(err, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "replicant.cli", "run", str(path)], cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=out)
        try:
            code = proc.wait(timeout=rng.uniform(1.0, 3.0))
            assert code == 0, err.read_text()
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL, mid-pagination
            kills += 1
        proc.wait(timeout=30)
    assert kills >= 3, kills
    result = Engine(load(path)).run()
    assert result.ok, result.errors
    # the incremental stream is whole after this one run: a read resumed after a crash reads again
    # what changed while it was down (its earlier pages)
    assert _rows(tmp_path, "items") == _expected(api)
    # a full read resumed across the change keeps its earlier pages as it read them, as any paged
    # read of a changing API does; the next full read (from its first page) brings them
    assert Engine(load(path)).run().ok
    assert _rows(tmp_path, "snapshot") == _expected(api)
    # resumed from durable pages, not from the start: the incremental stream's 3250 records were
    # served about once overall (a restart from scratch would serve 3000 more per kill); each of
    # the 8 runs adds discovery's first page, each kill at most the few pages in flight, and the
    # read again after a resumed read at most the 250 new or changed records (once per resumed
    # read that ended: at most twice here)
    assert 3250 <= api.served["/cursor/items"] <= 3250 + 8 * 25 + kills * 4 * 25 + 2 * 250
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) - count(DISTINCT id) FROM items").fetchone() == (0,)

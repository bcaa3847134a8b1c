"""``replicant run --follow`` on a local folder wakes at once on a new file (inotify through
``watchfiles``) instead of waiting for the next listing: with ``poll_interval: 60``, files
dropped in (written in place, or renamed in from a name outside the glob) are loaded within
seconds, each once; a file outside the glob or under the ``after_load`` move prefix wakes
nothing. An S3 folder is not watched (it is listed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import yaml

from cdc._pipelines import Follow, wait_until
from replicant import runtime
from replicant.config import load
from replicant.model import ConnectorContext, Stream
from replicant.sources.files.source import FilesSource
from replicant.sources.files.watch import watch_folder
from replicant.state import StateStore

LOADED_WITHIN = 15.0  # seconds; the listing would take 60


def _loaded(pipeline: Path) -> dict[str, str]:
    cfg = load(pipeline)
    url = runtime.state_url(cfg)
    if not (pipeline.parent / ".replicant").exists():
        return {}
    store = StateStore(url).open()
    try:
        return {r["path"]: r["status"] for r in store.files_seen(cfg.pipeline)}
    finally:
        store.close()


def test_a_dropped_file_is_loaded_at_once_despite_a_long_poll_interval(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text("id,v\n1,one\n")
    pipeline = tmp_path / "p.yml"
    pipeline.write_text(yaml.safe_dump({
        "pipeline": "watched",
        "source": {"type": "files", "url": "in", "poll_interval": 60, "streams": [{"name": "t", "glob": "*.csv"}]},
        "destinations": [{"name": "d", "type": "duckdb", "path": "d.duckdb"}],
    }))
    follow = Follow(pipeline, "follow")
    try:
        wait_until(lambda: _loaded(pipeline).get("a.csv") == "loaded", 60, "the first file")
        (folder / "b.csv").write_text("id,v\n2,two\n3,three\n")  # written in place
        took = wait_until(lambda: _loaded(pipeline).get("b.csv") == "loaded", LOADED_WITHIN, "b.csv, woken by inotify",
                          every=0.1)
        assert took < LOADED_WITHIN
        (folder / "c.part").write_text("id,v\n4,four\n")  # outside the glob: nothing to load
        (folder / "c.part").rename(folder / "c.csv")  # renamed in: complete when it appears
        wait_until(lambda: _loaded(pipeline).get("c.csv") == "loaded", LOADED_WITHIN, "c.csv, renamed in", every=0.1)
        assert follow.alive(), follow.output()[-2000:]
    finally:
        code, _ = follow.terminate(60)
    assert code == 0, follow.output()[-3000:]
    assert set(_loaded(pipeline)) == {"a.csv", "b.csv", "c.csv"}
    with duckdb.connect(str(tmp_path / "d.duckdb")) as con:
        assert con.sql("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, "one"), (2, "two"), (3, "three"), (4, "four")]


def test_watch_wakes_only_the_streams_whose_glob_matches(tmp_path: Path) -> None:
    (tmp_path / "orders").mkdir()
    stop = threading.Event()
    woken: list[list[str]] = []
    got = threading.Event()

    def on_change(names: list[str]) -> None:
        woken.append(names)
        got.set()

    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(watch_folder(
        str(tmp_path), {"orders": "orders/*.csv", "people": "*.jsonl"}, {"orders": None, "people": "done/"},
        stop, on_change)), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + LOADED_WITHIN
        while not woken and time.monotonic() < deadline:  # the watch starts asynchronously: write until it sees one
            (tmp_path / "orders" / "1.csv").write_text("id\n1\n")
            got.wait(1.0)
        assert woken and set(woken[0]) == {"orders"}
        woken.clear()
        got.clear()
        (tmp_path / "notes.txt").write_text("not a stream's file")
        (tmp_path / "done").mkdir()
        (tmp_path / "done" / "x.jsonl").write_text("{}\n")  # under people's move prefix
        (tmp_path / "p.jsonl").write_text("{}\n")
        assert got.wait(LOADED_WITHIN)
        assert {n for names in woken for n in names} == {"people"}
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive() and result == [True]


def test_an_object_store_is_not_watched() -> None:
    from replicant.config import SourceConfig

    src = FilesSource(SourceConfig(type="files", url="s3://bucket/in", streams=[{"name": "t", "glob": "*.csv"}]),
                      ConnectorContext("x"))
    stream = Stream(name="t", table=("t",), schema=pa.schema([("id", pa.int64())]), mode="incremental")
    called: list[list[str]] = []
    assert src.watch([stream], threading.Event(), called.append) is False and called == []  # returns at once: listed

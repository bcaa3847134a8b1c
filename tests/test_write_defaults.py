"""`write:` left out of a destination: a keyed stream is merged, a keyless one appended, so
the default `full` mode re-read each run leaves one copy (issue 9 item 19); an explicit
`write: append` still appends, and destinations that cannot merge (files) append without
complaint. Every stream is checked against every destination's write mode before anything is
read (item 20)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import pytest

from replicant.config import parse
from replicant.engine import Engine
from replicant.errors import ConfigError


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src.db"
    with sqlite3.connect(src) as c:
        c.execute("CREATE TABLE keyed (id INTEGER PRIMARY KEY, name TEXT)")
        c.execute("CREATE TABLE keyless (name TEXT, n INTEGER)")
        c.executemany("INSERT INTO keyed VALUES (?, ?)", [(i, f"k{i}") for i in range(1, 5)])
        c.executemany("INSERT INTO keyless VALUES (?, ?)", [(f"l{i}", i) for i in range(1, 4)])
    return src


def _cfg(tmp_path: Path, dest: dict, streams: list | str = "all"):
    return parse(
        {"pipeline": "wd", "source": {"type": "sqlite", "url": f"sqlite:///{_source(tmp_path)}", "streams": streams},
         "destinations": [dest]},
        base_dir=tmp_path,
    )


def _rows(path: Path, table: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        return sorted(con.execute(f"SELECT * FROM {table}").fetchall())


def test_keyed_full_stream_without_write_is_merged_and_keyless_is_appended(tmp_path: Path) -> None:
    dst = tmp_path / "w.duckdb"
    cfg = _cfg(tmp_path, {"name": "w", "type": "duckdb", "path": str(dst)})
    assert cfg.destinations[0].write is None  # "not set" is kept: an explicit append stays append
    for _ in range(3):
        r = Engine(cfg).run()
        assert r.ok, r.errors
    assert _rows(dst, "keyed") == [(i, f"k{i}") for i in range(1, 5)]
    # keyless: no key to merge by, so each full read is appended (as the README says)
    assert _rows(dst, "keyless") == sorted([(f"l{i}", i) for i in range(1, 4)] * 3)


def test_explicit_append_still_appends_a_keyed_stream(tmp_path: Path) -> None:
    dst = tmp_path / "w.duckdb"
    cfg = _cfg(tmp_path, {"name": "w", "type": "duckdb", "path": str(dst), "write": "append"}, ["keyed"])
    for _ in range(3):
        r = Engine(cfg).run()
        assert r.ok, r.errors
    assert _rows(dst, "keyed") == sorted([(i, f"k{i}") for i in range(1, 5)] * 3)


def test_files_destination_without_write_appends_keyed_streams(tmp_path: Path) -> None:
    import pyarrow.dataset as ds

    out = tmp_path / "lake"
    cfg = _cfg(tmp_path, {"name": "lake", "type": "files", "path": str(out), "format": "parquet"}, ["keyed"])
    for _ in range(2):
        r = Engine(cfg).run()
        assert r.ok, r.errors
    files = list(out.rglob("*.parquet"))
    assert files
    assert ds.dataset([str(p) for p in files]).count_rows() == 8


def test_merge_into_keyless_stream_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    dst = tmp_path / "w.duckdb"
    cfg = _cfg(tmp_path, {"name": "w", "type": "duckdb", "path": str(dst), "write": "merge"})
    with pytest.raises(ConfigError) as e:
        Engine(cfg).run()
    text = str(e.value)
    assert "destinations[0].write" in text and "keyless" in text and "primary_key" in text and "streams:" in text
    assert "'keyed'" not in text  # only the stream without a key is named
    if dst.exists():
        with duckdb.connect(str(dst), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'keyed'").fetchone()[0] == 0


def test_destinations_that_cannot_merge_append_a_keyed_stream_by_default(tmp_path: Path) -> None:
    import pyarrow as pa

    from replicant.config import DestinationConfig
    from replicant.destinations.files import FilesDestination
    from replicant.destinations.nats import NatsDestination
    from replicant.model import ConnectorContext, Stream

    keyed = Stream(name="t", table=("t",), schema=pa.schema([("id", pa.int64())]), primary_key=("id",))
    files = FilesDestination(DestinationConfig(name="f", type="files", path=str(tmp_path)), ConnectorContext("p"))
    bus = NatsDestination(DestinationConfig(name="n", type="nats", url="nats://127.0.0.1:4222"), ConnectorContext("p"))
    assert files.write_mode(keyed) == "append" and bus.write_mode(keyed) == "append"


def test_every_write_mode_problem_of_every_destination_in_one_report(tmp_path: Path) -> None:
    cfg = parse(
        {"pipeline": "wd", "source": {"type": "sqlite", "url": f"sqlite:///{_source(tmp_path)}",
                                      "streams": [{"table": "keyed", "mode": "cursor", "cursor": "id"}, "keyless"]},
         "destinations": [{"name": "w", "type": "duckdb", "path": str(tmp_path / "w.duckdb"), "write": "merge"},
                          {"name": "r", "type": "sqlite", "path": str(tmp_path / "r.db"), "write": "replace"}]},
        base_dir=tmp_path,
    )
    with pytest.raises(ConfigError) as e:
        Engine(cfg).run()
    problems = dict(e.value.problems)
    assert "'keyless'" in problems["destinations[0].write"]
    assert "'keyed'" in problems["destinations[1].write"] and "full" in problems["destinations[1].write"]
    assert not (tmp_path / ".replicant").exists() and not (tmp_path / "w.duckdb").exists()

"""The singer source with a real tap from PyPI (pipelinewise-tap-postgres, installed into a
throwaway venv once per session) reading Chinook in a local PostgreSQL: the destination equals
the source; an INCREMENTAL stream's second run reads only what its STATE has not covered; the
STATE is the feed's checkpoint, saved with the records before it; kill -9 mid-run converges.
Plus the bulk parsing of a tap's output, with a tap written here in a few lines."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pytest

from compare import fetch
from replicant.config import SourceConfig, load
from replicant.engine import Engine
from replicant.errors import FatalError
from replicant.model import ConnectorContext
from replicant.runtime import open_state
from replicant.sources.singer import SingerSource, arrow_schema


def _pipeline(tmp_path: Path, tap: Path, url: str, streams: list[dict[str, Any]]) -> Path:
    u = urlsplit(url)
    path = tmp_path / "singer.yml"
    cfg = {"host": u.hostname, "port": u.port, "user": u.username, "password": "${env:TAP_PG_PASSWORD}",
           "dbname": u.path.lstrip("/"), "filter_schemas": "public"}
    path.write_text(json.dumps({
        "pipeline": "singer",
        "source": {"type": "singer", "command": str(tap), "config": cfg, "streams": streams, "batch_size": 2000},
        "destinations": [{"name": "wh", "type": "duckdb", "path": "wh.duckdb", "write": "merge"}],
    }))
    return path


CHINOOK = [("public-artist", "artist", ["artist_id", "name"]),
           ("public-album", "album", ["album_id", "title", "artist_id"]),
           ("public-track", "track", ["track_id", "name", "album_id", "milliseconds", "unit_price"])]


@pytest.mark.slow
def test_a_real_tap_copies_chinook_and_resumes_from_its_state(
        tap_postgres: Path, chinook_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAP_PG_PASSWORD", urlsplit(chinook_pg_url).password or "")
    with psycopg.connect(chinook_pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE events (id integer PRIMARY KEY, note text, at timestamp NOT NULL)")
        c.execute("INSERT INTO events SELECT i, 'e' || i, timestamp '2024-01-01' + i * interval '1 minute' "
                  "FROM generate_series(1, 500) i")
    streams = [{"name": n} for n, _, _ in CHINOOK] + [
        {"name": "public-events", "replication_method": "INCREMENTAL", "replication_key": "at"}]
    path = _pipeline(tmp_path, tap_postgres, chinook_pg_url, streams)
    result = Engine(load(path)).run()
    assert result.ok, result.errors
    for stream, table, cols in CHINOOK:
        assert fetch("duckdb", str(tmp_path / "wh.duckdb"), stream, cols) == fetch("postgres", chinook_pg_url, table, cols)
    state = open_state(load(path)).checkpoint("singer", "(capture)").position["state"]
    assert state["bookmarks"]["public-events"]["replication_key_value"].startswith("2024-01-01T08:20:00")

    with psycopg.connect(chinook_pg_url, autocommit=True) as c:
        c.execute("INSERT INTO events SELECT i, 'e' || i, timestamp '2024-01-01' + i * interval '1 minute' "
                  "FROM generate_series(501, 530) i")
        c.execute("UPDATE events SET note = 'late', at = timestamp '2024-02-01' WHERE id = 3")
    result = Engine(load(path)).run()
    assert result.ok, result.errors
    cols = ["id", "note"]
    assert fetch("duckdb", str(tmp_path / "wh.duckdb"), "public-events", cols) == fetch("postgres", chinook_pg_url, "events", cols)
    # the second run read from the STATE: the 31 changed rows and the bookmark's own row (>=)
    assert result.rows_read["public-events"] == 32


@pytest.mark.slow
def test_kill_9_while_the_tap_runs_converges(
        tap_postgres: Path, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAP_PG_PASSWORD", urlsplit(pg_url).password or "")
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE big (id integer PRIMARY KEY, note text, at timestamp NOT NULL)")
        c.execute("INSERT INTO big SELECT i, repeat('x', 50) || i, timestamp '2024-01-01' + i * interval '1 second' "
                  "FROM generate_series(1, 200000) i")
    path = _pipeline(tmp_path, tap_postgres, pg_url, [
        {"name": "public-big", "replication_method": "INCREMENTAL", "replication_key": "at"}])
    rng = random.Random(7)
    kills = 0
    for i in range(4):
        with open(tmp_path / f"run{i}.err", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "replicant.cli", "run", str(path)], cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=err)
        try:
            code = proc.wait(timeout=rng.uniform(2.0, 5.0))
            assert code == 0, (tmp_path / f"run{i}.err").read_text()
        except subprocess.TimeoutExpired:
            proc.kill()
            kills += 1
        proc.wait(timeout=30)
    result = Engine(load(path)).run()
    assert result.ok, result.errors
    assert kills >= 1
    cols = ["id", "note"]
    assert fetch("duckdb", str(tmp_path / "wh.duckdb"), "public-big", cols) == fetch("postgres", pg_url, "big", cols)


# --------------------------------------------------------------------------- a tap in a few lines

_FAKE_TAP = textwrap.dedent('''
    import json, sys
    args = sys.argv[1:]
    schema = {"type": "object", "properties": {
        "id": {"type": "integer"}, "price": {"type": ["null", "number"], "multipleOf": 0.01},
        "at": {"type": "string", "format": "date-time"}, "day": {"type": ["string", "null"], "format": "date"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
        "odd": {"type": ["string", "number"]}}}
    if "--discover" in args:
        print(json.dumps({"streams": [{"tap_stream_id": "things", "stream": "things", "schema": schema,
                                       "key_properties": ["id"], "metadata": [{"breadcrumb": [], "metadata": {}}]}]}))
        sys.exit(0)
    start = 0
    if "--state" in args:
        start = json.load(open(args[args.index("--state") + 1]))["done"]
    print(json.dumps({"type": "SCHEMA", "stream": "things", "schema": schema, "key_properties": ["id"]}))
    for i in range(start + 1, start + 2501):
        print(json.dumps({"type": "RECORD", "stream": "things", "record": {
            "id": i, "price": i / 100, "at": "2024-01-01T00:00:00+00:00", "day": "2024-02-03", "tags": ["a"],
            "meta": {"ok": True}, "odd": 1}}))
        if i % 1000 == 0:
            print(json.dumps({"type": "STATE", "value": {"done": i}}))
    if start > 4000:
        print("the tap broke: password=hunter2-secret", file=sys.stderr)
        sys.exit(3)
''')


@pytest.fixture
def fake_tap(tmp_path: Path) -> list[str]:
    script = tmp_path / "tap_things.py"
    script.write_text(_FAKE_TAP)
    return [sys.executable, str(script)]


def _source(cmd: list[str], **kw: Any) -> SingerSource:
    cfg = SourceConfig.model_validate({"type": "singer", "command": cmd, "streams": ["things"], "batch_size": 700, **kw})
    return SingerSource(cfg, ConnectorContext("t"))


def test_tap_output_is_parsed_in_bulk_into_typed_batches_cut_at_each_state(fake_tap: list[str]) -> None:
    import threading

    src = _source(fake_tap)
    (s,) = src.discover()
    assert s.primary_key == ("id",) and "odd" not in s.schema.names
    sets = list(src.capture([s], {"things": None}, resume=None, follow=False, stop=threading.Event()))
    assert [cs.position for cs in sets if cs.batches] and sets[-1].position == {"state": {"done": 2000}}
    rows = [r for cs in sets for b in cs.batches.values() for r in b.to_pylist()]
    assert [r["id"] for r in rows] == list(range(1, 2501))
    first = rows[0]
    assert str(first["price"]) == "0.01" and str(first["day"]) == "2024-02-03" and first["tags"] == ["a"]
    assert first["meta"] == {"ok": True} and first["at"].isoformat() == "2024-01-01T00:00:00+00:00"
    # each change set ends at a STATE: the ids before it are exactly those the STATE covers
    seen = 0
    for cs in sets:
        seen += sum(b.num_rows for b in cs.batches.values())
        done = (cs.position.get("state") or {}).get("done")
        assert done is None or seen >= done
    again = list(src.capture([s], {"things": None}, resume={"state": {"done": 2000}}, follow=False, stop=threading.Event()))
    ids = [r["id"] for cs in again for b in cs.batches.values() for r in b.to_pylist()]
    assert ids[0] == 2001 and ids[-1] == 4500


def test_a_failing_tap_says_so_without_its_secrets(fake_tap: list[str]) -> None:
    import threading

    src = _source(fake_tap, config={"password": "hunter2-secret"})
    (s,) = src.discover()
    with pytest.raises(FatalError) as e:
        list(src.capture([s], {}, resume={"state": {"done": 5000}}, follow=False, stop=threading.Event()))
    assert "exited with 3" in str(e.value) and "hunter2-secret" not in str(e.value) and "the tap broke" in str(e.value)


def test_json_schema_types() -> None:
    schema, skipped = arrow_schema({"properties": {"a": {"type": ["null", "integer"]}, "b": {"anyOf": [
        {"type": "string", "format": "date-time"}, {"type": "null"}]}, "c": {"type": "object"}}})
    assert [str(f.type) for f in schema] == ["int64", "timestamp[us, tz=UTC]"] and skipped == ["c"]


def test_the_pipeline_file_takes_singer_streams(tmp_path: Path, fake_tap: list[str]) -> None:
    path = tmp_path / "p.yml"
    path.write_text(json.dumps({"pipeline": "p", "source": {"type": "singer", "command": fake_tap, "streams": [
        "things", {"name": "other", "replication_method": "INCREMENTAL", "replication_key": "at"}]},
        "destinations": [{"name": "wh", "type": "duckdb", "path": "wh.duckdb"}]}))
    cfg = load(path)
    assert [(s.table, s.mode) for s in cfg.source.streams] == [("things", "log"), ("other", "log")]
    path.write_text(path.read_text().replace("replication_method", "replication_metod"))
    with pytest.raises(Exception, match=r"source.streams\[1\].replication_metod"):
        SingerSource(load(path).source, ConnectorContext("p"))


def test_a_pipeline_of_the_small_tap_lands_in_duckdb(tmp_path: Path, fake_tap: list[str]) -> None:
    path = tmp_path / "p.yml"
    path.write_text(json.dumps({"pipeline": "p", "source": {"type": "singer", "command": fake_tap, "streams": ["things"]},
                                "destinations": [{"name": "wh", "type": "duckdb", "path": "wh.duckdb", "write": "merge"}]}))
    result = Engine(load(path)).run()
    assert result.ok, result.errors
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT id), max(id) FROM things").fetchone() == (2500, 2500, 2500)
    assert open_state(load(path)).checkpoint("p", "(capture)").position == {"state": {"done": 2000}}
    result = Engine(load(path)).run()  # from STATE 2000: 2001..4500
    assert result.ok, result.errors
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT id), max(id) FROM things").fetchone() == (4500, 4500, 4500)


def test_follow_runs_the_tap_again_from_its_state_until_stopped(fake_tap: list[str]) -> None:
    import threading
    import time

    src = _source(fake_tap, poll_interval=0.1)
    (s,) = src.discover()
    stop = threading.Event()
    ids: list[int] = []
    stopped = 0.0
    for cs in src.capture([s], {}, resume=None, follow=True, stop=stop):
        ids += [i for b in cs.batches.values() for i in b.column("id").to_pylist()]
        if len(ids) >= 4500 and not stop.is_set():
            stop.set()
            stopped = time.monotonic()
    assert ids[:2500] == list(range(1, 2501)) and ids[2500:4500] == list(range(2001, 4001))
    assert time.monotonic() - stopped < 5  # the running tap was stopped, not waited for


def test_records_of_a_slow_tap_are_not_held_back_until_it_ends(tmp_path: Path) -> None:
    import threading

    script = tmp_path / "slow_tap.py"
    script.write_text(textwrap.dedent('''
        import json, sys, time
        schema = {"type": "object", "properties": {"id": {"type": "integer"}}}
        if "--discover" in sys.argv:
            print(json.dumps({"streams": [{"tap_stream_id": "s", "schema": schema, "key_properties": ["id"]}]}))
            sys.exit(0)
        for i in (1, 2, 3):
            print(json.dumps({"type": "RECORD", "stream": "s", "record": {"id": i}}), flush=True)
        time.sleep(3)  # a tap waiting on its source
        print(json.dumps({"type": "STATE", "value": {"at": 3}}), flush=True)
    '''))
    cfg = SourceConfig.model_validate({"type": "singer", "command": [sys.executable, str(script)], "streams": ["s"],
                                       "flush_interval": 0.2})
    src = SingerSource(cfg, ConnectorContext("t"))
    (s,) = src.discover()
    feed = src.capture([s], {}, resume=None, follow=False, stop=threading.Event())
    first = next(feed)
    assert first.batches["s"].column("id").to_pylist() == [1, 2, 3] and first.position == {"state": None}
    assert src._proc is not None and src._proc.poll() is None  # while the tap still runs
    assert [cs.position for cs in feed] == [{"state": {"at": 3}}]

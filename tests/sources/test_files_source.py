"""The files source end to end (engine → staging log → DuckDB), on a local folder and on S3
through moto's server mode: every format (plain, .gz, .zst), the CSV options, malformed lines
dead-lettered with file and line, re-runs, changed files, new columns, modes, after_load."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from replicant import runtime
from replicant.config import parse
from replicant.engine import Engine
from replicant.errors import ConfigError
from replicant.state import StateStore

try:  # tests/ as a package
    from ..s3 import s3_bucket, s3_server
except ImportError:  # default layout: tests/ on sys.path
    from s3 import s3_bucket, s3_server  # noqa: F401


class Where:
    """A place for files: a local folder or an S3 prefix; ``put`` writes one file."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
        self.tmp_path = tmp_path
        self.kind = kind
        if kind == "local":
            self.root = tmp_path / "in"
            self.root.mkdir()
            self.url = "in"
            self.options: dict[str, Any] = {}
        else:
            server = request.getfixturevalue("s3_server")
            bucket = request.getfixturevalue("s3_bucket")
            self.fs = server.filesystem()
            self.url = f"s3://{bucket}/in"
            self.options = {"storage_options": server.storage_options}

    def put(self, name: str, data: bytes) -> None:
        if self.kind == "local":
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            self.fs.pipe(f"{self.url}/{name}".removeprefix("s3://"), data)

    def exists(self, name: str) -> bool:
        if self.kind == "local":
            return (self.root / name).exists()
        return bool(self.fs.exists(f"{self.url}/{name}".removeprefix("s3://")))


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Where:
    return Where(tmp_path, request, request.param)


@pytest.fixture
def local(request: pytest.FixtureRequest, tmp_path: Path) -> Where:
    return Where(tmp_path, request, "local")


def _pipeline(tmp_path: Path, where: Where, streams: list[dict], **source: Any) -> Any:
    return parse({"pipeline": "f", "source": {"type": "files", "url": where.url, **where.options, **source,
                                              "streams": streams},
                  "destinations": [{"name": "d", "type": "duckdb", "path": str(tmp_path / "d.duckdb")}]},
                 base_dir=tmp_path)


def _run(cfg: Any) -> Any:
    result = Engine(cfg).run()
    assert result.ok, result.errors
    return result


def _rows(tmp_path: Path, table: str, columns: str = "*", order: str = "_file, _line") -> list[tuple]:
    with duckdb.connect(str(tmp_path / "d.duckdb")) as con:
        return con.sql(f"SELECT {columns} FROM {table} ORDER BY {order}").fetchall()


def _state(cfg: Any) -> StateStore:
    return StateStore(runtime.state_url(cfg)).open()


def _zst(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


CSV = b"id,name,amount\n1,a,1.5\n2,b,2.5\n"


def _parquet(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=1)
    return sink.getvalue()


@pytest.mark.parametrize(("fmt", "name", "data"), [  # ids: the file names
    ("csv", "x.csv", CSV),
    ("csv", "x.csv.gz", gzip.compress(CSV, mtime=0)),
    ("csv", "x.csv.zst", _zst(CSV)),
    ("jsonl", "x.jsonl", b'{"id": 1, "name": "a", "amount": 1.5}\n{"id": 2, "name": "b", "amount": 2.5}\n'),
    ("jsonl", "x.jsonl.gz", gzip.compress(b'{"id": 1, "name": "a", "amount": 1.5}\n{"id": 2, "name": "b", "amount": 2.5}', mtime=0)),
    ("json", "x.json", b'[{"id": 1, "name": "a", "amount": 1.5},\n {"id": 2, "name": "b", "amount": 2.5}]'),
    ("parquet", "x.parquet", _parquet([{"id": 1, "name": "a", "amount": 1.5}, {"id": 2, "name": "b", "amount": 2.5}])),
])
def test_every_format_loads_with_file_and_line(tmp_path: Path, where: Where, fmt: str, name: str, data: bytes) -> None:
    where.put(name, data)
    cfg = _pipeline(tmp_path, where, [{"name": "t", "glob": "x.*"}])
    _run(cfg)
    first = 2 if fmt == "csv" else 1  # a CSV's first data row is on line 2 (after the header)
    assert _rows(tmp_path, "t") == [(1, "a", 1.5, name, first), (2, "b", 2.5, name, first + 1)]
    assert _run(cfg).rows_read["t"] == 0, "a re-run loads nothing"


def test_csv_options_the_way_users_know_them(tmp_path: Path, local: Where) -> None:
    # cp1252 with a UTF-8 byte-order mark, a title line to skip, ';' and "'" quotes, a backslash
    # escape, NULL/empty as null, ja/nein as booleans
    text = "\ufeff".encode() + "Report 2026\nid;name;ok;note\n1;'Café \\'x\\'';ja;NULL\n2;'a;b';nein;\n".encode("cp1252")
    local.put("a.csv", text)
    local.put("b.txt", b"3|zz|ja|n\n")  # no header: names given
    cfg = _pipeline(tmp_path, local, [
        {"name": "a", "glob": "a.csv", "csv": {"delimiter": ";", "quote": "'", "escape": "\\", "double_quote": False,
                                              "encoding": "cp1252", "skip_rows": 1, "null_values": ["NULL", ""],
                                              "true_values": ["ja"], "false_values": ["nein"]},
         "schema": {"ok": "bool", "note": "string"}},
        {"name": "b", "glob": "b.txt", "format": "csv", "csv": {"delimiter": "|", "header": False,
                                                                "column_names": ["id", "name", "ok", "note"]}},
    ])
    _run(cfg)
    assert _rows(tmp_path, "a") == [(1, "Café 'x'", True, None, "a.csv", 3), (2, "a;b", False, None, "a.csv", 4)]
    assert _rows(tmp_path, "b") == [(3, "zz", "ja", "n", "b.txt", 1)]


def test_malformed_lines_are_dead_lettered_with_file_and_line(tmp_path: Path, where: Where) -> None:
    where.put("d/1.csv", b'id,name\n1,a\n2,b,EXTRA\n3,"multi\nline"\nx,notanumber\n4,d\n')
    where.put("d/2.csv", b"id,name\n5,\xff\xfe bad utf8\n6,f\n")
    where.put("d/3.jsonl", b'{"id": 7}\n{not json}\n')
    where.put("d/4.csv", b'id,name\n8,h\n9,"never closed\n10,j\n')  # bad quoting
    cfg = _pipeline(tmp_path, where, [{"name": "c", "glob": "d/*.csv", "schema": {"id": "int64"}},
                                      {"name": "j", "glob": "d/*.jsonl"}])
    _run(cfg)
    assert _rows(tmp_path, "c", "id, _file, _line") == [
        (1, "d/1.csv", 2), (3, "d/1.csv", 4), (4, "d/1.csv", 7), (6, "d/2.csv", 3), (8, "d/4.csv", 2)]
    assert _rows(tmp_path, "j", "id, _line") == [(7, 1)]
    with _state(cfg) as st:
        letters = {d["origin"]: d for d in st.dead_letters("f")}
        seen = {r["path"]: r for r in st.files_seen("f")}
    assert set(letters) == {"d/1.csv:3", "d/1.csv:6", "d/2.csv:2", "d/3.jsonl:2", "d/4.csv:3"}
    assert "quoting" in letters["d/4.csv:3"]["reason"] and letters["d/4.csv:3"]["payload"]["text"].startswith('9,"never')
    assert letters["d/1.csv:3"]["payload"]["text"] == "2,b,EXTRA" and "columns" in letters["d/1.csv:3"]["reason"]
    assert "'x'" in letters["d/1.csv:6"]["reason"]
    assert seen["d/1.csv"]["bad_records"] == 2 and seen["d/1.csv"]["first_error_line"] == 3
    assert seen["d/1.csv"]["rows"] == 3 and seen["d/1.csv"]["status"] == "loaded"
    _run(cfg)  # a re-run neither loads nor dead-letters anything again
    with _state(cfg) as st:
        assert len(st.dead_letters("f")) == 5


def test_bad_record_fail_stops_the_stream_naming_file_and_line(tmp_path: Path, local: Where) -> None:
    local.put("a.csv", b"id\n1\nx\n")
    cfg = _pipeline(tmp_path, local, [{"name": "t", "glob": "*.csv", "schema": {"id": "int64"}, "on_bad_record": "fail"}])
    result = Engine(cfg).run()
    assert not result.ok and "a.csv, line 3" in str(result.errors[0])
    local.put("b.parquet", b"not parquet at all")
    cfg = _pipeline(tmp_path, local, [{"name": "t", "glob": "*.csv", "schema": {"id": "int64"}, "on_bad_record": "fail"},
                                      {"name": "p", "glob": "*.parquet", "schema": {"id": "int64"}}])
    result = Engine(cfg).run()
    assert not result.ok and "b.parquet" in str(result.errors)
    with _state(cfg) as st:
        failed = {r["path"]: r for r in st.files_seen("f", status="failed")}
    assert set(failed) == {"a.csv", "b.parquet"} and failed["a.csv"]["first_error_line"] == 3


def test_changed_file_is_reloaded_once_keyless_rows_replaced(tmp_path: Path, where: Where) -> None:
    where.put("a.csv", b"id,name\n1,a\n2,b\n3,c\n")
    where.put("b.csv", b"id,name\n9,z\n")
    cfg = _pipeline(tmp_path, where, [{"name": "t", "glob": "*.csv"}])
    _run(cfg)
    where.put("a.csv", b"id,name\n1,A\n")
    assert _run(cfg).rows_read["t"] > 0
    assert _rows(tmp_path, "t", "id, name, _file") == [(1, "A", "a.csv"), (9, "z", "b.csv")]
    assert _run(cfg).rows_read["t"] == 0
    with _state(cfg) as st:
        assert {r["path"]: r["loads"] for r in st.files_seen("f")} == {"a.csv": 2, "b.csv": 1}


def test_changed_file_with_a_key_is_merged(tmp_path: Path, local: Where) -> None:
    local.put("a.csv", b"id,name\n1,a\n2,b\n")
    cfg = _pipeline(tmp_path, local, [{"name": "t", "glob": "*.csv", "primary_key": ["id"]}])
    _run(cfg)
    local.put("a.csv", b"id,name\n2,B\n3,c\n")
    _run(cfg)
    assert _rows(tmp_path, "t", "id, name", "id") == [(1, "a"), (2, "B"), (3, "c")]


def test_touched_unchanged_local_file_is_not_reloaded(tmp_path: Path, local: Where) -> None:
    import os

    local.put("a.csv", CSV)
    cfg = _pipeline(tmp_path, local, [{"name": "t", "glob": "*.csv"}])
    _run(cfg)
    os.utime(local.root / "a.csv", (1, 1))  # a new modified time, the same content
    assert _run(cfg).rows_read["t"] == 0


@pytest.mark.parametrize("policy", ["add", "rescue", "fail"])
def test_new_columns(tmp_path: Path, local: Where, policy: str) -> None:
    local.put("1.csv", b"id,name\n1,a\n")
    cfg = _pipeline(tmp_path, local, [{"name": "t", "glob": "*.csv", "on_new_columns": policy}])
    _run(cfg)
    local.put("2.csv", b"id,name,extra\n2,b,x\n")
    result = Engine(cfg).run()
    if policy == "fail":
        assert not result.ok and "'extra'" in str(result.errors[0]) and "2.csv" in str(result.errors[0])
        return
    assert result.ok, result.errors
    if policy == "add":
        assert _rows(tmp_path, "t", "id, name, extra") == [(1, "a", None), (2, "b", "x")]
        local.put("3.csv", b"id,name\n3,c\n")  # a later file without it, and a later run, keep the column
        _run(cfg)
        assert _rows(tmp_path, "t", "id, extra") == [(1, None), (2, "x"), (3, None)]
    else:
        got = _rows(tmp_path, "t", "id, _rescued")
        assert got[0] == (1, None) and json.loads(got[1][1]) == {"extra": "x"}


def test_full_mode_rereads_everything(tmp_path: Path, local: Where) -> None:
    local.put("a.csv", CSV)
    cfg = _pipeline(tmp_path, local, [{"name": "t", "glob": "*.csv", "mode": "full"}])
    assert _run(cfg).rows_read["t"] == 2
    assert _run(cfg).rows_read["t"] == 2
    assert len(_rows(tmp_path, "t")) == 2
    with _state(cfg) as st:
        (rec,) = st.files_seen("f")
    assert (rec["status"], rec["loads"]) == ("loaded", 2), "a full read's files are recorded too"


def test_snapshot_diff_on_a_daily_extract(tmp_path: Path, local: Where) -> None:
    local.put("extract.csv", b"id,name\n1,a\n2,b\n3,c\n")
    cfg = _pipeline(tmp_path, local, [{"name": "t", "glob": "extract.csv", "mode": "snapshot_diff",
                                       "primary_key": ["id"], "exclude": ["_file", "_line"]}])
    _run(cfg)
    local.put("extract.csv", b"id,name\n1,a\n2,B\n4,d\n")
    _run(cfg)
    assert _rows(tmp_path, "t", "id, name", "id") == [(1, "a"), (2, "B"), (4, "d")]
    with _state(cfg) as st:
        assert [r["status"] for r in st.files_seen("f")] == ["loaded"]


@pytest.mark.parametrize("action", ["delete", "move"])
def test_after_load(tmp_path: Path, where: Where, action: str) -> None:
    where.put("a.csv", CSV)
    after: Any = "delete" if action == "delete" else {"move": "done"}
    cfg = _pipeline(tmp_path, where, [{"name": "t", "glob": "**/*.csv"}], after_load=after)
    _run(cfg)
    assert not where.exists("a.csv")
    assert where.exists("done/a.csv") == (action == "move")
    assert _run(cfg).rows_read["t"] == 0, "a moved file is not loaded again"
    with _state(cfg) as st:
        (rec,) = st.files_seen("f")
    assert rec["note"] == ("deleted" if action == "delete" else "moved to done/a.csv")


def test_follow_loads_each_new_file_once_in_arrival_order(tmp_path: Path, local: Where) -> None:
    import os
    import threading
    import time

    local.put("a.csv", b"id\n1\n")
    cfg = _pipeline(tmp_path, local, [{"name": "t", "glob": "*.csv"}], poll_interval=0.1)
    engine = Engine(cfg)
    thread = threading.Thread(target=engine.run, kwargs={"follow": True}, daemon=True)
    thread.start()
    try:
        local.put("c.csv", b"id\n3\n")
        local.put("b.csv", b"id\n2\n")
        os.utime(local.root / "c.csv", (time.time() - 10, time.time() - 10))  # c arrived first
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if len(_rows(tmp_path, "t")) == 3:
                    break
            except duckdb.Error:
                pass
            time.sleep(0.1)
    finally:
        engine.stop_event.set()
        thread.join(30)
    assert sorted(_rows(tmp_path, "t", "id")) == [(1,), (2,), (3,)]
    with _state(cfg) as st:
        order = [r["path"] for r in sorted(st.files_seen("f"), key=lambda r: r["seq"])]
    assert order.index("c.csv") < order.index("b.csv")


def test_config_errors_name_the_key(tmp_path: Path, local: Where) -> None:
    with pytest.raises(ConfigError) as e:
        _pipeline(tmp_path, local, [{"name": "t", "glob": "*.csv", "format": "xml", "csv": {"delimitr": ";"}}])
    text = str(e.value)
    assert "streams[0].format" in text and "streams[0].csv.delimitr" in text


def test_s3_credentials_by_reference_never_shown(tmp_path: Path, request: pytest.FixtureRequest,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    where = Where(tmp_path, request, "s3")
    where.put("a.csv", CSV)
    monkeypatch.setenv("FILES_TEST_KEY", "testing")
    monkeypatch.setenv("FILES_TEST_SECRET", "testing")  # moto takes any: what matters is where it is resolved
    options = {**where.options["storage_options"], "key": "${env:FILES_TEST_KEY}", "secret": "${env:FILES_TEST_SECRET}"}
    cfg = parse({"pipeline": "f", "source": {"type": "files", "url": where.url, "storage_options": options,
                                             "streams": [{"name": "t", "glob": "*.csv"}]},
                 "destinations": [{"name": "d", "type": "duckdb", "path": str(tmp_path / "d.duckdb")}]}, base_dir=tmp_path)
    assert "${env:FILES_TEST_SECRET}" in str(cfg.source.options["storage_options"]), "kept as a reference until used"
    _run(cfg)
    assert _rows(tmp_path, "t", "id") == [(1,), (2,)]
    assert "testing" not in repr(cfg.source) and "FILES_TEST" not in repr(cfg.source), "masked in every repr"


def test_status_files_lists_every_file_seen(tmp_path: Path, local: Where) -> None:
    import os
    import subprocess
    import sys

    local.put("a.csv", b"id\n1\nx\n")
    (tmp_path / "p.yml").write_text('pipeline: f\nsource: {type: files, url: in, streams: [{name: t, glob: "*.csv", '
                                    'schema: {id: int64}}]}\ndestinations: [{name: d, type: duckdb, path: d.duckdb}]\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "replicant.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    assert "1 bad record(s) dead-lettered (first at line 3" in cli("run", "p.yml"), "the run says how many"
    (record,) = json.loads(cli("status", "p.yml", "--json", "--files"))["files"]
    assert (record["path"], record["status"], record["rows"], record["bad_records"], record["first_error_line"]) == (
        "a.csv", "loaded", 1, 1, 3)
    assert "files seen" in cli("status", "p.yml", "--files") and "files seen" not in cli("status", "p.yml")

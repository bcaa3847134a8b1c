"""Resuming a files stream inside a file: read, stop after batch k (as a crash would: the log
holds batches 1..k), read again from batch k's position with the state store as the crash
left it; every row arrives exactly once, for every k, in every format (plain and compressed,
small chunks so that each file is many chunks)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from replicant import runtime
from replicant.config import parse
from replicant.engine import Engine
from replicant.model import ConnectorContext

try:  # tests/ as a package
    from ..s3 import s3_bucket, s3_server
except ImportError:  # default layout: tests/ on sys.path
    from s3 import s3_bucket, s3_server  # noqa: F401


def _csv(start: int, n: int) -> bytes:
    rows = [f'{i},"name\n{i}",{i}.5' if i % 7 == 0 else f"{i},n{i},{i}.5" for i in range(start, start + n)]
    rows.insert(5, "bad,row")  # one malformed line, dead-lettered
    return ("id,name,amount\n" + "\n".join(rows) + "\n").encode()


def _jsonl(start: int, n: int) -> bytes:
    return "".join(f'{{"id": {i}, "name": "n{i}"}}\n' for i in range(start, start + n)).encode()


def _parquet(start: int, n: int) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": list(range(start, start + n))}), sink, row_group_size=7)
    return sink.getvalue()


FILES = {
    "csv": [("a.csv", _csv(1, 40)), ("b.csv.gz", gzip.compress(_csv(100, 30), mtime=0))],
    "jsonl": [("a.jsonl", _jsonl(1, 40)), ("b.jsonl.gz", gzip.compress(_jsonl(100, 25), mtime=0))],
    "parquet": [("a.parquet", _parquet(1, 40)), ("b.parquet", _parquet(100, 20))],
}


def _source(tmp_path: Path, fmt: str, state: str, url: str = "in", **options: Any):
    cfg = parse({"pipeline": "r", "source": {"type": "files", "url": url, "batch_size": 3, **options,
                                             "streams": [{"name": "t", "glob": f"*.{fmt}*", "chunk_bytes": 64,
                                                          "schema": {"id": "int64"}}]},
                 "destinations": [{"name": "d", "type": "duckdb", "path": "d.duckdb"}]}, base_dir=tmp_path)
    context = ConnectorContext("r", workdir=tmp_path / "work", state_url=f"sqlite:///{tmp_path / state}")
    source = runtime.build_source(cfg, context)
    (stream,) = Engine(cfg).streams(source)
    return source, stream


def _lines(batches: list) -> list[tuple[str, int]]:
    return [(r["_file"], r["_line"]) for b in batches for r in b.data.select(["_file", "_line"]).to_pylist()]


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_resume_from_every_kill_point_reads_each_row_exactly_once(tmp_path: Path, fmt: str) -> None:
    (tmp_path / "in").mkdir()
    for name, data in FILES[fmt]:
        (tmp_path / "in" / name).write_bytes(data)
    source, stream = _source(tmp_path, fmt, "whole.db")
    with source:
        whole = list(source.read(stream, None))
    expected = _lines(whole)
    assert len(expected) == len(set(expected)) == {"csv": 70, "jsonl": 65, "parquet": 60}[fmt]
    for k in range(1, len(whole)):
        source, stream = _source(tmp_path, fmt, f"k{k}.db")
        with source:
            it = source.read(stream, None)
            head = [next(it) for _ in range(k)]
            it.close()  # killed after batch k: the log's last position is batch k's
            tail = list(source.read(stream, head[-1].position))
        assert _lines(head + tail) == expected, f"killed after batch {k}"


def test_resume_inside_files_on_s3(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """The same on S3 (moto): a plain file resumes by a ranged read, a gzip one by decompressing again."""
    fs = s3_server.filesystem()
    for name, data in FILES["csv"]:
        fs.pipe(f"{s3_bucket}/in/{name}", data)
    url, options = f"s3://{s3_bucket}/in", {"storage_options": s3_server.storage_options}
    source, stream = _source(tmp_path, "csv", "whole.db", url, **options)
    with source:
        whole = list(source.read(stream, None))
    expected = _lines(whole)
    assert len(expected) == 70
    for k in range(1, len(whole), 3):
        source, stream = _source(tmp_path, "csv", f"k{k}.db", url, **options)
        with source:
            it = source.read(stream, None)
            head = [next(it) for _ in range(k)]
            it.close()
            tail = list(source.read(stream, head[-1].position))
        assert _lines(head + tail) == expected, f"killed after batch {k}"

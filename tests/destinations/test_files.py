"""Files destination: Parquet, CSV and JSON Lines, local folder and S3 (moto server mode)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from replicant.config import DestinationConfig, parse
from replicant.destinations.files import FilesDestination
from replicant.errors import ConfigError
from replicant.model import META_FIELDS, ConnectorContext, Stream

try:  # tests/ as a package
    from ..s3 import s3_bucket, s3_server
except ImportError:  # default layout: tests/ on sys.path
    from s3 import s3_bucket, s3_server  # noqa: F401

UTC = dt.UTC
DAY1 = dt.datetime(2026, 11, 21, 23, 59, 59, 999999, tzinfo=UTC)
DAY2 = dt.datetime(2026, 11, 22, 0, 0, 0, tzinfo=UTC)

STREAM = Stream(
    name="public.orders",
    table=("public", "orders"),
    schema=pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("name", pa.string()),
            pa.field("amount", pa.decimal128(12, 2)),
            pa.field("raw", pa.binary()),
            pa.field("at", pa.timestamp("us", tz="UTC")),
            pa.field("score", pa.float64()),
        ]
    ),
    primary_key=("id",),
)


def _rows(n: int, *, start: int = 0, ts: dt.datetime = DAY1) -> pa.Table:
    """``n`` change rows; ids ``start..start+n-1``; row 1 of every table has nulls, one row is a delete."""
    ids = list(range(start, start + n))
    cols = {
        "id": pa.array(ids, pa.int64()),
        "name": pa.array([None if i % 5 == 1 else f'n,"{i}"\né' for i in ids]),
        "amount": pa.array([None if i % 5 == 1 else Decimal(i) / 100 - Decimal("3.50") for i in ids], pa.decimal128(12, 2)),
        "raw": pa.array([None if i % 5 == 1 else bytes([i % 256, 0, 255]) for i in ids], pa.binary()),
        "at": pa.array([None if i % 5 == 1 else dt.datetime(2020, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=i, microseconds=7) for i in ids],
                       pa.timestamp("us", tz="UTC")),
        "score": pa.array([None if i % 5 == 1 else i * 0.25 for i in ids], pa.float64()),
        "_op": pa.array(["delete" if i % 7 == 3 else "insert" for i in ids]),
        "_pos": pa.array([json.dumps({"lsn": i}) for i in ids]),
        "_ts": pa.array([ts] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.table(cols, schema=STREAM.change_schema)


def _chunks(total: int = 10, size: int = 4) -> list[tuple[pa.Table, int]]:
    """``(rows, last_offset)`` pairs as the engine hands them: offsets are the ids."""
    out = []
    for first in range(0, total, size):
        n = min(size, total - first)
        out.append((_rows(n, start=first), first + n - 1))
    return out


def _dest(path: str, **settings) -> FilesDestination:
    cfg = DestinationConfig(name="files", type="files", path=path, **settings)
    return FilesDestination(cfg, ConnectorContext("shop"))


def _write_all(dest: FilesDestination, chunks: list[tuple[pa.Table, int]]) -> None:
    dest.open()
    dest.prepare(STREAM)
    for rows, last in chunks:
        dest.write(STREAM, rows, last_offset=last)


def _read_local(root: Path, fmt: str) -> pa.Table:
    """Everything under ``root/public.orders``, read back by DuckDB with Hive partitioning
    (CSV as text; JSON Lines as the parsed objects, so values keep their JSON types)."""
    glob = str(root / "public.orders" / "**" / f"*.{fmt}*")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if fmt == "jsonl":
        texts = con.sql(f"SELECT json FROM read_ndjson_objects('{glob}')").fetchall()
        rows = sorted((json.loads(t) for (t,) in texts), key=lambda r: r["id"])
        return pa.Table.from_pylist(rows)
    reader = (
        "read_parquet('{}', hive_partitioning = true)"
        if fmt == "parquet"
        else "read_csv('{}', hive_partitioning = true, all_varchar = true)"
    )
    table = con.sql(f"SELECT * FROM {reader.format(glob)}").to_arrow_table()
    return table.sort_by([("id", "ascending")]) if fmt == "parquet" else table.take(pc.sort_indices(table["id"].cast(pa.int64())))


def _expected(total: int = 10) -> pa.Table:
    return _rows(total)


def _as_text_input(table: pa.Table) -> dict[str, list]:
    """The input as the text formats spell it (the documented mapping)."""
    return {
        "id": table["id"].to_pylist(),
        "name": table["name"].to_pylist(),
        "amount": [None if v is None else f"{v:.2f}" for v in table["amount"].to_pylist()],
        "raw": [None if v is None else base64.b64encode(v).decode() for v in table["raw"].to_pylist()],
        "at": [None if v is None else v.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for v in table["at"].to_pylist()],
        "score": table["score"].to_pylist(),
        "_op": table["_op"].to_pylist(),
        "_pos": table["_pos"].to_pylist(),
        "_ts": [v.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for v in table["_ts"].to_pylist()],
    }


# --------------------------------------------------------------------------- formats


def test_parquet_round_trip_local(tmp_path: Path) -> None:
    dest = _dest(str(tmp_path))
    _write_all(dest, _chunks())
    back = _read_local(tmp_path, "parquet")
    assert back["date"].to_pylist() == ["2026-11-21"] * 10 or back["date"].to_pylist() == [dt.date(2026, 11, 21)] * 10
    back = back.drop_columns(["date"])
    expected = _expected()
    assert back.schema.names == expected.schema.names
    assert back.cast(expected.schema).equals(expected)
    # pyarrow.dataset reads the same rows (skips _manifests/ and hidden temp names)
    dset = ds.dataset(str(tmp_path / "public.orders"), format="parquet", partitioning="hive")
    assert dset.to_table().num_rows == 10
    names = sorted(p.name for p in (tmp_path / "public.orders" / "date=2026-11-21").iterdir())
    assert names == [
        "00000000000000000000-00000000000000000003.parquet",
        "00000000000000000004-00000000000000000007.parquet",
        "00000000000000000008-00000000000000000009.parquet",
    ]


def test_parquet_types_kept_exactly(tmp_path: Path) -> None:
    dest = _dest(str(tmp_path), compression="zstd")
    _write_all(dest, _chunks())
    import pyarrow.parquet as pq

    f = tmp_path / "public.orders" / "date=2026-11-21" / "00000000000000000000-00000000000000000003.parquet"
    table = pq.read_table(f)
    assert table.schema.field("amount").type == pa.decimal128(12, 2)
    assert table.schema.field("raw").type == pa.binary()
    assert table.schema.field("_ts").type == pa.timestamp("us", tz="UTC")
    assert pq.ParquetFile(f).metadata.row_group(0).column(0).compression == "ZSTD"
    assert table.equals(_rows(4))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_formats_round_trip_local(tmp_path: Path, fmt: str) -> None:
    dest = _dest(str(tmp_path), format=fmt)
    _write_all(dest, _chunks())
    back = _read_local(tmp_path, fmt)
    expected = _as_text_input(_expected())
    for name, values in expected.items():
        got = back[name].to_pylist()
        if fmt == "csv":  # all_varchar: compare the text
            values = [None if v is None else (v if isinstance(v, str) else str(v)) for v in values]
            if name == "score":
                values = [None if v is None else repr(float(v)) for v in expected[name]]
                got = [None if v is None else repr(float(v)) for v in got]
        assert got == values, name


def test_jsonl_lines_are_self_contained_json(tmp_path: Path) -> None:
    dest = _dest(str(tmp_path), format="jsonl")
    _write_all(dest, _chunks(total=3, size=3))
    f = tmp_path / "public.orders" / "date=2026-11-21" / "00000000000000000000-00000000000000000002.jsonl"
    lines = f.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # newline-terminated
    rows = [json.loads(line) for line in lines[:-1]]
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert rows[0]["amount"] == "-3.50" and rows[2]["amount"] == "-3.48"  # exact text, scale kept
    assert rows[1]["amount"] is None and rows[1]["raw"] is None
    assert rows[0]["raw"] == base64.b64encode(bytes([0, 0, 255])).decode()
    assert rows[0]["at"] == "2020-01-01T00:00:00.000007Z"
    assert rows[0]["_ts"] == "2026-11-21T23:59:59.999999Z"
    assert rows[0]["_pos"] == '{"lsn": 0}'


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_compressed_text_formats(tmp_path: Path, fmt: str) -> None:
    dest = _dest(str(tmp_path), format=fmt, compression="gzip")
    _write_all(dest, _chunks())
    files = sorted((tmp_path / "public.orders" / "date=2026-11-21").iterdir())
    assert [f.suffixes[-2:] for f in files] == [[f".{fmt}", ".gz"]] * 3
    assert [int(v) for v in _read_local(tmp_path, fmt)["id"].to_pylist()] == list(range(10))


# --------------------------------------------------------------------------- idempotency


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_redelivery_and_replay_do_not_duplicate(tmp_path: Path, fmt: str) -> None:
    dest = _dest(str(tmp_path), format=fmt)
    chunks = _chunks()
    _write_all(dest, chunks)
    rows, last = chunks[1]
    dest.write(STREAM, rows, last_offset=last)  # a retry of the same chunk
    _write_all(_dest(str(tmp_path), format=fmt), chunks)  # a replay from the start, new object
    back = _read_local(tmp_path, fmt)
    assert [int(v) for v in back["id"].to_pylist()] == list(range(10))
    files = [p for p in (tmp_path / "public.orders").rglob("*") if p.is_file()]
    assert len([p for p in files if "_manifests" not in p.parts]) == 3
    assert not [p for p in files if p.name.startswith(".")]  # no temp files left


def test_empty_write_writes_nothing(tmp_path: Path) -> None:
    dest = _dest(str(tmp_path))
    dest.open()
    dest.record_offset(STREAM, 41)
    dest.write(STREAM, STREAM.change_schema.empty_table(), last_offset=42)
    assert not (tmp_path / "public.orders").exists()
    assert dest.applied_offset(STREAM) == -1


# --------------------------------------------------------------------------- manifests and partitions


def test_manifest_content(tmp_path: Path) -> None:
    dest = _dest(str(tmp_path))
    _write_all(dest, _chunks())
    m = json.loads((tmp_path / "public.orders" / "_manifests" / "00000000000000000004-00000000000000000007.json").read_text())
    assert m["stream"] == "public.orders"
    assert (m["first_offset"], m["last_offset"], m["rows"]) == (4, 7, 4)
    assert (m["format"], m["compression"]) == ("parquet", "snappy")
    assert m["min_ts"] == m["max_ts"] == "2026-11-21T23:59:59.999999Z"
    assert m["files"] == [
        {
            "path": "public.orders/date=2026-11-21/00000000000000000004-00000000000000000007.parquet",
            "rows": 4,
            "min_ts": "2026-11-21T23:59:59.999999Z",
            "max_ts": "2026-11-21T23:59:59.999999Z",
        }
    ]
    assert [c["name"] for c in m["schema"]] == STREAM.change_schema.names
    assert {c["name"]: c["type"] for c in m["schema"]}["amount"] == "decimal128(12, 2)"
    assert (tmp_path / m["files"][0]["path"]).exists()


def test_chunk_across_two_dates_is_split_by_row_date(tmp_path: Path) -> None:
    rows = _rows(6)
    ts = pa.array([DAY1, DAY1, DAY2, DAY1, DAY2, DAY2], pa.timestamp("us", tz="UTC"))
    rows = rows.set_column(rows.schema.get_field_index("_ts"), META_FIELDS[2], ts)
    dest = _dest(str(tmp_path))
    dest.open()
    dest.write(STREAM, rows, last_offset=105)
    dest.write(STREAM, rows, last_offset=105)  # redelivery: still one copy per date
    root = tmp_path / "public.orders"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet")) == [
        "date=2026-11-21/00000000000000000100-00000000000000000105.parquet",
        "date=2026-11-22/00000000000000000100-00000000000000000105.parquet",
    ]
    back = _read_local(tmp_path, "parquet")
    by_date = {str(d): sorted(i for i, dd in zip(back["id"].to_pylist(), back["date"].to_pylist()) if dd == d)
               for d in set(back["date"].to_pylist())}
    assert {k[:10]: v for k, v in by_date.items()} == {"2026-11-21": [0, 1, 3], "2026-11-22": [2, 4, 5]}
    m = json.loads((root / "_manifests" / "00000000000000000100-00000000000000000105.json").read_text())
    assert [(f["path"].split("/")[1], f["rows"]) for f in m["files"]] == [("date=2026-11-21", 3), ("date=2026-11-22", 3)]
    assert (m["min_ts"], m["max_ts"]) == ("2026-11-21T23:59:59.999999Z", "2026-11-22T00:00:00.000000Z")


def test_partition_hour_and_none(tmp_path: Path) -> None:
    _write_all(_dest(str(tmp_path / "h"), partition="hour"), _chunks(total=2))
    _write_all(_dest(str(tmp_path / "n"), partition="none"), _chunks(total=2))
    assert [p.relative_to(tmp_path / "h").as_posix() for p in (tmp_path / "h").rglob("*.parquet")] == [
        "public.orders/date=2026-11-21/hour=23/00000000000000000000-00000000000000000001.parquet"
    ]
    assert [p.relative_to(tmp_path / "n").as_posix() for p in (tmp_path / "n").rglob("*.parquet")] == [
        "public.orders/00000000000000000000-00000000000000000001.parquet"
    ]


def test_stream_names_become_safe_folders(tmp_path: Path) -> None:
    odd = Stream(name="../my orders/x", table=("my orders",), schema=STREAM.schema, primary_key=("id",))
    dest = _dest(str(tmp_path))
    dest.open()
    dest.write(odd, _rows(1), last_offset=0)
    files = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet")]
    assert files == ["_my_orders_x~36081826/date=2026-11-21/00000000000000000000-00000000000000000000.parquet"]


def test_names_that_sanitise_alike_keep_their_own_folders(tmp_path: Path) -> None:
    """Issue 9 item 6: ``a b``/``a_b`` and ``Ünï``/``_n_`` overwrote each other's files."""
    dest = _dest(str(tmp_path))
    dest.open()
    names = ["a b", "a_b", "Ünï", "_n_", "public.orders", "acme/orders"]
    for i, name in enumerate(names):
        s = Stream(name=name, table=(name,), schema=STREAM.schema, primary_key=("id",))
        dest.prepare(s)
        dest.write(s, _rows(2, start=10 * i), last_offset=1)  # every stream at the same offsets
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == sorted(["a_b~c8687a08", "a_b", "_n_~216999f2", "_n_", "public.orders", "acme_orders~874229ea"])
    for i, name in enumerate(names):
        manifests = list(tmp_path.glob("*/_manifests/*.json"))
        assert len(manifests) == len(names)
        (folder,) = {m.parent.parent.name for m in manifests if json.loads(m.read_text())["stream"] == name}
        ids = ds.dataset(str(tmp_path / folder), format="parquet", partitioning="hive").to_table()["id"].to_pylist()
        assert sorted(ids) == [10 * i, 10 * i + 1], name


def test_tenants_sharing_a_mapped_folder_keep_their_files(tmp_path: Path) -> None:
    """``tables:`` maps two tenants' ``orders`` to one folder, at the same offsets: both stay."""
    dest = _dest(str(tmp_path), tables="{table}")
    for i, tenant in enumerate(["acme", "globex"]):
        s = Stream(name="public.orders", table=("public", "orders"), schema=STREAM.schema, primary_key=("id",), tenant=tenant)
        dest.prepare(s)
        dest.write(s, _rows(2, start=10 * i), last_offset=1)
    ids = ds.dataset(str(tmp_path / "orders"), format="parquet", partitioning="hive").to_table()["id"].to_pylist()
    assert sorted(ids) == [0, 1, 10, 11]
    names = sorted(p.name for p in (tmp_path / "orders").rglob("*.*"))
    assert names == sorted(f"{t}-{0:020d}-{1:020d}{ext}" for t in ("acme", "globex") for ext in (".json", ".parquet"))


def test_two_streams_mapped_to_one_folder_are_refused(tmp_path: Path) -> None:
    dest = _dest(str(tmp_path), tables="{table}")
    one = Stream(name="public.items", table=("public", "items"), schema=STREAM.schema, primary_key=("id",))
    two = Stream(name="sales.items", table=("sales", "items"), schema=STREAM.schema, primary_key=("id",))
    dest.prepare(one)
    dest.prepare(one)  # the same stream again is fine
    with pytest.raises(ConfigError) as e:
        dest.prepare(two)
    assert e.value.problems[0][0] == "destinations.files.tables"
    assert "'public.items'" in str(e.value) and "'sales.items'" in str(e.value)


def test_truncate_is_recorded_in_a_manifest(tmp_path: Path) -> None:
    dest = _dest(str(tmp_path))
    dest.open()
    dest.truncate(STREAM, last_offset=12)
    m = json.loads((tmp_path / "public.orders" / "_manifests" / "00000000000000000012-00000000000000000012.json").read_text())
    assert m["op"] == "truncate" and m["last_offset"] == 12


# --------------------------------------------------------------------------- configuration


def _pipeline(**dest) -> dict:
    return {
        "pipeline": "shop",
        "source": {"type": "sqlite", "url": "sqlite:///x.db"},
        "destinations": [{"name": "out", "type": "files", "path": "/tmp/out", **dest}],
    }


def test_settings_errors_have_key_paths() -> None:
    with pytest.raises(ConfigError) as e:
        parse(_pipeline(format="xml", compresion="gzip"))
    problems = dict(e.value.problems)
    assert "destinations[0].format" in problems and "parquet" in problems["destinations[0].format"]
    assert problems["destinations[0].compresion"] == "unknown key (did you mean 'compression'?)"
    with pytest.raises(ConfigError) as e:
        parse(_pipeline(format="csv", compression="snappy"))
    [(key, what)] = e.value.problems
    assert key == "destinations[0].compression" and "snappy" in what and "gzip" in what
    cfg = parse(_pipeline(format="jsonl", compression="zstd", partition="none"))
    assert cfg.destinations[0].options == {"format": "jsonl", "compression": "zstd", "partition": "none"}


@pytest.mark.parametrize("write", ["merge", "replace"])
def test_merge_and_replace_are_refused(tmp_path: Path, write: str) -> None:
    with pytest.raises(ConfigError) as e:
        FilesDestination(DestinationConfig(name="out", type="files", path=str(tmp_path), write=write), ConnectorContext("shop"))
    [(key, what)] = e.value.problems
    assert key == "destinations.out.write" and "append" in what


def test_path_is_required() -> None:
    with pytest.raises(ConfigError) as e:
        FilesDestination(DestinationConfig(name="out", type="files"), ConnectorContext("shop"))
    assert e.value.problems[0][0] == "destinations.out.path"


def test_storage_options_are_not_shown(tmp_path: Path) -> None:
    dest = _dest(str(tmp_path), storage_options={"secret": "hunter2-very-secret"})
    assert "hunter2" not in repr(dest.options)


# --------------------------------------------------------------------------- S3


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_s3_round_trip_and_replay(s3_server, s3_bucket: str, fmt: str) -> None:
    url = f"s3://{s3_bucket}/lake"
    dest = _dest(url, format=fmt, storage_options=s3_server.storage_options)
    chunks = _chunks()
    _write_all(dest, chunks)
    dest.write(STREAM, *chunks[0][:1], last_offset=chunks[0][1])  # redelivery
    _write_all(_dest(url, format=fmt, storage_options=s3_server.storage_options), chunks)  # replay
    fs = s3_server.filesystem()
    keys = sorted(k.removeprefix(f"{s3_bucket}/lake/") for k in fs.find(f"{s3_bucket}/lake"))
    assert keys == [
        f"public.orders/_manifests/{n}.json" for n in ("00000000000000000000-00000000000000000003",
                                                       "00000000000000000004-00000000000000000007",
                                                       "00000000000000000008-00000000000000000009")
    ] + [
        f"public.orders/date=2026-11-21/{n}.{fmt}" for n in ("00000000000000000000-00000000000000000003",
                                                            "00000000000000000004-00000000000000000007",
                                                            "00000000000000000008-00000000000000000009")
    ]
    if fmt == "parquet":
        dset = ds.dataset(f"{s3_bucket}/lake/public.orders", format="parquet", partitioning="hive", filesystem=fs)
        back = dset.to_table().sort_by("id").drop_columns(["date"])
        assert back.cast(STREAM.change_schema).equals(_expected())
    else:
        lines = b"".join(fs.cat_file(f"{s3_bucket}/lake/{k}") for k in keys if k.endswith(".jsonl")).splitlines()
        rows = [json.loads(x) for x in lines]
        assert [r["id"] for r in rows] == list(range(10))
        assert rows == [dict(zip(_as_text_input(_expected()), vals)) for vals in zip(*_as_text_input(_expected()).values())]
    m = json.loads(fs.cat_file(f"{s3_bucket}/lake/public.orders/_manifests/00000000000000000008-00000000000000000009.json"))
    assert (m["rows"], m["format"]) == (2, fmt)


def test_s3_missing_bucket_is_a_connection_error(s3_server) -> None:
    from replicant.errors import ConnectionError

    dest = _dest("s3://no-such-bucket-replicant/x", storage_options=s3_server.storage_options)
    dest.open()
    with pytest.raises(ConnectionError) as e:
        dest.write(STREAM, _rows(1), last_offset=0)
    assert "no-such-bucket-replicant" in str(e.value) and "testing" not in str(e.value)


def test_amounts_sum_matches(tmp_path: Path) -> None:
    """A reader aggregating the Parquet output gets the input's exact decimal sum."""
    _write_all(_dest(str(tmp_path)), _chunks())
    back = _read_local(tmp_path, "parquet")
    assert pc.sum(back["amount"]).as_py() == pc.sum(_expected()["amount"]).as_py()

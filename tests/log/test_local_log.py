"""The staging log contract, run against every backend (``log_factory``), then LocalLog's
own promises: its files, torn-tail recovery, the writer lock and readers in other processes.

A future NATS JetStream backend joins by adding a ``log_factory`` param; tests below the
"LocalLog only" line stay with the local backend.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicant.errors import ConfigError, FatalError
from replicant.log import LocalLog, Log, Retention, open_log
from replicant.log.files import MAX_FOLDER_NAME, decode_stream, encode_stream
from replicant.model import SQL_TYPE_KEY, with_meta

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False, metadata={SQL_TYPE_KEY: b"bigint"}),
        pa.field("name", pa.string(), metadata={SQL_TYPE_KEY: b"character varying(40)"}),
    ],
    metadata={b"replicant.dialect": b"postgresql"},
)
T0 = datetime(2026, 11, 21, 10, 15, tzinfo=UTC)

LogFactory = Callable[..., Log]


def change_batch(first: int, n: int, schema: pa.Schema = SCHEMA) -> pa.RecordBatch:
    """Rows with ids ``first .. first+n-1`` (plus any extra columns, filled), as a change batch."""
    ids = pa.array(range(first, first + n), pa.int64())
    columns = [ids, pa.array([f"n{i}" for i in range(first, first + n)])]
    columns += [pa.nulls(n, f.type) for f in list(schema)[2:]]
    data = pa.RecordBatch.from_arrays(columns, schema=schema)
    return with_meta(data, "insert", json.dumps({"id": first}), T0 + timedelta(seconds=first))


def ids(log: Log, stream: str, start: int = 0, end: int | None = None) -> list[int]:
    return [i for r in log.read(stream, start, end=end) if r.batch is not None for i in r.batch.column("id").to_pylist()]


@pytest.fixture(params=["local", "nats"])
def log_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogFactory]:
    """``factory(name="log", small_segments=False)`` opens the log ``name``; calling it again
    closes the previous instance first (a reopen, as after a restart). NATS logs get a
    prefix unique to the test (``small_segments`` has no meaning there: a record is a unit)."""
    opened: list[Log] = []
    prefixes: set[str] = set()
    if request.param == "nats":
        from replicant.log.nats import NatsLog, delete_nats_log

        nats_url = request.getfixturevalue("nats_url")
        unique = request.getfixturevalue("unique_name")

    def factory(name: str = "log", small_segments: bool = False) -> Log:
        for log in opened:
            log.close()
        if request.param == "nats":
            prefixes.add(f"{unique}_{name}")
            log = NatsLog(nats_url, prefix=f"{unique}_{name}")
        else:
            log = LocalLog(tmp_path / name, segment_bytes=4096 if small_segments else 256 << 20)
        opened.append(log)
        return log

    yield factory
    for log in opened:
        log.close()
    for prefix in prefixes:
        delete_nats_log(nats_url, prefix)


# -- the contract, for every backend -----------------------------------------------------


def test_offsets_count_rows_and_grow_across_appends_and_reopen(log_factory: LogFactory) -> None:
    log = log_factory()
    assert log.end_offset("s") == 0 and log.start_offset("s") == 0 and log.last_position("s") is None
    assert log.append("s", change_batch(0, 5), position={"n": 5}) == 0
    assert log.append("s", change_batch(5, 3), position={"n": 8}) == 5
    assert log.end_offset("s") == 8
    log = log_factory()
    assert log.end_offset("s") == 8
    assert log.append("s", change_batch(8, 2), position={"n": 10}) == 8
    assert ids(log, "s") == list(range(10))
    assert [r.offset for r in log.read("s")] == [0, 5, 8]


def test_a_marker_takes_one_offset(log_factory: LogFactory) -> None:
    log = log_factory()
    assert log.append("s", None, position=None, marker={"kind": "snapshot_start", "chunk": 1}) == 0
    assert log.append("s", change_batch(0, 4), position={"n": 4}) == 1
    assert log.append("s", None, position={"n": 4}, marker={"kind": "snapshot_end"}) == 5
    assert log.end_offset("s") == 6
    records = list(log.read("s"))
    assert [(r.offset, r.next_offset, r.marker) for r in records] == [
        (0, 1, {"kind": "snapshot_start", "chunk": 1}),
        (1, 5, None),
        (5, 6, {"kind": "snapshot_end"}),
    ]
    assert records[0].batch is None and records[1].batch.num_rows == 4
    assert [r.offset for r in log.read("s", 5)] == [5]
    assert list(log.read("s", 6)) == []


def test_reading_from_inside_a_batch_slices_it_and_end_is_exclusive(log_factory: LogFactory) -> None:
    log = log_factory()
    log.append("s", change_batch(0, 10), position={"n": 10})
    log.append("s", None, position={"n": 10}, marker={"kind": "snapshot_end"})
    log.append("s", change_batch(10, 10), position={"n": 20})
    (first, *rest) = list(log.read("s", 7))
    assert first.offset == 7 and first.batch.column("id").to_pylist() == [7, 8, 9]
    assert first.next_offset == 10 and [r.offset for r in rest] == [10, 11]
    assert ids(log, "s", 3, end=14) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert [r.offset for r in log.read("s", 0, end=10)] == [0]
    assert ids(log, "s", 16) == list(range(15, 20))  # the marker at 10 shifts ids by one
    with pytest.raises(ValueError, match="start must be >= 0"):
        log.read("s", -1)


def test_schema_versions_evolve_and_old_records_keep_their_schema(log_factory: LogFactory) -> None:
    log = log_factory()
    log.append("s", change_batch(0, 3), position={"n": 3})
    log.append("s", change_batch(3, 3), position={"n": 6})  # same schema: same version
    wider = pa.schema(list(SCHEMA) + [pa.field("note", pa.string(), metadata={SQL_TYPE_KEY: b"text"})], metadata=SCHEMA.metadata)
    log.append("s", change_batch(6, 2, wider), position={"n": 8})
    retyped = wider.set(2, wider.field(2).with_metadata({SQL_TYPE_KEY: b"character varying(80)"}))
    log.append("s", change_batch(8, 1, retyped), position={"n": 9})  # only field metadata changed
    def check(opened: Log) -> None:
        schemas = opened.schemas("s")
        assert len(schemas) == 3
        assert schemas[0].equals(change_batch(0, 1).schema, check_metadata=True)
        assert schemas[1].equals(change_batch(0, 1, wider).schema, check_metadata=True)
        assert schemas[2].field("note").metadata == {SQL_TYPE_KEY: b"character varying(80)"}
        records = list(opened.read("s"))
        assert [r.schema_version for r in records] == [0, 0, 1, 2]
        assert [r.batch.schema.equals(schemas[r.schema_version], check_metadata=True) for r in records] == [True] * 4
        assert "note" not in records[0].batch.schema.names and records[2].batch.num_columns == 6

    check(log)
    check(log_factory())  # after a reopen


def test_positions_round_trip_and_last_position_survives_reopen(log_factory: LogFactory) -> None:
    log = log_factory()
    position = {"lsn": "0/16B3748", "chunk": [1, "a é"], "done": False, "n": None}
    log.append("s", change_batch(0, 2), position=position)
    assert [r.position for r in log.read("s")] == [position]
    assert log.last_position("s") == position
    # a zero-row batch only moves the position: no offset, nothing to read
    assert log.append("s", change_batch(2, 0), position={"lsn": "0/16B4000"}) == 2
    assert log.end_offset("s") == 2 and len(list(log.read("s"))) == 1
    log = log_factory()
    assert log.last_position("s") == {"lsn": "0/16B4000"}
    assert log.append("s", change_batch(2, 1), position=None) == 2
    assert log.last_position("s") is None
    assert log.last_position("other") is None


def test_offset_at_finds_the_first_record_appended_at_or_after_a_time(log_factory: LogFactory) -> None:
    log = log_factory(small_segments=True)
    before = datetime.now(UTC) - timedelta(seconds=1)
    for i in range(40):
        if i % 7 == 3:
            log.append("s", None, position={"i": i}, marker={"kind": "note"})
        else:
            log.append("s", change_batch(i * 10, 10), position={"i": i})
    records = list(log.read("s"))
    first_at = {}
    for r in records:
        first_at.setdefault(r.ts, r.offset)
    for r in records:
        assert log.offset_at("s", r.ts) == first_at[r.ts]
        assert log.offset_at("s", r.ts + timedelta(microseconds=1)) == next(
            (q.offset for q in records if q.ts > r.ts), log.end_offset("s")
        )
    assert log.offset_at("s", before) == 0
    assert log.offset_at("s", before.replace(tzinfo=None)) == 0  # naive means UTC
    assert log.offset_at("s", datetime.now(UTC) + timedelta(hours=1)) == log.end_offset("s")
    assert log.offset_at("empty", before) == 0


def test_retention_by_size_drops_whole_segments_and_says_what_is_left(log_factory: LogFactory) -> None:
    log = log_factory(small_segments=True)
    for i in range(60):
        log.append("s", change_batch(i * 10, 10), position={"i": i})
    boundaries = {r.offset for r in log.read("s")}
    start = log.apply_retention("s", Retention(max_bytes=20_000))
    assert 0 < start < 600 and start in boundaries
    assert log.start_offset("s") == start
    assert ids(log, "s", start) == list(range(start, 600))  # whole batches kept, nothing sliced
    with pytest.raises(FatalError) as error:
        list(log.read("s", start - 1))
    message = str(error.value)
    assert f"offset {start - 1} is no longer" in message and f"offsets {start} to 599" in message and "'s'" in message
    assert log.end_offset("s") == 600 and log.last_position("s") == {"i": 59}
    assert log.append("s", change_batch(600, 1), position={"i": 60}) == 600
    assert log.apply_retention("s", Retention(max_bytes=None)) == start
    log = log_factory(small_segments=True)
    assert log.start_offset("s") == start and ids(log, "s", start)[-1] == 600


def test_retention_by_age_keeps_the_segment_being_written(log_factory: LogFactory) -> None:
    log = log_factory(small_segments=True)
    log.append("s", None, position=None, marker={"kind": "snapshot_start"})
    for i in range(30):
        log.append("s", change_batch(i * 10, 10), position={"i": i})
    assert log.apply_retention("s", Retention(max_age_seconds=3600)) == 0
    start = log.apply_retention("s", Retention(max_age_seconds=0))
    assert start > 0 and log.start_offset("s") == start
    assert ids(log, "s", start)[-1] == 299 and log.last_position("s") == {"i": 29}
    with pytest.raises(FatalError, match="no longer in the staging log"):
        log.read("s", 0)
    assert log.apply_retention("s", Retention(max_age_seconds=0)) == start  # the tail stays


def test_a_reader_thread_tailing_a_writer_sees_every_row_exactly_once(log_factory: LogFactory) -> None:
    log = log_factory(small_segments=True)
    total, seen, errors = 3_000, [], []

    def tail() -> None:
        try:
            offset = 0
            while offset < total:
                if not log.wait("s", offset, timeout=10):
                    raise AssertionError(f"no new record after offset {offset}")
                for record in log.read("s", offset):
                    seen.extend(record.batch.column("id").to_pylist())
                    offset = record.next_offset
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    reader = threading.Thread(target=tail)
    reader.start()
    for first in range(0, total, 50):
        log.append("s", change_batch(first, 50), position={"n": first + 50})
    reader.join(timeout=30)
    assert not reader.is_alive() and errors == []
    assert seen == list(range(total))
    assert log.wait("s", total, timeout=0.01) is False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(st.one_of(st.integers(0, 40), st.just("marker")), max_size=25),
    start_at=st.integers(0, 1_000),
)
def test_read_from_any_start_equals_the_whole_log_sliced_there(log_factory: LogFactory, ops: list, start_at: int) -> None:
    log = log_factory(name=f"prop{next(_examples)}", small_segments=True)
    expected: list[tuple[int, object]] = []  # (offset, id or marker kind), one item per offset
    next_id = 0
    for op in ops:
        if op == "marker":
            offset = log.append("s", None, position={"id": next_id}, marker={"kind": "m"})
            expected.append((offset, "m"))
        else:
            offset = log.append("s", change_batch(next_id, op), position={"id": next_id + op})
            expected += [(offset + i, next_id + i) for i in range(op)]
            next_id += op
    assert [offset for offset, _ in expected] == list(range(len(expected)))
    assert log.end_offset("s") == len(expected)
    start = start_at % (len(expected) + 1)
    got: list[tuple[int, object]] = []
    for r in log.read("s", start):
        if r.marker is not None:
            got.append((r.offset, r.marker["kind"]))
        else:
            got += [(r.offset + i, v) for i, v in enumerate(r.batch.column("id").to_pylist())]
    assert got == expected[start:]


_examples = itertools.count()

HOSTILE_NAMES = [
    "public.orders",
    "Album",
    "my table",
    "it's \"quoted\"",
    "a/b\\c",
    ".",
    "..",
    ".hidden",
    "100%",
    "%41",
    "tilde~x",
    "ünïcødé 表",
    "emoji 🦀",
    "CON",
    "x" * 300,
    "é" * 150,
    "tab\tnew\nline",
]


def test_hostile_stream_names_round_trip(log_factory: LogFactory) -> None:
    log = log_factory()
    for i, name in enumerate(HOSTILE_NAMES):
        log.append(name, change_batch(i, 1), position={"i": i})
    log.append("only_position", change_batch(0, 0), position={"i": 0})
    log = log_factory()
    assert log.streams() == sorted(HOSTILE_NAMES + ["only_position"])
    for i, name in enumerate(HOSTILE_NAMES):
        assert ids(log, name) == [i] and log.last_position(name) == {"i": i}


def test_bad_appends_are_refused(log_factory: LogFactory) -> None:
    log = log_factory()
    with pytest.raises(ValueError, match="either a batch or a marker"):
        log.append("s", None, position=None)
    with pytest.raises(ValueError, match="either a batch or a marker"):
        log.append("s", change_batch(0, 1), position=None, marker={"kind": "x"})
    with pytest.raises(ValueError, match="a marker is a dict with a 'kind'"):
        log.append("s", None, position=None, marker={"no": "kind"})
    with pytest.raises(TypeError):
        log.append("s", pa.Table.from_batches([change_batch(0, 1)]), position=None)
    assert log.end_offset("s") == 0 and log.streams() == []


# -- LocalLog only ------------------------------------------------------------------------

SEGMENT_NAME = re.compile(r"^\d{20}-\d{8}T\d{6}\.\d{6}Z\.(arrow|idx)$")


def read_ipc(path: Path) -> pa.Table:
    """What anyone with pyarrow gets from a segment file."""
    with open(path, "rb") as f:
        return ipc.open_stream(f).read_all()


def segment_files(log: LocalLog, stream: str, suffix: str = ".arrow") -> list[Path]:
    return sorted(p for p in log.stream_path(stream).iterdir() if p.suffix == suffix)


def test_segments_are_named_by_offset_and_time_and_readable_by_pyarrow_alone(tmp_path: Path) -> None:
    wider = pa.schema(list(SCHEMA) + [pa.field("note", pa.string())], metadata=SCHEMA.metadata)
    with LocalLog(tmp_path, segment_bytes=2048) as log:
        for i in range(20):
            log.append("public.orders", change_batch(i * 10, 10), position={"i": i})
        log.append("public.orders", change_batch(200, 5, wider), position={"i": 20})  # rolls
        folder = log.stream_path("public.orders")
        assert folder == tmp_path / "streams" / "public.orders"
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
        assert names and all(SEGMENT_NAME.match(n) for n in names)
        arrows = segment_files(log, "public.orders")
        assert len(arrows) > 2 and len(segment_files(log, "public.orders", ".idx")) == len(arrows)
        tables = [read_ipc(p) for p in arrows]  # the last one is still open
        bases = [int(p.name[:20]) for p in arrows]
        assert bases == [0] + list(itertools.accumulate(t.num_rows for t in tables[:-1]))
        assert pa.concat_tables(tables[:-1]).column("id").to_pylist() == list(range(200))
        assert tables[-1].schema.equals(change_batch(0, 1, wider).schema, check_metadata=True)
        assert all(t.schema.equals(change_batch(0, 1).schema, check_metadata=True) for t in tables[:-1])
        schema_files = sorted((folder / "schemas").iterdir())
        assert [p.name for p in schema_files] == ["000000.arrow", "000001.arrow"]
        assert read_ipc(schema_files[1]).schema.equals(log.schemas("public.orders")[1], check_metadata=True)
        index = [json.loads(line) for line in segment_files(log, "public.orders", ".idx")[0].read_text().splitlines()]
        assert index[0]["offset"] == 0 and index[0]["rows"] == 10 and index[0]["schema"] == 0
        assert index[1]["min_ts"] == index[1]["max_ts"] == int((T0 + timedelta(seconds=10)).timestamp()) * 1_000_000
        assert json.loads(index[0]["position"]) == {"i": 0}


@pytest.mark.parametrize("compression", [None, "lz4", "zstd"])
def test_compressed_and_dictionary_batches_round_trip(tmp_path: Path, compression: str | None) -> None:
    dictionary = pa.schema([pa.field("tag", pa.dictionary(pa.int32(), pa.string())), pa.field("v", pa.float64())])
    with LocalLog(tmp_path, compression=compression) as log:
        plain = change_batch(0, 1000)
        log.append("s", plain, position={"n": 1})
        tags = [pa.array(["a", "b", "a"]).dictionary_encode(), pa.array(["c", "d", "d"]).dictionary_encode()]
        for t in tags:
            log.append("d", pa.RecordBatch.from_arrays([t, pa.array([1.5, 2.5, None])], schema=dictionary), position=None)
        assert next(log.read("s")).batch.equals(plain)
        assert [r.batch.column("tag").to_pylist() for r in log.read("d", 2)] == [["a"], ["c", "d", "d"]]
        assert read_ipc(segment_files(log, "d")[0]).column("tag").to_pylist() == ["a", "b", "a", "c", "d", "d"]
    with pytest.raises(ConfigError, match=r"log\.compression"):
        LocalLog(tmp_path / "x", compression="snappy")


def test_reads_are_zero_copy_views_of_the_mapped_segment(tmp_path: Path) -> None:
    with LocalLog(tmp_path, compression=None) as log:  # (compressed bodies are decoded into memory)
        log.append("s", change_batch(0, 100_000), position=None)
        before = pa.total_allocated_bytes()
        (record,) = log.read("s", 10)
        assert record.batch.num_rows == 99_990
        assert pa.total_allocated_bytes() - before < 10_000  # nothing copied into Arrow's pool
        assert record.batch.column("id")[0].as_py() == 10


def _torn_log(tmp_path: Path) -> Path:
    with LocalLog(tmp_path) as log:
        log.append("s", None, position=None, marker={"kind": "snapshot_start"})
        log.append("s", change_batch(0, 10), position={"n": 10})
        log.append("s", change_batch(10, 10), position={"n": 20})
        return log.stream_path("s")


@pytest.mark.parametrize(
    ("damage", "end", "last_position"),
    [
        ("garbage appended to the index", 21, {"n": 20}),
        ("partial index line", 21, {"n": 20}),
        ("data beyond the last index line", 21, {"n": 20}),
        ("last batch cut short", 11, {"n": 10}),
        ("index line pointing past the data", 11, {"n": 10}),
        ("new segment with an empty index", 21, {"n": 20}),
    ],
)
def test_a_torn_tail_is_cut_off_when_a_writer_opens_the_log(tmp_path: Path, damage: str, end: int, last_position: dict) -> None:
    folder = _torn_log(tmp_path)
    index = max(folder.glob("*.idx"))
    data = index.with_suffix(".arrow")
    lines = index.read_bytes().splitlines(keepends=True)
    if damage == "garbage appended to the index":
        with open(index, "ab") as f:
            f.write(b"\x00\xffnot json at all\n{\"offset\": 21, \"rows\"")
    elif damage == "partial index line":
        with open(index, "ab") as f:
            f.write(lines[-1][: len(lines[-1]) // 2])
    elif damage == "data beyond the last index line":
        with open(data, "ab") as f:
            f.write(change_batch(0, 1).serialize().to_pybytes()[:100])
    elif damage == "last batch cut short":
        with open(data, "r+b") as f:
            f.truncate(data.stat().st_size - 17)
    elif damage == "index line pointing past the data":
        entry = json.loads(lines[-1])
        with open(data, "r+b") as f:
            f.truncate(entry["start"] + 5)
    else:
        (folder / "00000000000000000021-20991231T000000.000000Z.arrow").write_bytes(SCHEMA.serialize().to_pybytes())
        (folder / "00000000000000000021-20991231T000000.000000Z.idx").write_bytes(b"")
    with LocalLog(tmp_path) as log:
        assert log.end_offset("s") == end and log.last_position("s") == last_position
        assert ids(log, "s") == list(range(end - 1))
        assert log.append("s", change_batch(end - 1, 5), position={"n": end + 4}) == end
        assert ids(log, "s") == list(range(end + 4))
        assert [r.offset for r in log.read("s")][:2] == [0, 1]
    with LocalLog(tmp_path, read_only=True) as log:
        assert ids(log, "s") == list(range(end + 4))
    assert len(list(folder.glob("*.idx"))) == 2  # the first marker's segment (no schema yet) and the data's
    assert read_ipc(data).column("id").to_pylist() == list(range(end + 4))


HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from replicant.log import LocalLog
    log = LocalLog(sys.argv[1])
    log.append("s", None, position={"by": "child"}, marker={"kind": "x"})
    print("locked", flush=True)
    sys.stdin.readline()
    log.close()
    """
)


def test_a_second_writer_process_gets_a_clear_error_or_waits(tmp_path: Path) -> None:
    command = [sys.executable, "-c", HOLD_LOCK, str(tmp_path)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(FatalError) as error:
            LocalLog(tmp_path)
        assert str(error.value) == (
            f"pipeline log at {tmp_path} is in use by another process (pid {child.pid}); stop that run "
            "or let it finish, then run again"
        )
        with LocalLog(tmp_path, read_only=True) as reader:  # readers need no lock
            assert reader.last_position("s") == {"by": "child"}
        threading.Timer(0.2, lambda: (child.stdin.write("go\n"), child.stdin.flush())).start()
        with LocalLog(tmp_path, lock_timeout=20) as log:
            assert log.append("s", None, position=None, marker={"kind": "y"}) == 1
    finally:
        child.stdin.close()
        assert child.wait(timeout=20) == 0
        child.stdout.close()


def test_a_second_writer_in_the_same_process_is_refused(tmp_path: Path) -> None:
    with LocalLog(tmp_path), pytest.raises(FatalError, match=f"another LocalLog in this process \\(pid {os.getpid()}\\)"):
        LocalLog(tmp_path)
    with LocalLog(tmp_path) as log:  # released on close
        assert log.end_offset("s") == 0


APPEND_IN_CHILD = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    from replicant.log import LocalLog
    log = LocalLog(sys.argv[1], segment_bytes=8192)
    for first in range(0, 2000, 20):
        ids = pa.array(range(first, first + 20), pa.int64())
        log.append("s", pa.record_batch([ids], names=["id"]), position={"n": first + 20})
    log.close()
    """
)


def test_a_read_only_log_follows_a_writer_in_another_process(tmp_path: Path) -> None:
    follower = LocalLog(tmp_path, read_only=True)
    assert follower.streams() == [] and follower.end_offset("s") == 0
    child = subprocess.Popen([sys.executable, "-c", APPEND_IN_CHILD, str(tmp_path)])
    try:
        seen, offset = [], 0
        while offset < 2000:
            assert follower.wait("s", offset, timeout=20), f"nothing after offset {offset}"
            for record in follower.read("s", offset):
                seen += record.batch.column("id").to_pylist()
                offset = record.next_offset
        assert seen == list(range(2000)) and follower.last_position("s") == {"n": 2000}
        assert len(segment_files(follower, "s")) > 1
        with pytest.raises(FatalError, match="read-only"):
            follower.append("s", None, position=None, marker={"kind": "x"})
    finally:
        assert child.wait(timeout=60) == 0
        follower.close()


def test_open_log_maps_locations_to_backends(tmp_path: Path) -> None:
    with open_log(str(tmp_path / "a")) as log:
        assert isinstance(log, LocalLog) and log.root == tmp_path / "a"
    with open_log((tmp_path / "b b").as_uri(), compression="lz4") as log:
        assert isinstance(log, LocalLog) and log.root == tmp_path / "b b" and log.compression == "lz4"
    with open_log(str(tmp_path / "a"), readonly=True) as log:
        assert log.read_only
    with pytest.raises(ConfigError) as error:
        open_log("nats://user:s3cret@nats.example:4222/bad.name")
    assert "'bad.name'" in str(error.value) and "s3cret" not in str(error.value)
    assert error.value.problems[0][0] == "log"
    with pytest.raises(ConfigError, match="s3://"):
        open_log("s3://bucket/log")


def test_a_zero_row_batch_with_a_new_schema_registers_it_without_taking_an_offset(log_factory: LogFactory) -> None:
    log = log_factory()
    log.append("s", change_batch(0, 2), position={"n": 2})
    wider = pa.schema(list(SCHEMA) + [pa.field("note", pa.string())])
    assert log.append("s", change_batch(2, 0, wider), position={"n": 2, "empty": True}) == 2
    assert len(log.schemas("s")) == 2 and log.end_offset("s") == 2
    assert log.append("s", change_batch(2, 1, wider), position={"n": 3}) == 2
    assert [(r.offset, r.schema_version) for r in log.read("s")] == [(0, 0), (2, 1)]


def test_sealed_segment_indexes_are_evicted_and_reloaded(tmp_path: Path) -> None:
    with LocalLog(tmp_path, segment_bytes=2048, cached_segments=2) as log:
        for i in range(40):
            log.append("s", change_batch(i * 5, 5), position={"i": i})
        assert len(segment_files(log, "s")) > 6
        records = list(log.read("s"))
        assert ids(log, "s") == list(range(200)) and ids(log, "s", 101) == list(range(101, 200))
        assert [log.offset_at("s", r.ts) <= r.offset for r in records] == [True] * len(records)
        loaded = [p for p in log._stream("s").segments if p.loaded]
        assert len(loaded) <= 3  # two cached sealed segments and the tail


def test_a_reader_started_before_retention_fails_clearly(tmp_path: Path) -> None:
    with LocalLog(tmp_path, segment_bytes=2048) as log:
        for i in range(40):
            log.append("s", change_batch(i * 5, 5), position={"i": i})
        records = log.read("s")
        next(records)
        log.apply_retention("s", Retention(max_bytes=1))
        with pytest.raises(FatalError, match="removed by retention while being read; read again from offset"):
            list(records)


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    from replicant.log import LocalLog
    log = LocalLog(sys.argv[1], segment_bytes=16384)
    n = log.end_offset("s")
    while True:
        if n % 5 == 0:
            log.append("s", None, position={"n": n + 1}, marker={"kind": "tick"})
            n += 1
        size = 1 + n % 97
        batch = pa.record_batch([pa.array(range(n, n + size), pa.int64())], names=["id"])  # ids are offsets
        log.append("s", batch, position={"n": n + size})
        n += size
    """
)


def test_a_writer_killed_mid_append_leaves_a_log_that_reopens_consistent(tmp_path: Path) -> None:
    for _ in range(2):  # the second run resumes a recovered log
        child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)])
        with LocalLog(tmp_path, read_only=True) as follower:
            before = follower.end_offset("s")
            assert follower.wait("s", before + 2000, timeout=30)
        child.kill()  # SIGKILL: whatever was half written stays half written
        child.wait(timeout=10)
        with LocalLog(tmp_path) as log:
            end = log.end_offset("s")
            assert end > before + 2000
            covered: list[int] = []
            for r in log.read("s"):
                if r.batch is not None:
                    assert r.batch.column("id").to_pylist() == list(range(r.offset, r.next_offset))
                else:
                    assert r.marker == {"kind": "tick"}
                covered += range(r.offset, r.next_offset)
            assert covered == list(range(end))  # every offset once, nothing torn
            assert log.last_position("s") == {"n": end}


@given(name=st.text(min_size=1, max_size=80))
def test_stream_folder_names_are_safe_and_reversible(name: str) -> None:
    folder = encode_stream(name)
    assert re.fullmatch(r"[A-Za-z0-9_.%~-]+", folder) and not folder.startswith(".")
    assert len(folder.encode()) <= MAX_FOLDER_NAME
    if "~" not in folder:  # shortened names are read back from name.txt (see the hostile-names test)
        assert decode_stream(Path("/x") / folder) == name


def test_the_examples_in_the_staging_log_docs_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    doc = Path(__file__).parents[2] / "docs" / "staging-log.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(doc), "exec"), namespace)  # our own documentation
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[1:] for line in printed] == [["0", "[]"], ["3", "['id']"]]  # the marker has no rows


def test_a_failed_disk_write_is_undone_and_the_next_append_lands_right(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from replicant.log import segments

    real_write_all = segments.write_all

    def index_write_fails(fd: int, data: bytes) -> None:
        if isinstance(data, bytes) and data.startswith(b'{"offset":5,'):
            real_write_all(fd, data[:20])  # half the index line reached the disk
            raise OSError(28, "No space left on device")
        real_write_all(fd, data)

    with LocalLog(tmp_path) as log:
        log.append("s", change_batch(0, 5), position={"n": 5})
        monkeypatch.setattr(segments, "write_all", index_write_fails)
        with pytest.raises(FatalError, match="No space left on device"):
            log.append("s", change_batch(5, 5), position={"n": 10})
        monkeypatch.undo()
        assert log.end_offset("s") == 5
        assert log.append("s", change_batch(5, 3), position={"n": 8}) == 5
        assert ids(log, "s") == list(range(8))
    with LocalLog(tmp_path) as log:
        assert ids(log, "s") == list(range(8)) and log.last_position("s") == {"n": 8}
        assert read_ipc(segment_files(log, "s")[0]).column("id").to_pylist() == list(range(8))


def test_the_records_kept_in_memory_stay_within_one_budget_for_all_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stream keeps its newest records in memory, but all streams together keep at most
    ``RECENT_BYTES``: the oldest go first, never the record just appended. A stream read after
    its records left memory reads the same rows from its files."""
    import replicant.log.local as local

    one = change_batch(0, 1000).nbytes
    budget = one * 7 // 2  # three records (their sizes differ a little), not four
    monkeypatch.setattr(local, "RECENT_BYTES", budget)
    with LocalLog(tmp_path) as log:
        names = [f"t{i:02d}" for i in range(12)]
        for name in names:
            for k in range(2):
                log.append(name, change_batch(k * 1000, 1000), position={"n": k})
            held = sum(log._stream(n).recent_bytes for n in names if n in log._streams)
            assert held <= budget
            assert log._stream(name).recent[-1].offset == 1000, "the record just appended stays"
        kept = [n for n in names if log._stream(n).recent]
        assert kept == names[-2:], "the newest records of all streams are the ones kept"
        for name in names:
            assert ids(log, name) == list(range(2000))


def test_recent_records_served_from_memory_equal_the_files(tmp_path: Path) -> None:
    """The writer keeps its newest records in memory for readers in its process; every slice
    read that way equals the same slice decoded from the files by another reader."""
    with LocalLog(tmp_path) as log:
        log.append("s", None, position={"n": 0}, marker={"kind": "snapshot_start"})
        for i in range(6):
            log.append("s", change_batch(1 + i * 50, 50), position={"n": i})
        log.append("s", None, position={"n": 99}, marker={"kind": "snapshot_end"})
        reader = LocalLog(tmp_path, read_only=True)
        try:
            end = log.end_offset("s")
            assert log._stream("s").recent, "the newest records are kept"
            for start in (0, 150, 175, 200, 249, 300, end - 1):
                for stop in (None, 260, end):
                    if stop is not None and stop <= start:
                        continue
                    mine = list(log.read("s", start, end=stop))
                    theirs = list(reader.read("s", start, end=stop))
                    assert [(r.offset, r.marker, r.position, r.schema_version, r.ts) for r in mine] == \
                        [(r.offset, r.marker, r.position, r.schema_version, r.ts) for r in theirs]
                    for a, b in zip(mine, theirs):
                        assert (a.batch is None and b.batch is None) or a.batch.equals(b.batch)
        finally:
            reader.close()

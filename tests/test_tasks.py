"""Streams as tasks: ``parallelism`` streams read at once, a failing stream does not stop the
others, and the run's events reach the observer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from replicant.config import SourceConfig, parse
from replicant.engine import Engine
from replicant.errors import FatalError
from replicant.model import OP_READ, ConnectorContext, ReadBatch, Stream, encode_position, utcnow, with_meta
from replicant.results import Observer, RunError
from replicant.sources.base import Capabilities, Source

ROWS = 6
BATCH = 2
DEADLINE = 10.0


class _Gate:
    """Counts the streams inside ``read`` at once; each of the first ``want`` readers waits
    (bounded) until ``want`` readers are in, so a run with enough parallelism proves they
    overlap, and one without it shows they never do."""

    def __init__(self, want: int, timeout: float = DEADLINE) -> None:
        self.want, self.timeout = want, timeout
        self.entered = 0
        self.inside = 0
        self.most = 0
        self.cond = threading.Condition()

    def enter(self) -> None:
        with self.cond:
            self.entered += 1
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.cond.notify_all()
            if self.entered <= self.want:
                self.cond.wait_for(lambda: self.inside >= self.want, timeout=self.timeout)

    def leave(self) -> None:
        with self.cond:
            self.inside -= 1


class _MemorySource(Source):
    """A source of in-memory tables, read in full in batches of ``BATCH`` rows."""

    capabilities = Capabilities(modes=frozenset({"full"}))

    def __init__(self, config: SourceConfig, names: list[str], gate: _Gate, broken: set[str]) -> None:
        super().__init__(config, ConnectorContext("tasks"))
        self.names, self.gate, self.broken = names, gate, broken
        self.schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.string())])

    def discover(self) -> list[Stream]:
        return [Stream(name=n, table=(n,), schema=self.schema, primary_key=("id",)) for n in self.names]

    def read_full(self, stream: Stream, position: dict[str, Any] | None) -> Iterator[ReadBatch]:
        self.gate.enter()
        try:
            if stream.name in self.broken:
                raise FatalError(f"table {stream.name} is unreadable")
            start = (position or {}).get("after", 0)
            for lo in range(start, ROWS, BATCH):
                ids = list(range(lo, min(lo + BATCH, ROWS)))
                data = pa.record_batch([pa.array(ids, pa.int64()), pa.array([f"{stream.name}-{i}" for i in ids])],
                                       schema=self.schema)
                pos = {"after": ids[-1] + 1}
                yield ReadBatch(with_meta(data, OP_READ, encode_position(pos), utcnow()), pos)
            empty = pa.RecordBatch.from_pylist([], schema=self.schema)
            yield ReadBatch(with_meta(empty, OP_READ, "{}", utcnow()), {"done": True}, final=True)
        finally:
            self.gate.leave()


class _Events(Observer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, ...]] = []
        self.errors: list[RunError] = []

    def run_started(self, pipeline: str, run_id: int, command: str) -> None:
        with self.lock:
            self.events.append(("run_started", pipeline, command))

    def run_finished(self, result: Any, status: str) -> None:
        with self.lock:
            self.events.append(("run_finished", status))

    def stream_state(self, stream: str, state: str) -> None:
        with self.lock:
            self.events.append(("state", stream, state))

    def error(self, error: RunError) -> None:
        with self.lock:
            self.errors.append(error)


def _engine(tmp_path: Path, names: list[str], *, parallelism: int, gate: _Gate, broken: set[str] = frozenset(),
            observer: Observer | None = None) -> Engine:
    cfg = parse({
        "pipeline": "tasks",
        "source": {"type": "sqlite", "url": "sqlite:///unused.db", "streams": names},
        "destinations": [{"name": "w", "type": "duckdb", "path": "w.duckdb", "write": "merge"}],
        "parallelism": parallelism,
    }, base_dir=tmp_path)
    return Engine(cfg, observer=observer, source_factory=lambda: _MemorySource(cfg.source, names, gate, set(broken)))


def _counts(path: Path, names: list[str]) -> dict[str, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {n: con.execute(f'select count(*) from "{n}"').fetchone()[0] for n in names}


def test_streams_are_read_concurrently_up_to_parallelism(tmp_path: Path) -> None:
    names = ["a", "b", "c", "d"]
    gate = _Gate(want=2)
    result = _engine(tmp_path, names, parallelism=2, gate=gate).run()
    assert result.ok, result.errors
    assert gate.most == 2  # two streams were inside read() at the same time, never more
    assert result.rows_read == dict.fromkeys(names, ROWS)
    assert _counts(tmp_path / "w.duckdb", names) == dict.fromkeys(names, ROWS)


def test_parallelism_one_reads_one_stream_at_a_time(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    gate = _Gate(want=2, timeout=1.0)  # the first reader waits a second for a second one, which must not come
    result = _engine(tmp_path, names, parallelism=1, gate=gate).run()
    assert result.ok, result.errors
    assert gate.most == 1
    assert _counts(tmp_path / "w.duckdb", names) == dict.fromkeys(names, ROWS)


def test_a_failing_stream_does_not_stop_the_others(tmp_path: Path) -> None:
    names = ["a", "bad", "c", "d"]
    events = _Events()
    result = _engine(tmp_path, names, parallelism=2, gate=_Gate(want=1), broken={"bad"}, observer=events).run()
    assert not result.ok
    assert result.errors == [RunError("read", "table bad is unreadable", stream="bad")]
    assert events.errors == result.errors
    assert str(result.errors[0]) == "stream bad: table bad is unreadable"
    assert {k: v for k, v in result.rows_read.items() if k != "bad"} == dict.fromkeys(["a", "c", "d"], ROWS)
    assert _counts(tmp_path / "w.duckdb", ["a", "c", "d"]) == dict.fromkeys(["a", "c", "d"], ROWS)
    assert ("state", "bad", "failed") in events.events
    assert events.events[0] == ("run_started", "tasks", "run")
    assert events.events[-1] == ("run_finished", "failed")
    for n in ("a", "c", "d"):
        states = [e[2] for e in events.events if e[0] == "state" and e[1] == n]
        assert states == ["queued", "reading", "caught_up"], (n, states)


def test_a_second_run_resumes_each_stream_from_its_log(tmp_path: Path) -> None:
    names = ["a", "b"]
    first = _engine(tmp_path, names, parallelism=2, gate=_Gate(want=1)).run()
    again = _engine(tmp_path, names, parallelism=2, gate=_Gate(want=1)).run()
    assert first.ok and again.ok
    assert again.rows_read == dict.fromkeys(names, ROWS)  # full mode: a new snapshot, merged by key
    assert _counts(tmp_path / "w.duckdb", names) == dict.fromkeys(names, ROWS)

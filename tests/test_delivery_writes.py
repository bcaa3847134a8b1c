"""How a delivery cuts the log into writes: full writes while a stream is being read in bulk.

A delivery faster than its reader used to write whatever the log held at each look: many
transactions smaller than a write, and writes just over one (a full DuckDB row group plus a
sliver that DuckDB rewrote at its checkpoint). Here, against a real DuckDB file and staging
log, with an injected clock: snapshot rows are written in writes of exactly ``batch_size``
rows, a remainder waits for more while the stream is read (at most ``HOLD_SECONDS``), changes
are written at once, and a delivery started again after a write that cut a log record in two
goes on from the row after the cut. A destination that does not ask for full writes (SQLite)
gets the same cuts but nothing held. A delivery of several streams holds one stream's rows at
a time.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from cdc._pipelines import wait_until
from replicant.config import DestinationConfig
from replicant.delivery import HOLD_SECONDS, Delivery, StreamWriter
from replicant.destinations.duckdb import DuckDBDestination
from replicant.destinations.sqlite import SQLiteDestination
from replicant.log.local import LocalLog
from replicant.model import OP_INSERT, OP_READ, ConnectorContext, Stream, with_meta
from replicant.state import StateStore

PIPELINE = "writes"
STREAM = Stream(name="items", table=("items",), schema=pa.schema([pa.field("id", pa.int64()), pa.field("v", pa.string())]),
                primary_key=("id",))
T = datetime(2026, 12, 7, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _append(log: LocalLog, first: int, n: int, op: str = OP_READ, stream: Stream = STREAM) -> None:
    data = pa.record_batch([pa.array(range(first, first + n), pa.int64()), pa.array([f"v{i}" for i in range(first, first + n)])],
                           schema=STREAM.schema)
    log.append(stream.log_name, with_meta(data, op, "p", T), position={"at": first + n})


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Callable[[str], tuple[LocalLog, Any, StateStore, list[int]]]]:
    """Makes (log, destination, state store, sizes of the writes) for a destination kind; closes them after."""
    opened: list[Any] = []
    by_stream: list[tuple[str, int]] = []  # (stream, rows) of every write, for tests of several streams

    def make(kind: str = "duckdb") -> tuple[LocalLog, Any, StateStore, list[int]]:
        log = LocalLog(tmp_path / "log")
        state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
        state.open()
        cfg = DestinationConfig(name="wh", type=kind, write="append", path=str(tmp_path / f"wh.{kind}"), batch_size=8)
        dest = (DuckDBDestination if kind == "duckdb" else SQLiteDestination)(cfg, ConnectorContext(PIPELINE))
        dest.open()
        dest.prepare(STREAM)
        opened.extend([dest, state, log])
        writes: list[int] = []
        write = dest.write

        def recording(stream, rows, **kw):
            writes.append(rows.num_rows)
            by_stream.append((stream.name, rows.num_rows))
            return write(stream, rows, **kw)

        dest.write = recording
        return log, dest, state, writes

    make.by_stream = by_stream  # type: ignore[attr-defined]
    yield make
    for thing in opened:
        thing.close()


def _ids(tmp_path: Path, dest: Any) -> list[int]:
    dest.close()
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        return [r[0] for r in con.execute("SELECT id FROM items ORDER BY id").fetchall()]


def test_snapshot_rows_go_in_full_writes_and_the_rest_waits_while_the_stream_is_read(tmp_path: Path, parts) -> None:
    log, dest, state, writes = parts()
    clock = Clock()
    w = StreamWriter(dest, STREAM, log, state, PIPELINE, lambda *_: None, clock=clock)
    for first in (0, 3, 6):
        _append(log, first, 3)
    assert w.step(hold=True)
    assert writes == [8]  # exactly one write's rows, cut inside the third record
    assert dest.applied_offset(STREAM) == 7

    clock.now += HOLD_SECONDS / 2
    assert not w.step(hold=True)  # one row waits for more
    assert writes == [8]
    _append(log, 9, 3)
    assert w.step(hold=True) and writes == [8]  # 4 rows now, still short of a write

    clock.now += HOLD_SECONDS  # the first of them has waited long enough
    assert w.step(hold=True)
    assert writes == [8, 4] and dest.applied_offset(STREAM) == 11

    _append(log, 12, 2, OP_INSERT)  # changes are not held
    assert w.step(hold=True) and writes == [8, 4, 2]
    _append(log, 14, 2)  # nor are reads once the stream's reading is over
    assert w.step(hold=False) and writes == [8, 4, 2, 2]
    assert _ids(tmp_path, dest) == list(range(16))


def test_a_stop_after_a_write_that_cut_a_record_goes_on_from_the_next_row(tmp_path: Path, parts) -> None:
    log, dest, state, writes = parts()
    _append(log, 0, 5)
    _append(log, 5, 5)
    first = StreamWriter(dest, STREAM, log, state, PIPELINE, lambda *_: None, clock=Clock())
    assert first.step(hold=True) and writes == [8]
    # the process ends here: the two rows held after the cut were never written
    again = StreamWriter(dest, STREAM, log, state, PIPELINE, lambda *_: None, clock=Clock())
    assert again.offset == 8
    assert again.step() and writes == [8, 2]
    assert _ids(tmp_path, dest) == list(range(10))


def test_a_destination_without_full_writes_gets_the_cuts_but_nothing_held(parts) -> None:
    log, dest, state, writes = parts("sqlite")
    assert not dest.capabilities.full_writes
    w = StreamWriter(dest, STREAM, log, state, PIPELINE, lambda *_: None, clock=Clock())
    for first in (0, 3, 6):
        _append(log, first, 3)
    assert w.step(hold=True)
    assert writes == [8, 1]
    assert dest.applied_offset(STREAM) == 8


def test_a_delivery_of_several_streams_holds_the_rows_of_one_at_a_time(parts) -> None:
    log, dest, state, _ = parts()
    other = dataclasses.replace(STREAM, name="others", table=("others",))
    dest.prepare(other)
    _append(log, 0, 3)
    _append(log, 0, 3, stream=other)
    clock, done, stop = Clock(), {STREAM.name: threading.Event(), other.name: threading.Event()}, threading.Event()
    errors: list[Any] = []
    delivery = Delivery(dest, [STREAM, other], log, state, PIPELINE, done=done, stop=stop, follow=False,
                        on_error=errors.append, on_rows=lambda *_: None, clock=clock)
    thread = threading.Thread(target=delivery.run)
    thread.start()
    try:
        # "items" came first and holds; "others" may not
        wait_until(lambda: parts.by_stream == [("others", 3)], 30, "the write of others", every=0.01)
        clock.now += HOLD_SECONDS
        wait_until(lambda: parts.by_stream == [("others", 3), ("items", 3)], 30, "the held write of items", every=0.01)
        _append(log, 3, 3, stream=other)  # "items" holds nothing now: "others" may
        _append(log, 3, 3)
        clock.now += HOLD_SECONDS / 2
        for event in done.values():
            event.set()
    finally:  # on a failure too, the delivery ends: nothing more will be read
        for event in done.values():
            event.set()
        stop.set()
        thread.join(30)
    assert not thread.is_alive() and not errors
    assert sorted(parts.by_stream[2:]) == [("items", 3), ("others", 3)]


def test_rows_left_after_a_cut_wait_no_longer_than_the_hold_began(parts) -> None:
    log, dest, state, writes = parts()
    clock = Clock()
    w = StreamWriter(dest, STREAM, log, state, PIPELINE, lambda *_: None, clock=clock)
    _append(log, 0, 3)
    assert w.step(hold=True) and writes == []  # held from clock 100
    clock.now += HOLD_SECONDS * 0.6
    _append(log, 3, 6)
    assert w.step(hold=True) and writes == [8]  # the cut; one row left, taken after the hold began
    clock.now += HOLD_SECONDS * 0.4  # HOLD_SECONDS since the hold began, 0.4 of it since the cut
    assert w.step(hold=True)
    assert writes == [8, 1]

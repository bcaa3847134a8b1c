"""How a SQL source cuts its driver's batches into staging-log records (``SQLSource._rebatched``):
at most ``batch_size`` rows each, every row once and in order, and no copy where slices do."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pyarrow as pa
import pytest

from replicant.sources import sql
from replicant.sources.sql import SQLSource


def _rebatched(driver_sizes: list[int], size: int) -> tuple[list[int], list[int]]:
    """The sizes of the records made from driver batches of ``driver_sizes`` rows, and their ids."""
    def batches(*_: object) -> Iterator[pa.RecordBatch]:
        first = 0
        for n in driver_sizes:
            yield pa.record_batch({"id": pa.array(range(first, first + n), pa.int64())})
            first += n

    out = list(SQLSource._rebatched(SimpleNamespace(_batches=batches), "", [], None, size))  # type: ignore[arg-type]
    return [b.num_rows for b in out], [i for b in out for i in b.column("id").to_pylist()]


def test_large_driver_batches_become_slices_without_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL's COPY batches hold more rows than a record: each is cut, and a remainder half
    a record or more goes out alone rather than being copied together with the next batch."""
    def no_copy(_: list[pa.RecordBatch]) -> pa.RecordBatch:
        raise AssertionError("a record was copied together from two driver batches")

    monkeypatch.setattr(sql, "_concat", no_copy)
    sizes, ids = _rebatched([42, 42, 42, 10], 25)
    assert sizes == [25, 17, 25, 17, 25, 17, 10]
    assert ids == list(range(136))


def test_small_driver_batches_are_gathered() -> None:
    """Gathered while the next one fits; a gathered batch half full or more goes out as it is."""
    sizes, ids = _rebatched([10] * 8, 25)
    assert sizes == [20, 20, 20, 20]
    assert ids == list(range(80))
    sizes, ids = _rebatched([5] * 11, 25)
    assert sizes == [25, 25, 5]
    assert ids == list(range(55))


def test_a_small_remainder_is_filled_from_the_next_batch() -> None:
    """Below half a record, the rows held are completed from the next batch (one copy)."""
    sizes, ids = _rebatched([30, 5, 40, 0, 3], 25)
    assert sizes == [25, 25, 25, 3]
    assert ids == list(range(78))


def test_records_of_one_row() -> None:
    """``batch_size: 1``: every row its own record (an empty gathered batch is never sent)."""
    sizes, ids = _rebatched([3, 2], 1)
    assert sizes == [1] * 5
    assert ids == list(range(5))

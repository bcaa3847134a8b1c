"""The Arrow helpers of a merge: the last change per key, with and without the shortcut for
a batch whose one key column strictly increases (a snapshot read in key order)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from replicant.destinations._changes import last_change_per_key


def _changes(keys: list, values: list, chunks: int = 1) -> pa.Table:
    ops = ["update"] * len(keys)
    table = pa.table({"k": keys, "v": values, "_op": ops})
    size = max(1, -(-len(keys) // chunks))
    return pa.Table.from_batches(table.to_batches(max_chunksize=size))


def test_increasing_keys_come_back_as_the_same_table() -> None:
    t = _changes(list(range(10)), list(range(10)), chunks=3)  # increasing across chunk borders too
    assert last_change_per_key(t, ("k",)) is t


@pytest.mark.parametrize(
    ("keys", "values", "expected"),
    [
        ([1, 2, 2, 3], [1, 2, 3, 4], {"k": [1, 2, 3], "v": [1, 3, 4]}),  # a repeat next to itself
        ([1, 3, 2, 3], [1, 2, 3, 4], {"k": [1, 2, 3], "v": [1, 3, 4]}),  # a repeat further on
        ([3, 2, 1], [1, 2, 3], {"k": [3, 2, 1], "v": [1, 2, 3]}),  # decreasing: all distinct, order kept
        (["a", "b", "a"], [1, 2, 3], {"k": ["b", "a"], "v": [2, 3]}),
    ],
)
def test_the_last_change_of_each_key_wins_in_original_order(keys: list, values: list, expected: dict) -> None:
    for chunks in (1, 2):
        assert last_change_per_key(_changes(keys, values, chunks), ("k",)).select(["k", "v"]).to_pydict() == expected


def test_a_null_key_takes_the_aggregation_not_the_shortcut() -> None:
    t = _changes([1, None, 2, None], [1, 2, 3, 4])
    assert last_change_per_key(t, ("k",)).select(["k", "v"]).to_pydict() == {"k": [1, 2, None], "v": [1, 3, 4]}


def test_two_key_columns_are_compared_together() -> None:
    t = pa.table({"a": [1, 1, 1], "b": [1, 2, 1], "v": [1, 2, 3], "_op": ["update"] * 3})
    assert last_change_per_key(t, ("a", "b")).select(["a", "b", "v"]).to_pydict() == {"a": [1, 1], "b": [2, 1], "v": [2, 3]}

"""Arrow helpers that turn a change batch into what a SQL destination applies.

All work is done by Arrow compute kernels (C++); nothing here loops over rows in Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from replicant.model import META_COLUMNS, OP_DELETE, OP_READ

__all__ = ["all_reads", "data_names", "delete_mask", "last_change_per_key", "without_deletes"]


def data_names(table: pa.Table) -> list[str]:
    """The data column names of a change table (the metadata columns removed)."""
    return [n for n in table.column_names if n not in META_COLUMNS]


def delete_mask(table: pa.Table) -> pa.ChunkedArray:
    """A boolean column, true where ``_op`` is ``delete`` (never null)."""
    return pc.fill_null(pc.equal(table["_op"], OP_DELETE), False)


def without_deletes(table: pa.Table) -> pa.Table:
    """The data columns of the rows whose ``_op`` is not ``delete`` (row order kept)."""
    data = table.select(data_names(table))
    if table.num_rows == 0:
        return data
    deletes = delete_mask(table)
    if not pc.any(deletes).as_py():
        return data
    return data.filter(pc.invert(deletes))


def all_reads(table: pa.Table) -> bool:
    """True if every row is a snapshot read (``_op == "read"``); true for an empty table."""
    if table.num_rows == 0:
        return True
    return bool(pc.all(pc.fill_null(pc.equal(table["_op"], OP_READ), False)).as_py())


def last_change_per_key(table: pa.Table, keys: tuple[str, ...] | list[str]) -> pa.Table:
    """The rows of ``table`` that are the last change of their key, in their original order.

    Within one write only the last change per key counts (an insert then a delete of the
    same key deletes it; two updates keep the second). Returns ``table`` itself when no
    key repeats.

    A batch whose one key column strictly increases (a snapshot read in key order: the
    common case of an initial load) is returned after one vectorised comparison, without
    the hash aggregation (which cost ~8% of a 5M-row merge's samples).
    """
    n = table.num_rows
    if n < 2:
        return table
    if len(keys) == 1 and _strictly_increasing(table[keys[0]]):
        return table
    index = pa.array(np.arange(n, dtype=np.int64))
    keyed = table.select(list(keys)).append_column("__replicant_row", index)
    last = keyed.group_by(list(keys), use_threads=False).aggregate([("__replicant_row", "max")])
    rows = last["__replicant_row_max"]
    if len(rows) == n:
        return table
    return table.take(pa.array(np.sort(rows.to_numpy())))


def _strictly_increasing(column: pa.ChunkedArray) -> bool:
    """True if every value is greater than the one before (no null): no value repeats."""
    try:
        increasing = pc.all(pc.greater(column[1:], column[:-1]), skip_nulls=False).as_py()
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # a type without an order
        return False
    return increasing is True

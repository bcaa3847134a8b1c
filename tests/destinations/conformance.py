"""The destination conformance checks and the :class:`Harness` a destination kind joins with.

The suite is ``test_conformance.py``: every registered destination is one entry of its
``KINDS`` (how to build a :class:`Harness` from the test's fixtures), and gets every check
below that its :class:`~replicant.destinations.base.Capabilities` make applicable. Every
check asserts real outcomes read back through a connection (or reader) other than the
destination's own: table contents, delivered files/requests/messages, offsets, errors.

Crash injection uses only public surface: a transactional destination's write calls its
public ``store_offset(stream, last_offset)`` after the data statements, inside the write
transaction; a check replaces it with a failing one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from replicant.errors import DestinationFencedError, FatalError
from replicant.model import Stream

TS = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_stream(name: str, fields: list[pa.Field], key: tuple[str, ...] = ("id",), metadata: dict | None = None) -> Stream:
    return Stream(name=name, table=tuple(name.split(".")), schema=pa.schema(fields, metadata=metadata), primary_key=key)


def changes(stream: Stream, rows: list[dict[str, Any]], ops: list[str] | str) -> pa.Table:
    """A change table for ``stream``: ``rows`` (dicts of data columns) with their ``_op``."""
    if isinstance(ops, str):
        ops = [ops] * len(rows)
    data = pa.Table.from_pylist(rows, schema=stream.schema) if rows else stream.schema.empty_table()
    meta = [
        pa.array(ops, pa.string()),
        pa.array([f'{{"i":{i}}}' for i in range(len(rows))], pa.string()),
        pa.array([TS] * len(rows), pa.timestamp("us", tz="UTC")),
    ]
    return pa.Table.from_arrays(list(data.columns) + meta, schema=stream.change_schema)


def _fail_after_data(dest: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected failure after the data statement")

    monkeypatch.setattr(dest, "store_offset", boom)


@dataclass
class Harness:
    """How one destination kind is exercised.

    Attributes:
        make: ``make(write, schema=None) -> Destination`` (not opened).
        rows: ``rows(table, schema=None) -> sorted list of tuples`` (data columns in table
            order) as a reader of the target sees them, through a connection other than the
            destination's own; ``None`` when the table (folder, stream) does not exist. For
            a non-transactional kind: every delivered record, or under ``merge`` the state
            after applying them by key.
        columns: ``columns(table, schema=None) -> list of column names`` in table order.
        delivered: non-transactional kinds: the identities of what was delivered (file
            names, idempotency keys, message ids), sorted.
        bad_login: kinds with credentials: ``() -> (destination, host, password)``, a
            destination whose login is refused.
        schema: a hostile schema (or database) name the kind can write into, or None.
    """

    make: Callable[..., Any]
    rows: Callable[..., list[tuple] | None]
    columns: Callable[..., list[str]]
    delivered: Callable[[], list[str]] | None = None
    bad_login: Callable[[], tuple[Any, str, str]] | None = None
    schema: str | None = None
    fail_after_data: Callable[[Any, pytest.MonkeyPatch], None] = field(default=_fail_after_data)


ITEMS = [pa.field("id", pa.int64()), pa.field("name", pa.string()), pa.field("qty", pa.int32())]


def opened(h: Harness, write: str, **kw: Any) -> Any:
    d = h.make(write, **kw)
    d.open()
    return d


def check_append(h: Harness) -> None:
    s = make_stream("shop.items", ITEMS)
    d = opened(h, "append")
    try:
        assert d.applied_offset(s) == -1
        d.prepare(s)
        d.write(s, changes(s, [{"id": 1, "name": "a", "qty": 1}, {"id": 2, "name": "b", "qty": 2}], "read"), last_offset=4)
        d.write(
            s,
            changes(s, [{"id": 1, "name": "a2", "qty": 3}, {"id": 2, "name": None, "qty": None}], ["update", "delete"]),
            last_offset=9,
        )
        assert d.applied_offset(s) == 9
    finally:
        d.close()
    assert h.rows("items") == [(1, "a", 1), (1, "a2", 3), (2, "b", 2)]


def check_merge(h: Harness) -> None:
    s = make_stream("shop.items", ITEMS)
    d = opened(h, "merge")
    try:
        d.prepare(s)
        snapshot = [{"id": i, "name": f"n{i}", "qty": i} for i in range(1, 6)]
        d.write(s, changes(s, snapshot, "read"), last_offset=0)
        assert h.rows("items") == [(i, f"n{i}", i) for i in range(1, 6)]
        batch = changes(
            s,
            [
                {"id": 2, "name": "two", "qty": 20},  # update, then updated again: the last wins
                {"id": 3, "name": None, "qty": None},  # delete
                {"id": 6, "name": "six", "qty": 6},  # insert, then delete in the same write: gone
                {"id": 2, "name": "TWO", "qty": 22},
                {"id": 6, "name": None, "qty": None},
                {"id": 7, "name": "seven", "qty": 7},  # delete then insert: present
                {"id": 4, "name": None, "qty": None},  # deleted then re-inserted: present
                {"id": 4, "name": "four", "qty": 44},
                {"id": 99, "name": None, "qty": None},  # delete of a missing key: no-op
            ],
            ["update", "delete", "insert", "update", "delete", "insert", "delete", "insert", "delete"],
        )
        d.write(s, batch, last_offset=1)
        assert d.applied_offset(s) == 1
        assert h.rows("items") == [(1, "n1", 1), (2, "TWO", 22), (4, "four", 44), (5, "n5", 5), (7, "seven", 7)]
        # a snapshot read re-delivered after changes (a restart) upserts, never duplicates
        d.write(s, changes(s, [{"id": 1, "name": "again", "qty": 1}, {"id": 8, "name": "n8", "qty": 8}], "read"), last_offset=2)
    finally:
        d.close()
    assert h.rows("items") == [(1, "again", 1), (2, "TWO", 22), (4, "four", 44), (5, "n5", 5), (7, "seven", 7), (8, "n8", 8)]
    # a new destination object sees a non-empty table: snapshot rows upsert (slow path)
    d2 = opened(h, "merge")
    try:
        d2.prepare(s)
        assert d2.applied_offset(s) == 2
        d2.write(s, changes(s, [{"id": 1, "name": "third", "qty": 1}], "read"), last_offset=3)
    finally:
        d2.close()
    assert h.rows("items")[0] == (1, "third", 1)
    assert len(h.rows("items")) == 6


def check_merge_composite_key(h: Harness) -> None:
    s = make_stream(
        "lines", [pa.field("order", pa.int32()), pa.field("line", pa.int32()), pa.field("v", pa.string())], key=("order", "line")
    )
    d = opened(h, "merge")
    try:
        d.prepare(s)
        d.write(
            s,
            changes(s, [{"order": 1, "line": 1, "v": "a"}, {"order": 1, "line": 2, "v": "b"}, {"order": 2, "line": 1, "v": "c"}], "insert"),
            last_offset=0,
        )
        d.write(s, changes(s, [{"order": 1, "line": 2, "v": None}, {"order": 2, "line": 1, "v": "C"}], ["delete", "update"]), last_offset=1)
    finally:
        d.close()
    assert h.rows("lines") == [(1, 1, "a"), (2, 1, "C")]


def check_merge_needs_key(h: Harness) -> None:
    s = make_stream("nokey", ITEMS, key=())
    d = opened(h, "merge")
    try:
        d.prepare(s)
        with pytest.raises(FatalError, match="primary_key"):
            d.write(s, changes(s, [{"id": 1, "name": "a", "qty": 1}], "insert"), last_offset=0)
        assert d.applied_offset(s) == -1
    finally:
        d.close()


def check_offset_atomic(h: Harness, monkeypatch: pytest.MonkeyPatch, write: str = "merge") -> None:
    s = make_stream("items", ITEMS)
    d = opened(h, write)
    try:
        d.prepare(s)
        d.write(s, changes(s, [{"id": 1, "name": "a", "qty": 1}], "insert"), last_offset=0)
        with monkeypatch.context() as m:
            h.fail_after_data(d, m)
            with pytest.raises(Exception, match="injected failure"):
                d.write(
                    s,
                    changes(s, [{"id": 1, "name": None, "qty": None}, {"id": 2, "name": "b", "qty": 2}], ["delete", "insert"]),
                    last_offset=1,
                )
        assert d.applied_offset(s) == 0
        assert h.rows("items") == [(1, "a", 1)]
        # the destination is still usable after the failure
        d.write(s, changes(s, [{"id": 3, "name": "c", "qty": 3}], "insert"), last_offset=2)
        assert d.applied_offset(s) == 2
    finally:
        d.close()
    assert h.rows("items") == [(1, "a", 1), (3, "c", 3)]


def check_record_offset(h: Harness) -> None:
    s = make_stream("items", ITEMS)
    d = opened(h, "merge")
    try:
        d.prepare(s)
        d.record_offset(s, 41)
        assert d.applied_offset(s) == 41
        other = make_stream("other", ITEMS)
        assert d.applied_offset(other) == -1
    finally:
        d.close()
    assert h.rows("items") == []


def check_replace(h: Harness, second_reader: Callable[[], list[tuple] | None] | None = None) -> None:
    """``replace`` keeps the old table readable and unchanged until ``commit_replace``."""
    s = make_stream("items", ITEMS)
    d = opened(h, "replace")
    try:
        d.prepare(s)
        d.begin_replace(s)
        d.write(s, changes(s, [{"id": 1, "name": "old", "qty": 1}, {"id": 2, "name": "old2", "qty": 2}], "read"), last_offset=3)
        assert d.applied_offset(s) == -1  # replace records the offset only on commit
        assert h.rows("items") == []
        d.commit_replace(s, last_offset=4)
        assert d.applied_offset(s) == 4
        assert h.rows("items") == [(1, "old", 1), (2, "old2", 2)]
        # second snapshot: a leftover pending table from a crash is dropped by begin_replace
        d.begin_replace(s)
        d.write(s, changes(s, [{"id": 9, "name": "stale", "qty": 9}], "read"), last_offset=5)
        d.begin_replace(s)
        d.write(s, changes(s, [{"id": 3, "name": "new", "qty": 3}], "read"), last_offset=6)
        assert h.rows("items") == [(1, "old", 1), (2, "old2", 2)]  # old table unchanged, readable
        d.commit_replace(s, last_offset=7)
        assert d.applied_offset(s) == 7
    finally:
        d.close()
    assert h.rows("items") == [(3, "new", 3)]
    assert h.rows("items__replicant_pending") is None


def check_hostile_identifiers(h: Harness) -> None:
    """Quotes, backticks, spaces, unicode and reserved words in table and column names (and
    the kind's hostile schema): written, merged (where the kind merges), replaced (where it
    replaces) and read back under the same names."""
    fields = [
        pa.field('I"d', pa.int64()),
        pa.field("select", pa.string()),
        pa.field("Mixed Case", pa.int32()),
        pa.field("ünï`còdé", pa.string()),
    ]
    table = 'Tä"ble `x` order'
    s = make_stream(table, fields, key=('I"d',))
    kw = {"schema": h.schema} if h.schema else {}
    caps = h.make("append", **kw).capabilities
    first = [{'I"d': 1, "select": "a", "Mixed Case": 1, "ünï`còdé": "é"}, {'I"d': 2, "select": "b", "Mixed Case": 2, "ünï`còdé": None}]
    d = opened(h, "merge" if caps.merge else "append", **kw)
    try:
        d.prepare(s)
        d.write(s, changes(s, first, "insert"), last_offset=1)
        if caps.merge:
            second = [
                {'I"d': 2, "select": None, "Mixed Case": None, "ünï`còdé": None},
                {'I"d': 1, "select": "A", "Mixed Case": 10, "ünï`còdé": "ü"},
            ]
            d.write(s, changes(s, second, ["delete", "update"]), last_offset=3)
            if caps.transactional:
                assert d.applied_offset(s) == 3
    finally:
        d.close()
    expected = [(1, "A", 10, "ü")] if caps.merge else [(1, "a", 1, "é"), (2, "b", 2, None)]
    assert h.rows(table, **kw) == expected
    assert h.columns(table, **kw) == [f.name for f in fields]
    if not caps.replace:
        return
    r = opened(h, "replace", **kw)
    try:
        r.prepare(s)
        r.begin_replace(s)
        r.write(s, changes(s, [{'I"d': 5, "select": "x", "Mixed Case": 5, "ünï`còdé": "x"}], "read"), last_offset=4)
        r.commit_replace(s, last_offset=5)
    finally:
        r.close()
    assert h.rows(table, **kw) == [(5, "x", 5, "x")]


def check_merge_deletes(h: Harness) -> None:
    """``merge``: the last change per key wins within a write; deletes remove the key, a
    delete of a missing key is a no-op, a delete then insert leaves the key."""
    s = make_stream("shop.items", ITEMS)
    d = opened(h, "merge")
    try:
        d.prepare(s)
        d.write(s, changes(s, [{"id": i, "name": f"n{i}", "qty": i} for i in range(1, 5)], "insert"), last_offset=3)
        ops = ["delete", "update", "delete", "delete", "insert", "delete"]
        rows = [
            {"id": 1, "name": None, "qty": None},
            {"id": 2, "name": "two", "qty": 20},
            {"id": 3, "name": None, "qty": None},
            {"id": 4, "name": None, "qty": None},
            {"id": 4, "name": "four", "qty": 44},
            {"id": 99, "name": None, "qty": None},
        ]
        d.write(s, changes(s, rows, ops), last_offset=9)
        if d.capabilities.transactional:
            assert d.applied_offset(s) == 9
    finally:
        d.close()
    assert h.rows("items") == [(2, "two", 20), (4, "four", 44)]


def check_empty_batch(h: Harness) -> None:
    """An empty write touches no rows and delivers nothing; a transactional kind records the
    offset and has the (empty) table."""
    s = make_stream("items", ITEMS)
    d = opened(h, "append")
    try:
        d.prepare(s)
        d.write(s, changes(s, [], []), last_offset=0)
        if d.capabilities.transactional:
            assert d.applied_offset(s) == 0
            assert h.rows("items") == []
        else:
            assert h.delivered is not None and h.delivered() == []
            assert not h.rows("items")
    finally:
        d.close()


def check_bad_credentials(h: Harness) -> None:
    """A refused login is a ConnectionError naming the host, never the password."""
    from replicant.errors import ConnectionError

    assert h.bad_login is not None
    d, host, password = h.bad_login()
    try:
        s = make_stream("items", ITEMS)

        def use() -> None:  # a destination may connect at open or only when first used
            d.open()
            d.prepare(s)
            d.write(s, changes(s, [{"id": 1, "name": "a", "qty": 1}], "insert"), last_offset=0)

        with pytest.raises(ConnectionError) as e:
            use()
    finally:
        d.close()
    assert host in str(e.value)
    assert password not in str(e.value) and password not in repr(e.value)


def check_redelivery_repeats_the_same_deliveries(h: Harness) -> None:
    """Non-transactional: a crash after the data went out and before the engine stored the
    offset makes the engine deliver the same log record again; it must produce the same
    files / idempotency keys / message ids, and the target must not double."""
    assert h.delivered is not None
    s = make_stream("items", ITEMS)
    batch = changes(s, [{"id": i, "name": f"n{i}", "qty": i} for i in range(1, 4)], "insert")
    d = opened(h, "append")
    try:
        d.prepare(s)
        d.write(s, batch, last_offset=12)
    finally:
        d.close()
    first, rows = h.delivered(), h.rows("items")
    assert first and rows == [(1, "n1", 1), (2, "n2", 2), (3, "n3", 3)]
    again = opened(h, "append")  # the restarted engine: a new destination object
    try:
        again.prepare(s)
        again.write(s, batch, last_offset=12)
    finally:
        again.close()
    assert h.delivered() == first
    assert h.rows("items") == rows


def check_new_column(h: Harness) -> None:
    s1 = make_stream("items", ITEMS)
    d = opened(h, "merge")
    try:
        d.prepare(s1)
        d.write(s1, changes(s1, [{"id": 1, "name": "a", "qty": 1}], "insert"), last_offset=0)
    finally:
        d.close()
    s2 = make_stream("items", ITEMS + [pa.field("price", pa.float64())])
    d = opened(h, "merge")
    try:
        d.prepare(s2)
        d.write(s2, changes(s2, [{"id": 2, "name": "b", "qty": 2, "price": 2.5}], "insert"), last_offset=1)
    finally:
        d.close()
    assert h.columns("items") == ["id", "name", "qty", "price"]
    assert h.rows("items") == [(1, "a", 1, None), (2, "b", 2, 2.5)]


def check_empty_and_reprepare(h: Harness) -> None:
    """prepare is idempotent; an empty write records the offset and touches no rows."""
    s = make_stream("items", ITEMS)
    d = opened(h, "append")
    try:
        d.prepare(s)
        d.prepare(s)
        d.write(s, changes(s, [], []), last_offset=0)
        assert d.applied_offset(s) == 0
    finally:
        d.close()
    assert h.rows("items") == []


def check_fast_path_only_for_a_fresh_table(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshot reads into a table this object found empty skip the merge; anything else
    (a change, a read after a change, a read into a table found non-empty) merges."""
    s = make_stream("items", ITEMS)
    cls = type(h.make("merge"))
    merged: list[int] = []
    original = cls.merge

    def spy(self: Any, table: Any, data: pa.Table) -> None:
        merged.append(data.num_rows)
        original(self, table, data)

    monkeypatch.setattr(cls, "merge", spy)
    d = opened(h, "merge")
    try:
        d.prepare(s)
        d.write(s, changes(s, [{"id": i, "name": "r", "qty": i} for i in range(3)], "read"), last_offset=0)
        assert merged == []
        d.write(s, changes(s, [{"id": 0, "name": "u", "qty": 0}], "update"), last_offset=1)
        d.write(s, changes(s, [{"id": 5, "name": "r", "qty": 5}], "read"), last_offset=2)
        assert merged == [1, 1]
    finally:
        d.close()
    d = opened(h, "merge")
    try:
        d.prepare(s)
        d.write(s, changes(s, [{"id": 1, "name": "again", "qty": 1}], "read"), last_offset=3)
        assert merged == [1, 1, 1]
    finally:
        d.close()
    assert h.rows("items") == [(0, "u", 0), (1, "again", 1), (2, "r", 2), (5, "r", 5)]


def check_two_snapshots_into_a_fresh_table(h: Harness) -> None:
    """Rows of two snapshots for the same keys reach a fresh table (a delivery that failed
    once, then found both in the log): in one write, and across writes with the second
    snapshot's start between them. Each key is held once, with its last value."""
    s = make_stream("items", ITEMS)
    d = opened(h, "merge")
    try:
        d.prepare(s)
        first = [{"id": i, "name": "a", "qty": i} for i in range(4)]
        second = [{"id": i, "name": "b", "qty": i} for i in range(4)]
        d.write(s, changes(s, first + second, "read"), last_offset=9)
        assert h.rows("items") == [(i, "b", i) for i in range(4)]
        t = make_stream("other", ITEMS)
        d.prepare(t)
        d.begin_snapshot(t, "one")
        d.write(t, changes(t, first, "read"), last_offset=4)
        d.begin_snapshot(t, "two")
        d.write(t, changes(t, second[:2] + [{"id": 9, "name": "b", "qty": 9}], "read"), last_offset=8)
    finally:
        d.close()
    if _caps_of(h).transactional:
        assert h.rows("other") == [(0, "b", 0), (1, "b", 1), (2, "a", 2), (3, "a", 3), (9, "b", 9)]


def check_fenced_offset(h: Harness) -> None:
    """Two writers of one pipeline's stream (a worker whose lease was taken over and the one
    that took over; two runs at once) into an ``append`` table, which would take a range
    twice: the writer whose idea of the applied offset is stale is refused with its rows,
    before the stream's first offset row exists and after; one that reads again goes on;
    a deliberate reset (``tenant drop``) is taken."""
    s = make_stream("items", ITEMS)
    stale, taker = opened(h, "append"), opened(h, "append")
    try:
        for d in (stale, taker):
            d.prepare(s)
            assert d.applied_offset(s) == -1
        taker.write(s, changes(s, [{"id": 1, "name": "a", "qty": 1}, {"id": 2, "name": "b", "qty": 2}], "insert"), last_offset=1)
        with pytest.raises(DestinationFencedError, match=r"destination .*stream 'items'.*expected log offset -1, found 1"):
            stale.write(s, changes(s, [{"id": 1, "name": "a", "qty": 1}, {"id": 2, "name": "b", "qty": 2}], "insert"), last_offset=1)
        assert h.rows("items") == [(1, "a", 1), (2, "b", 2)]
        assert stale.applied_offset(s) == 1  # read again: its expectation now
        stale.write(s, changes(s, [{"id": 3, "name": "c", "qty": 3}], "insert"), last_offset=2)
        with pytest.raises(DestinationFencedError, match=r"expected log offset 1, found 2"):
            taker.write(s, changes(s, [{"id": 3, "name": "c", "qty": 3}], "insert"), last_offset=2)
        with pytest.raises(DestinationFencedError, match=r"expected log offset 1, found 2"):
            taker.truncate(s, last_offset=3)
        with pytest.raises(DestinationFencedError, match=r"expected log offset 1, found 2"):
            taker.record_offset(s, 3)
        assert h.rows("items") == [(1, "a", 1), (2, "b", 2), (3, "c", 3)]
        with taker.transaction("reset", s):
            taker.reset_offset(s, -1)
        taker.write(s, changes(s, [{"id": 4, "name": "d", "qty": 4}], "insert"), last_offset=0)
        with pytest.raises(DestinationFencedError, match=r"expected log offset 2, found 0"):
            stale.write(s, changes(s, [{"id": 5, "name": "e", "qty": 5}], "insert"), last_offset=3)
        assert taker.applied_offset(s) == 0
    finally:
        stale.close()
        taker.close()
    assert h.rows("items") == [(1, "a", 1), (2, "b", 2), (3, "c", 3), (4, "d", 4)]


def check_fenced_replace(h: Harness) -> None:
    """Of two writers replacing the same table from the same applied offset, the second's
    ``commit_replace`` is refused before its swap: the table holds the first's snapshot."""
    s = make_stream("items", ITEMS)
    first, second = opened(h, "replace"), opened(h, "replace")
    try:
        for d in (first, second):
            d.prepare(s)
            assert d.applied_offset(s) == -1
        first.begin_replace(s)
        first.write(s, changes(s, [{"id": 1, "name": "first", "qty": 1}], "read"), last_offset=2)
        first.commit_replace(s, last_offset=3)
        second.begin_replace(s)
        second.write(s, changes(s, [{"id": 1, "name": "second", "qty": 1}], "read"), last_offset=2)
        with pytest.raises(DestinationFencedError, match=r"expected log offset -1, found 3"):
            second.commit_replace(s, last_offset=3)
        assert first.applied_offset(s) == 3
    finally:
        first.close()
        second.close()
    assert h.rows("items") == [(1, "first", 1)]


def _caps_of(h: Harness) -> Any:
    return h.make("append").capabilities


TRANSACTIONAL_CHECKS = [
    check_append,
    check_merge,
    check_merge_composite_key,
    check_merge_needs_key,
    check_record_offset,
    check_replace,
    check_new_column,
    check_empty_and_reprepare,
    check_fenced_offset,
    check_fenced_replace,
]

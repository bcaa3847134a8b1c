"""Source positions compared (:mod:`replicant.sources.positions`) and a trigger stream's current
position (:func:`replicant.sources.strategies.trigger.current_position`) on PostgreSQL, MariaDB
and SQLite: what ``validate`` waits for before it compares a ``trigger`` stream."""

from __future__ import annotations

from cdc.test_triggers import Db, _read, _source, _tables, db  # noqa: F401 - db is the fixture
from replicant.sources.positions import distance, reached, unit
from replicant.sources.strategies import trigger


def test_wal_positions() -> None:
    assert reached({"lsn": 200}, {"lsn": 200}) and reached({"lsn": 201}, {"lsn": 200})
    assert not reached({"lsn": 199}, {"lsn": 200}) and distance({"lsn": 150}, {"lsn": 200}) == 50
    assert distance({"lsn": 250}, {"lsn": 200}) == 0 and unit({"lsn": 1}) == "WAL bytes"
    assert not reached(None, {"lsn": 1}) and distance(None, {"lsn": 1}) is None
    # a stream whose snapshot is still open has not got every change up to its lsn
    assert not reached({"lsn": 300, "snapshot": {"after": [5]}}, {"lsn": 200})


def test_binlog_positions_order_by_file_number_then_offset() -> None:
    t = {"file": "binlog.000010", "pos": 500}
    assert reached({"file": "binlog.000010", "pos": 500}, t) and reached({"file": "binlog.000011", "pos": 4}, t)
    assert not reached({"file": "binlog.000009", "pos": 9000}, t)
    assert distance({"file": "binlog.000010", "pos": 100}, t) == 400
    assert distance({"file": "binlog.000009", "pos": 100}, t) is None  # bytes across files are unknown
    assert unit(t) == "binlog bytes"


def test_trigger_positions() -> None:
    assert reached({"mode": "trigger", "txid": 10, "upto": 12, "seq": 3}, {"mode": "trigger", "txid": 10})
    assert not reached({"mode": "trigger", "txid": 9}, {"mode": "trigger", "txid": 10})
    assert reached({"mode": "trigger", "seq": 7, "gaps": []}, {"mode": "trigger", "seq": 7})
    assert distance({"mode": "trigger", "seq": 2}, {"mode": "trigger", "seq": 7}) == 5
    assert not reached({"mode": "trigger", "seq": 9}, {"mode": "trigger", "txid": 1})  # not comparable


def test_a_trigger_streams_current_position_is_reached_once_its_changes_are_read(db: Db) -> None:  # noqa: F811
    _tables(db)
    src, st = _source(db)
    items = st["items"]
    with src:
        trigger.install(src, [items])
        _, snapped = _read(src, items, None)
        assert trigger.current_position(src, items) is None  # no change waiting: nothing to wait for
        db.execute("UPDATE items SET qty = qty + 1 WHERE id = 2", "DELETE FROM items WHERE id = 3")
        db.insert("items", ["id", "name", "qty"], [(100, "new", 1)])
        now = trigger.current_position(src, items)
        assert now is not None and not reached(snapped, now)
        assert src.current_position(items) == now  # the Source method asks the strategy
        assert distance(snapped, now) is None or distance(snapped, now) > 0
        batches, after = _read(src, items, snapped)
        assert sum(b.data.num_rows for b in batches) == 3 and reached(after, now) and distance(after, now) == 0

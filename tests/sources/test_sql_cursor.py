"""``mode: cursor`` on every SQL source: changes across reads, the look-back window for late
commits, de-duplication of re-read rows, resume inside a read, numeric cursors."""

from __future__ import annotations

import json

import pytest

from replicant.errors import ConfigError
from replicant.model import decode_position

from .dbs import Db, data_of, read_all

T0 = "2026-01-01 00:00:00"


def _ts(db: Db, minutes: float) -> str:
    """A timestamp literal T0 + minutes, portable across the three dialects."""
    from datetime import datetime, timedelta

    v = (datetime(2026, 1, 1) + timedelta(minutes=minutes)).isoformat(" ")
    return f"'{v}'"


def _items(db: Db, n: int) -> None:
    db.execute(
        f"CREATE TABLE items (id integer PRIMARY KEY, name {db.text}, updated_at {db.timestamp} NOT NULL)",
        *[f"INSERT INTO items VALUES ({i}, 'n{i}', {_ts(db, i)})" for i in range(1, n + 1)],
    )


def _rows(batches) -> dict[int, tuple]:
    t = data_of(batches)
    return {r["id"]: (r["name"], r["updated_at"]) for r in t.to_pylist()}


def test_inserts_and_updates_are_picked_up_across_reads(empty_db: Db) -> None:
    db = empty_db
    _items(db, 10)
    src, (s,) = db.streams([{"table": "items", "mode": "cursor", "cursor": "updated_at"}], batch_size=4, chunk_size=6)
    with src:
        first = read_all(src, s)
        assert sorted(_rows(first)) == list(range(1, 11))
        assert {op for b in first for op in b.data.column("_op").to_pylist()} == {"update"}
        assert not any(b.final for b in first)
        p1 = first[-1].position
        assert p1 == {"mode": "cursor", "cursor": "2026-01-01T00:10:00", "after": [10]}

        db.execute(
            f"INSERT INTO items VALUES (11, 'new', {_ts(db, 60)})",
            f"UPDATE items SET name = 'changed', updated_at = {_ts(db, 61)} WHERE id = 3",
        )
        second = read_all(src, s, p1)
        assert _rows(second) == {11: ("new", _dt(60)), 3: ("changed", _dt(61))}
        assert read_all(src, s, second[-1].position) == []


def _dt(minutes: float):
    from datetime import datetime, timedelta

    return datetime(2026, 1, 1) + timedelta(minutes=minutes)


def test_lookback_catches_late_commits_and_does_not_re_emit(empty_db: Db) -> None:
    db = empty_db
    _items(db, 10)  # cursor values T0+1m … T0+10m
    src, (s,) = db.streams(
        [{"table": "items", "mode": "cursor", "cursor": "updated_at", "lookback": "10m"}], batch_size=3, chunk_size=5
    )
    with src:
        assert s.options["lookback"] == 600
        first = read_all(src, s)
        assert len(_rows(first)) == 10
        pos = first[-1].position
        assert len(pos["seen"]["cursor"]) == 10, "all ten rows are inside the look-back window"
        assert "seen" not in decode_position(first[-1].data.column("_pos")[0].as_py())

        # nothing changed: the window is re-read, nothing is emitted again
        again = read_all(src, s, pos)
        assert again == []

        # a late commit: older than the newest cursor value, inside the look-back
        db.execute(f"INSERT INTO items VALUES (100, 'late', {_ts(db, 5.5)})")
        late = read_all(src, s, pos)
        assert _rows(late) == {100: ("late", _dt(5.5))}
        pos = late[-1].position

        # outside the look-back (newest is T0+10m, the window starts at T0+0m): not seen
        db.execute(f"INSERT INTO items VALUES (101, 'too late', {_ts(db, -1)})")
        assert read_all(src, s, pos) == []

        # a row whose cursor value changed inside the window is emitted again
        db.execute(f"UPDATE items SET name = 'moved', updated_at = {_ts(db, 2.5)} WHERE id = 2")
        moved = read_all(src, s, pos)
        assert _rows(moved) == {2: ("moved", _dt(2.5))}
        assert read_all(src, s, moved[-1].position) == []


@pytest.mark.parametrize("lookback", [None, "1h"])
def test_resume_inside_a_cursor_read(empty_db: Db, lookback) -> None:
    db = empty_db
    _items(db, 25)
    entry = {"table": "items", "mode": "cursor", "cursor": "updated_at"}
    if lookback:
        entry["lookback"] = lookback
    src, (s,) = db.streams([entry], batch_size=4, chunk_size=10)
    with src:
        full = read_all(src, s)
        for cut in (1, 3, 5):  # batch 3 ends a chunk (4+4+2)
            rest = read_all(src, s, full[cut - 1].position)
            got = [r for b in full[:cut] + rest for r in data_of([b]).column("id").to_pylist()]
            assert got == list(range(1, 26)), cut


def test_numeric_cursor_with_numeric_lookback(empty_db: Db) -> None:
    db = empty_db
    db.execute(
        f"CREATE TABLE versions (id integer PRIMARY KEY, v {db.text}, version bigint NOT NULL)",
        *[f"INSERT INTO versions VALUES ({i}, 'v', {i * 10})" for i in range(1, 6)],
    )
    src, (s,) = db.streams([{"table": "versions", "mode": "cursor", "cursor": "version", "lookback": 15}])
    with src:
        pos = read_all(src, s)[-1].position
        assert json.loads(json.dumps(pos))["cursor"] == 50
        db.execute("INSERT INTO versions VALUES (6, 'late', 36)", "INSERT INTO versions VALUES (7, 'old', 34)")
        assert data_of(read_all(src, s, pos)).column("id").to_pylist() == [6]


def test_cursor_config_problems_are_reported_together(empty_db: Db) -> None:
    db = empty_db
    db.execute(f"CREATE TABLE nokey (a integer, ts {db.timestamp})", "CREATE TABLE k (id integer PRIMARY KEY, n integer)",
               "CREATE TABLE k2 (id integer PRIMARY KEY)")
    with pytest.raises(ConfigError) as e:
        db.streams([
            {"table": "nokey", "mode": "cursor", "cursor": "ts"},
            {"table": "k", "mode": "cursor", "cursor": "n", "lookback": "5m"},
            {"table": "k2", "lookback": 5},
        ])
    problems = dict(e.value.problems)
    assert "no primary key" in problems["source.streams[0].primary_key"]
    assert "cursor is numeric" in problems["source.streams[1].lookback"]
    assert problems["source.streams[2].lookback"] == "is only used by mode cursor"

"""The conformance suite every source joins by one line in :data:`SOURCES`.

Read all, resume from every kill-point, deletes through a change mode the source supports,
types round-trip, empty table, hostile identifiers, bad credentials. Each source is driven
through a :class:`~.dbs.Db` handle (SQL sources directly; the toy source through Arrow files
exported from a DuckDB file, the http source through an API serving them, the singer source
through a tap reading them), and read only through the source contract.

The checks follow what a source can do (its ``capabilities``), never its type: a source that
reads a stream only through its change feed (``log`` streams, a Singer tap) is read through
``capture`` (:func:`~.dbs.reads`), and there a snapshot is rows of ``_op`` ``insert`` with no
``final`` marker; a source with no change mode that sees deletes says so in a skip; a source
whose format carries only zone-aware times (Singer's ``date-time``) returns them in UTC and is
compared as UTC instants.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from replicant.errors import ConnectionError
from replicant.model import ConnectorContext, Stream

from .dbs import FILES, HTTP, SINGER, TOY, Db, data_of, db_for, read_all, reads

#: One line per source: a source joins the suite here.
SOURCES = ["postgres", "mysql", "sqlite", TOY, HTTP, SINGER, FILES]

#: Change modes checked for deletes, in order of preference (the first the source has).
DELETE_MODES = ("snapshot_diff", "trigger")


@pytest.fixture(params=SOURCES)
def db(request: pytest.FixtureRequest) -> Db:
    return db_for(request.param, request)


def _items(db: Db, n: int, table: str = "items") -> None:
    db.execute(f"CREATE TABLE {db.q(table)} (id integer PRIMARY KEY, name {db.text}, amount decimal(12,2))")
    if n:
        db.insert(table, ["id", "name", "amount"], [(i, f"n{i}", f"{i}.25") for i in range(1, n + 1)])


def _rows(batches: list) -> list[dict]:
    return sorted(data_of(batches).to_pylist(), key=lambda r: r["id"])


def _feed(s: Stream) -> bool:
    """Whether ``s`` is read by its source's change feed rather than by ``read``."""
    return s.mode == "log"


def test_read_all(db: Db) -> None:
    _items(db, 40)
    src, (s,) = db.streams(["items"], batch_size=7, chunk_size=15)
    with src:
        batches = read_all(src, s)
    assert all(b.data.schema == s.change_schema for b in batches)
    if _feed(s):  # a feed's snapshot: inserts, no final marker
        assert len(batches) > 1 and not any(b.final for b in batches)
        assert {op for b in batches for op in b.data.column("_op").to_pylist()} == {"insert"}
    else:
        assert batches[-1].final and batches[-1].data.num_rows == 0 and not any(b.final for b in batches[:-1])
        assert {op for b in batches for op in b.data.column("_op").to_pylist()} <= {"read"}
    assert _rows(batches) == [{"id": i, "name": f"n{i}", "amount": Decimal(f"{i}.25")} for i in range(1, 41)]


def test_resume_from_every_kill_point_reads_each_row_exactly_once(db: Db) -> None:
    _items(db, 30)
    src, (s,) = db.streams(["items"], batch_size=4, chunk_size=9)
    with src:
        whole = read_all(src, s)
        for k in range(1, len(whole)):
            it = reads(src, s, None)
            head = [next(it) for _ in range(k)]
            it.close()  # killed after batch k: the engine resumes from its position
            tail = read_all(src, s, head[-1].position if head[-1].resumable else None)
            kept = head if head[-1].resumable else []
            ids = [r["id"] for r in data_of(kept + tail).to_pylist()]
            assert sorted(ids) == list(range(1, 31)), f"killed after batch {k}"


def test_deletes_are_seen(db: Db, tmp_path: Path) -> None:
    _items(db, 12)
    src, (s,) = db.streams(["items"], context=ConnectorContext("conformance", workdir=tmp_path / "work"))
    with src:
        mode = next((m for m in DELETE_MODES if m in src.capabilities.modes), None)
        if mode is None:
            pytest.skip(f"{db.kind} has no change mode that sees deletes")
        s = dataclasses.replace(s, mode=mode)
        if mode == "trigger":
            src.install([s])
        first = read_all(src, s)
        for b in first:
            src.acknowledge(s, b.position)
        db.execute("DELETE FROM items WHERE id IN (3, 7)", "UPDATE items SET name = 'x' WHERE id = 5")
        second = read_all(src, s, first[-1].position)
        ops = {r["id"]: r["_op"] for b in second for r in b.data.to_pylist()}
        assert ops == {3: "delete", 7: "delete", 5: "update"}
        if mode == "trigger":
            src.uninstall([s])


def test_types_round_trip(db: Db) -> None:
    db.execute(f"CREATE TABLE typed (id integer PRIMARY KEY, big bigint, amount decimal(12,2), "
               f"txt {db.text}, d date, ts {db.timestamp})")
    rows = [
        (1, 2**62, "-1234567890.12", "ünï 'quoted' \"dq\" \\ %_", "2026-02-28", "2026-01-02 03:04:05.678000"),
        (2, -(2**62), "0.01", "", "1970-01-01", "1999-12-31 23:59:59"),
        (3, None, None, None, None, None),
    ]
    db.insert("typed", ["id", "big", "amount", "txt", "d", "ts"], rows)
    src, (s,) = db.streams(["typed"])
    with src:
        got = _rows(read_all(src, s))
    zoned = {f.name for f in s.schema if pa.types.is_timestamp(f.type) and f.type.tz}  # compared as UTC instants
    got = [{k: v.astimezone(UTC).replace(tzinfo=None) if k in zoned and v is not None else v for k, v in r.items()}
           for r in got]
    assert got == [
        {"id": 1, "big": 2**62, "amount": Decimal("-1234567890.12"), "txt": "ünï 'quoted' \"dq\" \\ %_",
         "d": date(2026, 2, 28), "ts": datetime(2026, 1, 2, 3, 4, 5, 678000)},
        {"id": 2, "big": -(2**62), "amount": Decimal("0.01"), "txt": "", "d": date(1970, 1, 1),
         "ts": datetime(1999, 12, 31, 23, 59, 59)},
        {"id": 3, "big": None, "amount": None, "txt": None, "d": None, "ts": None},
    ]


def test_empty_table(db: Db) -> None:
    _items(db, 0)
    src, (s,) = db.streams(["items"])
    with src:
        batches = read_all(src, s)
    assert all(b.data.schema == s.change_schema for b in batches)
    if _feed(s):
        assert sum(b.data.num_rows for b in batches) == 0
    else:
        assert len(batches) == 1 and batches[0].final and batches[0].data.num_rows == 0


HOSTILE_TABLE = "Order \"Details\" 'x'"
HOSTILE_COLUMN = "select"


def test_hostile_identifiers(db: Db) -> None:
    q = db.q
    db.execute(f"CREATE TABLE {q(HOSTILE_TABLE)} (id integer PRIMARY KEY, {q(HOSTILE_COLUMN)} {db.text}, "
               f"{q('with space')} integer)")
    db.insert(HOSTILE_TABLE, ["id", HOSTILE_COLUMN, "with space"], [(i, f"v'{i}\"", i) for i in range(1, 8)])
    src, (s,) = db.streams([HOSTILE_TABLE], batch_size=3, chunk_size=4)
    with src:
        assert s.table[-1] == HOSTILE_TABLE and s.schema.names == ["id", HOSTILE_COLUMN, "with space"]
        batches = read_all(src, s)
        assert _rows(batches) == [{"id": i, HOSTILE_COLUMN: f"v'{i}\"", "with space": i} for i in range(1, 8)]
        rest = read_all(src, s, batches[0].position)
        assert pa.concat_tables([data_of(batches[:1]), data_of(rest)]).num_rows == 7


def test_bad_credentials_say_where_never_the_secret(db: Db) -> None:
    secret = "s3cr3t-Pa55"
    bad = db.with_bad_credentials(secret)
    with bad.source() as src, pytest.raises(ConnectionError) as e:
        src.check()
    text = str(e.value) + repr(e.value)
    assert secret not in text and bad.where() in text


def test_stream_names_survive_discovery(db: Db) -> None:
    _items(db, 1)
    with db.source() as src:
        found = [x for x in src.discover() if x.table[-1] == "items"]
    assert len(found) == 1 and isinstance(found[0], Stream) and found[0].primary_key == ("id",)

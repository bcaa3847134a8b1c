"""Poison records (issue 9 item 8): a record a destination rejects for its content goes to the
dead letters, with the destination's own message, the record as the source had it and its log
offset, and delivery continues past it; a re-delivery (after a crash between storing the dead
letter and committing the rest) neither loses nor doubles anything.

The SQL kinds reject the record through a table the user made with a ``CHECK`` constraint
(the destination writes into an existing table with the stream's columns as it is); every
kind's own real error is what ends up in the dead letter.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pytest

from http_receiver import Receiver  # tests/ is on the path (as in test_http)
from replicant.config import DestinationConfig
from replicant.destinations.files import FilesDestination
from replicant.destinations.http import HttpDestination
from replicant.errors import FatalError
from replicant.model import ConnectorContext
from replicant.state.store import StateStore

from . import conformance as cf
from .test_conformance import KINDS
from .test_mysql import _query as mysql_query

SQL_KINDS = ["postgres", "mysql", "sqlite", "duckdb"]

#: Each kind's CREATE TABLE of ``items`` refusing the name ``poison``, and the words of its error.
_DDL = {
    "postgres": "CREATE TABLE items (id bigint PRIMARY KEY, name text CONSTRAINT no_poison CHECK (name <> 'poison'), qty integer)",
    "mysql": "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50), qty INT, CONSTRAINT no_poison CHECK (name <> 'poison'))",
    "sqlite": "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT CONSTRAINT no_poison CHECK (name <> 'poison'), qty INTEGER)",
    "duckdb": "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR CHECK (name <> 'poison'), qty INTEGER)",
}
_ERROR_WORDS = {
    "postgres": r"violates check constraint \"no_poison\".*SQLSTATE 23514",
    "mysql": r"4025(\]|:) CONSTRAINT `no_poison` failed",
    "sqlite": r"CHECK constraint failed: (no_poison|name <> 'poison')",
    "duckdb": r"CHECK constraint failed",
}


def _execute(kind: str, request: pytest.FixtureRequest, sql: str) -> None:
    """Runs ``sql`` at the destination through the kind's own client, as a user would."""
    if kind == "postgres":
        with psycopg.connect(request.getfixturevalue("pg_url"), autocommit=True) as c:
            c.execute(sql)
    elif kind == "mysql":
        mysql_query(request.getfixturevalue("mysql_url"), sql)
    elif kind == "sqlite":
        with sqlite3.connect(request.getfixturevalue("sqlite_path")) as c:
            c.execute(sql)
    else:
        con = duckdb.connect(str(request.getfixturevalue("tmp_path") / "warehouse.duckdb"))
        try:
            con.execute(sql)
        finally:
            con.close()


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = StateStore(tmp_path / "state.sqlite").open()
    yield s
    s.close()


def _with_sink(d: Any, store: Any) -> Any:
    d.dead_letter = lambda stream, records: store.add_dead_letters("p", stream.name, records, once=True)
    return d


ROWS = [
    {"id": 1, "name": "a", "qty": 1},
    {"id": 2, "name": "b", "qty": 2},
    {"id": 3, "name": "c", "qty": 3},
    {"id": 4, "name": "poison", "qty": 4},
    {"id": 5, "name": "e", "qty": 5},
    {"id": 6, "name": "f", "qty": 6},
]
GOOD = [(r["id"], r["name"], r["qty"]) for r in ROWS if r["name"] != "poison"]
#: The rows' log offsets as a transactional delivery hands them: not contiguous (a marker at 102).
OFFSETS = [100, 101, 103, 104, 105, 106]
LAST = 107


def _poisoned(kind: str, request: pytest.FixtureRequest) -> tuple[cf.Harness, Any]:
    h = KINDS[kind](request)
    _execute(kind, request, _DDL[kind])
    return h, cf.make_stream("items", cf.ITEMS)


@pytest.mark.parametrize("write", ["append", "merge"])
@pytest.mark.parametrize("kind", SQL_KINDS)
def test_poison_record_goes_to_dead_letters_and_the_rest_is_written(
    kind: str, write: str, request: pytest.FixtureRequest, store: Any
) -> None:
    h, s = _poisoned(kind, request)
    d = _with_sink(cf.opened(h, write), store)
    try:
        d.prepare(s)
        d.write(s, cf.changes(s, ROWS, "insert"), last_offset=LAST, offsets=pa.array(OFFSETS))
        assert d.applied_offset(s) == LAST  # the offset moved past the poison record
    finally:
        d.close()
    assert h.rows("items") == GOOD
    [letter] = store.dead_letters("p")
    assert letter["destination"] == d.name and letter["stream"] == "items"
    assert letter["origin"] == 'log offset 104, position {"i": 3}'
    assert letter["payload"]["data"] == {"id": 4, "name": "poison", "qty": 4}  # the source's values
    assert letter["payload"]["key"] == {"id": 4} and letter["payload"]["op"] == "insert"
    assert "items" in letter["reason"]
    assert re.search(_ERROR_WORDS[kind], letter["reason"]), letter["reason"]


@pytest.mark.parametrize("kind", SQL_KINDS)
def test_crash_between_dead_letter_and_commit_neither_loses_nor_doubles(
    kind: str, request: pytest.FixtureRequest, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dead letter is stored, then the transaction with the good rows and the offset
    fails (as a kill would leave it): the re-delivery writes the rows and stores no second letter."""
    h, s = _poisoned(kind, request)
    d = _with_sink(cf.opened(h, "merge"), store)
    try:
        d.prepare(s)
        h.fail_after_data(d, monkeypatch)
        with pytest.raises(Exception, match="injected failure"):
            d.write(s, cf.changes(s, ROWS, "insert"), last_offset=LAST, offsets=pa.array(OFFSETS))
        assert d.applied_offset(s) == -1
    finally:
        d.close()
    assert h.rows("items") in (None, [])
    assert len(store.dead_letters("p")) == 1  # stored before the commit
    again = _with_sink(cf.opened(h, "merge"), store)
    try:
        again.prepare(s)
        again.write(s, cf.changes(s, ROWS, "insert"), last_offset=LAST, offsets=pa.array(OFFSETS))
        again.write(s, cf.changes(s, ROWS, "insert"), last_offset=LAST, offsets=pa.array(OFFSETS))  # a replay
        assert again.applied_offset(s) == LAST
    finally:
        again.close()
    assert h.rows("items") == GOOD
    assert [x["origin"] for x in store.dead_letters("p")] == ['log offset 104, position {"i": 3}']


@pytest.mark.parametrize("kind", SQL_KINDS)
def test_rows_rejected_only_together_reject_the_later_one(kind: str, request: pytest.FixtureRequest, store: Any) -> None:
    """Two rows that each fit alone but collide with each other (a user's unique index): the
    rows are probed cumulatively and the later one is the dead letter."""
    h, s = _poisoned(kind, request)
    _execute(kind, request, "CREATE UNIQUE INDEX items_name ON items (name)")
    rows = [dict(r, name="twin") if r["id"] in (2, 5) else r for r in ROWS if r["name"] != "poison"]
    d = _with_sink(cf.opened(h, "append"), store)
    try:
        d.prepare(s)
        d.write(s, cf.changes(s, rows, "insert"), last_offset=9)
        assert d.applied_offset(s) == 9
    finally:
        d.close()
    assert h.rows("items") == [(1, "a", 1), (2, "twin", 2), (3, "c", 3), (6, "f", 6)]
    assert [x["payload"]["data"]["id"] for x in store.dead_letters("p")] == [5]


def test_without_a_dead_letter_store_or_with_fail_the_stream_stops(request: pytest.FixtureRequest, store: Any) -> None:
    """No dead-letter store, or ``on_bad_record: fail``: a FatalError with the database's message,
    nothing written, the offset unmoved (the behaviour before dead letters)."""
    h, s = _poisoned("sqlite", request)
    strict = _with_sink(cf.opened(h, "merge"), store)
    strict.config = DestinationConfig.model_validate({**strict.config.model_dump(by_alias=True), "on_bad_record": "fail"})
    for d, words in ((cf.opened(h, "merge"), "no dead-letter store"), (strict, "on_bad_record: fail")):
        try:
            d.prepare(s)
            with pytest.raises(FatalError, match=rf"CHECK constraint failed.*{words}"):
                d.write(s, cf.changes(s, ROWS, "insert"), last_offset=LAST)
            assert d.applied_offset(s) == -1
        finally:
            d.close()
    assert h.rows("items") == []
    assert store.dead_letters("p") == []


# ------------------------------------------------------------------ non-transactional kinds


def _event_letter_checks(store: Any, dest: str, words: str) -> None:
    [letter] = store.dead_letters("p")
    assert letter["destination"] == dest
    assert letter["origin"] == 'log offset 203, position {"i": 3}'
    assert letter["payload"]["key"] == {"id": 4} and letter["payload"]["data"]["id"] == 4
    assert re.search(words, letter["reason"]), letter["reason"]


def test_nats_record_over_max_payload_goes_to_dead_letters(request: pytest.FixtureRequest, store: Any) -> None:
    """A record larger than the server's max_payload (1 MiB by default) is dead-lettered; the
    others are published with their own offsets as message ids; a re-delivery adds nothing."""
    h = KINDS["nats"](request)
    s = cf.make_stream("items", cf.ITEMS)
    rows = [dict(r, name="x" * 1_100_000) if r["name"] == "poison" else r for r in ROWS]
    for _ in range(2):  # the second: a re-delivery of the same chunk (a retry, a restart)
        d = _with_sink(cf.opened(h, "append"), store)
        try:
            d.prepare(s)
            d.write(s, cf.changes(s, rows, "insert"), last_offset=205)  # offsets 200..205
        finally:
            d.close()
    assert h.rows("items") == GOOD
    assert h.delivered() == sorted(f"p:items:{o}" for o in (200, 201, 202, 204, 205))
    _event_letter_checks(store, "bus", r"the record is 1,100,\d+ bytes with its headers, more than the server's max_payload of 1,048,576")
    assert len(store.dead_letters("p")[0]["payload"]["data"]["name"]) == 1_100_000  # the value as the source had it


def test_http_record_the_endpoint_rejects_goes_to_dead_letters(store: Any) -> None:
    """The endpoint answers 422 for the request holding the poison record: the request is split
    down to that record, which alone is dead-lettered; the others are delivered (all six rows
    in one request: the default ``batch_size``; before the split, this took ``batch_size: 1``)."""
    s = cf.make_stream("items", cf.ITEMS)
    with Receiver(reject=lambda r: r["data"]["name"] == "poison", reject_status=422) as rcv:
        cfg = DestinationConfig.model_validate({"name": "push", "type": "http", "url": rcv.url})
        d = _with_sink(HttpDestination(cfg, ConnectorContext("p")), store)
        d.open()
        try:
            d.write(s, cf.changes(s, ROWS, "insert"), last_offset=205)
        finally:
            d.close()
        assert sorted(r["key"]["id"] for r in rcv.records()) == [1, 2, 3, 5, 6]
    _event_letter_checks(store, "push", r"^HTTP 422 from POST")


def test_files_record_that_cannot_be_encoded_goes_to_dead_letters(
    request: pytest.FixtureRequest, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parquet, CSV and JSON Lines hold every Arrow value sources produce today, so the encoder
    is made to refuse one value (fault injection): that record is dead-lettered with the
    encoder's message, the chunk's file holds the others, and a type every row fails on is
    not dead-lettered but fails the write."""
    real = FilesDestination._encode

    def encode(self: Any, table: pa.Table) -> pa.Buffer:
        if "poison" in table.column("name").to_pylist():
            raise pa.ArrowInvalid("injected: the format cannot hold 'poison'")
        return real(self, table)

    monkeypatch.setattr(FilesDestination, "_encode", encode)
    h = KINDS["files"](request)
    s = cf.make_stream("items", cf.ITEMS)
    d = _with_sink(cf.opened(h, "append"), store)
    try:
        d.prepare(s)
        d.write(s, cf.changes(s, ROWS, "insert"), last_offset=205)
    finally:
        d.close()
    assert h.rows("items") == GOOD
    assert h.delivered() == [
        "items/_manifests/00000000000000000200-00000000000000000205.json",
        "items/date=2024-01-02/00000000000000000200-00000000000000000205.parquet",
    ]
    _event_letter_checks(store, "files", r"cannot write as parquet: ArrowInvalid: injected")

    monkeypatch.setattr(FilesDestination, "_encode", lambda self, table: (_ for _ in ()).throw(pa.ArrowNotImplementedError("no such type")))
    d = _with_sink(cf.opened(h, "append"), store)
    try:
        with pytest.raises(FatalError, match=r"no such type.*exclude:"):
            d.write(s, cf.changes(s, ROWS, "insert"), last_offset=305)
    finally:
        d.close()
    assert len(store.dead_letters("p")) == 1

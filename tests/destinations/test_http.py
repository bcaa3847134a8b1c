"""HTTP push destination against a real HTTP server (``tests/http_receiver.py``).

``HttpDestination.write`` is driven directly with change tables, as the engine calls it for
a non-transactional destination: the rows of offsets ``last_offset - n + 1 .. last_offset``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from http_receiver import Receiver
from replicant.config import DestinationConfig, parse
from replicant.destinations.http import HttpDestination, batch_id, retry_after
from replicant.errors import ConfigError, ConnectionError, FatalError, RetriableError
from replicant.model import SQL_TYPE_KEY, ConnectorContext, DeadLetterSink, Stream, with_meta
from replicant.state import StateStore

UTC = dt.UTC
TS = dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)

ITEMS = Stream(
    name="shop.items",
    table=("shop", "items"),
    schema=pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string()), pa.field("qty", pa.int32())]),
    primary_key=("id",),
)


def _rows(stream: Stream, rows: list[dict[str, Any]], ops: list[str] | str = "insert") -> pa.Table:
    """A change table: ``rows`` with their ops, ``_pos`` = {"n": row number}, ``_ts`` = TS."""
    if isinstance(ops, str):
        ops = [ops] * len(rows)
    data = pa.Table.from_pylist(rows, schema=stream.schema)
    batches = []
    for i, (op, row) in enumerate(zip(ops, data.to_batches(max_chunksize=1), strict=True)):
        batches.append(with_meta(row, op, json.dumps({"n": i}), TS))
    return pa.Table.from_batches(batches, schema=stream.change_schema)


def _items(n: int, start: int = 0, op: str = "insert") -> pa.Table:
    return _rows(ITEMS, [{"id": i, "name": f"item {i}", "qty": i % 7} for i in range(start, start + n)], op)


def _dest(
    url: str,
    *,
    pipeline: str = "p",
    name: str = "push",
    write: str = "append",
    batch_size: int | None = None,
    dead_letter: DeadLetterSink | None = None,
    **settings: Any,
) -> HttpDestination:
    cfg = DestinationConfig.model_validate({"name": name, "type": "http", "url": url, "write": write, "batch_size": batch_size, **settings})
    d = HttpDestination(cfg, ConnectorContext(pipeline, dead_letter=dead_letter))
    d.open()
    return d


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def _ids(records: list[dict[str, Any]]) -> list[int]:
    return sorted(r["key"]["id"] for r in records)


# ------------------------------------------------------------------ body and mapping


def test_a_tenants_body_names_its_tenant(receiver: Receiver) -> None:
    d = _dest(receiver.url, pipeline="shop")
    try:
        for tenant in ("acme", "globex"):
            s = dataclasses.replace(ITEMS, tenant=tenant)
            d.write(s, _items(1), last_offset=0)  # the same stream and offsets in both
        d.write(ITEMS, _items(1), last_offset=0)
    finally:
        d.close()
    bodies = receiver.accepted().values()
    assert sorted(((b["stream"], b.get("tenant")) for b in bodies), key=repr) == [
        ("shop.items", "acme"), ("shop.items", "globex"), ("shop.items", None)]  # three batches: three keys
    assert all(list(b) == ["pipeline", "stream", "tenant", "batch_id", "records"] for b in bodies if "tenant" in b)


def test_body_shape_and_json_mapping(receiver: Receiver) -> None:
    schema = pa.schema(
        [
            pa.field("id", pa.int64()),
            pa.field("Id", pa.int32()),  # differs only in case: both keep their own key in JSON
            pa.field("name", pa.string()),
            pa.field("amount", pa.decimal128(12, 2)),
            pa.field("big", pa.decimal256(50, 3)),
            pa.field("at", pa.timestamp("us", tz="Europe/Berlin")),
            pa.field("local", pa.timestamp("ms")),
            pa.field("day", pa.date32()),
            pa.field("raw", pa.binary()),
            pa.field("score", pa.float64()),
            pa.field("ok", pa.bool_()),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("doc", pa.string(), metadata={SQL_TYPE_KEY: b"jsonb"}),
        ]
    )
    s = Stream(name="shop.things", table=("shop", "things"), schema=schema, primary_key=("id",))
    rows = [
        {"id": 1, "Id": 10, "name": 'quote " back \\ nl \n ctl \x01 é😀', "amount": Decimal("12.50"),
         "big": Decimal("12345678901234567890123456789012345678901234.567"),
         "at": TS, "local": dt.datetime(2024, 5, 6, 7, 8, 9, 123000), "day": dt.date(2024, 2, 29), "raw": b"\x00\xffab",
         "score": float("nan"), "ok": True, "tags": ["a", "b"], "doc": '{"x": [1, 2]}'},
        {"id": 2, "Id": None, "name": None, "amount": None, "big": None, "at": None, "local": None, "day": None, "raw": None,
         "score": float("-inf"), "ok": None, "tags": None, "doc": "not json"},
        {"id": 3, "Id": None, "name": None, "amount": None, "big": None, "at": None, "local": None, "day": None, "raw": None,
         "score": 1.5, "ok": False, "tags": [], "doc": None},
    ]
    d = _dest(receiver.url, pipeline="shop")
    try:
        d.write(s, _rows(s, rows, ["read", "update", "delete"]), last_offset=42)
    finally:
        d.close()
    [req] = receiver.requests
    body = req.json
    bid = batch_id("shop", "push", "shop.things", 40, 42)
    assert req.key == bid and req.method == "POST"
    assert req.headers["Content-Type"] == "application/json"
    assert list(body) == ["pipeline", "stream", "batch_id", "records"]
    assert (body["pipeline"], body["stream"], body["batch_id"]) == ("shop", "shop.things", bid)
    r1, r2, r3 = body["records"]
    assert r1 == {
        "op": "read",
        "key": {"id": 1},
        "data": {
            "id": 1, "Id": 10, "name": rows[0]["name"], "amount": "12.50", "big": "12345678901234567890123456789012345678901234.567",
            "at": "2024-01-02T03:04:05.000006Z", "local": "2024-05-06T07:08:09.123000", "day": "2024-02-29",
            "raw": base64.b64encode(b"\x00\xffab").decode(), "score": "NaN", "ok": True, "tags": ["a", "b"], "doc": {"x": [1, 2]},
        },
        "position": {"n": 0},
        "ts": "2024-01-02T03:04:05.000006Z",
    }
    assert r2["op"] == "update" and r2["data"]["score"] == "-Infinity" and r2["data"]["doc"] == "not json"
    assert r2["data"]["amount"] is None and r2["data"]["at"] is None and r2["data"]["tags"] is None
    assert r3 == {"op": "delete", "key": {"id": 3}, "data": None, "position": {"n": 2}, "ts": "2024-01-02T03:04:05.000006Z"}
    # strict JSON: no NaN/Infinity literals anywhere
    json.loads(req.body, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_keyless_stream_and_non_json_position(receiver: Receiver) -> None:
    s = Stream(name="log", table=("log",), schema=pa.schema([pa.field("Msg", pa.string())]))
    data = pa.Table.from_batches(
        [
            with_meta(pa.record_batch({"Msg": ["hello"]}), "insert", "file a.csv line 2", TS),
            with_meta(pa.record_batch({"Msg": ["bye"]}), "delete", '{"line":3}', TS),
        ]
    )
    d = _dest(receiver.url, method="put")
    try:
        d.write(s, data, last_offset=1)
    finally:
        d.close()
    [req] = receiver.requests
    assert req.method == "PUT"
    assert req.json["records"] == [
        {"op": "insert", "key": None, "data": {"Msg": "hello"}, "position": "file a.csv line 2", "ts": "2024-01-02T03:04:05.000006Z"},
        {"op": "delete", "key": None, "data": {"Msg": "bye"}, "position": {"line": 3}, "ts": "2024-01-02T03:04:05.000006Z"},
    ]


def test_empty_write_sends_nothing_and_truncate_is_a_record(receiver: Receiver) -> None:
    d = _dest(receiver.url)
    try:
        d.write(ITEMS, ITEMS.change_schema.empty_table(), last_offset=5)
        d.record_offset(ITEMS, 6)
        assert receiver.requests == []
        d.truncate(ITEMS, last_offset=7)
    finally:
        d.close()
    [req] = receiver.requests
    assert req.key == batch_id("p", "push", "shop.items", 7, 7)
    assert req.json["records"] == [{"op": "truncate", "key": None, "data": None, "position": None, "ts": None}]


# ------------------------------------------------------------------ batching and idempotency keys


def test_batches_by_offset_range_and_replay_gives_same_ids(receiver: Receiver) -> None:
    d = _dest(receiver.url, batch_size=10)
    try:
        d.write(ITEMS, _items(25), last_offset=124)  # offsets 100..124
    finally:
        d.close()
    expected = [batch_id("p", "push", "shop.items", a, b) for a, b in [(100, 109), (110, 119), (120, 124)]]
    assert sorted(r.key for r in receiver.requests) == sorted(expected)
    by_key = {r.key: r.json for r in receiver.requests}
    assert [len(by_key[k]["records"]) for k in expected] == [10, 10, 5]
    assert [r["key"]["id"] for k in expected for r in by_key[k]["records"]] == list(range(25))
    first = [(r.key, r.body) for r in sorted(receiver.requests, key=lambda r: r.key)]

    # a replay (new destination object, same chunk) sends the very same requests
    d2 = _dest(receiver.url, batch_size=10)
    try:
        d2.write(ITEMS, _items(25), last_offset=124)
    finally:
        d2.close()
    replayed = [(r.key, r.body) for r in sorted(receiver.requests[3:], key=lambda r: r.key)]
    assert replayed == first
    # other pipeline, destination or stream: other keys
    assert len({batch_id("p", "push", "shop.items", 100, 109), batch_id("q", "push", "shop.items", 100, 109),
                batch_id("p", "push2", "shop.items", 100, 109), batch_id("p", "push", "shop.other", 100, 109),
                batch_id("p", "push", "shop.items", 100, 108)}) == 5


def test_batch_bytes_splits_deterministically(receiver: Receiver) -> None:
    rows = [{"id": i, "name": "x" * (i * 37 % 200), "qty": 1} for i in range(60)]
    rows[7]["name"] = "y" * 2000  # alone bigger than the limit: sent on its own
    limit = 1200
    d = _dest(receiver.url, batch_size=25, batch_bytes=limit, concurrency=1)  # encoded in slices of 50 rows
    d2 = _dest(receiver.url, batch_size=25, batch_bytes=limit, concurrency=8)  # all 60 rows at once
    try:
        d.write(ITEMS, _rows(ITEMS, rows), last_offset=59)
        n_first = len(receiver.requests)
        d2.write(ITEMS, _rows(ITEMS, rows), last_offset=59)
    finally:
        d.close()
        d2.close()
    first, second = receiver.requests[:n_first], receiver.requests[n_first:]
    assert sorted((r.key, r.body) for r in first) == sorted((r.key, r.body) for r in second)
    assert n_first > 60 // 25 + 1  # split further than batch_size alone would
    ranges = []
    for r in first:
        recs = r.json["records"]
        ids = [x["key"]["id"] for x in recs]
        assert ids == list(range(ids[0], ids[-1] + 1))
        assert len(r.body) <= limit or len(recs) == 1
        assert ids[0] // 25 == ids[-1] // 25  # never across a batch_size boundary
        assert r.key == batch_id("p", "push", "shop.items", ids[0], ids[-1])
        ranges.append((ids[0], ids[-1]))
    assert any(len(r.body) > limit and r.json["records"][0]["key"]["id"] == 7 for r in first)
    assert sorted(ranges)[0][0] == 0 and sorted(ranges)[-1][1] == 59
    flat = sorted(i for a, b in ranges for i in range(a, b + 1))
    assert flat == list(range(60))


# ------------------------------------------------------------------ failures and retries


def test_thirty_percent_failures_lose_nothing() -> None:
    with Receiver(fail_rate=0.3, failures=("500", "429", "slow"), seed=7, max_failures=3, slow_seconds=0.6) as rcv:
        d = _dest(rcv.url, batch_size=10, concurrency=4, timeout=0.25, retry_max_seconds=0.05, max_retries=5)
        try:
            d.write(ITEMS, _items(300), last_offset=299)
        finally:
            d.close()
        outcomes = rcv.outcomes()
        assert {"500", "429", "slow"} <= set(outcomes), outcomes
        failures = sum(v for k, v in outcomes.items() if k != "ok")
        assert failures >= 6, outcomes  # seeded: 30% of attempts fail, at most 3 times per key
        assert len(rcv.requests) == 30 + failures  # every failed attempt was followed by one more
        accepted = rcv.accepted()  # also asserts: a key's retries carried the same body
        assert len(accepted) == 30
        assert _ids(rcv.records()) == list(range(300))
        failed_keys = {r.key for r in rcv.requests if r.outcome != "ok"}
        assert failed_keys <= set(accepted)  # retried with the same idempotency key, then accepted
        assert {r.key for r in rcv.requests} == set(accepted)  # no key other than the 30 planned ones


def test_retry_after_is_honoured() -> None:
    with Receiver(fail_rate=1.0, failures=("429",), max_failures=1, retry_after="1") as rcv:
        d = _dest(rcv.url, retry_max_seconds=5)
        try:
            d.write(ITEMS, _items(3), last_offset=2)
        finally:
            d.close()
        first, second = rcv.requests
        assert (first.status, second.status) == (429, 200)
        assert second.started - first.finished >= 0.9


def test_retry_after_header_forms() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(None) is None and retry_after("soon") is None
    when = dt.datetime.now(UTC) + dt.timedelta(seconds=30)
    assert 25 <= retry_after(format_datetime(when, usegmt=True)) <= 31
    assert retry_after(format_datetime(dt.datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)) == 0.0


def test_exhausted_retries_raise_retriable_without_secrets() -> None:
    token, api_key = "tok-SECRET-123", "hdr-SECRET-456"
    with Receiver(status=503) as rcv:
        url = rcv.url.replace("http://", "http://user:pw-SECRET-789@") + "?sig=q-SECRET-000"
        d = _dest(url, auth={"bearer": token}, headers={"X-Api-Key": api_key}, max_retries=2, retry_max_seconds=0.01)
        try:
            with pytest.raises(RetriableError) as ei:
                d.write(ITEMS, _items(4), last_offset=3)
        finally:
            d.close()
        assert len(rcv.requests) == 3
        # the auth header was sent (bearer wins over the URL's user info)
        assert rcv.requests[0].headers["Authorization"] == f"Bearer {token}"
        assert rcv.requests[0].headers["X-Api-Key"] == api_key
        shown = rcv.url  # without user info and query string
    msg = str(ei.value)
    assert "503" in msg and "3 attempts" in msg and "shop.items" in msg and "offsets 0..3" in msg
    assert f"POST {shown} " in msg
    for secret in (token, api_key, "pw-SECRET-789", "q-SECRET-000", "SECRET"):
        assert secret not in msg
        assert secret not in repr(d.options)


def test_connection_refused_is_retriable() -> None:
    rcv = Receiver().start()
    url = rcv.url
    rcv.stop()  # nothing listens on that port any more
    d = _dest(url, max_retries=1, retry_max_seconds=0.01)
    try:
        with pytest.raises(RetriableError, match="ConnectError"):
            d.write(ITEMS, _items(2), last_offset=1)
    finally:
        d.close()


def test_basic_auth_header(receiver: Receiver) -> None:
    d = _dest(receiver.url, auth={"basic": {"username": "ann", "password": "pa:ss"}}, headers={"X-Version": 2})
    try:
        d.write(ITEMS, _items(1), last_offset=0)
    finally:
        d.close()
    assert receiver.requests[0].headers["Authorization"] == "Basic " + base64.b64encode(b"ann:pa:ss").decode()
    assert receiver.requests[0].headers["X-Version"] == "2"


def test_url_user_info_is_basic_auth_not_part_of_the_url(receiver: Receiver) -> None:
    d = _dest(receiver.url.replace("http://", "http://bob:p%40ss@"))
    try:
        d.write(ITEMS, _items(1), last_offset=0)
    finally:
        d.close()
    assert receiver.requests[0].headers["Authorization"] == "Basic " + base64.b64encode(b"bob:p@ss").decode()


@pytest.mark.parametrize(("status", "error"), [(401, ConnectionError), (403, ConnectionError), (404, FatalError)])
def test_endpoint_or_credential_errors_are_not_retried(status: int, error: type, tmp_path: Path) -> None:
    """A refused login is a ConnectionError (as a database's), a wrong endpoint a FatalError."""
    store = StateStore(tmp_path / "state.sqlite").open()
    with Receiver(status=status) as rcv:
        d = _dest(rcv.url, auth={"bearer": "tok-SECRET-1"}, dead_letter=lambda stream, recs: store.add_dead_letters("p", stream.name, recs))
        try:
            with pytest.raises(error, match=str(status)) as ei:
                d.write(ITEMS, _items(5), last_offset=4)
        finally:
            d.close()
        assert len(rcv.requests) == 1  # not retried
    assert "tok-SECRET-1" not in str(ei.value)
    assert store.dead_letters("p") == []  # the records are fine: nothing dead-lettered


# ------------------------------------------------------------------ rejected records


def test_payload_too_large_is_split(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite").open()
    rows = [{"id": i, "name": "z" * (5000 if i == 5 else 40), "qty": i} for i in range(16)]
    with Receiver(max_body=1500) as rcv:
        d = _dest(rcv.url, batch_size=16, dead_letter=lambda stream, recs: store.add_dead_letters("p", stream.name, recs))
        try:
            d.write(ITEMS, _rows(ITEMS, rows), last_offset=15)
        finally:
            d.close()
        assert _ids(rcv.records()) == [i for i in range(16) if i != 5]
        assert all(len(r.body) <= 1500 for r in rcv.requests if r.status == 200)
    [letter] = store.dead_letters("p")
    assert letter["payload"]["key"] == {"id": 5} and letter["reason"].startswith("HTTP 413")


# ------------------------------------------------------------------ concurrency


def test_concurrency_bound_is_respected() -> None:
    with Receiver(delay=0.05) as rcv:
        d = _dest(rcv.url, batch_size=5, concurrency=3)
        try:
            d.write(ITEMS, _items(120), last_offset=119)
        finally:
            d.close()
        assert len(rcv.requests) == 24
        assert 2 <= rcv.max_in_flight <= 3
        assert _ids(rcv.records()) == list(range(120))


# ------------------------------------------------------------------ configuration


def test_config_typo_points_at_the_key() -> None:
    with pytest.raises(ConfigError) as ei:
        parse({"pipeline": "p", "source": {"type": "sqlite", "url": "sqlite:///x.db"},
               "destinations": [{"name": "push", "type": "http", "url": "http://x", "methd": "POST"}]})
    problems = dict(ei.value.problems)
    assert "destinations[0].methd" in problems
    assert "did you mean 'method'" in problems["destinations[0].methd"]


def test_config_bad_values_each_reported() -> None:
    with pytest.raises(ConfigError) as ei:
        parse({"pipeline": "p", "source": {"type": "sqlite", "url": "sqlite:///x.db"},
               "destinations": [{"name": "push", "type": "http", "url": "http://x", "method": "PATCH", "concurrency": 0,
                                 "batch_bytes": "lots", "auth": {"bearer": "t", "basic": {"username": "u", "password": "p"}}}]})
    problems = dict(ei.value.problems)
    assert set(problems) >= {"destinations[0].method", "destinations[0].concurrency", "destinations[0].batch_bytes", "destinations[0].auth"}
    assert "exactly one" in problems["destinations[0].auth"]


def test_config_accepts_units_and_resolves_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSH_TOKEN", "tok-from-env")
    cfg = parse({"pipeline": "p", "source": {"type": "sqlite", "url": "sqlite:///x.db"},
                 "destinations": [{"name": "push", "type": "http", "url": "http://x/push", "batch_size": 500,
                                   "batch_bytes": "1MB", "timeout": "2m", "auth": {"bearer": "${env:PUSH_TOKEN}"}}]})
    d = HttpDestination(cfg.destinations[0], ConnectorContext("p"))
    assert (d.batch_size, d.options.batch_bytes, d.options.timeout) == (500, 1_000_000, 120.0)
    assert d.options.auth.bearer.get_secret_value() == "tok-from-env"
    assert "tok-from-env" not in repr(d.options)
    assert d.capabilities.transactional is False and d.applied_offset(ITEMS) == -1


def test_bad_url_and_replace_refused() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        HttpDestination(DestinationConfig(name="push", type="http", url="ftp://x/y"), ConnectorContext("p"))
    with pytest.raises(ConfigError, match="cannot `replace`"):
        HttpDestination(DestinationConfig(name="push", type="http", url="http://x", write="replace"), ConnectorContext("p"))
    d = HttpDestination(DestinationConfig(name="push", type="http", url="http://x", write="merge"), ConnectorContext("p"))
    keyless = Stream(name="log", table=("log",), schema=pa.schema([pa.field("msg", pa.string())]))
    with pytest.raises(FatalError, match="needs a key"):
        d.prepare(keyless)
    with pytest.raises(FatalError, match="cannot `replace`"):
        d.begin_replace(ITEMS)


# ------------------------------------------------------------------ end to end


def test_pipeline_sqlite_to_http_with_failures_rejects_and_replay(tmp_path: Path) -> None:
    import sqlite3

    from replicant.engine import Engine

    db = tmp_path / "shop.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL)")
    con.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"item {i}", i * 0.5) for i in range(1, 1001)])
    con.commit()
    con.close()
    with Receiver(fail_rate=0.3, failures=("500", "429"), seed=3, reject=lambda r: r["key"]["id"] == 77) as rcv:
        cfg = parse(
            {"pipeline": "shop", "source": {"type": "sqlite", "url": f"sqlite:///{db}", "streams": ["items"]},
             "destinations": [{"name": "push", "type": "http", "url": rcv.url, "batch_size": 300, "retry_max_seconds": 0.05}]},
            base_dir=tmp_path,
        )
        result = Engine(cfg).run()
        assert result.ok, result.errors
        assert result.dead_letters == {"push": {"items": 1}}  # id 77 alone, found by splitting its request
        outcomes = rcv.outcomes()
        rejected_keys = {r.key for r in rcv.requests if r.outcome == "reject"}
        assert outcomes.get("500", 0) + outcomes.get("429", 0) >= 1 and outcomes["reject"] == len(rejected_keys) == 9, outcomes
        assert _ids(rcv.records()) == [i for i in range(1, 1001) if i != 77]
        keys = set(rcv.accepted())
        assert len(keys) == outcomes["ok"]  # the other batches, and the accepted half at each of the 8 splits
        assert min(len(rcv.accepted()[k]["records"]) for k in keys) == 1  # down to the neighbour of 77 alone
        n = len(rcv.requests)

        # a replay re-sends the same offset ranges, split the same way: the same idempotency keys and bodies
        replayed = Engine(cfg).replay("push", start="start")
        assert replayed.ok, replayed.errors
        assert replayed.dead_letters == {"push": {"items": 1}}
        assert {r.key for r in rcv.requests[n:]} == keys | rejected_keys
        rcv.accepted()  # asserts every key carried one body across run and replay
        first = rcv.records()[0]
        assert first["op"] == "read" and set(first["data"]) == {"id", "name", "price"}

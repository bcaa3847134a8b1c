"""The HTTP push destination's rejections: a request the endpoint refuses for its content is
split until the records it refuses alone are found; those go to the dead letters, the rest is
delivered (issue 9 item 8). Split from test_http.py, which keeps the body, batching and
retry tests."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from http_receiver import Receiver
from replicant.destinations.http import batch_id
from replicant.errors import FatalError
from replicant.model import DeadLetterSink, Stream
from replicant.state import StateStore

from .test_http import ITEMS, _dest, _ids, _items, _rows


def test_rejected_records_go_to_dead_letters(tmp_path: Path) -> None:
    """Only the records the endpoint rejects alone are dead-lettered (before issue 9 item 8,
    every record of a rejected request was): each rejected request of 5 is split into 2 + 3,
    the 3 into 1 + 2, the 2 into 1 + 1, and every sub-request carries its own range's key."""
    store = StateStore(tmp_path / "state.sqlite").open()
    bad = {3, 17}
    with Receiver(reject=lambda r: r["key"]["id"] in bad, reject_status=422) as rcv:
        d = _dest(rcv.url, batch_size=5, dead_letter=lambda stream, recs: store.add_dead_letters("p", stream.name, recs))
        try:
            d.write(ITEMS, _items(25), last_offset=1024)  # offsets 1000..1024
        finally:
            d.close()
        assert _ids(rcv.records()) == [i for i in range(25) if i not in bad]
        # 0..4 → 0..1 ok, 2..4 → 2 ok, 3..4 → 3 rejected, 4 ok; 15..19 → 15..16 ok, 17..19 → 17 rejected, 18..19 ok
        ranges = _ranges(rcv)
        assert sorted((a, b) for (a, b, _), r in zip(ranges, rcv.requests) if r.outcome == "reject") == [
            (0, 4), (2, 4), (3, 3), (3, 4), (15, 19), (17, 17), (17, 19)]
        assert sorted((a, b) for (a, b, _), r in zip(ranges, rcv.requests) if r.outcome == "ok") == [
            (0, 1), (2, 2), (4, 4), (5, 9), (10, 14), (15, 16), (18, 19), (20, 24)]
        assert all(key == batch_id("p", "push", "shop.items", 1000 + a, 1000 + b) for a, b, key in ranges)
    letters = sorted(store.dead_letters("p", "shop.items"), key=lambda x: x["payload"]["key"]["id"])
    assert [x["payload"]["key"]["id"] for x in letters] == [3, 17]
    first = letters[0]
    assert first["destination"] == "push"
    assert first["payload"] == {
        "op": "insert",
        "key": {"id": 3},
        "data": {"id": 3, "name": "item 3", "qty": 3},
        "position": {"n": 3},
        "ts": "2024-01-02T03:04:05.000006Z",
    }
    assert first["origin"].startswith("log offset 1003,")
    assert letters[-1]["origin"].startswith("log offset 1017,")
    assert "HTTP 422" in first["reason"] and '"invalid records"' in first["reason"] and "[{\"id\": 3}]" in first["reason"]
    assert batch_id("p", "push", "shop.items", 1003, 1003) in first["reason"]
    assert '"keys": [{"id": 17}]' in letters[-1]["reason"] and batch_id("p", "push", "shop.items", 1017, 1017) in letters[-1]["reason"]


def _sink(store: StateStore) -> DeadLetterSink:
    """The engine's sink: one dead letter per destination and log offset (``once``)."""
    return lambda stream, recs: store.add_dead_letters("p", stream.name, recs, once=True)


def _ranges(rcv: Receiver) -> list[tuple[int, int, str | None]]:
    """(first id, last id, idempotency key) of every request, in the order they arrived."""
    out = []
    for r in rcv.requests:
        ids = [x["key"]["id"] for x in r.json["records"]]
        assert ids == list(range(ids[0], ids[-1] + 1)), "a request covers consecutive offsets"
        out.append((ids[0], ids[-1], r.key))
    return out


def test_one_poison_record_in_a_batch_of_1000_is_dead_lettered_alone(tmp_path: Path) -> None:
    """Failed before the fix: the 422 for the request holding id 617 dead-lettered all 1,000
    records of it. Now the request is split in halves, depth first, down to the record the
    endpoint rejects alone: 999 delivered, 1 dead letter with the endpoint's answer. Each
    sub-request covers a fixed offset range and carries the idempotency key of that range, so a
    re-delivery of the chunk sends the same keys and bodies and adds no second dead letter."""
    store = StateStore(tmp_path / "state.sqlite").open()
    with Receiver(reject=lambda r: r["key"]["id"] == 617, reject_status=422) as rcv:
        for attempt in range(2):  # the second: a re-delivery of the same chunk (a restart, a replay)
            n = len(rcv.requests)
            d = _dest(rcv.url, dead_letter=_sink(store))  # default batch_size: 1000
            try:
                d.write(ITEMS, _items(1000), last_offset=5999)  # offsets 5000..5999
            finally:
                d.close()
            ranges = _ranges(rcv)
            assert all(key == batch_id("p", "push", "shop.items", 5000 + a, 5000 + b) for a, b, key in ranges)
            if attempt == 0:
                first_run = [(r.key, r.body) for r in rcv.requests]
            else:
                assert [(r.key, r.body) for r in rcv.requests[n:]] == first_run, "the same requests, in the same order"
        assert _ids(rcv.records()) == [i for i in range(1000) if i != 617]
        outcomes = rcv.outcomes()
        # the path from the whole request down to id 617: 11 rejections (1000, 500, 250, … 1 records)
        assert outcomes["reject"] == 2 * 11, outcomes
        assert outcomes["ok"] == 2 * 10, outcomes  # each rejected request's other half, accepted
        rcv.accepted()  # asserts each key carried one body across both deliveries
        url = rcv.url
    [letter] = store.dead_letters("p", "shop.items")
    assert letter["payload"] == {"op": "insert", "key": {"id": 617}, "data": {"id": 617, "name": "item 617", "qty": 617 % 7},
                                 "position": {"n": 617}, "ts": "2024-01-02T03:04:05.000006Z"}
    assert letter["origin"].startswith("log offset 5617,") and letter["destination"] == "push"
    assert letter["reason"].startswith(f"HTTP 422 from POST {url} (batch id {batch_id('p', 'push', 'shop.items', 5617, 5617)})")
    assert letter["reason"].endswith('{"error": "invalid records", "keys": [{"id": 617}]}')


def test_endpoint_rejecting_everything_pauses_the_stream_after_max_rejected(tmp_path: Path) -> None:
    """A receiver that answers 422 to every record is a wrong endpoint, not bad records: once
    more than ``max_rejected`` records of one write were rejected alone, the write fails with
    FatalError (the stream pauses), nothing is dead-lettered, and the requests spent finding
    that out stay about twice ``max_rejected`` (depth first), not one per record. Under the
    guard every record rejected alone is dead-lettered."""
    store = StateStore(tmp_path / "state.sqlite").open()
    with Receiver(reject=lambda r: True, reject_status=422) as rcv:
        d = _dest(rcv.url, dead_letter=_sink(store))  # default max_rejected: 100, concurrency: 4
        try:
            with pytest.raises(FatalError, match=r"more than 100 records of one write were rejected") as ei:
                d.write(ITEMS, _items(2000), last_offset=1999)  # two requests of 1,000, split at once in two threads
        finally:
            d.close()
        assert "check `url`" in str(ei.value) and "HTTP 422" in str(ei.value)
        assert store.dead_letters("p") == []
        # the count is shared by the threads: two requests per rejected record (it and its share of the
        # pieces above it), each thread's path down (11), and the other thread's request in flight
        assert rcv.outcomes() == {"reject": len(rcv.requests)} and len(rcv.requests) <= 2 * 101 + 2 * 11 + 2, len(rcv.requests)

        n = len(rcv.requests)
        d = _dest(rcv.url, dead_letter=_sink(store), max_rejected=8, batch_size=8)
        try:
            d.write(ITEMS, _items(8), last_offset=7)
        finally:
            d.close()
        assert len(rcv.requests) - n == 15  # 8 + 4 + 2 + 1 records: every piece of the tree, once
    assert sorted(x["payload"]["key"]["id"] for x in store.dead_letters("p")) == list(range(8))


def test_on_bad_record_fail_pauses_at_the_first_rejection(tmp_path: Path) -> None:
    """Failed before the fix: the http destination ignored ``on_bad_record: fail`` and
    dead-lettered the rejected request. Now the write fails with the endpoint's answer, sends
    no further split requests, and stores nothing."""
    store = StateStore(tmp_path / "state.sqlite").open()
    with Receiver(reject=lambda r: r["key"]["id"] == 3, reject_status=400) as rcv:
        d = _dest(rcv.url, dead_letter=_sink(store), on_bad_record="fail")
        try:
            with pytest.raises(FatalError, match=r"HTTP 400 .*`on_bad_record: fail`"):
                d.write(ITEMS, _items(10), last_offset=9)
        finally:
            d.close()
        assert len(rcv.requests) == 1
    assert store.dead_letters("p") == []


def test_rejection_body_is_truncated_and_masked(tmp_path: Path) -> None:
    token = "tok-ECHOED-42"
    store = StateStore(tmp_path / "state.sqlite").open()
    codes = Stream(name="shop.codes", table=("shop", "codes"), schema=pa.schema([pa.field("code", pa.string())]), primary_key=("code",))
    with Receiver(reject=lambda r: True, reject_status=400, echo_auth=True) as rcv:
        # the server's answer names the rejected keys; make the keys long and echo the token
        long_rows = [{"code": f"{i:04d}" + "k" * 1500} for i in range(4)]
        d = _dest(rcv.url, auth={"bearer": token}, dead_letter=lambda stream, recs: store.add_dead_letters("p", stream.name, recs))
        try:
            d.write(codes, _rows(codes, long_rows), last_offset=3)
        finally:
            d.close()
    letters = store.dead_letters("p", limit=1000)
    assert len(letters) == 4
    reason = letters[0]["reason"]
    assert reason.startswith("HTTP 400") and reason.endswith("…") and len(reason) < 1300
    assert token not in reason and '"you_sent": "Bearer ***"' in reason


def test_rejected_without_dead_letter_store_is_fatal() -> None:
    with Receiver(reject=lambda r: r["key"]["id"] == 1) as rcv:
        d = _dest(rcv.url)
        try:
            with pytest.raises(FatalError, match="rejected 3 records and there is no dead-letter store"):
                d.write(ITEMS, _items(3), last_offset=2)
        finally:
            d.close()
        assert len(rcv.requests) == 1, "no split requests: nothing could be set aside anyway"

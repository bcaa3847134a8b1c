"""The run queue and the fence, against a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from replicant.errors import FencedError
from replicant.state import StateStore, schema
from replicant.state.fenced import FencedStateStore


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(url: str, clock: Clock) -> Iterator[StateStore]:
    with StateStore(url, clock=clock) as s:
        yield s


def test_the_service_migration_is_the_last(store: StateStore) -> None:
    assert store.schema_version() == len(schema.MIGRATIONS)
    assert store.queue_depth() == {"queued": 0, "running": 0}


def test_a_trigger_during_a_run_queues_at_most_one_more(store: StateStore) -> None:
    first, created = store.enqueue("p", "/p.yml", trigger="schedule")
    assert created
    assert store.enqueue("p", "/p.yml", trigger="webhook") == (first, False)  # coalesced while queued
    claimed = store.claim("w1", 10)
    assert claimed is not None and claimed["id"] == first
    second, created = store.enqueue("p", "/p.yml", trigger="schedule")
    assert created and second != first
    assert store.enqueue("p", "/p.yml", trigger="schedule") == (second, False)
    # never twice at once: the queued one waits while the first runs
    assert store.claim("w2", 10) is None
    assert store.finish_entry(first, "w1", claimed["epoch"], "succeeded", result={"rows_read": {"s": 3}})
    again = store.claim("w2", 10)
    assert again is not None and again["id"] == second


def test_claims_follow_priority_then_age_and_skip_paused_pipelines(store: StateStore) -> None:
    low, _ = store.enqueue("onboarding", "/o.yml", priority=-1)
    normal, _ = store.enqueue("interval", "/i.yml")
    paused, _ = store.enqueue("paused", "/x.yml", priority=5)
    store.set_paused("paused", True)
    assert [store.claim(f"w{i}", 10)["id"] for i in range(2)] == [normal, low]  # type: ignore[index]
    assert store.claim("w3", 10) is None
    store.set_paused("paused", False)
    assert store.claim("w3", 10)["id"] == paused  # type: ignore[index]


def test_concurrency_per_pipeline_and_global(store: StateStore) -> None:
    store.enqueue("p", "/p.yml", tenant="a", concurrency=2)
    store.enqueue("p", "/p.yml", tenant="b", concurrency=2)
    store.enqueue("p", "/p.yml", tenant="c", concurrency=2)
    store.enqueue("q", "/q.yml")
    assert store.claim("w1", 10)["tenant"] == "a"  # type: ignore[index]
    assert store.claim("w2", 10)["tenant"] == "b"  # type: ignore[index]
    assert store.claim("w3", 10, max_running=2) is None  # global limit
    assert store.claim("w3", 10)["pipeline"] == "q"  # type: ignore[index]  # p is at its concurrency of 2


def test_an_expired_lease_is_taken_over_with_a_new_epoch(store: StateStore, clock: Clock) -> None:
    entry_id, _ = store.enqueue("p", "/p.yml")
    a = store.claim("a", 15)
    assert a is not None and a["epoch"] == 1
    clock.advance(10)
    assert store.renew_entry(entry_id, "a", 1, 15) == {"cancel": False}
    clock.advance(14)
    assert store.claim("b", 15) is None  # renewed: still a's
    clock.advance(2)
    b = store.claim("b", 15)
    assert b is not None and (b["id"], b["owner"], b["epoch"], b["attempts"]) == (entry_id, "b", 2, 2)
    assert store.renew_entry(entry_id, "a", 1, 15) is None  # a learns it lost the lease
    assert not store.finish_entry(entry_id, "a", 1, "succeeded")  # and cannot end b's run
    assert store.finish_entry(entry_id, "b", 2, "succeeded")
    assert store.queue_entry(entry_id)["status"] == "succeeded"  # type: ignore[index]


def test_a_stale_workers_late_writes_are_refused(url: str, store: StateStore, clock: Clock) -> None:
    entry_id, _ = store.enqueue("p", "/p.yml")
    a = store.claim("a", 15)
    assert a is not None
    stale = FencedStateStore(url, entry_id=entry_id, owner="a", epoch=a["epoch"], clock=clock).open()
    try:
        stale.save_checkpoint("p", "orders", {"id": 10}, rows_total=10, log_offset=9)
        stale.save_offset("p", "warehouse", "orders", 9, rows_total=10)
        clock.advance(16)
        b = store.claim("b", 15)
        assert b is not None
        fresh = FencedStateStore(url, entry_id=entry_id, owner="b", epoch=b["epoch"], clock=clock).open()
        fresh.save_checkpoint("p", "orders", {"id": 20}, rows_total=20, log_offset=19)
        with pytest.raises(FencedError, match="lost its lease"):
            stale.save_checkpoint("p", "orders", {"id": 15}, rows_total=15, log_offset=14)
        with pytest.raises(FencedError):
            stale.save_offset("p", "warehouse", "orders", 14, rows_total=15)
        with pytest.raises(FencedError):
            stale.start_run("p")
        fresh.close()
    finally:
        stale.close()
    assert store.checkpoint("p", "orders").position == {"id": 20}  # type: ignore[union-attr]
    assert store.offsets("p")[("warehouse", "orders")].offset == 9


def test_cancel_queued_at_once_running_through_the_lease(store: StateStore) -> None:
    queued, _ = store.enqueue("p", "/p.yml")
    running, _ = store.enqueue("q", "/q.yml")
    store.set_paused("p", True)
    claimed = store.claim("w", 10)
    assert claimed is not None and claimed["id"] == running
    assert store.cancel_entry(queued) == "cancelled"
    assert store.cancel_entry(running) == "running"
    assert store.renew_entry(running, "w", claimed["epoch"], 10) == {"cancel": True}
    assert store.cancel_entry(999) is None


def test_webhook_ids_are_remembered(store: StateStore, clock: Clock) -> None:
    assert store.remember_hook_id("p", "msg_1", keep_seconds=600)
    assert not store.remember_hook_id("p", "msg_1", keep_seconds=600)
    assert store.remember_hook_id("q", "msg_1", keep_seconds=600)  # per pipeline
    clock.advance(601)
    assert store.remember_hook_id("p", "msg_1", keep_seconds=600)  # forgotten once stale (its timestamp is refused anyway)


def test_a_paused_tenant_waits_while_the_others_run(store: StateStore) -> None:
    acme, _ = store.enqueue("p", "/p.yml", tenant="acme", concurrency=3)
    globex, _ = store.enqueue("p", "/p.yml", tenant="globex", concurrency=3)
    store.set_paused("p", True, tenant="acme")
    store.set_paused("p", True, tenant="globex", stream="orders")  # a stream pause does not hold the run back
    assert sorted((c["tenant"], c["stream"]) for c in store.paused_controls("p")) == [("acme", None), ("globex", "orders")]
    claimed = store.claim("w1", 10)
    assert claimed is not None and claimed["id"] == globex
    assert store.claim("w2", 10) is None
    store.set_paused("p", False, tenant="acme")
    again = store.claim("w2", 10)
    assert again is not None and again["id"] == acme

"""The dead-letter methods behind ``replicant dead-letters``: find by filters and ids across
tenants, discard by ids or filters, and a retry rejected again (reason, attempts, retried_at)."""

from __future__ import annotations

from collections.abc import Callable

from replicant.state import ALL_TENANTS, DeadLetter, StateStore

try:  # tests/ as a package
    from .test_store import FakeClock, make_store, store_url
except ImportError:
    from test_store import FakeClock, make_store, store_url  # noqa: F401 - fixtures


def _letter(i: int, destination: str | None = "push") -> DeadLetter:
    return DeadLetter(reason=f"HTTP 422: bad {i}", payload={"id": i}, origin=f"log offset {i}", destination=destination)


def test_find_discard_and_rejected_again(make_store: Callable[..., StateStore]) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    store.add_dead_letters("shop", "orders", [_letter(1), _letter(2)])
    store.add_dead_letters("shop", "orders", [_letter(3)], tenant="acme")
    store.add_dead_letters("shop", "customers", [_letter(4, "warehouse"), _letter(5, None)])
    store.add_dead_letters("other", "orders", [_letter(6)])

    every = store.find_dead_letters("shop")
    assert [d["payload"]["id"] for d in every] == [5, 4, 3, 2, 1], "every tenant, newest first"
    assert [d["tenant"] for d in every] == [None, None, "acme", None, None]
    assert [d["payload"]["id"] for d in store.find_dead_letters("shop", tenant=None)] == [5, 4, 2, 1]
    assert [d["payload"]["id"] for d in store.find_dead_letters("shop", tenant="acme")] == [3]
    assert [d["payload"]["id"] for d in store.find_dead_letters("shop", destination="push")] == [3, 2, 1]
    assert [d["payload"]["id"] for d in store.find_dead_letters("shop", stream="customers", destination="warehouse")] == [4]
    assert [d["payload"]["id"] for d in store.find_dead_letters("shop", limit=2)] == [5, 4]
    by_id = {d["payload"]["id"]: d["id"] for d in every}
    assert [d["payload"]["id"] for d in store.find_dead_letters("shop", ids=[by_id[1], by_id[3]])] == [3, 1]
    assert store.find_dead_letters("other", ids=[by_id[1]]) == [], "an id of another pipeline is not found"

    clock.advance(60)
    store.rejected_again("shop", by_id[2], "HTTP 422 again, password=hunter2")
    store.rejected_again("shop", by_id[2], "HTTP 422 once more, password=hunter2")
    (again,) = store.find_dead_letters("shop", ids=[by_id[2]])
    assert again["attempts"] == 2 and again["retried_at"] == clock() and again["created_at"] < clock()
    assert again["reason"] == "HTTP 422 once more, password=***"
    assert store.find_dead_letters("shop", ids=[by_id[1]])[0]["attempts"] == 0

    assert store.discard_dead_letters("shop", ids=[by_id[1], by_id[3]]) == 2
    assert store.discard_dead_letters("shop", ids=[by_id[1]]) == 0
    assert store.discard_dead_letters("shop", stream="customers", destination="warehouse") == 1
    assert [d["payload"]["id"] for d in store.find_dead_letters("shop", tenant=ALL_TENANTS)] == [5, 2]
    assert store.discard_dead_letters("shop") == 2
    assert store.find_dead_letters("shop") == [] and len(store.find_dead_letters("other")) == 1

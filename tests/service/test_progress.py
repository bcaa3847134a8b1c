"""Snapshot progress per stream: the percent and ETA arithmetic on an injected clock, what the
status shows beside a stream, and the worker's recorder writing to a real state store (throttled,
tenants told apart, fenced once its lease is lost, counting on after a takeover)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from replicant.errors import FencedError
from replicant.service.progress import ProgressRecorder, describe, run_progress, visible_progress, with_progress
from replicant.state.fenced import FencedStateStore
from replicant.state.store import StateStore

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def row(rows: int, estimate: int | None, *, finished: bool = False, entry: int = 1, stream: str = "orders",
        tenant: str | None = None) -> dict[str, Any]:
    return {"pipeline": "p", "tenant": tenant, "stream": stream, "entry": entry, "estimate": estimate, "rows": rows,
            "started_at": T0, "updated_at": T0, "finished_at": T0 if finished else None}


def test_percent_and_eta_from_the_rate_so_far() -> None:
    p = describe(row(250, 1000), T0 + timedelta(seconds=10))  # 25 rows/s, 750 to go
    assert (p["percent"], p["eta_seconds"], p["finished"]) == (25, 30.0, False)
    assert describe(row(250, 1000), T0 + timedelta(seconds=20))["eta_seconds"] == 60.0  # slower: later
    assert describe(row(999, 1000), T0 + timedelta(seconds=1))["percent"] == 99


def test_percent_is_capped_at_99_until_done_and_the_eta_unknown_without_a_rate_or_estimate() -> None:
    more = describe(row(1500, 1000), T0 + timedelta(seconds=5))  # the statistics were low
    assert (more["percent"], more["eta_seconds"]) == (99, None)
    assert describe(row(0, 1000), T0 + timedelta(seconds=5))["eta_seconds"] is None  # no row yet: no rate
    assert describe(row(10, 1000), T0)["eta_seconds"] is None  # no time elapsed
    assert (describe(row(5, None), T0 + timedelta(seconds=5))["percent"], describe(row(5, None), T0)["eta_seconds"]) == (None, None)
    assert describe(row(0, 0), T0 + timedelta(seconds=1))["percent"] == 0  # empty by the statistics, not done
    done = describe(row(1500, 1000, finished=True), T0 + timedelta(seconds=5))
    assert (done["percent"], done["eta_seconds"], done["finished"], done["rows"]) == (100, 0.0, True, 1500)


def test_status_shows_a_running_runs_reads_or_else_the_last_completed_one() -> None:
    now = T0 + timedelta(seconds=4)
    rows = [row(10, 100, entry=7, stream="a"), row(100, 100, finished=True, entry=6, stream="b"),
            row(40, 100, entry=5, stream="c")]  # c: left unfinished by run 5, which ended
    shown = visible_progress(rows, {7}, now)
    assert set(shown) == {(None, "a")} and shown[(None, "a")]["percent"] == 10
    idle = visible_progress(rows, set(), now)
    assert set(idle) == {(None, "b")} and idle[(None, "b")]["percent"] == 100


def test_recorder_writes_at_start_at_most_once_a_second_and_at_the_end(tmp_path: Path) -> None:
    ticks = [0.0]
    with StateStore(tmp_path / "state.db") as store:
        rec = ProgressRecorder(store, "p", entry=3, clock=lambda: T0, monotonic=lambda: ticks[0])
        rec.stream_started("orders", 1000)
        assert [(r["rows"], r["estimate"], r["entry"]) for r in store.progress("p")] == [(0, 1000, 3)]
        rec.stream_state("orders", "reading")
        for t in (0.3, 0.6, 0.9):  # three batches within the second: counted, not written
            ticks[0] = t
            rec.rows_read("orders", 100)
        assert store.progress("p")[0]["rows"] == 0
        ticks[0] = 1.0
        rec.rows_read("orders", 100)
        assert store.progress("p")[0]["rows"] == 400
        ticks[0] = 1.5
        rec.rows_read("orders", 100)
        assert store.progress("p")[0]["rows"] == 400
        rec.stream_state("orders", "caught_up")
        rec.stream_finished("orders", None)
        [last] = store.progress("p")
        assert (last["rows"], last["finished_at"] is not None) == (500, True)

        rec.stream_started("items", None)  # no estimate (an incremental read): nothing recorded
        rec.rows_read("items", 5)
        rec.stream_finished("items", None)
        assert [r["stream"] for r in store.progress("p")] == ["orders"]


def test_a_stopped_or_failed_read_stays_unfinished_and_tenants_are_told_apart(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as store:
        rec = ProgressRecorder(store, "shop", entry=4, tenants=True, clock=lambda: T0, monotonic=lambda: 0.0)
        for name in ("acme/orders", "globex/orders"):
            rec.stream_started(name, 10)
            rec.stream_state(name, "reading")
        rec.stream_state("acme/orders", "stopped")
        rec.stream_finished("acme/orders", None)  # a drain: not complete
        rec.stream_state("globex/orders", "failed")
        rec.stream_finished("globex/orders", "boom")
        got = {(r["tenant"], r["stream"]): r["finished_at"] for r in store.progress("shop")}
        assert got == {("acme", "orders"): None, ("globex", "orders"): None}
        entry = {"id": 4, "pipeline": "shop", "status": "cancelled"}
        assert [p["tenant"] for p in run_progress(store, entry, ("acme",), now=T0)] == ["acme"]
        assert all(p["eta_seconds"] is None for p in run_progress(store, entry, None, now=T0))


def test_status_streams_gain_progress_scoped_to_the_callers_tenants(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as store:
        entry_id, _ = store.enqueue("shop", "shop.yml", command="run")
        assert store.claim("w", 30)["id"] == entry_id  # type: ignore[index]
        for tenant in ("acme", "globex"):
            store.save_progress("shop", "orders", tenant=tenant, entry=entry_id, estimate=100, rows=50, started_at=T0)
        status = {"streams": [{"name": "orders", "tenant": "acme", "rows": 50}]}
        out = with_progress(store, "shop", status, ("acme",), now=T0 + timedelta(seconds=5))
        assert out["streams"] == [{"name": "orders", "tenant": "acme", "rows": 50, "progress": {
            "rows": 50, "estimate": 100, "percent": 50, "eta_seconds": 5.0, "started_at": T0, "finished": False}}]
        assert status["streams"][0].keys() == {"name", "tenant", "rows"}  # the cached status is not changed
        every = with_progress(store, "shop", status, None, now=T0 + timedelta(seconds=5))
        # globex's stream has no checkpoint yet: it is listed with its progress
        assert [(s["tenant"], s["progress"]["percent"]) for s in every["streams"]] == [("acme", 50), ("globex", 50)]


def test_a_worker_that_lost_its_lease_records_nothing_and_the_next_one_counts_on(tmp_path: Path,
                                                                                caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    now = [T0]
    with StateStore(url, clock=lambda: now[0]) as store:
        entry_id, _ = store.enqueue("p", "p.yml", command="run")
        first = store.claim("w1", 30)
        assert first is not None
        with FencedStateStore(url, entry_id=entry_id, owner="w1", epoch=first["epoch"]) as fenced:
            rec = ProgressRecorder(fenced, "p", entry=entry_id, clock=lambda: T0, monotonic=lambda: 0.0)
            rec.stream_started("orders", 1000)
            rec.every = 0.0
            rec.rows_read("orders", 300)
            now[0] = T0 + timedelta(seconds=31)  # w1's lease expired: w2 takes the run over
            second = store.claim("w2", 30)
            assert second is not None and second["epoch"] == first["epoch"] + 1
            with pytest.raises(FencedError):
                fenced.save_progress("p", "orders", tenant=None, entry=entry_id, estimate=1, rows=1, started_at=T0)
            rec.rows_read("orders", 300)  # refused: logged, not raised
        assert "progress of orders not recorded" in caplog.text
        assert store.progress("p")[0]["rows"] == 300
        with FencedStateStore(url, entry_id=entry_id, owner="w2", epoch=second["epoch"]) as fenced:
            later = T0 + timedelta(minutes=1)
            rec = ProgressRecorder(fenced, "p", entry=entry_id, clock=lambda: later, monotonic=lambda: 0.0)
            rec.stream_started("orders", 1000)  # resumed from the checkpoint: counts on from 300
            rec.rows_read("orders", 700)
            rec.stream_state("orders", "caught_up")
            rec.stream_finished("orders", None)
        [done] = store.progress("p")
        assert (done["rows"], done["started_at"], done["finished_at"] is not None) == (1000, T0, True)

"""The scheduler's policies with an injected clock (nothing sleeps): interval, cron with a time
zone, catch-up once, jitter, overlap, after:, on: file, follow back-off, priorities, pauses."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from replicant.service.catalog import Catalog
from replicant.service.scheduler import Scheduler
from replicant.state import StateStore


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 2, 3, 0, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def write(folder: Path, name: str, schedule: str) -> Path:
    path = folder / f"{name}.yml"
    path.write_text(f"""
pipeline: {name}
source: {{type: sqlite, url: "sqlite:///src.db"}}
destinations: [{{name: w, type: duckdb}}]
schedule: {schedule}
""")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "src.db").touch()
    return tmp_path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(folder: Path, clock: Clock) -> Iterator[StateStore]:
    with StateStore(f"sqlite:///{folder / 'state.db'}", clock=clock) as s:
        yield s


def scheduler(folder: Path, store: StateStore, clock: Clock) -> Scheduler:
    catalog = Catalog(folder, store._url.render_as_string(hide_password=False))
    catalog.scan()
    assert not catalog.broken, catalog.broken
    return Scheduler(store, catalog, clock, follow_backoff=60)


def finish(store: StateStore, status: str = "succeeded", rows: int = 1) -> dict:
    entry = store.claim("w", 30)
    assert entry is not None
    store.finish_entry(entry["id"], "w", entry["epoch"], status, result={"rows_read": {"s": rows}})
    return entry


def test_every_fires_at_once_then_each_interval_and_catches_up_once(folder: Path, store: StateStore, clock: Clock) -> None:
    write(folder, "p", "{every: 5m}")
    s = scheduler(folder, store, clock)
    assert len(s.tick()) == 1  # onboarding: at once
    finish(store)
    clock.advance(299)
    assert s.tick() == []
    clock.advance(1)
    assert len(s.tick()) == 1
    finish(store)
    clock.advance(3600)  # down for an hour: 12 ticks missed
    assert len(s.tick()) == 1  # one run, not twelve
    finish(store)
    assert s.tick() == []
    assert store.schedule_state("p")["next_due"] == clock.now + timedelta(minutes=5)


def test_cron_in_its_time_zone(folder: Path, store: StateStore, clock: Clock) -> None:
    write(folder, "p", '{cron: "0 9 * * *", timezone: Europe/Berlin}')  # 09:00 in Berlin = 08:00 UTC in January
    s = scheduler(folder, store, clock)
    assert s.tick() == []
    assert store.schedule_state("p")["next_due"] == datetime(2030, 1, 2, 8, 0, tzinfo=UTC)
    clock.now = datetime(2030, 1, 2, 7, 59, 59, tzinfo=UTC)
    assert s.tick() == []
    clock.now = datetime(2030, 1, 2, 8, 0, 0, tzinfo=UTC)
    assert len(s.tick()) == 1
    assert store.schedule_state("p")["next_due"] == datetime(2030, 1, 3, 8, 0, tzinfo=UTC)


def test_jitter_delays_within_its_bound_reproducibly(folder: Path, store: StateStore, clock: Clock) -> None:
    write(folder, "p", "{every: 60s, jitter: 30s}")
    s = scheduler(folder, store, clock)
    s.tick()
    due = store.schedule_state("p")["next_due"]
    assert clock.now + timedelta(seconds=60) <= due <= clock.now + timedelta(seconds=90)
    assert due != clock.now + timedelta(seconds=60)  # some jitter was drawn


def test_overlap_a_run_and_at_most_one_queued(folder: Path, store: StateStore, clock: Clock) -> None:
    write(folder, "p", "{every: 1m}")
    s = scheduler(folder, store, clock)
    s.tick()
    running = store.claim("w", 600)
    assert running is not None
    for _ in range(5):  # the run takes five intervals
        clock.advance(60)
        s.tick()
    entries = store.queue_entries(pipeline="p")
    assert sorted(e["status"] for e in entries) == ["queued", "running"]
    assert s.trigger("p", trigger="webhook")[1] is False  # coalesced with the queued one


def test_after_an_upstream_run_that_appended_rows(folder: Path, store: StateStore, clock: Clock) -> None:
    write(folder, "up", "{webhook: true, secret: whsec_c2VjcmV0}")
    write(folder, "down", "{after: up}")
    s = scheduler(folder, store, clock)
    assert s.tick() == []
    s.trigger("up")
    finish(store, rows=0)  # appended nothing: nothing to do downstream
    assert s.tick() == []
    s.trigger("up")
    finish(store, rows=7)
    queued = s.tick()
    assert [store.queue_entry(i)["pipeline"] for i in queued] == ["down"]  # type: ignore[index]
    assert store.queue_entry(queued[0])["trigger"] == "after"  # type: ignore[index]
    assert s.tick() == []  # once


def test_a_file_dropped_in_the_watched_folder_triggers_once(folder: Path, store: StateStore, clock: Clock) -> None:
    inbox = folder / "inbox"
    inbox.mkdir()
    write(folder, "p", '{on: file, path: inbox, glob: "*.csv"}')
    s = scheduler(folder, store, clock)
    assert s.tick() == []  # empty folder
    (inbox / "ignored.txt").write_text("x")
    assert s.tick() == []
    (inbox / "a.csv").write_text("id\n1\n")
    assert len(s.tick()) == 1
    finish(store)
    assert s.tick() == []  # the same file: once
    (inbox / "b.csv").write_text("id\n2\n")
    assert len(s.tick()) == 1


def test_follow_is_restarted_with_back_off(folder: Path, store: StateStore, clock: Clock) -> None:
    write(folder, "p", "{follow: true}")
    s = scheduler(folder, store, clock)
    s.tick()
    assert s.tick() == []  # one follow entry at a time
    entry = finish(store, status="failed")
    assert entry["command"] == "follow"
    [again] = s.tick()
    wait = store.queue_entry(again)["not_before"] - clock.now  # type: ignore[index]
    assert timedelta(seconds=0.5) <= wait <= timedelta(seconds=60)
    assert store.claim("w", 30) is None  # not before its back-off
    clock.advance(wait.total_seconds())
    assert store.claim("w", 30) is not None


def test_onboarding_runs_yield_to_interval_syncs(folder: Path, store: StateStore, clock: Clock) -> None:
    write(folder, "old", "{every: 1m}")
    write(folder, "new", "{every: 1m}")
    store.finish_run(store.start_run("old"), "succeeded")  # `old` ran before
    s = scheduler(folder, store, clock)
    s.tick()
    first = store.claim("w", 30)
    assert first is not None and first["pipeline"] == "old"


def test_a_paused_pipeline_is_not_scheduled(folder: Path, store: StateStore, clock: Clock) -> None:
    write(folder, "p", "{every: 1m}")
    s = scheduler(folder, store, clock)
    store.set_paused("p", True)
    assert s.tick() == []
    store.set_paused("p", False)
    assert len(s.tick()) == 1


def _pending_source() -> type:
    """The toy Arrow-folder source with ``pending()``: the seam ``on: file`` asks when no
    ``path`` is given (the files source implements it)."""
    from sources.toy import ArrowFolderSource

    class PendingArrowSource(ArrowFolderSource):
        seen: ClassVar[set[str]] = set()

        def pending(self) -> bool:
            names = {p.name for p in self._folder().glob("*.arrow")}
            new = names - PendingArrowSource.seen
            PendingArrowSource.seen |= names
            return bool(new)

    return PendingArrowSource


def test_on_file_asks_a_source_that_lists_its_input(folder: Path, store: StateStore, clock: Clock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    from replicant import registry

    cls = _pending_source()
    monkeypatch.setitem(registry.SOURCES, "arrow_pending", f"{__name__}:_PENDING")
    monkeypatch.setitem(globals(), "_PENDING", cls)
    drop = folder / "drop"
    drop.mkdir()
    (folder / "p.yml").write_text(f"""
pipeline: p
source: {{type: arrow_pending, folder: "{drop}"}}
destinations: [{{name: w, type: duckdb}}]
schedule: {{on: file}}
""")
    s = scheduler(folder, store, clock)
    assert s.tick() == []
    with pa.ipc.new_file(drop / "orders.arrow", pa.schema([("id", pa.int64())])) as w:
        w.write_table(pa.table({"id": [1, 2]}))
    assert len(s.tick()) == 1
    finish(store)
    assert s.tick() == []

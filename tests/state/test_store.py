"""StateStore against a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from replicant.errors import ConfigError, ConnectionError
from replicant.state import Checkpoint, DeadLetter, DestinationOffset, StateStore, schema

UTC = UTC
LATEST = len(schema.MIGRATIONS)


class FakeClock:
    """A settable clock; ``tz`` lets a test hand the store non-UTC aware times."""

    def __init__(self, tz: timezone = UTC) -> None:
        self.now = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC).astimezone(tz)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """A URL for a new, empty store: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{request.getfixturevalue('sqlite_path')}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def make_store(store_url: str) -> Iterator[Callable[..., StateStore]]:
    """Opens stores on ``store_url``; all are closed at teardown (before the database is dropped)."""
    opened: list[StateStore] = []

    def make(**kwargs: object) -> StateStore:
        store = StateStore(store_url, **kwargs).open()  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., StateStore]) -> StateStore:
    return make_store()


def raw_engine(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


# --------------------------------------------------------------------------- schema


def test_open_creates_prefixed_tables_and_reopen_is_idempotent(store_url: str) -> None:
    with StateStore(store_url) as first:
        assert first.schema_version() == LATEST
        first.save_checkpoint("p", "s", {"k": 1}, rows_total=1, log_offset=1)
    with StateStore(store_url) as again:  # migrating again must neither fail nor redo work
        assert again.schema_version() == LATEST
        assert again.checkpoint("p", "s").position == {"k": 1}
        again.open()  # open() on an open store is a no-op

    engine = raw_engine(store_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version FROM replicant_schema_version")).scalars().all()
    finally:
        engine.dispose()
    assert tables == {
        "replicant_schema_version",
        "replicant_runs",
        "replicant_checkpoints",
        "replicant_offsets",
        "replicant_dead_letters",
        "replicant_leases",
        "replicant_paused",
        "replicant_validations",
        "replicant_files_seen",
        # the service's (state/service_tables.py)
        "replicant_queue",
        "replicant_schedules",
        "replicant_controls",
        "replicant_workers",
        "replicant_hook_ids",
        "replicant_sealed",
        "replicant_tokens",
        "replicant_audit",
        "replicant_stream_progress",  # state/progress.py
    }
    assert sorted(versions) == list(range(1, LATEST + 1))


def test_a_paused_stream_is_kept_per_destination_until_resumed(store_url: str) -> None:
    with StateStore(store_url) as store:
        store.pause_stream("p", "d1", "s", "column n changed", tenant="acme")
        store.pause_stream("p", "d1", "s", "column n changed again", tenant="acme")  # the newest reason
        store.pause_stream("p", "d2", "s", "fatal")
        state = store.pipeline_state("p")
        assert state.tenant("acme").paused[("d1", "s")].reason == "column n changed again"
        assert list(state.tenant(None).paused) == [("d2", "s")]
        store.resume_stream("p", "d1", "s", tenant="acme")
        store.resume_stream("p", "d1", "s", tenant="acme")  # no pause: a no-op
        assert not store.pipeline_state("p").tenant("acme").paused
        assert list(store.pipeline_state("p").tenant(None).paused) == [("d2", "s")]


def test_store_written_by_newer_replicant_is_refused(store_url: str) -> None:
    StateStore(store_url).open().close()
    engine = raw_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO replicant_schema_version (version, applied_at) VALUES (:v, :t)"),
                {"v": LATEST + 1, "t": datetime.now(UTC).replace(tzinfo=None)},
            )
    finally:
        engine.dispose()

    store = StateStore(store_url)
    with pytest.raises(ConfigError, match="upgrade replicant") as caught:
        store.open()
    assert f"schema version {LATEST + 1}" in str(caught.value)
    with pytest.raises(RuntimeError, match="not open"):  # a failed open leaves it closed
        store.runs("p")


def test_failed_migration_rolls_back_entirely(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    StateStore(store_url).open().close()

    def broken(conn: sa.Connection) -> None:
        conn.execute(sa.text("CREATE TABLE replicant_half_done (x INTEGER)"))
        raise RuntimeError("migration bug")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        StateStore(store_url).open()
    monkeypatch.undo()

    with StateStore(store_url) as store:
        assert store.schema_version() == LATEST
    engine = raw_engine(store_url)
    try:
        assert not sa.inspect(engine).has_table("replicant_half_done")
    finally:
        engine.dispose()


def test_sqlite_store_uses_wal(sqlite_path) -> None:
    target = sqlite_path.parent / "nested" / "state.db"  # parent folders are created
    with StateStore(f"sqlite:///{target}") as store:
        store.start_run("p")
    conn = sqlite3.connect(target)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    with StateStore(target) as by_path:  # a bare path means a SQLite file
        assert by_path.last_run("p")["status"] == "running"


def test_urls_are_normalised_and_checked_without_connecting() -> None:
    store = StateStore("postgresql://u:secret@127.0.0.1:1/db")  # nothing listens on port 1
    assert store.dialect == "postgresql"
    assert store.url == "postgresql+psycopg://u:***@127.0.0.1:1/db"
    assert "secret" not in repr(store)
    with pytest.raises(RuntimeError, match="call open"):
        store.last_run("p")
    with pytest.raises(ConnectionError) as caught:
        store.open()
    assert "127.0.0.1" in str(caught.value)
    assert "secret" not in str(caught.value)

    assert StateStore("postgresql+psycopg://h/db").url == "postgresql+psycopg://h/db"
    assert StateStore("sqlite:////tmp/x.db").dialect == "sqlite"
    for bad in ("mysql://root@h/db", "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ConfigError):
            StateStore(bad)
    with pytest.raises(ConfigError) as caught_config:
        StateStore("oracle://u:secret@h/db")
    assert "secret" not in str(caught_config.value)


# --------------------------------------------------------------------------- runs


def test_run_lifecycle(make_store: Callable[..., StateStore]) -> None:
    clock = FakeClock(timezone(timedelta(hours=2)))  # aware but not UTC: stored as the same instant
    store = make_store(clock=clock)
    assert store.last_run("shop") is None

    first = store.start_run("shop", owner="host-1:123")
    running = store.last_run("shop")
    assert running["id"] == first
    assert running["status"] == "running"
    assert running["command"] == "run" and running["owner"] == "host-1:123"
    assert running["started_at"] == clock.now and running["started_at"].tzinfo == UTC
    assert running["finished_at"] is None and running["error"] is None

    clock.advance(90)
    store.finish_run(first, "succeeded", rows=1234)
    second = store.start_run("shop", command="replay")
    store.start_run("other")
    clock.advance(5)
    store.finish_run(second, "interrupted", error="KeyboardInterrupt", rows=7)

    runs = store.runs("shop")
    assert [r["id"] for r in runs] == [second, first]  # newest first, other pipelines excluded
    assert runs[1]["status"] == "succeeded" and runs[1]["rows"] == 1234
    assert runs[1]["finished_at"] - runs[1]["started_at"] == timedelta(seconds=90)
    assert runs[0] == {**runs[0], "command": "replay", "status": "interrupted", "error": "KeyboardInterrupt", "rows": 7}
    assert store.runs("shop", limit=1) == [runs[0]]
    assert store.last_run("shop") == runs[0]

    with pytest.raises(ValueError, match="status"):
        store.finish_run(first, "done")
    with pytest.raises(ValueError, match="no run"):
        store.finish_run(first + 1000, "failed")


def test_run_error_is_stored_redacted(store: StateStore, store_url: str) -> None:
    run = store.start_run("shop")
    store.finish_run(run, "failed", error="could not copy to postgresql://u:pw@h/db: timeout", rows=0)
    assert store.last_run("shop")["error"] == "could not copy to postgresql://u:***@h/db: timeout"

    engine = raw_engine(store_url)  # check the stored bytes, not just what the API returns
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT error FROM replicant_runs")).scalar_one()
    finally:
        engine.dispose()
    assert ":pw@" not in stored and "u:***@h" in stored


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(make_store: Callable[..., StateStore]) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    assert store.checkpoint("shop", "public.orders") is None
    assert store.checkpoints("shop") == {}

    position = {
        "lsn": "16/B374D848",
        "chunk": {"key": [1, "a", None], "done": False, "ratio": 0.25},
        "tables": [{"name": "ünïcode ✓", "ids": list(range(5))}],
        "big": 2**62,
    }
    store.save_checkpoint("shop", "public.orders", position, rows_total=10, log_offset=3)
    saved = store.checkpoint("shop", "public.orders")
    assert saved == Checkpoint(position=position, rows_total=10, log_offset=3, updated_at=clock.now)

    clock.advance(1)
    store.save_checkpoint("shop", "public.orders", {"lsn": "16/C0"}, rows_total=25, log_offset=9)
    store.save_checkpoint("shop", "customers", None, rows_total=0, log_offset=0)
    store.save_checkpoint("other", "public.orders", {"x": 1}, rows_total=1, log_offset=1)

    assert store.checkpoints("shop") == {
        "customers": Checkpoint(None, 0, 0, clock.now),
        "public.orders": Checkpoint({"lsn": "16/C0"}, 25, 9, clock.now),
    }


# --------------------------------------------------------------------------- offsets


def test_destination_offsets(make_store: Callable[..., StateStore]) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    assert store.offsets("shop") == {}
    store.save_offset("shop", "warehouse", "orders", 100, rows_total=1000)
    store.save_offset("shop", "push", "orders", 40, rows_total=400)
    clock.advance(2)
    store.save_offset("shop", "warehouse", "orders", 120, rows_total=1200)  # replaces
    store.save_offset("other", "warehouse", "orders", 1, rows_total=1)

    found = store.offsets("shop")
    assert found == {
        ("warehouse", "orders"): (120, 1200, clock.now),
        ("push", "orders"): (40, 400, clock.now - timedelta(seconds=2)),
    }
    offset, _rows_total, updated_at = found[("push", "orders")]
    assert isinstance(found[("push", "orders")], DestinationOffset) and offset == 40
    assert updated_at.tzinfo == UTC


# --------------------------------------------------------------------------- dead letters


def test_dead_letters_bulk_insert_list_and_count(make_store: Callable[..., StateStore]) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    when = datetime(2029, 5, 6, 7, 8, 9, tzinfo=UTC)
    letters = [
        DeadLetter(
            reason=f"bad value {i} (password=hunter2)",
            payload={"id": i, "nested": {"tags": ["a", "b"]}, "at": when},
            origin=f"orders.csv:{i + 2}",
            destination="push" if i % 2 else None,
            created_at=when if i == 0 else None,
        )
        for i in range(300)
    ]

    statements: list[tuple[str, bool]] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if "replicant_dead_letters" in statement:
            statements.append((statement.split()[0].upper(), executemany))

    sa.event.listen(sa.Engine, "before_cursor_execute", count)
    try:
        assert store.add_dead_letters("shop", "orders", letters) == 300
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", count)
    assert statements == [("INSERT", True)]  # one executemany for the whole list

    assert store.add_dead_letters("shop", "orders", []) == 0
    store.add_dead_letters("shop", "customers", letters[:3])
    store.add_dead_letters("other", "orders", letters[:1])
    assert store.dead_letter_count("shop") == {"orders": 300, "customers": 3}
    assert store.dead_letter_count("nothing") == {}

    recent = store.dead_letters("shop", "orders", limit=5)
    assert [d["origin"] for d in recent] == [f"orders.csv:{i + 2}" for i in range(299, 294, -1)]  # newest first
    assert recent[0] == {
        "id": recent[0]["id"],
        "tenant": None,
        "stream": "orders",
        "destination": "push",
        "origin": "orders.csv:301",
        "reason": "bad value 299 (password=***",
        "payload": {"id": 299, "nested": {"tags": ["a", "b"]}, "at": str(when)},
        "created_at": clock.now,
        "attempts": 0,
        "retried_at": None,
    }
    oldest = store.dead_letters("shop", "orders", limit=300)[-1]
    assert oldest["created_at"] == when and oldest["destination"] is None
    assert len(store.dead_letters("shop")) == 100
    assert {d["stream"] for d in store.dead_letters("shop", limit=1000)} == {"orders", "customers"}


def test_naive_timestamps_are_refused(store: StateStore) -> None:
    naive = DeadLetter(reason="r", payload={}, origin="f:1", created_at=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="naive datetime"):
        store.add_dead_letters("shop", "orders", [naive])
    assert store.dead_letter_count("shop") == {}


# --------------------------------------------------------------------------- leases


def test_lease_between_two_owners(make_store: Callable[..., StateStore]) -> None:
    store = make_store(clock=FakeClock())
    assert store.lease_holder("pipeline:shop") is None
    assert store.acquire_lease("pipeline:shop", "a", 30)
    assert not store.acquire_lease("pipeline:shop", "b", 30)
    assert store.lease_holder("pipeline:shop") == "a"
    assert store.acquire_lease("pipeline:shop", "a", 30)  # re-acquiring one's own lease extends it
    assert store.acquire_lease("pipeline:other", "b", 30)  # leases are independent by name

    assert not store.renew_lease("pipeline:shop", "b", 30)
    assert not store.release_lease("pipeline:shop", "b")
    assert store.lease_holder("pipeline:shop") == "a"
    assert store.renew_lease("pipeline:shop", "a", 30)

    assert store.release_lease("pipeline:shop", "a")
    assert store.lease_holder("pipeline:shop") is None
    assert store.acquire_lease("pipeline:shop", "b", 30)
    assert store.lease_holder("pipeline:shop") == "b"
    with pytest.raises(ValueError, match="positive"):
        store.acquire_lease("x", "a", 0)


def test_expired_lease_is_taken_over(make_store: Callable[..., StateStore]) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    assert store.acquire_lease("work", "a", 10)
    clock.advance(6)
    assert store.renew_lease("work", "a", 10)  # now expires at t=16
    clock.advance(9.999)
    assert not store.acquire_lease("work", "b", 10)
    assert store.lease_holder("work") == "a"

    clock.advance(0.001)  # t=16: expired
    assert store.lease_holder("work") is None
    assert not store.renew_lease("work", "a", 10)  # too late: "a" must stop
    assert store.acquire_lease("work", "b", 10)
    assert store.lease_holder("work") == "b"
    assert not store.renew_lease("work", "a", 10)
    assert not store.release_lease("work", "a")
    assert store.lease_holder("work") == "b"


def test_lease_expires_on_the_real_clock(store: StateStore) -> None:
    assert store.acquire_lease("work", "a", 1.0)
    assert not store.acquire_lease("work", "b", 1.0)
    deadline = time.monotonic() + 15
    while not store.acquire_lease("work", "b", 30):
        assert time.monotonic() < deadline, "the expired lease was never taken over"
        time.sleep(0.05)
    assert store.lease_holder("work") == "b"


def test_concurrent_acquire_yields_one_holder(make_store: Callable[..., StateStore]) -> None:
    stores = [make_store() for _ in range(3)]  # like separate processes: separate engines
    threads_count = 6
    for round_ in range(3):
        name = f"lease-{round_}"
        barrier = threading.Barrier(threads_count)
        won: list[str] = []
        errors: list[BaseException] = []

        def contend(
            owner: str,
            store: StateStore,
            name: str = name,
            barrier: threading.Barrier = barrier,
            won: list[str] = won,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                barrier.wait(timeout=30)
                if store.acquire_lease(name, owner, 60):
                    won.append(owner)
            except BaseException as exc:  # noqa: BLE001 - reported below: a thread's failure must fail the test
                errors.append(exc)

        threads = [
            threading.Thread(target=contend, args=(f"owner-{i}", stores[i % len(stores)]))
            for i in range(threads_count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        assert len(won) == 1, won
        assert stores[0].lease_holder(name) == won[0]

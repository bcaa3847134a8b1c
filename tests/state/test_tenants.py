"""Identity (pipeline, tenant, stream) in the state store, and the migration from version 1."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from replicant.state import ALL_TENANTS, Checkpoint, DeadLetter, DestinationOffset, StateStore, TenantState, schema

CAPTURE = "(capture)"
T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{request.getfixturevalue('sqlite_path')}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def make_store(store_url: str) -> Iterator[Callable[..., StateStore]]:
    opened: list[StateStore] = []

    def make(**kwargs: object) -> StateStore:
        store = StateStore(store_url, **kwargs).open()  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def raw_engine(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


# --------------------------------------------------------------------------- migration 1 → 2

# The version 1 schema exactly as replicant 1 created it (CREATE statements SQLAlchemy emitted),
# written out so that later changes to the schema module cannot change what this test starts from.
_V1_SQLITE = """
CREATE TABLE replicant_schema_version (version INTEGER NOT NULL, applied_at DATETIME NOT NULL, PRIMARY KEY (version));
CREATE TABLE replicant_runs (
    id INTEGER NOT NULL, pipeline VARCHAR(255) NOT NULL, command VARCHAR(32) NOT NULL, owner VARCHAR(255),
    status VARCHAR(16) NOT NULL, started_at DATETIME NOT NULL, finished_at DATETIME,
    rows BIGINT DEFAULT '0' NOT NULL, error TEXT, PRIMARY KEY (id));
CREATE INDEX replicant_runs_pipeline_idx ON replicant_runs (pipeline, id);
CREATE TABLE replicant_checkpoints (
    pipeline VARCHAR(255) NOT NULL, stream VARCHAR(255) NOT NULL, position TEXT, rows_total BIGINT NOT NULL,
    log_offset BIGINT NOT NULL, updated_at DATETIME NOT NULL, PRIMARY KEY (pipeline, stream));
CREATE TABLE replicant_offsets (
    pipeline VARCHAR(255) NOT NULL, destination VARCHAR(255) NOT NULL, stream VARCHAR(255) NOT NULL,
    log_offset BIGINT NOT NULL, rows_total BIGINT NOT NULL, updated_at DATETIME NOT NULL,
    PRIMARY KEY (pipeline, destination, stream));
CREATE TABLE replicant_dead_letters (
    id INTEGER NOT NULL, pipeline VARCHAR(255) NOT NULL, stream VARCHAR(255) NOT NULL, destination VARCHAR(255),
    origin TEXT NOT NULL, reason TEXT NOT NULL, payload TEXT NOT NULL, created_at DATETIME NOT NULL, PRIMARY KEY (id));
CREATE INDEX replicant_dead_letters_stream_idx ON replicant_dead_letters (pipeline, stream, id);
CREATE TABLE replicant_leases (
    name VARCHAR(255) NOT NULL, owner VARCHAR(255) NOT NULL, acquired_at DATETIME NOT NULL,
    expires_at DATETIME NOT NULL, PRIMARY KEY (name));
"""

_V1_POSTGRESQL = """
CREATE TABLE replicant_schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (version));
CREATE TABLE replicant_runs (
    id BIGSERIAL NOT NULL, pipeline VARCHAR(255) NOT NULL, command VARCHAR(32) NOT NULL, owner VARCHAR(255),
    status VARCHAR(16) NOT NULL, started_at TIMESTAMP WITH TIME ZONE NOT NULL, finished_at TIMESTAMP WITH TIME ZONE,
    rows BIGINT DEFAULT '0' NOT NULL, error TEXT, PRIMARY KEY (id));
CREATE INDEX replicant_runs_pipeline_idx ON replicant_runs (pipeline, id);
CREATE TABLE replicant_checkpoints (
    pipeline VARCHAR(255) NOT NULL, stream VARCHAR(255) NOT NULL, position TEXT, rows_total BIGINT NOT NULL,
    log_offset BIGINT NOT NULL, updated_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (pipeline, stream));
CREATE TABLE replicant_offsets (
    pipeline VARCHAR(255) NOT NULL, destination VARCHAR(255) NOT NULL, stream VARCHAR(255) NOT NULL,
    log_offset BIGINT NOT NULL, rows_total BIGINT NOT NULL, updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (pipeline, destination, stream));
CREATE TABLE replicant_dead_letters (
    id BIGSERIAL NOT NULL, pipeline VARCHAR(255) NOT NULL, stream VARCHAR(255) NOT NULL, destination VARCHAR(255),
    origin TEXT NOT NULL, reason TEXT NOT NULL, payload TEXT NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (id));
CREATE INDEX replicant_dead_letters_stream_idx ON replicant_dead_letters (pipeline, stream, id);
CREATE TABLE replicant_leases (
    name VARCHAR(255) NOT NULL, owner VARCHAR(255) NOT NULL, acquired_at TIMESTAMP WITH TIME ZONE NOT NULL,
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (name));
"""

_V1_ROWS = """
INSERT INTO replicant_schema_version (version, applied_at) VALUES (1, '2029-01-01 00:00:00.000000');
INSERT INTO replicant_runs (pipeline, command, owner, status, started_at, finished_at, rows, error) VALUES
    ('shop', 'run', 'host:1', 'succeeded', '2029-01-01 10:00:00.000000', '2029-01-01 10:01:00.000000', 42, NULL),
    ('shop', 'follow', NULL, 'running', '2029-01-02 10:00:00.000000', NULL, 0, NULL);
INSERT INTO replicant_checkpoints (pipeline, stream, position, rows_total, log_offset, updated_at) VALUES
    ('shop', 'public.orders', '{"lsn": "16/B374D848"}', 40, 7, '2029-01-01 10:01:00.000000'),
    ('shop', '(capture)', '{"lsn": "16/B374D900"}', 42, 0, '2029-01-01 10:01:00.000000'),
    ('shop', 'customers', NULL, 0, 0, '2029-01-01 10:01:00.000000');
INSERT INTO replicant_offsets (pipeline, destination, stream, log_offset, rows_total, updated_at) VALUES
    ('shop', 'warehouse', 'public.orders', 6, 40, '2029-01-01 10:01:00.000000');
INSERT INTO replicant_dead_letters (pipeline, stream, destination, origin, reason, payload, created_at) VALUES
    ('shop', 'public.orders', 'warehouse', 'row 3', 'bad date', '{"id": 3}', '2029-01-01 10:00:30.000000'),
    ('shop', 'public.orders', NULL, 'row 4', 'bad date', '{"id": 4}', '2029-01-01 10:00:31.000000');
INSERT INTO replicant_leases (name, owner, acquired_at, expires_at) VALUES
    ('pipeline:shop', 'host:1', '2029-01-01 10:00:00.000000', '2099-01-01 10:00:00.000000');
"""


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _build_v1(url: str) -> None:
    engine = raw_engine(url)
    ddl, rows = _V1_SQLITE, _V1_ROWS
    if engine.dialect.name == "postgresql":  # timestamptz literals in UTC whatever the server's TimeZone
        ddl, rows = _V1_POSTGRESQL, re.sub(r"(\d\d:\d\d:\d\d\.\d{6})'", r"\1+00'", _V1_ROWS)
    try:
        with engine.begin() as conn:
            for statement in (ddl + rows).split(";"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def test_version_1_store_is_migrated_keeping_every_row(store_url: str) -> None:
    _build_v1(store_url)
    clock = FakeClock()
    with StateStore(store_url, clock=clock) as store:
        assert store.schema_version() == len(schema.MIGRATIONS)

        # every row kept, readable through the API as tenant None
        assert store.checkpoints("shop") == {
            "(capture)": Checkpoint({"lsn": "16/B374D900"}, 42, 0, _at("2029-01-01 10:01:00")),
            "customers": Checkpoint(None, 0, 0, _at("2029-01-01 10:01:00")),
            "public.orders": Checkpoint({"lsn": "16/B374D848"}, 40, 7, _at("2029-01-01 10:01:00")),
        }
        assert store.checkpoint("shop", CAPTURE) == Checkpoint({"lsn": "16/B374D900"}, 42, 0, _at("2029-01-01 10:01:00"))
        assert store.offsets("shop") == {("warehouse", "public.orders"): (6, 40, _at("2029-01-01 10:01:00"))}
        assert store.dead_letter_count("shop") == {"public.orders": 2}
        letters = store.dead_letters("shop", "public.orders")
        assert [(d["origin"], d["destination"], d["payload"]) for d in letters] == [
            ("row 4", None, {"id": 4}),
            ("row 3", "warehouse", {"id": 3}),
        ]
        assert [(d["attempts"], d["retried_at"]) for d in letters] == [(0, None), (0, None)]  # version 4
        runs = store.runs("shop")
        assert [(r["command"], r["status"], r["rows"], r["tenant"]) for r in runs] == [
            ("follow", "running", 0, None),
            ("run", "succeeded", 42, None),
        ]
        assert runs[1]["started_at"] == _at("2029-01-01 10:00:00") and runs[1]["owner"] == "host:1"
        assert store.lease_holder("pipeline:shop") == "host:1"

        # the migrated tables take the new key: the same stream under a tenant is another row
        store.save_checkpoint("shop", "public.orders", {"lsn": "1/0"}, rows_total=1, log_offset=1, tenant="acme")
        store.save_offset("shop", "warehouse", "public.orders", 0, rows_total=1, tenant="acme")
        assert store.checkpoint("shop", "public.orders").position == {"lsn": "16/B374D848"}
        assert store.checkpoint("shop", "public.orders", tenant="acme").position == {"lsn": "1/0"}
        # ids keep counting after the rows copied over (SQLite rebuilt the keyed tables)
        new_run = store.start_run("shop", tenant="acme")
        assert new_run > max(r["id"] for r in runs)

    engine = raw_engine(store_url)
    try:
        inspector = sa.inspect(engine)
        assert inspector.get_pk_constraint("replicant_checkpoints")["constrained_columns"] == [
            "pipeline",
            "tenant",
            "stream",
        ]
        assert inspector.get_pk_constraint("replicant_offsets")["constrained_columns"] == [
            "pipeline",
            "tenant",
            "destination",
            "stream",
        ]
        for table in ("replicant_runs", "replicant_checkpoints", "replicant_offsets", "replicant_dead_letters"):
            tenant = {c["name"]: c for c in inspector.get_columns(table)}["tenant"]
            assert tenant["nullable"] is False, table
        indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("replicant_dead_letters")}
        assert indexes == {"replicant_dead_letters_tenant_stream_idx": ["pipeline", "tenant", "stream", "id"]}
        with engine.connect() as conn:
            tenants = conn.exec_driver_sql("SELECT DISTINCT tenant FROM replicant_dead_letters").scalars().all()
            versions = conn.exec_driver_sql("SELECT version FROM replicant_schema_version ORDER BY 1").scalars().all()
    finally:
        engine.dispose()
    assert tenants == [""]
    assert versions == list(range(1, len(schema.MIGRATIONS) + 1))

    # opening again is a no-op: nothing re-applied, nothing lost
    with StateStore(store_url, clock=clock) as again:
        assert again.schema_version() == len(schema.MIGRATIONS)
        assert again.checkpoint("shop", "public.orders", tenant="acme").position == {"lsn": "1/0"}
        assert len(again.checkpoints("shop")) == 3
        assert len(again.runs("shop")) == 3


def test_fresh_store_has_the_migrated_schema(store_url: str) -> None:
    """A new store runs every migration: its tables equal those the table objects describe."""
    StateStore(store_url).open().close()
    engine = raw_engine(store_url)
    try:
        inspector = sa.inspect(engine)
        fresh = {t: sorted(c["name"] for c in inspector.get_columns(t)) for t in inspector.get_table_names()}
    finally:
        engine.dispose()
    for table in schema.metadata.sorted_tables:
        assert fresh[table.name] == sorted(c.name for c in table.columns), table.name


# --------------------------------------------------------------------------- keyed by tenant


def test_checkpoints_offsets_and_dead_letters_are_kept_per_tenant(make_store: Callable[..., StateStore]) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    store.save_checkpoint("shop", "orders", {"id": 1}, rows_total=1, log_offset=1)
    store.save_checkpoint("shop", "orders", {"id": 10}, rows_total=10, log_offset=2, tenant="acme")
    store.save_checkpoint("shop", "orders", {"id": 20}, rows_total=20, log_offset=3, tenant="globex")
    store.save_checkpoints("shop", [("orders", {"id": 11}, 11, 4), ("customers", None, 0, 0)], tenant="acme")

    assert store.checkpoint("shop", "orders") == Checkpoint({"id": 1}, 1, 1, T0)
    assert store.checkpoint("shop", "orders", tenant="acme") == Checkpoint({"id": 11}, 11, 4, T0)
    assert store.checkpoint("shop", "orders", tenant="globex") == Checkpoint({"id": 20}, 20, 3, T0)
    assert store.checkpoint("shop", "orders", tenant="initech") is None
    assert store.checkpoints("shop") == {"orders": Checkpoint({"id": 1}, 1, 1, T0)}
    assert list(store.checkpoints("shop", tenant="acme")) == ["customers", "orders"]

    store.save_offset("shop", "warehouse", "orders", 5, rows_total=50)
    store.save_offset("shop", "warehouse", "orders", 7, rows_total=70, tenant="acme")
    assert store.offsets("shop") == {("warehouse", "orders"): DestinationOffset(5, 50, T0)}
    assert store.offsets("shop", tenant="acme") == {("warehouse", "orders"): DestinationOffset(7, 70, T0)}
    assert store.offsets("shop", tenant="globex") == {}

    letter = DeadLetter(reason="bad", payload={"id": 1}, origin="row 1", destination="warehouse")
    assert store.add_dead_letters("shop", "orders", [letter, letter], tenant="acme") == 2
    store.add_dead_letters("shop", "orders", [letter])
    assert store.dead_letter_count("shop") == {"orders": 1}
    assert store.dead_letter_count("shop", tenant="acme") == {"orders": 2}
    assert store.dead_letter_count("shop", tenant="globex") == {}
    assert len(store.dead_letters("shop", "orders", tenant="acme")) == 2
    assert len(store.dead_letters("shop", tenant="acme")) == 2
    assert len(store.dead_letters("shop")) == 1

    for bad in ("", 3):
        with pytest.raises(ValueError, match="tenant must be a non-empty string"):
            store.checkpoint("shop", "orders", tenant=bad)  # type: ignore[arg-type]


def test_one_capture_checkpoint_per_tenant_feed(make_store: Callable[..., StateStore]) -> None:
    """Each tenant's source feed saves its "(capture)" checkpoint with its stream checkpoints
    in one transaction; feeds of different tenants never overwrite each other."""
    store = make_store(clock=FakeClock())
    for tenant, lsn in (("acme", "0/A"), ("globex", "0/B"), (None, "0/C")):
        store.save_checkpoints("shop", [(CAPTURE, {"lsn": lsn}, 3, 0), ("orders", {"lsn": lsn}, 3, 1)], tenant=tenant)
    store.save_checkpoint("shop", CAPTURE, {"lsn": "0/AA"}, rows_total=4, log_offset=0, tenant="acme")

    assert store.checkpoint("shop", CAPTURE, tenant="acme").position == {"lsn": "0/AA"}
    assert store.checkpoint("shop", CAPTURE, tenant="globex").position == {"lsn": "0/B"}
    assert store.checkpoint("shop", CAPTURE).position == {"lsn": "0/C"}
    assert store.checkpoint("shop", "orders", tenant="acme").position == {"lsn": "0/A"}
    state = store.pipeline_state("shop")
    assert {t: s.checkpoints[CAPTURE].position for t, s in state.tenants.items()} == {
        None: {"lsn": "0/C"},
        "acme": {"lsn": "0/AA"},
        "globex": {"lsn": "0/B"},
    }


def test_runs_carry_their_tenant(make_store: Callable[..., StateStore]) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    whole = store.start_run("shop")
    acme = store.start_run("shop", tenant="acme", command="resync")
    store.finish_run(acme, "failed", error="boom")

    assert [(r["id"], r["tenant"]) for r in store.runs("shop")] == [(acme, "acme"), (whole, None)]
    assert store.runs("shop", tenant=ALL_TENANTS) == store.runs("shop")
    assert [r["id"] for r in store.runs("shop", tenant="acme")] == [acme]
    assert [r["id"] for r in store.runs("shop", tenant=None)] == [whole]
    assert store.last_run("shop")["id"] == acme
    assert store.last_run("shop", tenant=None)["id"] == whole
    assert store.last_run("shop", tenant="globex") is None


def test_pipeline_state_reads_every_tenant_at_once(make_store: Callable[..., StateStore]) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    assert store.pipeline_state("shop").tenants == {}
    assert store.pipeline_state("shop").last_run is None
    assert store.pipeline_state("shop").tenant("acme") == TenantState(tenant="acme")

    first = store.start_run("shop")
    store.finish_run(first, "succeeded", rows=3)
    store.save_checkpoint("shop", "orders", {"id": 3}, rows_total=3, log_offset=1)
    store.save_offset("shop", "warehouse", "orders", 0, rows_total=3)
    clock.advance(1)
    acme_run = store.start_run("shop", tenant="acme")
    store.save_checkpoint("shop", "orders", {"id": 9}, rows_total=9, log_offset=2, tenant="acme")
    store.save_checkpoint("shop", CAPTURE, {"lsn": "0/1"}, rows_total=9, log_offset=0, tenant="acme")
    store.save_offset("shop", "warehouse", "orders", 1, rows_total=9, tenant="acme")
    store.save_offset("shop", "push", "orders", 0, rows_total=4, tenant="acme")
    letter = DeadLetter(reason="bad", payload={}, origin="row 1")
    store.add_dead_letters("shop", "orders", [letter] * 3, tenant="acme")
    store.add_dead_letters("shop", "customers", [letter], tenant="zeta")
    store.save_checkpoint("other", "orders", {"id": 1}, rows_total=1, log_offset=1, tenant="acme")

    state = store.pipeline_state("shop")
    assert state.pipeline == "shop"
    assert list(state.tenants) == [None, "acme", "zeta"]
    assert store.tenants("shop") == [None, "acme", "zeta"]
    assert state.last_run["id"] == acme_run and state.last_run["tenant"] == "acme"

    whole = state.tenants[None]
    assert whole.checkpoints == {"orders": Checkpoint({"id": 3}, 3, 1, T0)}
    assert whole.offsets == {("warehouse", "orders"): DestinationOffset(0, 3, T0)}
    assert whole.dead_letters == {}
    assert whole.last_run["id"] == first and whole.last_run["status"] == "succeeded"

    acme = state.tenant("acme")
    assert acme.checkpoints == {
        CAPTURE: Checkpoint({"lsn": "0/1"}, 9, 0, clock.now),
        "orders": Checkpoint({"id": 9}, 9, 2, clock.now),
    }
    assert acme.offsets == {
        ("warehouse", "orders"): DestinationOffset(1, 9, clock.now),
        ("push", "orders"): DestinationOffset(0, 4, clock.now),
    }
    assert acme.dead_letters == {"orders": 3}
    assert acme.last_run["id"] == acme_run and acme.last_run["status"] == "running"

    zeta = state.tenant("zeta")
    assert zeta == TenantState(tenant="zeta", dead_letters={"customers": 1})

    # the same per-tenant answers as the one-tenant methods
    for tenant, found in state.tenants.items():
        assert found.checkpoints == store.checkpoints("shop", tenant=tenant)
        assert found.offsets == store.offsets("shop", tenant=tenant)
        assert found.dead_letters == store.dead_letter_count("shop", tenant=tenant)
        assert found.last_run == store.last_run("shop", tenant=tenant)

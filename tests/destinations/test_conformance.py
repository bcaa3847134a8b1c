"""The destination conformance suite: every registered destination, every check that applies.

A destination kind joins with ONE entry of :data:`KINDS`: a function from the test's
fixtures (``request.getfixturevalue``) to a :class:`~tests.destinations.conformance.Harness`.
Which checks run is decided by the destination's
:class:`~replicant.destinations.base.Capabilities` (``transactional``, ``merge``,
``replace``) and by what the harness offers (a login that can be refused), never by its name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow.parquet as pq
import pytest

from http_receiver import Receiver  # tests/ is on the path (as in test_http)
from replicant.config import DestinationConfig
from replicant.destinations.base import Destination
from replicant.destinations.files import FilesDestination
from replicant.destinations.http import HttpDestination
from replicant.destinations.nats import NatsDestination
from replicant.model import ConnectorContext

from . import conformance as cf
from . import conformance_values as cv
from .test_duckdb import _harness as duckdb_harness
from .test_mysql import _query as mysql_query
from .test_mysql import mysql_harness
from .test_nats_dest import _admin as nats_admin
from .test_nats_dest import _messages as nats_messages
from .test_postgres import _dest as pg_dest
from .test_postgres import _harness as pg_harness
from .test_sqlite import sqlite_harness

HOSTILE_SCHEMA = 'Sch "ema" Ä'
PASSWORD = "s3cret-PW-never-shown"


def _refused(url: str, scheme_user: str = "nobody") -> tuple[str, str]:
    """``url`` with a login the server refuses, and its host."""
    parts = urlsplit(url)
    netloc = f"{scheme_user}:{PASSWORD}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), str(parts.hostname)


# ------------------------------------------------------------------ SQL kinds


def _postgres(request: pytest.FixtureRequest) -> cf.Harness:
    url = request.getfixturevalue("pg_url")
    h = pg_harness(url)

    def bad_login() -> tuple[Destination, str, str]:
        bad, host = _refused(url)
        return pg_dest(bad, "append"), host, PASSWORD

    h.bad_login, h.schema = bad_login, HOSTILE_SCHEMA
    return h


def _mysql(request: pytest.FixtureRequest) -> cf.Harness:
    url = request.getfixturevalue("mysql_url")
    h = mysql_harness(url)
    request.addfinalizer(lambda: mysql_query(url, f"DROP DATABASE IF EXISTS `{HOSTILE_SCHEMA}`"))

    def bad_login() -> tuple[Destination, str, str]:
        bad, host = _refused(url)
        make = h.make
        d = make("append")
        return type(d)(DestinationConfig(name="my", type="mysql", url=bad), ConnectorContext("p")), host, PASSWORD

    h.bad_login, h.schema = bad_login, HOSTILE_SCHEMA
    return h


def _sqlite(request: pytest.FixtureRequest) -> cf.Harness:
    return sqlite_harness(request.getfixturevalue("sqlite_path"))


def _duckdb(request: pytest.FixtureRequest) -> cf.Harness:
    h = duckdb_harness(request.getfixturevalue("tmp_path") / "warehouse.duckdb")
    h.schema = HOSTILE_SCHEMA
    return h


# ------------------------------------------------------------------ event kinds


def _records_view(records: list[dict[str, Any]], merged: bool) -> list[tuple] | None:
    """What a consumer holds after the records: every record's data, or under ``merge``
    the last state per key (a delete removes it)."""
    if not records:
        return None
    if not merged:
        return sorted((tuple(r["data"].values()) for r in records if r["data"] is not None), key=repr)
    state: dict[str, tuple] = {}
    for r in records:
        key = json.dumps(r["key"], sort_keys=True)
        if r["op"] == "delete":
            state.pop(key, None)
        else:
            state[key] = tuple(r["data"].values())
    return sorted(state.values(), key=repr)


def _columns_of(records: list[dict[str, Any]]) -> list[str]:
    return next((list(r["data"]) for r in records if r["data"] is not None), [])


def _folder(name: str) -> str:
    """The folder a files destination writes a table into (documented in its module)."""
    if name and not re.search(r"[^A-Za-z0-9._-]", name) and not name.startswith("."):
        return name
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"
    return f"{readable}~{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _files(request: pytest.FixtureRequest) -> cf.Harness:
    root: Path = request.getfixturevalue("tmp_path") / "out"

    def make(write: str, schema: str | None = None) -> FilesDestination:
        cfg = DestinationConfig.model_validate(
            {"name": "files", "type": "files", "path": str(root), "write": write, "format": "parquet", "tables": "{table}"}
        )
        return FilesDestination(cfg, ConnectorContext("p"))

    def tables(table: str) -> list[Any]:
        return [pq.read_table(f) for f in sorted((root / _folder(table)).rglob("*.parquet"))]

    def rows(table: str, schema: str | None = None) -> list[tuple] | None:
        parts = tables(table)
        if not parts:
            return None
        out = []
        for t in parts:
            data = t.drop_columns([c for c in ("_op", "_pos", "_ts") if c in t.column_names])
            out += [tuple(r.values()) for r in data.to_pylist()]
        return sorted(out, key=repr)

    def columns(table: str, schema: str | None = None) -> list[str]:
        parts = tables(table)
        return [c for c in parts[0].column_names if c not in ("_op", "_pos", "_ts")] if parts else []

    def delivered() -> list[str]:
        return sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file()) if root.exists() else []

    return cf.Harness(make=make, rows=rows, columns=columns, delivered=delivered)


def _http(request: pytest.FixtureRequest) -> cf.Harness:
    receiver = Receiver().start()
    request.addfinalizer(receiver.stop)
    writes: list[str] = []

    def make(write: str, schema: str | None = None) -> HttpDestination:
        writes.append(write)
        cfg = DestinationConfig(name="push", type="http", url=receiver.url, write=write)
        return HttpDestination(cfg, ConnectorContext("p"))

    def rows(table: str, schema: str | None = None) -> list[tuple] | None:
        return _records_view(receiver.records(), merged="merge" in writes)

    def delivered() -> list[str]:
        return sorted(receiver.accepted())

    def bad_login() -> tuple[Destination, str, str]:
        refusing = Receiver(status=401).start()
        request.addfinalizer(refusing.stop)
        cfg = DestinationConfig.model_validate({"name": "push", "type": "http", "url": refusing.url, "auth": {"bearer": PASSWORD}})
        return HttpDestination(cfg, ConnectorContext("p")), "127.0.0.1", PASSWORD

    return cf.Harness(
        make=make, rows=rows, columns=lambda table, schema=None: _columns_of(receiver.records()), delivered=delivered, bad_login=bad_login
    )


def _nats(request: pytest.FixtureRequest) -> cf.Harness:
    url, unique = request.getfixturevalue("nats_url"), request.getfixturevalue("unique_name")
    stream_name = f"T_{unique}"

    def drop() -> None:
        with contextlib.suppress(Exception):  # never created
            nats_admin(url, lambda js: js.delete_stream(stream_name))

    request.addfinalizer(drop)

    def make(write: str, schema: str | None = None) -> NatsDestination:
        cfg = DestinationConfig.model_validate(
            {"name": "bus", "type": "nats", "url": url, "write": write, "subject": f"t.{unique}.{{stream}}", "stream_name": stream_name}
        )
        return NatsDestination(cfg, ConnectorContext("p"))

    def messages() -> list[Any]:
        try:
            return nats_messages(url, stream_name)
        except Exception:  # noqa: BLE001 - the JetStream stream does not exist: nothing published
            return []

    def rows(table: str, schema: str | None = None) -> list[tuple] | None:
        return _records_view([m.body for m in messages()], merged=False)

    def delivered() -> list[str]:
        return sorted(m.msg_id for m in messages())

    return cf.Harness(
        make=make, rows=rows, columns=lambda table, schema=None: _columns_of([m.body for m in messages()]), delivered=delivered
    )


#: Every registered destination kind: one line each.
KINDS: dict[str, Callable[[pytest.FixtureRequest], cf.Harness]] = {
    "postgres": _postgres,
    "mysql": _mysql,
    "sqlite": _sqlite,
    "duckdb": _duckdb,
    "files": _files,
    "http": _http,
    "nats": _nats,
}


@pytest.fixture(params=list(KINDS))
def h(request: pytest.FixtureRequest) -> cf.Harness:
    return KINDS[request.param](request)


def _caps(h: cf.Harness) -> Any:
    return h.make("append").capabilities


def _require(h: cf.Harness, **wanted: bool) -> None:
    caps = _caps(h)
    for name, value in wanted.items():
        if getattr(caps, name) != value:
            pytest.skip(f"capabilities.{name} is {getattr(caps, name)}")


# ------------------------------------------------------------------ every kind


def test_types_round_trip(h: cf.Harness) -> None:
    cv.check_types_round_trip(h)


def test_empty_batch(h: cf.Harness) -> None:
    cf.check_empty_batch(h)


def test_hostile_identifiers(h: cf.Harness) -> None:
    cf.check_hostile_identifiers(h)


def test_strings_and_bytes(h: cf.Harness) -> None:
    cv.check_strings_and_bytes(h)


def test_mixed_real_data(h: cf.Harness, chinook_sqlite_path: Path) -> None:
    _require(h, merge=True)
    cv.check_mixed_real_data(h, chinook_sqlite_path)


def test_fast_path_only_for_a_fresh_table(h: cf.Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    _require(h, transactional=True, merge=True)
    cf.check_fast_path_only_for_a_fresh_table(h, monkeypatch)


def test_two_snapshots_into_a_fresh_table(h: cf.Harness) -> None:
    _require(h, merge=True)
    cf.check_two_snapshots_into_a_fresh_table(h)


def test_merge_applies_deletes(h: cf.Harness) -> None:
    _require(h, merge=True)
    cf.check_merge_deletes(h)


def test_bad_credentials(h: cf.Harness) -> None:
    if h.bad_login is None:
        pytest.skip("no login to refuse")
    cf.check_bad_credentials(h)


@pytest.mark.parametrize("write", ["merge", "append"])
def test_crash_between_write_and_offset(h: cf.Harness, monkeypatch: pytest.MonkeyPatch, write: str) -> None:
    """Transactional: a failure after the data statements leaves neither rows nor offset.
    Non-transactional: the re-delivery repeats the same files / keys / message ids."""
    if _caps(h).transactional:
        cf.check_offset_atomic(h, monkeypatch, write=write)
    elif write == "append":
        cf.check_redelivery_repeats_the_same_deliveries(h)
    else:
        pytest.skip("non-transactional: one re-delivery check")


# ------------------------------------------------------------------ the SQL state machine


@pytest.mark.parametrize("check", cf.TRANSACTIONAL_CHECKS, ids=lambda c: c.__name__)
def test_transactional(h: cf.Harness, check: Callable[[cf.Harness], None]) -> None:
    _require(h, transactional=True)
    if check in (cf.check_replace, cf.check_fenced_replace):
        _require(h, replace=True)
    check(h)

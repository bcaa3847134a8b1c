"""NATS destination against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pytest

from replicant.config import DestinationConfig, parse
from replicant.destinations.nats import NatsDestination, subject_for
from replicant.errors import ConfigError, ConnectionError, RetriableError
from replicant.model import ConnectorContext, Stream

UTC = dt.UTC
TS = dt.datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC)

STREAM = Stream(
    name="public.orders",
    table=("public", "orders"),
    schema=pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("total", pa.decimal128(12, 2)),
            pa.field("tiny", pa.decimal128(30, 20)),
            pa.field("at", pa.timestamp("us", tz="UTC")),
            pa.field("local", pa.timestamp("ms")),
            pa.field("raw", pa.binary()),
            pa.field("note", pa.string()),
            pa.field("ratio", pa.float64()),
        ]
    ),
    primary_key=("id",),
)


def _rows(n: int, start: int = 0) -> pa.Table:
    ids = list(range(start, start + n))
    cols = {
        "id": pa.array(ids, pa.int64()),
        "total": pa.array([Decimal(i) + Decimal("0.30") for i in ids], pa.decimal128(12, 2)),
        "tiny": pa.array([Decimal("0.00000000000000000001") * (i + 1) for i in ids], pa.decimal128(30, 20)),
        "at": pa.array([dt.datetime(2020, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=i) for i in ids], pa.timestamp("us", tz="UTC")),
        "local": pa.array([dt.datetime(2020, 1, 1, 12, 0, 0, 5000) for _ in ids], pa.timestamp("ms")),
        "raw": pa.array([bytes([i % 256, 0, 255]) for i in ids], pa.binary()),
        "note": pa.array([None if i % 2 else f'ü "{i}"\n' for i in ids]),
        "ratio": pa.array([float("nan") if i % 3 == 2 else i / 4 for i in ids]),
        "_op": pa.array(["delete" if i % 5 == 4 else "insert" for i in ids]),
        "_pos": pa.array([json.dumps({"lsn": f"0/{i:X}"}) for i in ids]),
        "_ts": pa.array([TS] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.table(cols, schema=STREAM.change_schema)


def _chunks(total: int = 10, size: int = 4) -> list[tuple[pa.Table, int]]:
    return [(_rows(min(size, total - f), f), min(f + size, total) - 1) for f in range(0, total, size)]


def _dest(url: str, unique: str, **settings) -> NatsDestination:
    settings.setdefault("subject", f"t.{unique}.{{stream}}")
    settings.setdefault("stream_name", f"T_{unique}")
    cfg = DestinationConfig(name="bus", type="nats", url=url, **settings)
    return NatsDestination(cfg, ConnectorContext("shop"))


@dataclass
class Msg:
    seq: int
    subject: str
    body: dict
    msg_id: str


def _messages(url: str, stream_name: str) -> list[Msg]:
    """Every message stored in ``stream_name``, in stream order (read with a separate client)."""
    import nats

    async def read() -> list[Msg]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream_name)
            out = []
            if info.state.messages == 0:
                return out
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                m = await js.get_msg(stream_name, seq)
                out.append(Msg(seq, m.subject, json.loads(m.data), (m.headers or {}).get("Nats-Msg-Id")))
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def _admin(url: str, coro_fn) -> object:
    import nats

    async def run():
        nc = await nats.connect(url)
        try:
            return await coro_fn(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(run())


@pytest.fixture
def dest_factory(nats_url: str, unique_name: str) -> Iterator:
    made: list[NatsDestination] = []

    def make(**settings) -> NatsDestination:
        d = _dest(settings.pop("url", nats_url), unique_name, **settings)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()
    try:
        _admin(nats_url, lambda js: js.delete_stream(f"T_{unique_name}"))
    except Exception:  # noqa: BLE001 - the test may have deleted it, or never created it
        pass


def _write_all(dest: NatsDestination, chunks) -> None:
    dest.open()
    dest.prepare(STREAM)
    for rows, last in chunks:
        dest.write(STREAM, rows, last_offset=last)


# --------------------------------------------------------------------------- delivery


def test_every_record_arrives_once_in_order(dest_factory, nats_url: str, unique_name: str) -> None:
    dest = dest_factory()
    _write_all(dest, _chunks(total=50, size=16))
    msgs = _messages(nats_url, f"T_{unique_name}")
    assert [m.body["key"]["id"] for m in msgs] == list(range(50))
    assert {m.subject for m in msgs} == {f"t.{unique_name}.public.orders"}
    assert [m.msg_id for m in msgs] == [f"shop:public.orders:{i}" for i in range(50)]
    assert [m.body["op"] for m in msgs[:5]] == ["insert"] * 4 + ["delete"]
    assert msgs[4].body["data"] is None and msgs[4].body["key"] == {"id": 4}


def test_rewrites_and_replays_do_not_duplicate(dest_factory, nats_url: str, unique_name: str) -> None:
    dest = dest_factory()
    chunks = _chunks()
    _write_all(dest, chunks)
    dest.write(STREAM, chunks[1][0], last_offset=chunks[1][1])  # a retry of one chunk
    dest.close()
    _write_all(dest_factory(), chunks)  # a replay (new connection) within the duplicate window
    msgs = _messages(nats_url, f"T_{unique_name}")
    assert [m.body["key"]["id"] for m in msgs] == list(range(10))


def test_json_encoding(dest_factory, nats_url: str, unique_name: str) -> None:
    dest = dest_factory()
    _write_all(dest, [(_rows(3), 2)])
    first, second, third = (m.body for m in _messages(nats_url, f"T_{unique_name}"))
    assert set(first) == {"op", "key", "data", "position", "ts"}
    assert first["key"] == {"id": 0}
    assert first["position"] == {"lsn": "0/0"}
    assert first["ts"] == "2026-11-21T10:00:00.123456Z"
    assert first["data"] == {
        "id": 0,
        "total": "0.30",  # decimals: exact strings, scale kept
        "tiny": "0.00000000000000000001",  # never scientific notation
        "at": "2020-01-01T00:00:00.000000Z",  # zoned: ISO 8601 UTC
        "local": "2020-01-01T12:00:00.005",  # naive: no offset, unit's digits
        "raw": base64.b64encode(bytes([0, 0, 255])).decode(),
        "note": 'ü "0"\n',
        "ratio": 0.0,
    }
    assert second["data"]["note"] is None  # nulls are null
    assert third["data"]["ratio"] == "NaN"  # no JSON number for it: protobuf's string, as the HTTP push
    assert json.loads(json.dumps(third)) == third


def test_deletes_carry_the_key_and_json_columns_are_embedded(dest_factory, nats_url: str, unique_name: str) -> None:
    doc = pa.field("doc", pa.string(), metadata={b"replicant.sql_type": b"jsonb"})
    stream = Stream(name="docs", table=("docs",), schema=pa.schema([pa.field("id", pa.int64()), doc]), primary_key=("id",))
    rows = pa.table(
        {
            "id": [1, 2, 1],
            "doc": ['{"a": [1, 2]}', "not json", None],
            "_op": ["insert", "insert", "delete"],
            "_pos": ["{}"] * 3,
            "_ts": pa.array([TS] * 3, pa.timestamp("us", tz="UTC")),
        },
        schema=stream.change_schema,
    )
    dest = dest_factory()
    dest.open()
    dest.prepare(stream)
    dest.write(stream, rows, last_offset=2)
    bodies = [m.body for m in _messages(nats_url, f"T_{unique_name}")]
    assert [b["data"] for b in bodies] == [{"id": 1, "doc": {"a": [1, 2]}}, {"id": 2, "doc": "not json"}, None]
    assert [b["key"] for b in bodies] == [{"id": 1}, {"id": 2}, {"id": 1}]
    assert [b["op"] for b in bodies] == ["insert", "insert", "delete"]


def test_stream_without_key_has_null_key(dest_factory, nats_url: str, unique_name: str) -> None:
    keyless = Stream(name="events", table=("events",), schema=STREAM.schema)
    dest = dest_factory()
    dest.open()
    dest.prepare(keyless)
    dest.write(keyless, _rows(1), last_offset=7)
    [m] = _messages(nats_url, f"T_{unique_name}")
    assert m.body["key"] is None and m.subject == f"t.{unique_name}.events" and m.msg_id == "shop:events:7"


def test_existing_stream_capturing_the_subject_is_used(dest_factory, nats_url: str, unique_name: str) -> None:
    own = f"OWN_{unique_name}"
    _admin(nats_url, lambda js: js.add_stream(name=own, subjects=[f"t.{unique_name}.>"]))
    try:
        dest = dest_factory()
        _write_all(dest, [(_rows(2), 1)])
        assert [m.body["key"]["id"] for m in _messages(nats_url, own)] == [0, 1]
        names = _admin(nats_url, lambda js: js.streams_info())
        assert f"T_{unique_name}" not in {s.config.name for s in names}
    finally:
        _admin(nats_url, lambda js: js.delete_stream(own))


def test_empty_write_publishes_nothing(dest_factory, nats_url: str, unique_name: str) -> None:
    dest = dest_factory()
    dest.open()
    dest.prepare(STREAM)
    dest.record_offset(STREAM, 3)
    assert _messages(nats_url, f"T_{unique_name}") == []
    assert dest.applied_offset(STREAM) == -1


def test_truncate_is_published(dest_factory, nats_url: str, unique_name: str) -> None:
    dest = dest_factory()
    _write_all(dest, [(_rows(1), 0)])
    dest.truncate(STREAM, last_offset=1)
    msgs = _messages(nats_url, f"T_{unique_name}")
    assert [m.body["op"] for m in msgs] == ["insert", "truncate"] and msgs[1].msg_id == "shop:public.orders:1"


# --------------------------------------------------------------------------- failures


def test_deleted_stream_raises_retriable_and_is_recreated(dest_factory, nats_url: str, unique_name: str) -> None:
    dest = dest_factory(timeout=2)
    chunks = _chunks()
    _write_all(dest, chunks[:1])
    _admin(nats_url, lambda js: js.delete_stream(f"T_{unique_name}"))
    with pytest.raises(RetriableError) as e:
        dest.write(STREAM, chunks[1][0], last_offset=chunks[1][1])
    assert "public.orders" in str(e.value) and "4..7" in str(e.value)
    dest.write(STREAM, chunks[1][0], last_offset=chunks[1][1])  # the engine's retry
    assert [m.body["key"]["id"] for m in _messages(nats_url, f"T_{unique_name}")] == [4, 5, 6, 7]


class _OwnNats:
    """A nats-server this test can stop and start again on the same port and store."""

    def __init__(self, base: Path, *args: str) -> None:
        self.base = base
        self.args = args  # more nats-server options (--user, --pass)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        cmd = [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.base / "js"), "-l", str(self.base / "nats.log"),
               *self.args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c, c.makefile("rb") as f:
                    if b'"jetstream":true' in f.readline():
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def test_server_stopped_raises_retriable_and_keeps_acknowledged_data(tmp_path: Path, unique_name: str) -> None:
    server = _OwnNats(tmp_path)
    server.start()
    dest = _dest(server.url, unique_name, timeout=1)
    try:
        chunks = _chunks()
        _write_all(dest, chunks[:1])
        server.stop()
        with pytest.raises(RetriableError) as e:
            dest.write(STREAM, chunks[1][0], last_offset=chunks[1][1])
        assert "127.0.0.1" in str(e.value)
        server.start()  # same port, same JetStream store
        for rows, last in chunks:  # the engine retries from the first unacknowledged chunk; one replayed too
            for _ in range(20):  # reconnecting takes a moment: retriable errors until then
                try:
                    dest.write(STREAM, rows, last_offset=last)
                    break
                except RetriableError:
                    time.sleep(0.25)
            else:
                raise AssertionError("writes did not recover after the server came back")
        assert [m.body["key"]["id"] for m in _messages(server.url, f"T_{unique_name}")] == list(range(10))
    finally:
        dest.close()
        server.stop()


def test_unreachable_server_is_a_connection_error(unique_name: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = _dest(f"nats://app:s3cret-pw@127.0.0.1:{port}", unique_name, timeout=1)
    try:
        with pytest.raises(ConnectionError) as e:
            dest.open()
        assert f"127.0.0.1:{port}" in str(e.value) and "s3cret" not in str(e.value)
    finally:
        dest.close()


@pytest.mark.parametrize("password", ["hunter2@TopSecretTail", "p@ss:w/rd#1", "100% sure?"])
def test_a_referenced_password_with_url_characters_logs_in(
    tmp_path: Path, unique_name: str, monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    """Issue 9, item 10: `${env:…}` in a NATS URL's user info is percent-encoded and nats-py
    does not decode user info, so the destination and the staging log hand it the decoded
    credentials; a wrong password is refused without showing it."""
    from replicant.config import parse
    from replicant.log import open_log

    server = _OwnNats(tmp_path, "--user", "app", "--pass", password)
    server.start()
    monkeypatch.setenv("RT_NATS_PW", password)
    url = f"nats://app:${{env:RT_NATS_PW}}@127.0.0.1:{server.port}"
    dest = _dest(url, unique_name, timeout=2)
    try:
        _write_all(dest, _chunks(4))
        # the log URL is not a secret key: substituted (and encoded) when the file is loaded
        cfg = parse({**_pipeline(url=url), "log": f"{url}/authlog"})
        with open_log(cfg.log) as log:
            assert log.append("s", None, position=None, marker={"kind": "snapshot_start"}) == 0
        monkeypatch.setenv("RT_NATS_PW", password[::-1])
        wrong = _dest(url, unique_name + "w", timeout=2)
        try:
            with pytest.raises(ConnectionError) as e:
                wrong.open()
            assert not any(password[i:i + 4] in str(e.value) for i in range(len(password) - 3))
        finally:
            wrong.close()
    finally:
        dest.close()
        server.stop()


# --------------------------------------------------------------------------- configuration


def test_subject_tokens_are_sanitised() -> None:
    assert subject_for("replicant.{pipeline}.{stream}", "shop", "public.orders") == "replicant.shop.public.orders"
    assert subject_for("replicant.{pipeline}.{stream}", "shop", "my orders*") == "replicant.shop.my_orders_~c3bafbb4"
    assert subject_for("x.{stream}", "p", "a..b>") == "x.a._~e3b0c442.b_~08a37669"
    assert subject_for("x.{stream}.events", "p", ".lead\ttab") == "x._~e3b0c442.lead_tab~aff4ff6f.events"
    # names that sanitise alike get subjects of their own; safe tokens are kept
    assert len({subject_for("x.{stream}", "p", n) for n in ("a b", "a_b", "a\tb", "a*b", "_", "")}) == 6
    assert subject_for("x.{stream}", "p", "a_b") == "x.a_b"


def test_names_that_sanitise_alike_get_their_own_subjects_and_messages_name_their_stream(
    dest_factory, nats_url: str, unique_name: str
) -> None:
    """Issue 9 item 6: ``a b`` and ``a_b`` shared a subject and a message did not say its stream."""
    import nats

    dest = dest_factory()
    streams = [
        Stream(name="a b", table=("a b",), schema=STREAM.schema, primary_key=("id",)),
        Stream(name="a_b", table=("a_b",), schema=STREAM.schema, primary_key=("id",)),
        Stream(name="Ünï", table=("Ünï",), schema=STREAM.schema, primary_key=("id",), tenant="acme/eu"),
    ]
    for i, s in enumerate(streams):
        dest.prepare(s)
        dest.write(s, _rows(2, start=10 * i), last_offset=1)

    async def read() -> list[tuple[str, dict, int]]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(f"T_{unique_name}")
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                m = await js.get_msg(f"T_{unique_name}", seq)
                out.append((m.subject, dict(m.headers or {}), json.loads(m.data)["key"]["id"]))
            return out
        finally:
            await nc.close()

    msgs = asyncio.run(read())
    assert len(msgs) == 6
    by_stream: dict[tuple[str, str | None], set[int]] = {}
    subjects: dict[tuple[str, str | None], set[str]] = {}
    for subject, headers, key in msgs:
        origin = (unquote(headers["Replicant-Stream"]), unquote(headers["Replicant-Tenant"]) if "Replicant-Tenant" in headers else None)
        assert unquote(headers["Replicant-Pipeline"]) == "shop"
        by_stream.setdefault(origin, set()).add(key)
        subjects.setdefault(origin, set()).add(subject)
    assert by_stream == {("a b", None): {0, 1}, ("a_b", None): {10, 11}, ("Ünï", "acme/eu"): {20, 21}}
    assert len({next(iter(v)) for v in subjects.values()}) == 3 and all(len(v) == 1 for v in subjects.values())


def _pipeline(**dest) -> dict:
    return {
        "pipeline": "shop",
        "source": {"type": "sqlite", "url": "sqlite:///x.db"},
        "destinations": [{"name": "bus", "type": "nats", "url": "nats://127.0.0.1:4222", **dest}],
    }


def test_settings_errors_have_key_paths() -> None:
    with pytest.raises(ConfigError) as e:
        parse(_pipeline(subjet="a.b", stream_name="has.dot", timeout="soon", subject="a b.{stream}"))
    problems = dict(e.value.problems)
    assert problems["destinations[0].subjet"] == "unknown key (did you mean 'subject'?)"
    assert "not a JetStream stream name" in problems["destinations[0].stream_name"]
    assert "not a duration" in problems["destinations[0].timeout"]
    assert "not a valid subject" in problems["destinations[0].subject"]
    with pytest.raises(ConfigError) as e:
        parse(_pipeline(subject="x.{table}"))
    assert "{pipeline} and {stream}" in dict(e.value.problems)["destinations[0].subject"]
    cfg = parse(_pipeline(subject="cdc.{stream}", timeout="30s"))
    dest = NatsDestination(cfg.destinations[0], ConnectorContext("shop.eu"))
    assert dest.stream_name == "REPLICANT_SHOP_EU" and dest.options.timeout == 30.0
    assert dest.subject(STREAM) == "cdc.public.orders"


@pytest.mark.parametrize("write", ["merge", "replace"])
def test_merge_and_replace_are_refused(write: str) -> None:
    with pytest.raises(ConfigError) as e:
        NatsDestination(DestinationConfig(name="bus", type="nats", url="nats://h:4222", write=write), ConnectorContext("shop"))
    assert e.value.problems[0][0] == "destinations.bus.write"


def test_url_is_required_and_checked() -> None:
    with pytest.raises(ConfigError) as e:
        NatsDestination(DestinationConfig(name="bus", type="nats"), ConnectorContext("shop"))
    assert e.value.problems[0][0] == "destinations.bus.url"
    with pytest.raises(ConfigError):
        NatsDestination(DestinationConfig(name="bus", type="nats", url="http://h:4222"), ConnectorContext("shop"))


@pytest.mark.parametrize(("unit", "digits"), [("s", ""), ("ms", ".005"), ("us", ".005000"), ("ns", ".005000000")])
@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Paris"])
def test_timestamps_are_iso_8601_in_utc(unit: str, digits: str, tz: str | None) -> None:
    from replicant.destinations.records import iso_text

    zone = UTC if tz else None
    values = [dt.datetime(2020, 1, 1, 0, 0, 0, 5000, tzinfo=zone), None, dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=zone)]
    text = iso_text(pa.array(values, pa.timestamp(unit, tz))).to_pylist()
    z = "Z" if tz else ""
    zero = digits and "." + "0" * (len(digits) - 1)
    assert text == [f"2020-01-01T00:00:00{digits if unit != 's' else ''}{z}", None, f"1969-12-31T23:59:59{zero}{z}"]

"""NatsLog's own promises (the shared contract runs in test_local_log.py): large batches cut
into parts, an index rebuilt from the server after a restart (orphan parts of a crashed
append skipped), the writer lock across processes, the expected-sequence guard, readers in
other processes, retention on the server, and plain NATS clients reading the records."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import nats
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from replicant.errors import ConnectionError, FatalError
from replicant.log import Retention, open_log
from replicant.log.nats import NatsLog, delete_nats_log
from replicant.model import with_meta


@pytest.fixture
def prefix(nats_url: str, unique_name: str) -> Iterator[str]:
    yield unique_name
    delete_nats_log(nats_url, unique_name)


def wide_batch(first: int, n: int) -> pa.RecordBatch:
    data = pa.record_batch(
        {
            "id": pa.array(range(first, first + n), pa.int64()),
            "name": pa.array([f"customer {i} with a longer name" for i in range(first, first + n)]),
            "amount": pa.array([i * 0.5 for i in range(n)], pa.float64()),
        }
    )
    return with_meta(data, "insert", json.dumps({"id": first}), None)


def raw(url: str, work: Any) -> Any:
    """Runs ``await work(js)`` with a plain nats-py client (what a non-replicant reader has)."""

    async def main() -> Any:
        nc = await nats.connect(url)
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())


def subject_count(url: str, log: NatsLog, stream: str) -> int:
    subject = log._stream(stream).data_subject

    async def work(js: Any) -> int:
        info = await js.stream_info(log.stream_name, subjects_filter=subject)
        return (info.state.subjects or {}).get(subject, 0)

    return raw(url, work)


def test_a_batch_larger_than_a_message_is_cut_into_parts_and_read_back_whole(nats_url: str, prefix: str) -> None:
    batch = wide_batch(0, 100_000)
    with NatsLog(nats_url, prefix=prefix) as log:
        assert log._nc.max_payload == 1 << 20
        assert log.append("s", None, position=None, marker={"kind": "snapshot_start"}) == 0
        assert log.append("s", batch, position={"n": 100_000}) == 1
        assert log.append("s", wide_batch(100_000, 10), position={"n": 100_010}) == 100_001
        messages = subject_count(nats_url, log, "s")
        assert messages >= 2 + 4  # the marker, the small batch, and the big one in parts
        (record, _small) = list(log.read("s", 1))
        assert record.batch.equals(batch) and record.position == {"n": 100_000}
        (sliced,) = list(log.read("s", 50_001, end=50_011))
        assert sliced.offset == 50_001 and sliced.batch.column("id").to_pylist() == list(range(50_000, 50_010))
    with NatsLog(nats_url, prefix=prefix, read_only=True) as reader:  # rebuilt from headers alone
        assert reader.end_offset("s") == 100_011
        assert [r.offset for r in reader.read("s")] == [0, 1, 100_001]
        assert next(reader.read("s", 99_999)).batch.column("id").to_pylist() == [99_998, 99_999]


def test_a_compressed_log_round_trips_and_plain_clients_decode_records(nats_url: str, prefix: str) -> None:
    dictionary = pa.record_batch([pa.array(["a", "b", "a"]).dictionary_encode(), pa.array([1, 2, 3])], names=["tag", "v"])
    with NatsLog(nats_url, prefix=prefix, compression="zstd") as log:
        log.append("s", wide_batch(0, 1000), position={"n": 1})
        log.append("d", dictionary, position={"n": 3})
        assert next(log.read("s")).batch.equals(wide_batch(0, 1000))
        assert next(log.read("d", 1)).batch.column("tag").to_pylist() == ["b", "a"]
        subject, stream_name = log._stream("d").data_subject, log.stream_name

    async def last(js: Any) -> Any:
        return await js.get_last_msg(stream_name, subject)

    msg = raw(nats_url, last)
    assert ipc.open_stream(msg.data).read_all().column("tag").to_pylist() == ["a", "b", "a"]
    assert msg.headers["Replicant-Offset"] == "0" and msg.headers["Replicant-Rows"] == "3"
    assert json.loads(msg.headers["Replicant-Position"]) == {"n": 3}


def test_a_restart_rebuilds_the_index_and_skips_parts_of_a_crashed_append(nats_url: str, prefix: str) -> None:
    with NatsLog(nats_url, prefix=prefix) as log:
        log.append("s", wide_batch(0, 5), position={"n": 5})
        log.append("s", None, position={"n": 5}, marker={"kind": "snapshot_end"})
        subject = log._stream("s").data_subject

    async def crash(js: Any) -> None:  # the first part of a big append, then the writer died
        await js.publish(subject, b"\x00" * 1000, headers={"Replicant-Part": "6/0"})

    raw(nats_url, crash)
    with NatsLog(nats_url, prefix=prefix, read_only=True) as reader:  # readers ignore the orphan
        assert reader.end_offset("s") == 6 and [r.offset for r in reader.read("s")] == [0, 5]
    with NatsLog(nats_url, prefix=prefix) as log:
        assert log.end_offset("s") == 6 and log.last_position("s") == {"n": 5}
        assert subject_count(nats_url, log, "s") == 3  # the orphan stays, unlisted, until retention
        assert log.append("s", wide_batch(5, 3), position={"n": 8}) == 6
        assert [i for r in log.read("s") if r.batch is not None for i in r.batch.column("id").to_pylist()] == list(range(8))
        assert [r.schema_version for r in log.read("s")] == [0, 0, 0]


HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from replicant.log.nats import NatsLog
    log = NatsLog(sys.argv[1], prefix=sys.argv[2], lock_ttl=float(sys.argv[3]))
    log.append("s", None, position={"by": "child"}, marker={"kind": "x"})
    print("locked", flush=True)
    sys.stdin.readline()
    log.close()
    """
)


def hold_lock(nats_url: str, prefix: str, ttl: float = 15) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, nats_url, prefix, str(ttl)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_writer_process_gets_a_clear_error_or_waits(nats_url: str, prefix: str) -> None:
    child = hold_lock(nats_url, prefix)
    try:
        with pytest.raises(FatalError) as error:
            NatsLog(nats_url, prefix=prefix)
        location = f"{nats_url}/{prefix}"
        assert str(error.value).startswith(
            f"pipeline log at {location} is in use by another process (pid {child.pid} on host "
        )
        assert "stop that run or let it finish, then run again (the lock of a writer that died expires within" in str(error.value)
        with NatsLog(nats_url, prefix=prefix, read_only=True) as reader:  # readers need no lock
            assert reader.last_position("s") == {"by": "child"}
        threading.Timer(0.3, lambda: (child.stdin.write("go\n"), child.stdin.flush())).start()
        with NatsLog(nats_url, prefix=prefix, lock_timeout=20) as log:
            assert log.append("s", None, position=None, marker={"kind": "y"}) == 1
    finally:
        child.stdin.close()
        assert child.wait(timeout=20) == 0
        child.stdout.close()


def test_a_second_writer_in_the_same_process_is_refused(nats_url: str, prefix: str) -> None:
    with NatsLog(nats_url, prefix=prefix), pytest.raises(FatalError, match=f"another NatsLog in this process \\(pid {os.getpid()}\\)"):
        NatsLog(nats_url, prefix=prefix)
    with NatsLog(nats_url, prefix=prefix) as log:  # released on close
        assert log.end_offset("s") == 0


def test_the_lock_of_a_killed_writer_expires(nats_url: str, prefix: str) -> None:
    child = hold_lock(nats_url, prefix, ttl=1.5)
    child.kill()  # no close: the lock key stays until the bucket's age limit drops it
    child.wait(timeout=10)
    child.stdout.close()
    child.stdin.close()
    with pytest.raises(FatalError, match=r"the lock of a writer that died expires within 1\.5 s"):
        NatsLog(nats_url, prefix=prefix)
    with NatsLog(nats_url, prefix=prefix, lock_timeout=10) as log:
        assert log.append("s", None, position=None, marker={"kind": "after"}) == 1


def test_a_writer_whose_lock_was_taken_over_cannot_interleave(nats_url: str, prefix: str) -> None:
    with NatsLog(nats_url, prefix=prefix) as first:
        first.append("s", wide_batch(0, 3), position={"n": 3})
        bucket = first.lock_bucket

        async def break_lock(js: Any) -> None:  # as if the first writer paused past its lock's ttl
            await (await js.key_value(bucket)).purge("writer")

        raw(nats_url, break_lock)
        with NatsLog(nats_url, prefix=prefix) as second:
            assert second.append("s", wide_batch(3, 2), position={"n": 5}) == 3
            with pytest.raises(FatalError, match="another writer appended to the staging log"):
                first.append("s", wide_batch(3, 4), position={"n": 7})
            assert second.end_offset("s") == 5
        with NatsLog(nats_url, prefix=prefix, read_only=True) as reader:
            assert [r.batch.num_rows for r in reader.read("s")] == [3, 2]


APPEND_IN_CHILD = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    from replicant.log.nats import NatsLog
    log = NatsLog(sys.argv[1], prefix=sys.argv[2])
    for first in range(0, 2000, 20):
        ids = pa.array(range(first, first + 20), pa.int64())
        log.append("s", pa.record_batch([ids], names=["id"]), position={"n": first + 20})
    log.close()
    """
)


def test_a_read_only_log_follows_a_writer_in_another_process(nats_url: str, prefix: str) -> None:
    follower = NatsLog(nats_url, prefix=prefix, read_only=True)
    assert follower.streams() == [] and follower.end_offset("s") == 0
    child = subprocess.Popen([sys.executable, "-c", APPEND_IN_CHILD, nats_url, prefix])
    try:
        seen, offset = [], 0
        while offset < 2000:
            assert follower.wait("s", offset, timeout=20), f"nothing after offset {offset}"
            for record in follower.read("s", offset):
                seen += record.batch.column("id").to_pylist()
                offset = record.next_offset
        assert seen == list(range(2000)) and follower.last_position("s") == {"n": 2000}
        assert follower.streams() == ["s"] and len(follower.schemas("s")) == 1
        with pytest.raises(FatalError, match="read-only"):
            follower.append("s", None, position=None, marker={"kind": "x"})
    finally:
        assert child.wait(timeout=60) == 0
        follower.close()


def test_retention_purges_messages_on_the_server_and_readers_see_the_new_start(nats_url: str, prefix: str) -> None:
    with NatsLog(nats_url, prefix=prefix) as log, NatsLog(nats_url, prefix=prefix, read_only=True) as reader:
        for i in range(20):
            log.append("s", wide_batch(i * 100, 100), position={"i": i})
        log.append("other", wide_batch(0, 10), position=None)
        assert reader.start_offset("s") == 0 and reader.end_offset("s") == 2000
        start = log.apply_retention("s", Retention(max_bytes=30_000))
        assert 0 < start < 2000 and start % 100 == 0
        assert subject_count(nats_url, log, "s") == (2000 - start) // 100
        assert reader.start_offset("s") == start and reader.end_offset("s") == 2000
        with pytest.raises(FatalError, match=f"offset 0 is no longer in the staging log at {nats_url}/{prefix}"):
            reader.read("s", 0)
        assert next(reader.read("s", start)).batch.column("id")[0].as_py() == start
        assert log.apply_retention("s", Retention(max_age_seconds=0)) == 1900  # the last record stays
        assert reader.start_offset("s") == 1900 and reader.last_position("s") == {"i": 19}
        assert log.end_offset("other") == 10 and [r.offset for r in log.read("other")] == [0]


def test_open_log_opens_nats_urls_and_unreachable_servers_fail_clearly(nats_url: str, prefix: str) -> None:
    with open_log(f"{nats_url}/{prefix}", compression="lz4") as log:
        assert isinstance(log, NatsLog) and log.prefix == prefix and log.compression == "lz4"
        log.append("s", wide_batch(0, 2), position=None)
    with open_log(f"{nats_url}/{prefix}", readonly=True) as log:
        assert log.read_only and log.end_offset("s") == 2
    port = int(nats_url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionError) as error:
        NatsLog(f"nats://user:s3cret@127.0.0.1:{port + 1 if port < 65535 else port - 1}/x", timeout=1)
    assert "cannot connect" in str(error.value) and "s3cret" not in str(error.value)


@pytest.fixture
def own_nats() -> Iterator[Any]:
    """A NATS server of this test's own, to SIGSTOP (stopping the session's would stall other tests)."""
    import servers

    server = servers.start_nats()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def stalled(server: Any) -> Iterator[Callable[[], None]]:
    """The server SIGSTOPped; yields the function that continues it (called at the end if not before)."""
    pid = server._proc.pid
    os.kill(pid, signal.SIGSTOP)
    state = {"stopped": True}

    def resume() -> None:
        if state["stopped"]:
            os.kill(pid, signal.SIGCONT)
            state["stopped"] = False

    try:
        yield resume
    finally:
        resume()


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any], list[BaseException]]:
    got: list[Any] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            got.append(work())
        except BaseException as e:  # noqa: BLE001 - asserted by the caller
            failed.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, got, failed


def _wait_for_retry(caplog: pytest.LogCaptureFixture) -> None:
    deadline = time.monotonic() + 20
    while "trying again" not in caplog.text:  # the first answer timed out
        assert time.monotonic() < deadline, "the request never timed out against a stopped server"
        time.sleep(0.05)


def test_a_read_whose_request_timed_out_is_asked_again(own_nats: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A fetch that times out (the server stalled, or this process was stopped while the answer
    was on its way: a SIGSTOPped worker's delivery, woken after a takeover) is asked again, with
    back-off, instead of failing the delivery: every record arrives, in order."""
    with NatsLog(own_nats.url, prefix="stall", timeout=0.5) as log:
        for first in range(0, 300, 100):
            log.append("s", wide_batch(first, 100), position={"n": first + 100})
        with caplog.at_level("WARNING", logger="replicant.log._nats_conn"), stalled(own_nats) as resume:
            reader, got, failed = _in_thread(lambda: [i for r in log.read("s") for i in r.batch.column("id").to_pylist()])
            _wait_for_retry(caplog)
            resume()
            reader.join(timeout=30)
        assert not reader.is_alive() and not failed, failed
        assert got == [list(range(300))]
        assert "reading stream 's' at offset 0: staging log at" in caplog.text


def test_a_follower_whose_index_refresh_timed_out_asks_again(own_nats: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A read-only log in another process refreshes its index on each call; a refresh that times
    out is asked again (it changes nothing before every answer is in), and the follower then
    sees everything the writer appended, with the new schema version."""
    with NatsLog(own_nats.url, prefix="follow") as writer, \
            NatsLog(own_nats.url, prefix="follow", read_only=True, timeout=0.5) as follower:
        writer.append("s", wide_batch(0, 100), position={"n": 100})
        assert follower.end_offset("s") == 100
        writer.append("s", wide_batch(100, 50), position={"n": 150})
        wider = wide_batch(150, 50).append_column("extra", pa.array(["x"] * 50))
        writer.append("s", wider, position={"n": 200})
        with caplog.at_level("WARNING", logger="replicant.log._nats_conn"), stalled(own_nats) as resume:
            reader, got, failed = _in_thread(lambda: follower.end_offset("s"))
            _wait_for_retry(caplog)
            resume()
            reader.join(timeout=30)
        assert not reader.is_alive() and not failed, failed
        assert got == [200]
        assert "refreshing the index of stream 's'" in caplog.text
        rows = [r.batch.num_rows for r in follower.read("s")]
        assert rows == [100, 50, 50] and len(follower.schemas("s")) == 2
        assert follower.last_position("s") == {"n": 200}

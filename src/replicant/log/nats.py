"""The staging log on NATS JetStream, for pipelines that run on many machines.

``NatsLog("nats://host:4222/shop")`` keeps the log ``shop`` in one JetStream stream with
file storage, ``REPLICANT_LOG_shop``; :mod:`replicant.log._nats_codec` describes the
subjects, headers and payloads. Every record is a message (or a few, for a batch larger
than the server's ``max_payload``) whose payload is an Arrow IPC stream, so any NATS
client with pyarrow can read the log without replicant.

Appends are durable when JetStream has acknowledged the record's last message: stored in
the stream's file store (and, with ``replicas=3`` on a cluster, on a quorum of servers).
Note that a single server syncs its files to disk every two minutes by default
(``sync_interval``); an acknowledged append survives a crash of the server process but
only a replicated stream survives the loss of a machine.

Each process keeps, per stream it touches, an index of the records (offset, rows, message
sequences, append time, size, position, marker), built on first use from the messages'
headers alone (a headers-only consumer: payloads do not travel) and then kept up to date
by the writer's own appends. A read-only log (``read_only=True``, other processes:
``replicant status``, replays) asks the server on every call whether the stream grew and
reads only the new headers. Reads fetch the records' messages by sequence with JetStream's
direct get, a few records ahead of the consumer.

Exclusive writer: opening a log for writing creates the key ``writer`` in the key-value
bucket ``REPLICANT_LOG_<prefix>_LOCK`` (create-only), holding the writer's pid and host,
and refreshes it every third of ``lock_ttl``; the bucket's age limit drops the key of a
writer that died without closing, so the next writer waits at most ``lock_ttl`` seconds.
A second writer fails at once with ``pipeline log at … is in use by another process (pid
N on host H)`` (or waits, with ``lock_timeout``). Independently of the lock, every append
is published with ``Nats-Expected-Last-Subject-Sequence``: if anything else wrote to the
stream since (a writer whose lock expired while it was paused), JetStream refuses the
message and the append fails with a ``FatalError``, so two writers can never interleave.

nats-py is asyncio; the log runs its own event loop in a daemon thread and every
synchronous method hands a coroutine to it (``run_coroutine_threadsafe``). Thread safety
is LocalLog's: one writer thread per stream, any number of reader threads.

Modules: this one holds :class:`NatsLog`'s options, writing, reading, retention and
closing; :mod:`replicant.log._nats_conn` the event-loop bridge, opening the connection and
stream, and the writer lock; :mod:`replicant.log._nats_index` the per stream record index
(``_Stream``, loading and refreshing it); :mod:`replicant.log._nats_codec` the layout.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import datetime
from functools import partial
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import nats.js.errors
import pyarrow as pa
import pyarrow.ipc as ipc
from nats.js import api

from replicant.errors import ConfigError, FatalError
from replicant.log._nats_codec import (
    H_MARKER,
    H_OFFSET,
    H_PART,
    H_POSITION,
    H_ROWS,
    H_SCHEMA,
    H_TIME,
    PREFIX_PATTERN,
    Records,
    decode_token,
    json_header,
)
from replicant.log._nats_conn import _NatsConnection
from replicant.log._nats_index import _NatsIndex, _Stream
from replicant.log.base import Log, LogRecord, Retention, check_append, ipc_write_options
from replicant.log.files import datetime_to_micros, micros_to_datetime, now_micros
from replicant.model import Position, decode_position, encode_position

__all__ = ["NatsLog", "delete_nats_log"]

_EXPECTED = api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value
_WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code for a failed expected-last-sequence check
_READ_AHEAD_BYTES = 32 << 20  # how much a reader fetches beyond the record it yields
_EMPTY_SCHEMA = pa.schema([])


class NatsLog(_NatsConnection, _NatsIndex, Log):
    """A staging log in NATS JetStream (see the module docstring for layout and protocol).

    Args:
        url: ``nats://[user:password@]host:port[/prefix]`` (``tls://`` for TLS); the path,
            if any, is the prefix.
        prefix: the log's name on the server (``[A-Za-z0-9_-]``, one per pipeline); overrides
            the URL's path; default ``replicant``.
        compression: ``None``, ``"lz4"`` or ``"zstd"`` IPC body compression of each record.
        read_only: follow a log another process writes: no lock, no append or retention.
        lock_timeout: seconds to wait for another writer to release the log; 0 fails at
            once, None waits forever.
        lock_ttl: seconds after which the lock of a writer that died without closing
            expires (fixed when the log's lock bucket is first created).
        replicas: JetStream replicas of the log's stream (fixed when it is first created).
        timeout: seconds to wait for one server request.

    Raises:
        ConfigError: a bad prefix or compression.
        ConnectionError: the server cannot be reached or has no JetStream.
        FatalError: another writer holds the log.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        compression: Literal["lz4", "zstd"] | None = None,
        read_only: bool = False,
        lock_timeout: float | None = 0.0,
        lock_ttl: float = 15.0,
        replicas: int = 1,
        timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        path_prefix = unquote(parts.path.strip("/")) or None
        self.prefix = prefix or path_prefix or "replicant"
        problems = []
        if parts.scheme.lower() not in ("nats", "tls", "nats+tls"):
            problems.append(("log", f"a NATS URL starts with nats:// or tls://, not {parts.scheme}://"))
        if not PREFIX_PATTERN.fullmatch(self.prefix):
            problems.append(("log", f"the log name {self.prefix!r} may only hold letters, digits, _ and - (at most 64)"))
        if compression not in (None, "lz4", "zstd"):
            problems.append(("log.compression", f"{compression!r} is not one of lz4, zstd"))
        if lock_ttl <= 0 or replicas < 1:
            problems.append(("log", "lock_ttl must be positive and replicas at least 1"))
        if problems:
            raise ConfigError("invalid staging log options", problems)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 4222
        scheme = "tls" if parts.scheme.lower() in ("tls", "nats+tls") else "nats"
        userinfo = parts.netloc.rpartition("@")[0]
        self._server = f"{scheme}://{userinfo + '@' if userinfo else ''}{host}:{port}"
        self.location = f"{scheme}://{host}:{port}/{self.prefix}"  #: for messages: no credentials
        self.compression = compression
        self.read_only = read_only
        self.timeout = timeout
        self.stream_name = f"REPLICANT_LOG_{self.prefix}"
        self.lock_bucket = f"REPLICANT_LOG_{self.prefix}_LOCK"
        self.root = f"replicant.log.{self.prefix}"
        self._write_options = ipc_write_options(compression)
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._lock_lost: str | None = None
        self._lock_revision = 0
        self._lock_value = b""
        self._heartbeat: asyncio.Task | None = None
        self._nc: Any = None
        self._js: Any = None
        self._kv: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"replicant-nats-log-{self.prefix}", daemon=True)
        self._thread.start()
        try:
            self._call(self._open(replicas))
            if not read_only:
                self._call(self._acquire_lock(lock_timeout, lock_ttl))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> NatsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NatsLog({self.location!r}{', read_only=True' if self.read_only else ''})"


    def _stream(self, name: str) -> _Stream:
        with self._lock:
            if self._closed:
                raise FatalError(f"staging log at {self.location} is closed")
            st = self._streams.get(name)
            if st is None:
                st = self._streams[name] = _Stream(name, self.root)
        if self.read_only:
            with st.write_lock:
                if st.loaded:
                    self._read(f"refreshing the index of stream {name!r}", partial(self._refresh, st))
                else:
                    self._read(f"loading the index of stream {name!r}", partial(self._load, st))
                    st.loaded = True
        elif not st.loaded:
            with st.write_lock:
                if not st.loaded:
                    self._read(f"loading the index of stream {name!r}", partial(self._load, st))
                    st.loaded = True
        return st

    # -- writing -------------------------------------------------------------------------

    def append(
        self,
        stream: str,
        batch: pa.RecordBatch | None,
        *,
        position: Position | None,
        marker: dict[str, Any] | None = None,
    ) -> int:
        """See :meth:`Log.append`: durable once JetStream acknowledged the record.

        Raises:
            FatalError: the log is read-only or closed, the writer lock was lost, or another
                writer appended to the stream meanwhile.
            RetriableError: the server did not acknowledge in time; the record may or may
                not exist (:meth:`last_position` tells), the index is re-read on the next call.
        """
        check_append(batch, marker)
        self._check_writable()
        st = self._stream(stream)
        with st.write_lock:
            if not st.loaded:  # an earlier append failed midway: see what landed
                self._call(self._load(st))
                st.loaded = True
            try:
                return self._call(self._append(st, batch, position, marker))
            except BaseException:
                st.loaded = False
                raise

    def _check_writable(self) -> None:
        if self._closed:
            raise FatalError(f"staging log at {self.location} is closed")
        if self.read_only:
            raise FatalError(f"staging log at {self.location} was opened read-only; open it without read_only=True to write")
        if self._lock_lost is not None:
            raise FatalError(self._lock_lost)

    async def _publish(self, st: _Stream, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """Publishes one message expecting ``st.last_seq`` (or the schema's) as the subject's
        last; returns its sequence."""
        try:
            ack = await self._js.publish(subject, payload, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise FatalError(
                    f"stream {st.name!r}: another writer appended to the staging log at {self.location} "
                    "while this one held it; stop both runs, then run one"
                ) from exc
            raise
        return ack.seq

    async def _append(self, st: _Stream, batch: pa.RecordBatch | None, position: Position | None, marker: dict[str, Any] | None) -> int:
        if self._lock_lost is not None:
            raise FatalError(self._lock_lost)
        if st.shortened and not st.name_written:
            try:
                await self._publish(st, st.name_subject, st.name.encode("utf-8"), {_EXPECTED: "0"})
            except FatalError:
                pass  # written before
            st.name_written = True
        version = len(st.schemas) - 1 if batch is None else await self._version_for(st, batch.schema)
        rows = 0 if batch is None else batch.num_rows
        payload = self._encode(batch) if rows else b""
        time_us = max(now_micros(), st.last_time_us)  # append times never go back
        offset = st.end
        headers = {H_OFFSET: str(offset), H_ROWS: str(rows), H_SCHEMA: str(version), H_TIME: str(time_us)}
        if position is not None:
            headers[H_POSITION] = encode_position(position)
        if marker is not None:
            headers[H_MARKER] = json_header(marker)
        header_bytes = sum(len(k) + len(v) + 4 for k, v in headers.items()) + 64
        room = self._nc.max_payload - header_bytes - 512
        if room < self._nc.max_payload // 4:
            raise FatalError(f"stream {st.name!r}: the position or marker is too large for a NATS message header ({header_bytes} bytes)")
        chunks = [payload]
        if len(payload) > room:
            count = math.ceil(len(payload) / room)
            size = math.ceil(len(payload) / math.ceil(len(payload) / (room - 21 * count)))  # room for the parts list
            view = memoryview(payload)
            chunks = [bytes(view[i : i + size]) for i in range(0, len(payload), size)]
        parts: list[int] = []
        total = 0
        for k, chunk in enumerate(chunks[:-1]):
            seq = await self._publish(st, st.data_subject, chunk, {H_PART: f"{offset}/{k}", _EXPECTED: str(st.last_seq)})
            st.last_seq = seq
            parts.append(seq)
            total += len(chunk) + 64
        if parts:
            headers["Replicant-Parts"] = ",".join(map(str, parts))
        headers[_EXPECTED] = str(st.last_seq)
        seq = await self._publish(st, st.data_subject, chunks[-1], headers)
        st.last_seq = seq
        total += len(chunks[-1]) + sum(len(k) + len(v) + 4 for k, v in headers.items())
        with st.cond:
            st.records.add(offset, rows, version, time_us, total, seq, tuple(parts), headers.get(H_POSITION), headers.get(H_MARKER))
            st.end = st.records.nexts[-1]
            st.last_time_us = time_us
            st.cond.notify_all()
        return offset

    def _encode(self, batch: pa.RecordBatch) -> bytes:
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, batch.schema, options=self._write_options) as writer:
            writer.write_batch(batch)
        return sink.getvalue().to_pybytes()

    async def _version_for(self, st: _Stream, schema: pa.Schema) -> int:
        if st.schemas and st.schemas[-1].equals(schema, check_metadata=True):
            return len(st.schemas) - 1
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, schema):
            pass  # a schema message and end-of-stream: readable with ipc.open_stream
        version = len(st.schemas)
        headers = {"Replicant-Version": str(version), _EXPECTED: str(st.schema_seq)}
        st.schema_seq = await self._publish(st, st.schema_subject, sink.getvalue().to_pybytes(), headers)
        with st.cond:
            st.schemas.append(schema)
        return version

    def apply_retention(self, stream: str, retention: Retention) -> int:
        """See :meth:`Log.apply_retention`: purges the oldest records' messages (never the
        last record, so the end offset and last position survive). A record goes when it is
        older than ``max_age_seconds`` or while the stream's messages exceed ``max_bytes``."""
        self._check_writable()
        st = self._stream(stream)
        with st.write_lock:
            records, count, end = st.snapshot()
            total = sum(records.size[:count])
            oldest_kept = None if retention.max_age_seconds is None else now_micros() - int(retention.max_age_seconds * 1e6)
            drop = 0
            for i in range(count - 1):
                too_old = oldest_kept is not None and records.time[i] < oldest_kept
                too_big = retention.max_bytes is not None and total > retention.max_bytes
                if not (too_old or too_big):
                    break
                total -= records.size[i]
                drop += 1
            if drop:
                first_kept = records.sequences(drop)[0]
                self._call(self._js.purge_stream(self.stream_name, seq=first_kept, subject=st.data_subject))
                with st.cond:
                    st.records = records.drop_first(drop)
            return st.records.offset[0] if len(st.records) else end

    # -- reading -------------------------------------------------------------------------

    def read(self, stream: str, start: int = 0, *, end: int | None = None) -> Iterator[LogRecord]:
        """See :meth:`Log.read`. Checks ``start`` at once (not on the first ``next``)."""
        if start < 0:
            raise ValueError(f"start must be >= 0, not {start}")
        st = self._stream(stream)
        records, count, stop = st.snapshot()
        stop = stop if end is None else min(end, stop)
        first = records.offset[0] if count else stop
        if start < first:
            if count:
                since = micros_to_datetime(records.time[0]).isoformat()
                held = f"offsets {first} to {max(stop - 1, first)} (appended since {since})"
            else:
                held = "nothing"
            raise FatalError(
                f"stream {st.name!r}: offset {start} is no longer in the staging log at {self.location}; it holds {held}. "
                f"Replay from offset {first} or later, or re-snapshot the stream"
            )
        return self._records(st, records, count, start, stop)

    def _records(self, st: _Stream, records: Records, count: int, start: int, stop: int) -> Iterator[LogRecord]:
        i = records.first_after(start, count)
        ahead: deque[tuple[int, Future[bytes] | None]] = deque()
        ahead_bytes = 0
        while True:
            while i < count and records.offset[i] < stop and (not ahead or ahead_bytes < _READ_AHEAD_BYTES):
                data = records.marker[i] is None and records.rows[i] > 0
                if data or records.marker[i] is not None:
                    ahead.append((i, self._submit(self._fetch(st, records.sequences(i))) if data else None))
                    ahead_bytes += records.size[i]
                i += 1
            if not ahead:
                return
            j, future = ahead.popleft()
            ahead_bytes -= records.size[j]
            offset, rows = records.offset[j], records.rows[j]
            batch = None
            if future is not None:
                payload = self._read(f"reading stream {st.name!r} at offset {offset}",
                                     partial(self._fetch, st, records.sequences(j)), future)
                batch = ipc.open_stream(pa.py_buffer(payload)).read_next_batch()
                if offset < start or offset + rows > stop:
                    skip = max(start - offset, 0)
                    batch = batch.slice(skip, min(stop - offset, rows) - skip)
                    offset += skip
            marker = records.marker[j]
            yield LogRecord(
                offset=offset,
                batch=batch,
                marker=None if marker is None else json.loads(marker),
                position=decode_position(records.position[j]),
                schema_version=records.schema[j],
                ts=micros_to_datetime(records.time[j]),
            )

    async def _fetch(self, st: _Stream, sequences: tuple[int, ...]) -> bytes:
        try:
            msgs = await asyncio.gather(*(self._js.get_msg(self.stream_name, seq=seq, direct=self._direct) for seq in sequences))
        except nats.js.errors.NotFoundError as exc:
            raise FatalError(
                f"stream {st.name!r}: a record was removed by retention while being read; read again from offset "
                f"{st.records.offset[0] if len(st.records) else st.end} or later"
            ) from exc
        return msgs[0].data if len(msgs) == 1 else b"".join(m.data for m in msgs)

    def end_offset(self, stream: str) -> int:
        return self._stream(stream).end

    def start_offset(self, stream: str) -> int:
        records, count, end = self._stream(stream).snapshot()
        return records.offset[0] if count else end

    def last_position(self, stream: str) -> Position | None:
        records, count, _ = self._stream(stream).snapshot()
        return decode_position(records.position[count - 1]) if count else None

    def offset_at(self, stream: str, ts: datetime) -> int:
        """See :meth:`Log.offset_at`: by append time (a naive ``ts`` is taken as UTC)."""
        records, count, end = self._stream(stream).snapshot()
        j = records.first_at_time(datetime_to_micros(ts), count)
        return records.offset[j] if j < count else end

    def schemas(self, stream: str) -> list[pa.Schema]:
        st = self._stream(stream)
        with st.cond:
            return list(st.schemas)

    def streams(self) -> list[str]:
        return self._call(self._list_streams())

    async def _list_streams(self) -> list[str]:
        head = f"{self.root}.data."
        try:
            info = await self._js.stream_info(self.stream_name, subjects_filter=f"{head}>")
        except nats.js.errors.NotFoundError:
            return []
        names = []
        for subject, count in (info.state.subjects or {}).items():
            token = subject[len(head) :]
            name = decode_token(token) if count else None
            if name is None and "~" in token:
                try:
                    msg = await self._js.get_last_msg(self.stream_name, f"{self.root}.name.{token}", direct=self._direct)
                    name = msg.data.decode("utf-8")
                except nats.js.errors.NotFoundError:
                    name = None
            if name is not None:
                names.append(name)
        return sorted(names)

    def wait(self, stream: str, offset: int, timeout: float) -> bool:
        """See :meth:`Log.wait`: woken by appends in this process; a read-only log asks the
        server every 50 ms."""
        st = self._stream(stream)
        if not self.read_only:
            with st.cond:
                st.cond.wait_for(lambda: st.end > offset or self._closed, timeout)
                return st.end > offset
        deadline = time.monotonic() + timeout
        while st.end <= offset:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return False
            time.sleep(min(remaining, 0.05))
            self._stream(stream)
        return True

    def close(self) -> None:
        """Releases the writer lock and the connection and stops the loop. Idempotent."""
        with self._lock:
            if self._closed and self._loop.is_closed():
                return
            self._closed = True
            streams = list(self._streams.values())
        for st in streams:
            with st.cond:
                st.cond.notify_all()
        if not self._loop.is_closed():
            if self._loop.is_running():
                try:
                    self._submit(self._shutdown()).result(timeout=self.timeout)
                except Exception:  # noqa: BLE001 - closing must not fail; the lock expires anyway
                    pass
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=self.timeout)
            self._loop.close()

    async def _delete(self) -> bool:
        found = False
        for name in (self.stream_name, f"KV_{self.lock_bucket}"):
            try:
                found = await self._js.delete_stream(name) or found
            except nats.js.errors.NotFoundError:
                pass
        return found

    async def _shutdown(self) -> None:
        await self._release_lock()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()


def delete_nats_log(url: str, prefix: str | None = None) -> bool:
    """Deletes a NATS staging log: its JetStream stream and lock bucket. False if it did not exist.

    Destroys every record of every stream of the log; no writer may have it open.
    """
    log = NatsLog(url, prefix=prefix, read_only=True)
    try:
        return log._call(log._delete())
    finally:
        log.close()

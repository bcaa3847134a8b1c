"""The record index of :class:`~replicant.log.nats.NatsLog` (moved out of
:mod:`replicant.log.nats`, whose docstring describes the index and who keeps it).

- :class:`_Stream`: one stream's subjects, record index and schema versions in this process.
- :class:`_NatsIndex`, a mixin of :class:`~replicant.log.nats.NatsLog`: building a stream's
  index from the messages' headers (``_scan`` with an ephemeral headers-only pull consumer,
  ``_add_index``, ``_load``), loading its schema versions, and, read-only, adding what the
  writer appended since the last call (``_refresh``). Both ask the server everything before
  they change the stream, so a request that fails (a timeout) can be asked again.
"""

from __future__ import annotations

import threading
from typing import Any

import nats.errors
import nats.js.errors
import pyarrow as pa
import pyarrow.ipc as ipc
from nats.js import api

from replicant.log._nats_codec import H_OFFSET, H_SCHEMA, Records, encode_token

_SCAN_BATCH = 512


class _Stream:
    """One stream's subjects, record index and schema versions in this process."""

    def __init__(self, name: str, root: str) -> None:
        self.name = name
        self.token, self.shortened = encode_token(name)
        self.data_subject = f"{root}.data.{self.token}"
        self.schema_subject = f"{root}.schema.{self.token}"
        self.name_subject = f"{root}.name.{self.token}"
        self.records = Records()
        self.schemas: list[pa.Schema] = []
        self.schema_seq = 0  # sequence of the last schema message read or written
        self.last_seq = 0  # sequence of the last message on the data subject (orphans included)
        self.scanned = 0  # read-only: the stream sequence the index is complete up to
        self.msgs = 0  # read-only: messages on the data subject up to ``scanned``
        self.end = 0
        self.last_time_us = 0
        self.loaded = False
        self.name_written = False
        self.cond = threading.Condition(threading.Lock())
        self.write_lock = threading.Lock()

    def snapshot(self) -> tuple[Records, int, int]:
        with self.cond:
            return self.records, len(self.records), self.end

class _NatsIndex:
    """The index methods of :class:`~replicant.log.nats.NatsLog` (uses its ``_js``,
    ``stream_name``, ``read_only``, ``timeout`` and ``_direct``)."""

    stream_name: str
    read_only: bool
    timeout: float
    _js: Any
    _direct: bool

    async def _scan(self, subject: str, start_seq: int, upto: int | None, headers_only: bool) -> list[Any]:
        """Messages on ``subject`` with sequences from ``start_seq`` (up to ``upto``), via an
        ephemeral pull consumer that knows how many there are."""
        config = api.ConsumerConfig(
            filter_subject=subject,
            ack_policy=api.AckPolicy.NONE,
            headers_only=headers_only or None,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if start_seq > 1 else api.DeliverPolicy.ALL,
            opt_start_seq=start_seq if start_seq > 1 else None,
        )
        try:
            info = await self._js.add_consumer(self.stream_name, config)
        except nats.js.errors.NotFoundError:
            return []  # the JetStream stream does not exist (yet)
        messages: list[Any] = []
        pending = info.num_pending
        try:
            if pending:
                sub = await self._js.pull_subscribe_bind(consumer=info.name, stream=self.stream_name)
                try:
                    while pending > 0:
                        batch = _SCAN_BATCH if headers_only else 16  # whole messages: up to max_payload each
                        for msg in await sub.fetch(min(pending, batch), timeout=self.timeout):
                            meta = msg.metadata
                            if upto is not None and meta.sequence.stream > upto:
                                pending = 0
                                break
                            messages.append(msg)
                            pending = meta.num_pending
                finally:
                    await sub.unsubscribe()
        finally:
            try:
                await self._js.delete_consumer(self.stream_name, info.name)
            except (TimeoutError, nats.errors.Error):
                pass  # it goes away after inactive_threshold
        return messages

    @staticmethod
    def _add_index(st: _Stream, msgs: list[Any], records: Records) -> int:
        """Adds the records of ``msgs`` (a headers-only scan of the data subject) to
        ``records``; returns the number of messages. Parts no record lists (a crashed append's)
        are skipped; they stay on the server until retention purges them (deleting the last
        message of a subject makes nats-server 2.9 forget the subject's last sequence, which
        the append guard needs)."""
        parts = 0
        for msg in msgs:
            headers = msg.headers or {}
            seq = msg.metadata.sequence.stream
            size = int(headers.get("Nats-Msg-Size", 0)) + sum(len(k) + len(v) + 4 for k, v in headers.items())
            if H_OFFSET in headers:
                records.add_headers(headers, seq, size + parts)
                parts = 0
            else:
                parts += size  # a part: its size counts for the record after it
            st.last_seq = max(st.last_seq, seq)
        return len(msgs)

    @staticmethod
    def _add_schemas(st: _Stream, msgs: list[Any]) -> None:
        for msg in msgs:
            st.schemas.append(ipc.read_schema(pa.py_buffer(msg.data)))
            st.schema_seq = msg.metadata.sequence.stream

    async def _load(self, st: _Stream) -> None:
        """Builds the stream's index from the server (a writer: once). Every request comes
        before the first change to ``st``: one that fails leaves the stream as it was, and the
        load can be asked again (``_read``)."""
        try:
            upto = (await self._js.stream_info(self.stream_name)).state.last_seq
        except nats.js.errors.NotFoundError:
            upto = 0  # read-only, before the first writer created the JetStream stream
        data = await self._scan(st.data_subject, 1, upto, headers_only=True)
        schemas = await self._scan(st.schema_subject, 1, None, headers_only=False)
        name_written = st.name_written
        if st.shortened and not self.read_only:
            try:
                await self._js.get_last_msg(self.stream_name, st.name_subject, direct=self._direct)
                name_written = True
            except nats.js.errors.NotFoundError:
                name_written = False
        records = Records()
        st.last_seq = st.schema_seq = 0
        st.schemas = []
        seen = self._add_index(st, data, records)
        self._add_schemas(st, schemas)
        st.name_written = name_written
        self._publish_index(st, records)
        st.scanned, st.msgs = upto, seen

    def _publish_index(self, st: _Stream, records: Records) -> None:
        with st.cond:
            st.records = records
            if len(records):
                st.end = records.nexts[-1]
                st.last_time_us = max(st.last_time_us, records.time[-1])
            st.cond.notify_all()

    async def _refresh(self, st: _Stream) -> None:
        """Read-only: adds what the writer appended since the last call (reloads after a purge).
        Every request comes before the first change to ``st``, as in :meth:`_load`."""
        try:
            info = await self._js.stream_info(self.stream_name, subjects_filter=st.data_subject)
        except nats.js.errors.NotFoundError:
            return
        self._direct = bool(info.config.allow_direct)
        upto = info.state.last_seq
        count = (info.state.subjects or {}).get(st.data_subject, 0)
        msgs: list[Any] = []
        schemas: list[Any] = []
        if upto > st.scanned:
            msgs = await self._scan(st.data_subject, st.scanned + 1, upto, headers_only=True)
            newest = max((int(m.headers[H_SCHEMA]) for m in msgs if m.headers and H_OFFSET in m.headers), default=-1)
            if newest >= len(st.schemas):
                schemas = await self._scan(st.schema_subject, st.schema_seq + 1, None, headers_only=False)
        if count < st.msgs + len(msgs):  # the writer purged (retention) or removed orphan parts
            await self._load(st)
            return
        if upto > st.scanned:
            records, known = st.records, len(st.records)
            st.msgs += self._add_index(st, msgs, records)
            st.scanned = upto
            self._add_schemas(st, schemas)
            if len(records) > known:
                self._publish_index(st, records)

"""NATS destination: every change record published to JetStream as one JSON message.

Message body (the same record shape as the HTTP push, built by
:func:`replicant.destinations.records.record_json`, one DuckDB query per chunk)::

    {"op": "update", "key": {"id": 7}, "data": {"id": 7, "total": "12.30", ...},
     "position": {"lsn": "0/16B3748"}, "ts": "2026-11-21T10:00:00.123456Z"}

``key`` holds the stream's key columns (``null`` without a key), ``data`` every data
column (``null`` for a delete of a keyed stream), ``position`` the row's ``_pos`` decoded,
``ts`` its ``_ts`` in ISO 8601 UTC. Value mapping (decimals as exact strings, binary as
base64, timestamps ISO 8601, NaN as ``"NaN"``, json columns embedded):
see :mod:`replicant.destinations.records`.

Subjects: ``subject`` is a template with ``{pipeline}`` and ``{stream}`` (default
``replicant.{pipeline}.{stream}``). Dots in a stream name stay subject separators
(``public.orders`` → ``replicant.shop.public.orders``, as Debezium names topics). A token
holding whitespace, ``*``, ``>`` or control characters, or an empty one, has them replaced by
``_`` and ``~`` plus 8 hex digits of the SHA-256 of the original token appended (``a b`` →
``a_b~c8687a08``), so two names never share a subject
(:mod:`replicant.destinations._names`); tokens without them are kept as they are.

Every message names its origin in headers: ``Replicant-Pipeline``, ``Replicant-Stream``
(the stream's name) and, for a tenant's stream, ``Replicant-Tenant``; each value
percent-encoded as UTF-8 (``urllib.parse.unquote`` gives the name back).

JetStream stream: :meth:`NatsDestination.prepare` finds the stream that captures the
subject; if none does, it adds the subject to ``stream_name`` (default
``REPLICANT_<PIPELINE>``), creating that stream (file storage, ``duplicate_window``) when
missing. A stream deleted while running is re-created by the next write.

Exactly once, as far as JetStream allows: every message carries a ``Nats-Msg-Id``
header ``<pipeline>:<stream>:<log offset>``. The engine re-delivers a chunk with the same
offsets, and JetStream drops a message whose id it saw within the stream's duplicate
window (default 2 minutes; raise ``duplicate_window`` to cover longer outages). A replay
after the window publishes again, as a replay should.

Writes: every message of a chunk is published without waiting (``publish_async``) in log
order on one connection, so JetStream stores them in that order; then all acks are
awaited. ``write`` returns only when every message is acknowledged (stored). Any failure
(server gone, no stream, timeout, storage limit) raises :class:`RetriableError`; the
engine retries the whole chunk, and already stored messages are dropped as duplicates.
A record larger than the server's ``max_payload`` (with its headers) is not published: it
goes to the dead letters with its origin and the others are published (their message ids
are their own offsets, so the gap is the rejected record); without a dead-letter store, or
with ``on_bad_record: fail``, the write raises :class:`FatalError`.

Measured on this project's shared 2-core machine (server on the same machine): about
9-11 k messages/s, the same as nats-py's own ``publish_async`` loop (the Python client is
the limit; the JSON encoding of a chunk takes a small part of that time).

nats-py is asyncio: the destination owns an event loop on a dedicated daemon thread
(started by :meth:`open`, stopped by :meth:`close`); the engine's threads call in through
``asyncio.run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Coroutine
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from replicant.destinations._names import readable_unique
from replicant.destinations.base import Capabilities, Destination, positive_seconds
from replicant.destinations.records import record_json
from replicant.errors import ConfigError, ConnectionError, FatalError, RetriableError
from replicant.model import ConnectorContext, Stream
from replicant.secrets import split_userinfo
from replicant.timeouts import timeout_hint

__all__ = ["NatsDestination", "NatsSettings", "subject_for"]

log = logging.getLogger(__name__)

_BAD_TOKEN_CHARS = re.compile(r"[\s*>\x00-\x1f\x7f]")
_RECONNECT_ATTEMPTS = 4
_WINDOW = 1000
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _token(text: str) -> str:
    """Dots kept as separators; each token made valid (never empty, no wildcard, no space)
    and distinct from every other token's (see the module docstring)."""
    return ".".join(readable_unique(part, _BAD_TOKEN_CHARS) for part in text.split("."))


def subject_for(template: str, pipeline: str, stream: str) -> str:
    """The subject for ``stream``: ``template`` with ``{pipeline}`` and ``{stream}`` filled in
    by their sanitised forms (see the module docstring)."""
    return template.replace("{pipeline}", _token(pipeline)).replace("{stream}", _token(stream))


class NatsSettings(BaseModel):
    """The keys of a ``type: nats`` destination besides ``name``, ``type``, ``url``, ``write``."""

    model_config = ConfigDict(extra="forbid")

    subject: str = Field(
        "replicant.{pipeline}.{stream}", description="Subject template; `{pipeline}` and `{stream}` are filled in."
    )
    stream_name: str | None = Field(
        None, description="JetStream stream created (or extended) to capture the subjects; default REPLICANT_<PIPELINE>."
    )
    timeout: float | str = Field(10.0, description="Seconds to wait for a connection or for the acks of a write.")
    duplicate_window: float | str = Field(
        120.0, description="De-duplication window of a stream this destination creates (seconds or '10m')."
    )

    @field_validator("timeout", "duplicate_window")
    @classmethod
    def _seconds(cls, v: Any) -> float:
        return positive_seconds(v)

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        probe = subject_for(v, "p", "s")
        if re.search(r"\{[^}]*\}", probe):
            raise ValueError("only {pipeline} and {stream} can be filled into the subject")
        tokens = probe.split(".")
        if any(not t or _BAD_TOKEN_CHARS.search(t) for t in tokens):
            raise ValueError(f"{v!r} is not a valid subject: tokens are separated by single dots, "
                             "without spaces, `*` or `>`")
        return v

    @field_validator("stream_name")
    @classmethod
    def _stream_name(cls, v: str | None) -> str | None:
        if v is not None and not _STREAM_NAME.match(v):
            raise ValueError(f"{v!r} is not a JetStream stream name: use letters, digits, `_` and `-`")
        return v


class NatsDestination(Destination):
    """Publishes change records to NATS JetStream (see the module docstring)."""

    capabilities = Capabilities(transactional=False, merge=False, replace=False, truncate=True)
    settings = NatsSettings

    def __init__(self, config: Any, context: ConnectorContext) -> None:
        super().__init__(config, context)
        key = f"destinations.{self.name}"
        if config.url is None:
            raise ConfigError("invalid destination", [(f"{key}.url", "a nats destination needs `url:` (nats://host:4222)")])
        servers = [s.strip() for s in config.url.get_secret_value().split(",") if s.strip()]
        bad = [s for s in servers if urlsplit(s).scheme not in ("nats", "tls", "ws", "wss")]
        if not servers or bad:
            raise ConfigError(
                "invalid destination", [(f"{key}.url", "use nats://host:port (or tls://, ws://; comma-separated for a cluster)")]
            )
        self._servers = servers
        opts: NatsSettings = self.options
        self.stream_name = opts.stream_name or "REPLICANT_" + re.sub(r"[^A-Za-z0-9_-]", "_", self.pipeline).upper()
        self.timeout = float(opts.timeout)
        self.connect_timeout = float(config.connect_timeout)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Any = None
        self._js: Any = None
        self._ready: set[str] = set()  # subjects known to be captured by a stream
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ contract

    def open(self) -> None:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=f"nats-{self.name}", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
        if self._nc is None or self._nc.is_closed:
            self._call(self._connect(), "connect")

    def applied_offset(self, stream: Stream) -> int:
        return -1

    def prepare(self, stream: Stream) -> None:
        self.open()
        subject = self.subject(stream)
        self._call(self._ensure_stream(subject), f"prepare the stream for {subject}")

    def subject(self, stream: Stream) -> str:
        return subject_for(self.options.subject, self.pipeline, stream.log_name)

    def write(self, stream: Stream, data: pa.Table, *, last_offset: int, offsets: pa.Array | None = None) -> None:
        n = data.num_rows
        if n == 0:
            return
        self.open()
        texts = record_json(data, stream.primary_key).to_pylist()  # one message each: the wire format's unit
        first = last_offset - n + 1
        offsets = list(range(first, last_offset + 1))
        too_big = self._too_big(stream, texts, first)
        if too_big:
            self._set_aside(stream, data, offsets, too_big)
            texts = [t for i, t in enumerate(texts) if i not in too_big]
            offsets = [o for i, o in enumerate(offsets) if i not in too_big]
        if texts:
            self._send(stream, texts, offsets)

    def redeliver(self, stream: Stream, data: pa.Table, *, retry_id: str) -> None:
        """Publishes re-sent dead letters with message ids from ``retry_id``
        (``<pipeline>:<stream>:retry-<retry_id>:<n>``) instead of log offsets: JetStream's
        de-duplication sees new messages, and the same ones if this retry is repeated."""
        if data.num_rows:
            self.open()
            texts = record_json(data, stream.primary_key).to_pylist()
            self._send(stream, texts, list(range(len(texts))), retry_id=retry_id)

    def truncate(self, stream: Stream, *, last_offset: int) -> None:
        """Publishes ``{"op": "truncate", "key": null, "data": null, "position": null, "ts": null}``
        with the marker's offset as message id: consumers decide what a TRUNCATE means."""
        self.open()
        self._send(stream, ['{"op":"truncate","key":null,"data":null,"position":null,"ts":null}'], [last_offset])

    def evolve(self, stream: Stream, old: Stream) -> None:
        """JSON messages have no fixed schema: new and widened columns need nothing here."""

    def begin_replace(self, stream: Stream) -> None:
        raise FatalError(f"destination {self.name!r} (nats) cannot replace; it publishes change events")

    def commit_replace(self, stream: Stream, *, last_offset: int) -> None:
        raise FatalError(f"destination {self.name!r} (nats) cannot replace; it publishes change events")

    def close(self) -> None:
        with self._lock:
            loop, thread, nc = self._loop, self._thread, self._nc
            self._loop = self._thread = self._nc = self._js = None
            self._ready.clear()
        if loop is None:
            return
        if nc is not None and not nc.is_closed:
            try:
                asyncio.run_coroutine_threadsafe(nc.close(), loop).result(self.timeout)
            except Exception:  # closing: the connection is dropped either way
                log.debug("closing the NATS connection failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(self.timeout)
        if not loop.is_running():
            loop.close()

    # ------------------------------------------------------------------ internals

    def _where(self) -> str:
        """Servers for messages: host and port only (a URL may carry user and password)."""
        return ", ".join(f"{urlsplit(s).hostname}:{urlsplit(s).port or 4222}" for s in self._servers)

    def _call(self, coro: Coroutine[Any, Any, Any], what: str) -> Any:
        """Runs ``coro`` on the destination's loop and translates its errors."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            # the coroutines time themselves out; this is a backstop (a connect makes up to
            # 1 + _RECONNECT_ATTEMPTS attempts of connect_timeout each)
            most = self.connect_timeout * (_RECONNECT_ATTEMPTS + 1) if what == "connect" else self.timeout * 3
            return future.result(most + 5)
        except TimeoutError:
            future.cancel()
            if what == "connect":
                hint = timeout_hint(self.connect_timeout, f"destinations.{self.name}.connect_timeout")
                raise ConnectionError(f"destination {self.name!r}: cannot connect to NATS at {self._where()}: {hint}") from None
            raise RetriableError(f"destination {self.name!r}: NATS at {self._where()} did not answer ({what})") from None
        except Exception as e:  # noqa: BLE001 - the boundary: any client error becomes one of replicant's errors
            raise self._translate(e, what) from None

    def _translate(self, e: BaseException, what: str) -> Exception:
        import nats.errors as ne
        import nats.js.errors as jse

        where = f"destination {self.name!r}: NATS at {self._where()}"
        if isinstance(e, (RetriableError, ConnectionError, FatalError, ConfigError)):
            return e
        if isinstance(e, ne.MaxPayloadError):
            return FatalError(f"{where}: a record is larger than the server's max_payload ({what}); "
                              "raise max_payload on the server or exclude large columns")
        if isinstance(e, ne.NoServersError):
            if what == "connect":
                return ConnectionError(f"{where} cannot be reached ({what}); is the server up? "
                                       f"`destinations.{self.name}.connect_timeout` ({self.connect_timeout:g} s) bounds each attempt")
            return RetriableError(f"{where} cannot be reached ({what})")
        if isinstance(e, ne.AuthorizationError):
            return ConnectionError(f"{where} refused the login ({what}); check the user and password in `url:`")
        if isinstance(e, jse.APIError):
            return RetriableError(f"{where}: JetStream refused to {what}: {e.description or e} (code {e.code}, {e.err_code})")
        if isinstance(e, (jse.NoStreamResponseError, ne.NoRespondersError)):
            return RetriableError(f"{where}: no JetStream stream captures the subject ({what}); it is re-created on retry")
        if isinstance(e, (asyncio.TimeoutError, TimeoutError, ne.TimeoutError)):
            return RetriableError(f"{where} did not acknowledge in {self.timeout:g}s ({what})")
        if isinstance(e, (ne.Error, OSError, asyncio.CancelledError)):
            return RetriableError(f"{where}: {type(e).__name__} ({what})")
        return e if isinstance(e, Exception) else RuntimeError(str(e))

    def _headers(self, stream: Stream) -> dict[str, str]:
        """Headers every message of ``stream`` carries besides its ``Nats-Msg-Id``."""
        origin = {"Replicant-Pipeline": quote(self.pipeline, safe=""), "Replicant-Stream": quote(stream.name, safe="")}
        if stream.tenant is not None:
            origin["Replicant-Tenant"] = quote(stream.tenant, safe="")
        return origin

    def _too_big(self, stream: Stream, texts: list[str], first: int) -> dict[int, str]:
        """Per index of a message over the server's ``max_payload`` (body and headers, as the
        server counts them), the reason; empty when the limit is unknown."""
        limit = self._nc.max_payload if self._nc is not None else 0
        if not limit:
            return {}
        head = len(f"NATS/1.0\r\nNats-Msg-Id: {self.pipeline}:{quote(stream.log_name, safe='')}:{first}\r\n\r\n")
        head += sum(len(k) + len(v) + 4 for k, v in self._headers(stream).items()) + 20  # room for a longer offset
        found = {}
        for i, text in enumerate(texts):
            size = len(text.encode()) + head
            if size > limit:
                found[i] = (f"destination {self.name!r}: NATS at {self._where()}: the record is {size:,} bytes with its headers, "
                            f"more than the server's max_payload of {limit:,} bytes")
        return found

    def _set_aside(self, stream: Stream, data: pa.Table, offsets: list[int], too_big: dict[int, str]) -> None:
        """Sends the records at ``too_big`` to the dead letters, or raises FatalError when
        there is no dead-letter store or ``on_bad_record: fail``."""
        from replicant.destinations._bad_records import letters_for

        first = next(iter(too_big.values()))
        if self.dead_letter is None or getattr(self.config, "on_bad_record", "dead_letter") == "fail":
            raise FatalError(f"{first} (stream {stream.name!r}); raise max_payload on the server or exclude large columns")
        index = sorted(too_big)
        letters = letters_for(self, stream, data.take(index), np.array([offsets[i] for i in index]), [too_big[i] for i in index])
        log.warning("destination %r, stream %r: %d record(s) over max_payload, sent to dead letters", self.name, stream.name, len(letters))
        self.dead_letter(stream, letters)

    def _send(self, stream: Stream, texts: list[str], offsets: list[int], *, retry_id: str | None = None) -> None:
        """Publishes ``texts`` with message ids ``<pipeline>:<stream>:<offset>`` (a retry of dead
        letters: ``<pipeline>:<stream>:retry-<retry_id>:<n>``)."""
        subject = self.subject(stream)
        prefix = f"{self.pipeline}:{quote(stream.log_name, safe='')}:"
        if retry_id is not None:
            prefix += f"retry-{retry_id}:"
        what = f"publish offsets {offsets[0]}..{offsets[-1]} of {stream.name!r} to {subject}"
        self._call(self._publish(subject, texts, prefix, offsets, self._headers(stream)), what)

    async def _connect(self) -> None:
        import nats

        async def on_error(e: Exception) -> None:
            log.debug("NATS %s: %s", self._where(), type(e).__name__)

        if self._nc is not None and not self._nc.is_closed:
            return
        # nats-py does not decode a URL's user info (a referenced password is encoded into it)
        servers = [split_userinfo(s) for s in self._servers]
        user, password = next(((u, pw) for _, u, pw in servers if u is not None), (None, None))
        credentials = {"token": user} if user is not None and password is None else {"user": user, "password": password}
        self._nc = await nats.connect(
            servers=[s for s, _, _ in servers],
            **credentials,
            connect_timeout=self.connect_timeout,
            allow_reconnect=True,
            # finite, so a dead server fails the connect instead of looping forever; a
            # connection closed after these attempts is opened again by the next write
            max_reconnect_attempts=_RECONNECT_ATTEMPTS,
            reconnect_time_wait=0.5,
            error_cb=on_error,
            name=f"replicant {self.pipeline}/{self.name}",
        )
        self._js = self._nc.jetstream(timeout=self.timeout)
        self._ready.clear()

    async def _ensure_stream(self, subject: str) -> None:
        """Makes sure a JetStream stream captures ``subject`` (see the module docstring)."""
        import nats.js.errors as jse

        js = self._js
        if subject in self._ready:
            return
        try:
            await js.find_stream_name_by_subject(subject)
            self._ready.add(subject)
            return
        except jse.NotFoundError:
            pass
        try:
            info = await js.stream_info(self.stream_name)
        except jse.NotFoundError:
            try:
                await js.add_stream(
                    name=self.stream_name,
                    subjects=[subject],
                    duplicate_window=float(self.options.duplicate_window),
                )
            except jse.BadRequestError:  # created meanwhile by another writer: extend it instead
                info = await js.stream_info(self.stream_name)
            else:
                self._ready.add(subject)
                return
        config = info.config
        config.subjects = sorted(set(config.subjects or []) | {subject})
        await js.update_stream(config)
        self._ready.add(subject)

    async def _publish(self, subject: str, texts: list[str], prefix: str, offsets: list[int], origin: dict[str, str]) -> None:
        """Publishes every text in order without waiting, then awaits every ack; ``offsets``:
        each text's log offset (its ``Nats-Msg-Id``); ``origin``: headers every message
        carries besides its ``Nats-Msg-Id``."""
        import nats.js.errors as jse

        if self._nc is None or self._nc.is_closed:
            await self._connect()
        await self._ensure_stream(subject)
        js = self._js
        futures: list[asyncio.Future] = []
        try:
            # Windows of _WINDOW messages, at most two in flight: the acks of one window are
            # awaited (with the timeout) while the next is on the wire. nats-py's own stall
            # limit (4000 pending) is never reached, so no per-message wait_for task is needed.
            acked = 0
            for i, text in enumerate(texts):
                futures.append(
                    await js.publish_async(subject, text.encode(), headers={**origin, "Nats-Msg-Id": f"{prefix}{offsets[i]}"})
                )
                if len(futures) - acked >= 2 * _WINDOW:
                    await asyncio.wait_for(asyncio.gather(*futures[acked : acked + _WINDOW]), self.timeout)
                    acked += _WINDOW
            await asyncio.wait_for(asyncio.gather(*futures[acked:]), self.timeout)
        except jse.NoStreamResponseError:
            self._ready.discard(subject)  # the stream is gone: the retry re-creates it
            raise
        finally:
            for f in futures:
                if not f.done():
                    f.cancel()  # frees nats-py's pending-publish slots
                elif not f.cancelled():
                    f.exception()  # retrieved: no "never retrieved" warning for the others

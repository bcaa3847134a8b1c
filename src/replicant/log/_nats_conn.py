"""The connection side of :class:`~replicant.log.nats.NatsLog` (moved out of
:mod:`replicant.log.nats`, whose docstring describes the log, its lock and its threads).

:class:`_NatsConnection`, a mixin of :class:`~replicant.log.nats.NatsLog`:

- the event-loop bridge: every synchronous method hands a coroutine to the log's own loop
  (``_submit``, ``_call``), and NATS errors become :mod:`replicant.errors` at that boundary
  (``_translate``; ``_TRANSIENT`` are the errors worth a retry). Reads (a record's direct
  get, a stream's index load or refresh) are idempotent, so ``_read`` retries one that
  failed on a transient error for up to ``_READ_PATIENCE`` seconds: a server that stalled
  a moment, or this process stopped (SIGSTOP, a VM pause) while a request was in flight,
  whose answer then times out although it arrived. Appends are not retried: one that timed
  out may or may not be in the log;
- opening: connecting to the server and finding (or creating) the JetStream stream;
- the exclusive writer lock: the ``writer`` key of the lock bucket, created, refreshed every
  third of its time to live, released on close (``_acquire_lock``, ``_keep_lock``,
  ``_release_lock``; ``_busy_message`` names the holder).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js import api
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from replicant.errors import ConfigError, ConnectionError, FatalError, RetriableError
from replicant.secrets import split_userinfo

T = TypeVar("T")

log = logging.getLogger(__name__)

_READ_PATIENCE = 30.0  # seconds a read goes on retrying transient failures before it raises

_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
)


class _NatsConnection:
    """The connection and lock methods of :class:`~replicant.log.nats.NatsLog` (uses the
    attributes its ``__init__`` sets)."""

    prefix: str
    location: str
    read_only: bool
    timeout: float
    stream_name: str
    lock_bucket: str
    root: str
    _server: str
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _lock_lost: str | None
    _lock_revision: int
    _lock_value: bytes
    _heartbeat: asyncio.Task | None
    _nc: Any
    _js: Any
    _kv: Any
    _direct: bool

    # -- the event loop bridge -----------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` on the log's loop; translates NATS errors at this boundary."""
        if self._loop.is_closed():
            coro.close()
            raise FatalError(f"staging log at {self.location} is closed")
        return self._translate(lambda: self._submit(coro).result())

    def _read(self, what: str, request: Callable[[], Coroutine[Any, Any, T]], first: Future[T] | None = None) -> T:
        """The result of an idempotent read ``request()``, or of ``first`` (the same request,
        already submitted: a read-ahead). A transient failure asks again at once when it was
        ``first``'s (after a stall every read-ahead failed together), then with back-off for up
        to ``_READ_PATIENCE`` seconds.

        Raises:
            RetriableError: still failing after that; other errors as :meth:`_call`.
        """
        if first is not None:
            try:
                return self._translate(first.result)
            except RetriableError as e:
                log.warning("%s: %s; trying again", what, e)

        def say(state: RetryCallState) -> None:
            log.warning("%s: %s; trying again (attempt %d)", what, state.outcome.exception() if state.outcome else "?",
                        state.attempt_number + 1)

        for attempt in Retrying(stop=stop_after_delay(_READ_PATIENCE), wait=wait_exponential(multiplier=0.1, max=2.0),
                                retry=retry_if_exception_type(RetriableError), before_sleep=say, reraise=True):
            with attempt:
                return self._call(request())
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _translate(self, get: Any) -> Any:
        try:
            return get()
        except (FatalError, ConfigError, ConnectionError, RetriableError):
            raise
        except _TRANSIENT as exc:
            raise RetriableError(f"staging log at {self.location}: the NATS server did not answer in time ({type(exc).__name__})") from exc
        except nats.errors.NoServersError as exc:
            raise ConnectionError(f"staging log at {self.location}: cannot reach the NATS server") from exc
        except nats.js.errors.APIError as exc:
            raise FatalError(f"staging log at {self.location}: JetStream refused a request: {exc.description}"
                             f" (code {exc.err_code})") from exc

    # -- opening -------------------------------------------------------------------------

    async def _open(self, replicas: int) -> None:
        async def quiet(_: Exception) -> None:  # the caller gets the error; do not log it twice
            return None

        # nats-py does not decode a URL's user info (a referenced password is encoded into it)
        server, user, password = split_userinfo(self._server)
        credentials = {"token": user} if user is not None and password is None else {"user": user, "password": password}
        try:
            connecting = nats.connect(
                server,
                **credentials,
                name=f"replicant-log {self.prefix}",
                connect_timeout=min(self.timeout, 5),
                allow_reconnect=True,
                max_reconnect_attempts=-1,  # once connected, ride out server restarts
                reconnect_time_wait=0.5,
                error_cb=quiet,
            )
            self._nc = await asyncio.wait_for(connecting, self.timeout)  # the first connect is not retried forever
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise ConnectionError(f"staging log at {self.location}: cannot connect to the NATS server ({type(exc).__name__})") from exc
        self._js = self._nc.jetstream(timeout=self.timeout)
        try:
            info = await self._js.stream_info(self.stream_name)
        except nats.js.errors.NotFoundError:
            if self.read_only:
                info = None  # an empty log: nothing to follow yet
            else:
                info = await self._create_stream(replicas)
        except nats.js.errors.ServiceUnavailableError as exc:
            raise ConnectionError(f"staging log at {self.location}: the NATS server has no JetStream (start it with -js)") from exc
        self._direct = bool(info and info.config.allow_direct)

    async def _create_stream(self, replicas: int) -> api.StreamInfo:
        config = api.StreamConfig(
            name=self.stream_name,
            description=f"replicant staging log {self.prefix}",
            subjects=[f"{self.root}.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            num_replicas=replicas,
            allow_direct=True,
        )
        try:
            return await self._js.add_stream(config)
        except nats.js.errors.BadRequestError:
            return await self._js.stream_info(self.stream_name)  # another process created it first

    # -- the writer lock -----------------------------------------------------------------

    async def _acquire_lock(self, timeout: float | None, ttl: float) -> None:
        try:
            self._kv = await self._js.key_value(self.lock_bucket)
        except nats.js.errors.BucketNotFoundError:
            self._kv = await self._js.create_key_value(
                bucket=self.lock_bucket, history=1, ttl=ttl, storage=api.StorageType.FILE,
                description=f"writer lock of the replicant staging log {self.prefix}",
            )
        ttl = (await self._js.stream_info(f"KV_{self.lock_bucket}")).config.max_age or ttl
        me = {"pid": os.getpid(), "host": socket.gethostname(), "id": uuid.uuid4().hex, "since": time.time()}
        self._lock_value = json.dumps(me).encode()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self._lock_revision = await self._kv.create("writer", self._lock_value)
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise FatalError(await self._busy_message(ttl)) from None
                await asyncio.sleep(0.1)
        self._heartbeat = asyncio.ensure_future(self._keep_lock(ttl))

    async def _busy_message(self, ttl: float) -> str:
        try:
            holder = json.loads((await self._kv.get("writer")).value)
        except (nats.js.errors.KeyNotFoundError, ValueError, TypeError):
            holder = {}
        pid, host = holder.get("pid", "unknown"), holder.get("host", "unknown")
        if pid == os.getpid() and host == socket.gethostname():
            return (
                f"pipeline log at {self.location} is already open for writing by another NatsLog in this "
                f"process (pid {pid}); share that instance or close it first"
            )
        return (
            f"pipeline log at {self.location} is in use by another process (pid {pid} on host {host}); stop that run "
            f"or let it finish, then run again (the lock of a writer that died expires within {ttl:g} s)"
        )

    async def _keep_lock(self, ttl: float) -> None:
        """Refreshes the lock key every third of its time to live; notes when it is lost."""
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                self._lock_revision = await self._kv.update("writer", self._lock_value, last=self._lock_revision)
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
                self._lock_lost = (
                    f"pipeline log at {self.location}: this process lost its writer lock (it was not refreshed "
                    f"within {ttl:g} s and another writer may have taken over); stop and run again"
                )
                return
            except (*_TRANSIENT, nats.errors.Error):
                continue  # the next refresh may still be in time; appends are guarded anyway

    async def _release_lock(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._kv is not None and self._lock_revision and self._lock_lost is None:
            try:
                await self._kv.delete("writer", last=self._lock_revision)
            except (TimeoutError, nats.errors.Error):
                pass  # expires with the bucket's age limit

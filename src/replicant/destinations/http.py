"""HTTP data push: change batches POSTed (or PUT) as JSON, with retries and idempotency keys.

Configuration (``type: http``; ``url`` and ``batch_size`` are common destination keys)::

    - name: push
      type: http
      url: https://reports.example/api/push
      batch_size: 1000          # rows per request (default 1000)
      method: POST              # or PUT
      headers: {X-Tenant: acme}
      auth: {bearer: "${env:PUSH_TOKEN}"}      # or {basic: {username: u, password: "${env:PW}"}}
      batch_bytes: 5MB          # largest request body; a batch is split further to fit
      concurrency: 4            # requests in flight
      timeout: 30               # seconds per request
      max_retries: 8
      retry_max_seconds: 30     # longest wait between attempts (back-off and Retry-After)
      max_rejected: 100         # records of one write rejected alone before the write fails
      on_bad_record: dead_letter   # or `fail`: a rejected record pauses the stream

One request per batch, body::

    {"pipeline": "shop", "stream": "public.orders", "batch_id": "<32 hex>",
     "records": [{"op": "insert", "key": {"id": 7}, "data": {"id": 7, ...},
                  "position": {...}, "ts": "2024-01-02T03:04:05.000006Z"}, ...]}

with the header ``Idempotency-Key: <batch_id>``. A tenant's stream adds ``"tenant": "<id>"``
after ``"stream"`` (two tenants' ``orders`` are told apart by it).

Delivery (the non-transactional contract of :mod:`replicant.destinations.base`): the engine
calls :meth:`HttpDestination.write` with the rows of log offsets ``last_offset - n + 1 ..
last_offset``. Those rows are cut into requests of at most ``batch_size`` rows counted from
the first offset, and each such piece is cut again where its body would exceed
``batch_bytes`` (greedily, at least one record per request). The cut depends only on the rows,
so the same offsets always give the same requests. ``batch_id`` is a hash of pipeline,
destination name, stream and the request's first and last offset: stable across retries,
restarts and replays (as long as ``batch_size`` and ``batch_bytes`` are unchanged). Receivers
de-duplicate on it: a chunk whose write failed half-way is sent again whole, and the requests
that had already succeeded arrive a second time with the same key.

A dead letter re-sent by ``replicant dead-letters retry`` (:meth:`HttpDestination.redeliver`)
is one request of its own whose ``batch_id`` is hashed from the letter's id and attempt number
instead of log offsets: new to the receiver, and the same again if that attempt is repeated.

``write`` returns only when every request was answered 2xx or its records were dead-lettered:

- 2xx: accepted.
- connection errors, timeouts, 408, 425, 429 and 5xx: retried with exponential back-off and
  full jitter (0.5 s doubling, at most ``retry_max_seconds``); a ``Retry-After`` (seconds or
  an HTTP date) is honoured up to ``retry_max_seconds``. After ``max_retries`` retries the
  write raises :class:`~replicant.errors.RetriableError`.
- 401, 403 and 407: the credentials were refused: :class:`~replicant.errors.ConnectionError`
  naming the URL (never the credentials), as a refused database login; 404, 405 and 3xx: the
  endpoint is wrong: :class:`~replicant.errors.FatalError`. Nothing is dead-lettered: the
  records are fine.
- any other 4xx (400, 409, 413, 422, …): the endpoint refused the request for what it holds.
  A request of more than one record is split in two halves, the first ``n // 2`` records and
  the rest, each sent as a request of its own with the batch id of its offset range, and so on
  down to single records: only the records the endpoint rejects *alone* go to the dead-letter
  store (``self.dead_letter``), each with its own request's status and response body (first
  1,000 characters, secrets masked) as reason, the record as payload and ``log offset N,
  position P`` as origin; the rest is delivered. The halves depend only on the offsets, so a
  re-delivery or a replay splits the same way and sends the same batch ids (the receiver
  de-duplicates the halves it accepted before; the state store keeps one dead letter per log
  offset). The split runs depth first in the thread that sent the request: one poison record
  in a request of 1,000 costs 20 more requests (10 more rejected on the way down, 10 accepted
  halves), and a write holding *k* of them at most about ``2 k log2(batch_size)``.
- more than ``max_rejected`` (default 100) records of one write rejected alone: not bad
  records but a wrong endpoint or body format (an endpoint that refuses everything costs
  about ``2 × max_rejected`` requests to find out): :class:`~replicant.errors.FatalError`,
  nothing of the write is dead-lettered and the stream pauses, its offset where it was.
- without a dead-letter store, or with ``on_bad_record: fail``, the first content rejection
  raises :class:`~replicant.errors.FatalError` with the endpoint's answer, without splitting
  (a 413 of several records is still split: the records may be fine in smaller requests).
  A dead letter re-sent by ``retry`` is dead-lettered again whatever ``on_bad_record`` says.

Every change is pushed with its ``op`` whatever ``write:`` says (``append`` and ``merge`` both
send deletes: the receiver applies them); ``merge`` needs key columns. ``replace`` is not
supported. :meth:`HttpDestination.truncate` pushes one record ``{"op": "truncate", "key":
null, "data": null, "position": null, "ts": null}`` (the delivery does not call it for
non-transactional destinations yet: it skips markers). Schema drift needs nothing here: new
columns simply appear in ``data``.

JSON mapping (encoded by DuckDB's ``to_json`` over the Arrow batch, in C++; no per-row
Python; the request bodies are slices of one Arrow string buffer):

==========================  =====================================================
Arrow type                  JSON
==========================  =====================================================
integers, bool, string      number, true/false, string
float, double               number; NaN and ±infinity as strings ``"NaN"``,
                            ``"Infinity"``, ``"-Infinity"`` (protobuf's JSON mapping)
decimal                     string, exact (``"12.50"``)
timestamp with time zone    ISO 8601 in UTC, microseconds: ``"2024-01-02T03:04:05.000006Z"``
timestamp without zone      ISO 8601 without offset (the source's wall time)
date / time                 ``"2024-01-02"`` / ``"03:04:05.000123"``
dates, timestamps outside   ``"infinity"``, ``"-infinity"``, ``"+10000-01-01…"``, 44 BC as
years 0001–9999             ``"-0043-03-15…"`` (astronomical years; :mod:`._values`)
interval                    ISO 8601 duration by components: ``"P14M3DT4.5S"``
binary                      base64 string
list, struct                array, object (inner values as DuckDB renders them)
column declared json/jsonb  embedded JSON (a string if it does not parse)
==========================  =====================================================

``key`` holds the stream's key columns (null when it has none), ``data`` every data column
(null for a delete of a keyed stream), ``position`` the ``_pos`` JSON decoded (a string if it
is not JSON) and ``ts`` the ``_ts`` as above.

Secrets: ``auth`` values and ``headers`` values are :class:`replicant.secrets.Secret` (references resolved when a request is built); error
messages and dead-letter reasons show the URL without user info and query string, and any
secret value found in a response body is masked.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import duckdb
import httpx
import pyarrow as pa
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)

from replicant.destinations._http_pieces import Encoded, Piece, batch_id, plan, retry_after
from replicant.destinations._http_pieces import safe_url as _safe_url
from replicant.destinations._http_records import precast as precast_column
from replicant.destinations._http_records import record_sql
from replicant.destinations.base import Capabilities, Destination
from replicant.destinations.http_settings import HttpSettings
from replicant.errors import ConfigError, ConnectionError, FatalError, RetriableError
from replicant.model import META_COLUMNS, ConnectorContext, Stream
from replicant.timeouts import timeout_hint

__all__ = ["HttpDestination", "HttpSettings", "batch_id", "retry_after"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
_REASON_CHARS = 1000
_FIRST_WAIT = 0.5
_RETRY_STATUSES = frozenset({408, 425, 429})
_FATAL_STATUSES = frozenset({401, 403, 404, 405, 407})
_LOGIN_STATUSES = frozenset({401, 403, 407})


# ------------------------------------------------------------------ errors inside a request


class _Transient(Exception):
    """A failed attempt worth repeating (a retriable status)."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.retry_after = retry_after


@dataclass
class _Rejected:
    """A piece the endpoint refused for its content (or size), with the reason to store."""

    piece: Piece
    status: int
    reason: str


class _Tally:
    """Records of one write rejected alone, counted across the threads sending its requests."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.count = 0
        self._lock = threading.Lock()

    def add(self) -> bool:
        """Counts one more rejected record; true when there are more than ``most``."""
        with self._lock:
            self.count += 1
            return self.count > self.most


# ------------------------------------------------------------------ the destination


class HttpDestination(Destination):
    """Pushes change batches to an HTTP endpoint as JSON (see the module docstring)."""

    settings = HttpSettings
    capabilities = Capabilities(transactional=False, merge=True, replace=False, truncate=True)

    def __init__(self, config: Any, context: ConnectorContext) -> None:
        super().__init__(config, context)
        where = f"destination {self.name!r}"
        if config.url is None:
            raise ConfigError(f"invalid {where}", [("url", "required key is missing for an http destination")])
        self._url = config.url.get_secret_value()
        if urlsplit(self._url).scheme not in ("http", "https"):
            raise ConfigError(f"invalid {where}", [("url", f"{_safe_url(self._url)!r} is not an http:// or https:// URL")])
        # user info in the URL is basic auth unless `auth:` says otherwise; never sent in the URL
        parts = urlsplit(self._url)
        self._url_auth: httpx.Auth | None = None
        if parts.username is not None or parts.password is not None:
            self._url_auth = httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))
            host = parts.hostname or ""
            host = f"[{host}]" if ":" in host else host
            netloc = f"{host}:{parts.port}" if parts.port else host
            self._request_url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        else:
            self._request_url = self._url
        self.batch_size: int = config.batch_size or DEFAULT_BATCH_SIZE
        self.shown_url = _safe_url(self._url)
        self._secrets = self._secret_values()
        self._client: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._duck: duckdb.DuckDBPyConnection | None = None
        self._sql: dict[tuple[str, pa.Schema], tuple[str, list[int]]] = {}
        self._lock = threading.Lock()

    def _secret_values(self) -> list[str]:
        o: HttpSettings = self.options
        values = [v.get_secret_value() for v in o.headers.values()]
        if o.auth is not None:
            values.append(o.auth.bearer.get_secret_value() if o.auth.bearer else o.auth.basic.password.get_secret_value())
        parts = urlsplit(self._url)
        values += [parts.password or "", parts.query]
        return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    # -------------------------------------------------------------- lifecycle

    def open(self) -> None:
        if self._client is not None:
            return
        o: HttpSettings = self.options
        headers = {k: v.get_secret_value() for k, v in o.headers.items()}
        headers.setdefault("Content-Type", "application/json")
        auth: httpx.Auth | None = None
        if o.auth is not None and o.auth.bearer is not None:
            headers["Authorization"] = f"Bearer {o.auth.bearer.get_secret_value()}"
        elif o.auth is not None and o.auth.basic is not None:
            auth = httpx.BasicAuth(o.auth.basic.username, o.auth.basic.password.get_secret_value())
        if auth is None and "Authorization" not in headers:
            auth = self._url_auth
        self._client = httpx.Client(
            headers=headers,
            auth=auth,
            timeout=httpx.Timeout(o.timeout, connect=min(float(o.timeout), float(self.config.connect_timeout))),
            limits=httpx.Limits(max_connections=o.concurrency, max_keepalive_connections=o.concurrency),
            follow_redirects=False,
        )
        self._pool = ThreadPoolExecutor(max_workers=o.concurrency, thread_name_prefix=f"http-{self.name}")
        self._duck = duckdb.connect()
        self._duck.execute("SET threads TO 1")  # encoding 1,000-row batches: thread start-up costs more than it saves

    def close(self) -> None:
        pool, client, duck = self._pool, self._client, self._duck
        self._pool = self._client = self._duck = None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if client is not None:
            client.close()
        if duck is not None:
            duck.close()

    def applied_offset(self, stream: Stream) -> int:
        return -1  # the engine keeps the offset of a non-transactional destination

    def prepare(self, stream: Stream) -> None:
        self.require_key(stream)

    def begin_replace(self, stream: Stream) -> None:
        raise FatalError(f"destination {self.name!r} (http) cannot `replace` {stream.name!r}; use `write: append` or `merge`")

    def commit_replace(self, stream: Stream, *, last_offset: int) -> None:
        self.begin_replace(stream)

    def evolve(self, stream: Stream, old: Stream) -> None:
        """Nothing to change: new columns appear in ``data`` of the next records."""

    def truncate(self, stream: Stream, *, last_offset: int) -> None:
        """Pushes one ``{"op": "truncate"}`` record for the marker at ``last_offset``."""
        if self._client is None:
            raise FatalError(f"destination {self.name!r}: truncate() before open()")
        record = '{"op":"truncate","key":null,"data":null,"position":null,"ts":null},'
        enc = Encoded(pa.array([record], pa.large_string()), last_offset)
        self._deliver(stream, iter([enc]))

    # -------------------------------------------------------------- writing

    def write(self, stream: Stream, data: pa.Table, *, last_offset: int, offsets: pa.Array | None = None) -> None:
        """Pushes the rows of offsets ``last_offset - n + 1 .. last_offset``; returns when every
        request is accepted or its records dead-lettered.

        The rows are encoded in slices of a few requests' worth, so encoding the next slice
        overlaps sending the previous one; slices hold whole multiples of ``batch_size``, so
        the requests are the same as if the chunk were encoded at once.

        Raises:
            RetriableError: a request still failed after ``max_retries`` retries (nothing is
                lost: the engine writes the chunk again, with the same batch ids).
            FatalError: the endpoint refused the credentials or the address, or records were
                rejected and there is no dead-letter store.
        """
        if self._client is None:
            raise FatalError(f"destination {self.name!r}: write() before open()")
        n = data.num_rows
        if n == 0:
            return
        first = last_offset - n + 1
        step = self.batch_size * 2 * self.options.concurrency
        slices = (Encoded(self._encode(stream, data.slice(s, step)), first + s) for s in range(0, n, step))
        self._deliver(stream, slices)

    def redeliver(self, stream: Stream, data: pa.Table, *, retry_id: str) -> None:
        """Pushes dead-lettered records again, as :meth:`write` would, but keyed by ``retry_id``
        (batch ids hashed from it, not from log offsets: the receiver sees a new request, and
        the same one if this retry is repeated). No offset is involved."""
        if self._client is None:
            raise FatalError(f"destination {self.name!r}: redeliver() before open()")
        if data.num_rows:
            self._deliver(stream, iter([Encoded(self._encode(stream, data), 0)]), retry_id=retry_id, strict=False)

    def _encode(self, stream: Stream, data: pa.Table) -> pa.LargeStringArray:
        """One JSON record per row, each followed by a comma, as one Arrow string array."""
        key = (stream.name, data.schema)
        with self._lock:
            if key not in self._sql:
                self._sql[key] = record_sql(stream, data.schema)
            sql, precast = self._sql[key]
        for i in precast:  # decimal256, dates, timestamps, intervals: their lossless text, in Arrow
            data = data.set_column(i, data.schema.field(i).name, precast_column(data.column(i)))
        for i, f in enumerate(data.schema):
            if pa.types.is_timestamp(f.type) and f.type.tz is not None:
                # the stored values are UTC: dropping the zone keeps them (DuckDB then formats UTC)
                data = data.set_column(i, f.name, data.column(i).cast(pa.timestamp(f.type.unit)))
        # positional column names: DuckDB matches identifiers case-insensitively ("id" vs "Id")
        data = data.rename_columns([n if n in META_COLUMNS else f"c{i}" for i, n in enumerate(data.column_names)])
        assert self._duck is not None
        cur = self._duck.cursor()
        try:
            cur.register("changes", data)
            out = cur.sql(sql).to_arrow_table().column(0)
        except duckdb.Error as e:
            raise FatalError(f"destination {self.name!r}, stream {stream.name!r}: cannot encode the batch as JSON: {e}") from None
        finally:
            cur.close()
        return out.cast(pa.large_string()).combine_chunks()

    def _deliver(self, stream: Stream, slices, *, retry_id: str | None = None, strict: bool = True) -> None:
        """Sends the requests of every encoded slice (at most ``concurrency`` at once) and waits
        for all; then dead-letters the records rejected alone or raises the first failure. Batch
        ids come from the log offsets, or from ``retry_id`` for a re-sent dead letter.
        ``strict``: honour ``on_bad_record: fail`` (a write; not a re-sent dead letter)."""
        keyed = stream.log_name if retry_id is None else f"{stream.log_name}\x1fretry {retry_id}"
        tenant = "" if stream.tenant is None else f',"tenant":{json.dumps(stream.tenant)}'
        head = f'{{"pipeline":{json.dumps(self.pipeline)},"stream":{json.dumps(stream.name)}{tenant},"batch_id":"'.encode()
        overhead = len(head) + 32 + len('","records":[]}')

        def body(p: Piece) -> tuple[str, bytes]:
            bid = batch_id(self.pipeline, self.name, keyed, p.first, p.last)
            return bid, b"".join((head, bid.encode(), b'","records":[', p.enc.records(p.start, p.end), b"]}"))

        assert self._pool is not None
        pool = self._pool
        abort = threading.Event()
        rejected: list[_Rejected] = []
        pending: set[Future] = set()
        error: BaseException | None = None
        tally = _Tally(self.options.max_rejected)

        def submit(p: Piece) -> None:
            pending.add(pool.submit(self._push, stream, p, body, abort, tally, strict))

        def collect(block: bool) -> None:
            nonlocal error
            done, _ = wait(list(pending), timeout=None if block else 0, return_when=FIRST_EXCEPTION)
            for fut in done:
                pending.discard(fut)
                if fut.cancelled():
                    continue
                exc = fut.exception()
                if exc is not None:
                    if error is None:
                        error = exc
                        abort.set()
                        for other in pending:
                            other.cancel()
                    continue
                rejected.extend(fut.result())

        try:
            for enc in slices:
                for p in plan(enc, self.batch_size, self.options.batch_bytes, overhead):
                    submit(p)
                collect(block=False)
                if error is not None:
                    break
        except BaseException:
            abort.set()  # encoding failed: stop retrying what was sent, send nothing more
            raise
        finally:
            while pending:  # no request is left running behind the caller's back
                collect(block=True)
        if error is not None:
            raise error
        if rejected:
            self._dead_letter(stream, rejected)

    def _push(self, stream: Stream, piece: Piece, body, abort: threading.Event, tally: _Tally, strict: bool) -> list[_Rejected]:
        """Sends ``piece``; a piece of more than one record the endpoint rejects (413, or any
        other 4xx for its content) is split in halves, depth first and in this thread (so a
        wrong endpoint costs about two requests per record counted by ``tally`` before the
        guard stops it, not one per record of the batch), down to the records it rejects
        alone. Returns those.

        Raises:
            FatalError: a record was rejected and there is no dead-letter store or
                ``on_bad_record: fail`` (if ``strict``), both without splitting; or more than
                ``max_rejected`` records of this write were rejected alone.
        """
        where = f"destination {self.name!r}, stream {stream.name!r}"
        fail = self.dead_letter is None or (strict and getattr(self.config, "on_bad_record", "dead_letter") == "fail")
        todo, alone = [piece], []
        while todo and not abort.is_set():
            p = todo.pop()
            r = self._send(stream, p, body, abort)
            if r is None:
                continue
            if fail and not (r.status == 413 and p.size > 1):
                if self.dead_letter is None:
                    raise FatalError(
                        f"{where}: the endpoint rejected {p.size} records and there is no dead-letter store; its answer: {r.reason}"
                    )
                raise FatalError(
                    f"{where}: {r.reason}; the destination has `on_bad_record: fail`: fix the record at the source or the "
                    f"endpoint, then run again (or set `on_bad_record: dead_letter` to set such records aside)"
                )
            if p.size > 1:
                log.info("%s: HTTP %d for offsets %d..%d, splitting the request in two", where, r.status, p.first, p.last)
                left, right = p.halves()
                todo += [right, left]  # the left half next: depth first, in offset order
                continue
            alone.append(r)
            if tally.add():
                raise FatalError(
                    f"{where}: more than {tally.most:,} records of one write were rejected: this looks like a wrong endpoint "
                    f"or body format rather than bad records; check `url` and what the endpoint expects, then run again "
                    f"(nothing of this write was dead-lettered; raise `max_rejected` if that many bad records are expected); "
                    f"last: {r.reason}"
                )
        return alone

    def _send(self, stream: Stream, piece: Piece, body, abort: threading.Event) -> _Rejected | None:
        """Sends one request with retries. Returns None (accepted, or given up because another
        request of the write failed) or the endpoint's rejection (413 or a content 4xx)."""
        o: HttpSettings = self.options
        bid, content = body(piece)
        where = (
            f"destination {self.name!r}, stream {stream.name!r}: {o.method} {self.shown_url} "
            f"(offsets {piece.first}..{piece.last}, batch id {bid})"
        )
        headers = {"Idempotency-Key": bid}
        client = self._client
        assert client is not None

        def attempt() -> httpx.Response:
            if abort.is_set():
                raise _Aborted()
            try:
                r = client.request(o.method, self._request_url, content=content, headers=headers)
            except httpx.ConnectTimeout:
                raise _Transient(timeout_hint(float(self.config.connect_timeout), f"destinations.{self.name}.connect_timeout")) from None
            except httpx.TimeoutException:
                raise _Transient(timeout_hint(float(o.timeout), f"destinations.{self.name}.timeout")) from None
            except (httpx.NetworkError, httpx.RemoteProtocolError) as e:
                raise _Transient(self._scrub(f"{type(e).__name__}: {e}")) from None
            except httpx.HTTPError as e:
                raise FatalError(f"{where}: {type(e).__name__}: {self._scrub(str(e))}") from None
            if r.status_code >= 500 or r.status_code in _RETRY_STATUSES:
                raise _Transient(f"HTTP {r.status_code}: {self._excerpt(r, 200)}", retry_after(r.headers.get("Retry-After")))
            return r

        def wait_for(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            ceiling = o.retry_max_seconds
            after = exc.retry_after if isinstance(exc, _Transient) else None
            if after is not None:
                return min(after, ceiling)
            return random.uniform(0, min(ceiling, _FIRST_WAIT * 2 ** (state.attempt_number - 1)))

        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, _Transient)),
            stop=stop_after_attempt(o.max_retries + 1),
            wait=wait_for,
            sleep=lambda s: abort.wait(s) and None,
            before_sleep=lambda st: log.info("%s: attempt %d failed (%s); retrying", where, st.attempt_number, st.outcome.exception()),
        )
        try:
            r = retrying(attempt)
        except _Aborted:
            return None
        except RetryError as e:
            last = e.last_attempt.exception()
            raise RetriableError(f"{where}: still failing after {o.max_retries + 1} attempts; last: {self._scrub(str(last))}") from None
        status = r.status_code
        if 200 <= status < 300:
            return None
        if status in _FATAL_STATUSES or 300 <= status < 400:
            what = {
                401: "the credentials were refused (check `auth`)",
                403: "access is forbidden (check `auth` and `headers`)",
                404: "no such endpoint (check `url`)",
                405: f"the endpoint does not accept {o.method} (check `method`)",
                407: "the proxy wants credentials",
            }.get(status, f"the endpoint redirects to {_safe_url(r.headers.get('Location', '?'))}; set `url` to the final address")
            if status in _LOGIN_STATUSES:  # a refused login, as PostgreSQL's and MySQL's are
                raise ConnectionError(f"{where}: HTTP {status}: {what}; {self._excerpt(r, 200)}")
            raise FatalError(f"{where}: HTTP {status}: {what}; {self._excerpt(r, 200)}")
        reason = f"HTTP {status} from {o.method} {self.shown_url} (batch id {bid}): {self._excerpt(r, _REASON_CHARS)}"
        return _Rejected(piece, status, reason)

    def _excerpt(self, r: httpx.Response, chars: int) -> str:
        try:
            text = r.text
        except (UnicodeDecodeError, LookupError):
            text = repr(r.content[:chars])
        text = self._scrub(text.strip())  # before cutting, so no secret is left half-masked
        if len(text) > chars:
            text = text[:chars] + "…"
        return text or "(empty body)"

    def _dead_letter(self, stream: Stream, rejected: list[_Rejected]) -> None:
        """Stores each record the endpoint rejected alone, with its answer and log offset."""
        from replicant.model import DeadLetter

        assert self.dead_letter is not None  # without a store, _push raised at the first rejection
        letters = []
        for r in sorted(rejected, key=lambda r: r.piece.first):
            # the rejection path only: per-record Python is fine here
            p = r.piece
            for i, text in enumerate(p.enc.rows.slice(p.start, p.size).to_pylist()):
                record = json.loads(text[:-1])
                origin = f"log offset {p.first + i}, position {json.dumps(record.get('position'))}"
                letters.append(DeadLetter(reason=r.reason, payload=record, origin=origin, destination=self.name))
        # info, not warning: the run reports dead letters once (RunResult.dead_letters, the CLI's summary)
        log.info("destination %r, stream %r: %d records rejected, sent to dead letters", self.name, stream.name, len(letters))
        self.dead_letter(stream, letters)


class _Aborted(Exception):
    """Another request of the same write failed: stop retrying this one."""

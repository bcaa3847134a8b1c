"""Requests of the http source: a request budget, the server's rate-limit headers, retries.

- ``rate_limit: {requests: N, per: 1s}``: at most N requests start in any window of ``per``
  seconds (a sliding window over the start times of the last N requests), counted over every
  stream of the process that reads the same ``base_url`` (each worker thread has its own source
  instance; the budget is the API's, so they share it).
- ``Retry-After`` (seconds or an HTTP date) on a 429 or 503 is the wait before the next attempt
  (capped by ``retry_max_seconds``).
- ``RateLimit-Remaining``/``X-RateLimit-Remaining`` of 0 with ``RateLimit-Reset``/
  ``X-RateLimit-Reset`` (seconds from now, or a Unix time when larger than 10⁹): the next request
  waits until the reset.
- Retried with exponential back-off (0.5 s doubling, capped by ``retry_max_seconds``), at most
  ``max_retries`` times: 5xx, 408, 429, timeouts and connection failures. Never another 4xx.

Failures, translated here (the connector boundary): 401/403 → :class:`ConnectionError` (the
credentials were refused), another 4xx → :class:`FatalError`, retries used up →
:class:`RetriableError` (a ``--follow`` run tries again later). Each names the method, the URL
with every secret value masked, and the status; never a token or key.
"""

from __future__ import annotations

import collections
import email.utils
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from replicant.errors import ConnectionError, FatalError, RetriableError
from replicant.sources.http.settings import HttpSettings

__all__ = ["ApiClient"]

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))


class _Transient(Exception):
    def __init__(self, what: str, status: int | None, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.status = status
        self.retry_after = retry_after


class _Scrubbed(logging.Filter):
    """Masks the secrets of every live client in the ``httpx`` logger's records (it logs each
    request's URL at INFO, an api key in the query with it, should an application turn it on)."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: weakref.WeakSet[ApiClient] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = text
        for client in list(self.clients):
            masked = client.safe(masked)
        if masked != text:
            record.msg, record.args = masked, ()
        return True


_SCRUBBED = _Scrubbed()
logging.getLogger("httpx").addFilter(_SCRUBBED)


class _Budget:
    """The start times of the last requests to one API, shared by the clients that read it."""

    def __init__(self) -> None:
        self.starts: collections.deque[float] = collections.deque()
        self.not_before = 0.0
        self.lock = threading.Lock()


_BUDGETS: dict[tuple[Any, ...], _Budget] = {}
_BUDGETS_LOCK = threading.Lock()


def _budget(key: tuple[Any, ...]) -> _Budget:
    with _BUDGETS_LOCK:
        return _BUDGETS.setdefault(key, _Budget())


class ApiClient:
    """One HTTP client (connection pool) of a source, shared by its streams' reads.

    Args:
        settings: the source's keys.
        auth: the request authentication (:func:`~replicant.sources.http.auth.build_auth`).
        secrets: values to mask wherever a URL is shown.
        clock: monotonic seconds; ``sleep``: waits (tests inject both).
    """

    def __init__(self, settings: HttpSettings, auth: httpx.Auth | None, secrets: Callable[[], Iterable[str]], *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.secrets = secrets
        self.clock = clock
        self.sleep = sleep
        self._client = httpx.Client(auth=auth, timeout=settings.timeout, verify=settings.verify, follow_redirects=True)
        limit = settings.rate_limit
        owner = getattr(clock, "__self__", clock)  # one budget per clock: tests run their own
        _SCRUBBED.clients.add(self)
        self._budget = _budget((settings.base_url, limit.requests if limit else None, limit.per if limit else None,
                                id(owner)))
        #: Requests sent (attempts included), for status and tests.
        self.requests = 0

    def close(self) -> None:
        self._client.close()

    def safe(self, url: str | httpx.URL) -> str:
        """``url`` with every secret value (an api key in the query) masked."""
        text = str(url)
        for value in self.secrets():
            if value and len(value) >= 3:
                text = text.replace(value, "***").replace(httpx.URL("", params={"x": value}).query.decode()[2:], "***")
        return text

    def without_secrets(self, url: str) -> str:
        """``url`` without the query parameters that hold a secret (an api key a server copied
        into its next link): what may be kept in a position; the auth adds the key again."""
        u = httpx.URL(url)
        secrets = {v for v in self.secrets() if v}
        kept = [(k, v) for k, v in u.params.multi_items() if v not in secrets]
        return str(u.copy_with(params=kept)) if len(kept) != len(u.params.multi_items()) else url

    # ------------------------------------------------------------------ pacing

    def _pace(self) -> None:
        """Waits for the budget and for a rate-limit reset the server announced."""
        b = self._budget
        with b.lock:
            while True:
                now = self.clock()
                wait = b.not_before - now
                limit = self.settings.rate_limit
                if limit is not None:
                    while b.starts and b.starts[0] <= now - limit.per:
                        b.starts.popleft()
                    if len(b.starts) >= limit.requests:
                        wait = max(wait, b.starts[0] + limit.per - now)
                if wait <= 0:
                    if limit is not None:
                        b.starts.append(now)
                    return
                self.sleep(wait)

    def _note_limits(self, r: httpx.Response) -> None:
        h = r.headers
        remaining = h.get("RateLimit-Remaining") or h.get("X-RateLimit-Remaining")
        reset = h.get("RateLimit-Reset") or h.get("X-RateLimit-Reset")
        if remaining is None or reset is None:
            return
        try:
            if int(float(remaining)) > 0:
                return
            seconds = float(reset)
        except ValueError:
            return
        if seconds > 1e9:  # a Unix time
            seconds -= time.time()
        seconds = min(max(seconds, 0.0), self.settings.retry_max_seconds)
        with self._budget.lock:
            self._budget.not_before = max(self._budget.not_before, self.clock() + seconds)

    # ------------------------------------------------------------------ one request

    def get(self, url: str, *, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        """GETs ``url`` with pacing and retries; returns a 2xx response.

        Raises:
            ConnectionError: 401 or 403 (credentials refused), or the host cannot be reached
                after every retry.
            FatalError: any other 4xx but 408 and 429 (not retried).
            RetriableError: 5xx, 408, 429 or timeouts after ``max_retries`` retries.
        """
        s = self.settings

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            backoff = min(s.retry_max_seconds, 0.5 * 2 ** (state.attempt_number - 1))
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                return min(s.retry_max_seconds, exc.retry_after)
            return backoff

        def attempt() -> httpx.Response:
            self._pace()
            self.requests += 1
            try:
                r = self._client.get(url, params=params, headers=headers)
            except httpx.TimeoutException:
                raise _Transient("timed out", None) from None
            except httpx.TransportError as e:
                raise _Transient(f"could not connect ({type(e).__name__})", None) from None
            self._note_limits(r)
            if r.status_code in _RETRY_STATUS:
                raise _Transient(f"answered {r.status_code}", r.status_code, _retry_after(r))
            return r

        retrying = Retrying(stop=stop_after_attempt(s.max_retries + 1), wait=wait, sleep=self.sleep,
                            retry=retry_if_exception_type(_Transient), reraise=True)
        where = f"GET {self.safe(httpx.URL(url, params=params) if params else url)}"
        try:
            r = retrying(attempt)
        except _Transient as e:
            tries = s.max_retries + 1
            if e.status is None and "connect" in e.what:
                raise ConnectionError(f"{where} {e.what} after {tries} attempt(s)") from None
            raise RetriableError(f"{where} {e.what} after {tries} attempt(s)") from None
        where = f"GET {self.safe(r.request.url)}"  # as sent: with an api key in the query, masked
        if r.status_code in (401, 403):
            raise ConnectionError(f"{where} answered {r.status_code}: the credentials were refused (check `auth:`)")
        if r.status_code >= 400:
            raise FatalError(f"{where} answered {r.status_code} {r.reason_phrase}: {self.safe(r.text[:200])}")
        return r


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())

"""A real HTTP server that receives data pushes, for the tests of the http destination.

:class:`Receiver` runs the standard library's ``ThreadingHTTPServer`` (HTTP/1.1, keep-alive,
one thread per connection) on a free port of 127.0.0.1 in a background thread. It records
every request (body, headers, ``Idempotency-Key``, the status it answered, when) and can be
told to misbehave:

- ``fail_rate``: this fraction of attempts fails with one of ``failures``: ``"500"``,
  ``"429"`` (with ``Retry-After: retry_after``) or ``"slow"`` (the body is accepted, but the
  answer comes ``slow_seconds`` later, past the client's timeout). Whether an attempt fails
  is decided by a seeded random generator keyed on ``(seed, idempotency key, attempt
  number)``, so the pattern does not depend on thread scheduling. An idempotency key fails
  at most ``max_failures`` times in a row, then succeeds.
- ``reject``: a function of one record returning true for records the server refuses; a
  request holding one is answered ``reject_status`` with a JSON body naming their keys.
- ``status``: answer every request with this status (``401``, ``503``…).
- ``delay``: every request takes at least this long (to observe concurrency).
- ``max_body``: bodies longer than this are answered 413.
- ``echo_auth``: rejection answers repeat the request's ``Authorization`` header (as some
  servers do), to check that the client masks it.
- ``on_request``: called with each :class:`Received` in the handler's thread, after it is
  recorded and before it is answered (e.g. to SIGKILL the client between a push and its
  offset commit); the answer is sent after the callback returns.

``max_in_flight`` is the largest number of requests being handled at once.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Receiver", "Received"]


@dataclass
class Received:
    """One request as the server saw it."""

    method: str
    key: str | None
    body: bytes
    headers: dict[str, str]
    status: int
    outcome: str  #: "ok", "500", "429", "slow", "413", "reject" or "status"
    started: float
    finished: float = 0.0

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    fail_rate: float = 0.0
    failures: tuple[str, ...] = ("500", "429", "slow")
    seed: int = 0
    max_failures: int = 2
    slow_seconds: float = 1.0
    retry_after: str = "0"
    reject: Callable[[dict[str, Any]], bool] | None = None
    reject_status: int = 422
    status: int | None = None
    delay: float = 0.0
    max_body: int | None = None
    echo_auth: bool = False
    on_request: Callable[[Received], None] | None = None
    requests: list[Received] = field(default_factory=list)
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._attempts: dict[str | None, int] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/push"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
            timeout = 30

            def do_POST(self) -> None:  # the stdlib's naming
                receiver._handle(self)

            do_PUT = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and hung up is expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- what arrived

    def accepted(self) -> dict[str, Any]:
        """Idempotency key → the decoded body, for every key the server processed (2xx
        answered, including answers the client gave up waiting for). Asserts that every
        request with the same key carried the same body."""
        out: dict[str, bytes] = {}
        with self._lock:
            reqs = list(self.requests)
        for r in reqs:
            if r.key is not None and r.key in out:
                assert out[r.key] == r.body, f"idempotency key {r.key} was sent with two different bodies"
        for r in reqs:
            if 200 <= r.status < 300 and r.key is not None:
                out[r.key] = r.body
        return {k: json.loads(v) for k, v in out.items()}

    def records(self) -> list[dict[str, Any]]:
        """Every accepted record once (de-duplicated by idempotency key)."""
        return [rec for body in self.accepted().values() for rec in body["records"]]

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.requests:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        return counts

    # -------------------------------------------------------------- handling

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length)
        key = h.headers.get("Idempotency-Key")
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
        rec = Received(h.command, key, body, dict(h.headers.items()), 200, "ok", started)
        headers: dict[str, str] = {}
        answer: bytes = b'{"ok":true}'
        try:
            rng = random.Random(f"{self.seed}:{key}:{attempt}")
            failing = attempt < self.max_failures and rng.random() < self.fail_rate
            if self.status is not None:
                rec.status, rec.outcome, answer = self.status, "status", b'{"error":"as configured"}'
            elif self.max_body is not None and len(body) > self.max_body:
                rec.status, rec.outcome, answer = 413, "413", b"payload too large"
            elif failing:
                kind = rng.choice(self.failures)
                rec.outcome = kind
                if kind == "500":
                    rec.status, answer = 500, b"internal error"
                elif kind == "429":
                    rec.status, answer = 429, b"slow down"
                    headers["Retry-After"] = self.retry_after
            elif self.reject is not None:
                bad = [r["key"] for r in json.loads(body)["records"] if self.reject(r)]
                if bad:
                    rec.status, rec.outcome = self.reject_status, "reject"
                    answer_doc: dict[str, Any] = {"error": "invalid records", "keys": bad}
                    if self.echo_auth:
                        answer_doc = {"you_sent": h.headers.get("Authorization"), **answer_doc}
                    answer = json.dumps(answer_doc).encode()
            with self._lock:
                self.requests.append(rec)  # recorded on arrival: processed, whatever the client sees later
            if self.on_request is not None:
                self.on_request(rec)
            if rec.outcome == "slow":
                time.sleep(self.slow_seconds)  # the client times out before the answer
            elif self.delay and rec.outcome == "ok":
                time.sleep(self.delay)
            try:
                h.send_response(rec.status)
                for k, v in headers.items():
                    h.send_header(k, v)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(answer)))
                h.end_headers()
                h.wfile.write(answer)
                h.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                h.close_connection = True
        finally:
            rec.finished = time.monotonic()
            with self._lock:
                self._in_flight -= 1

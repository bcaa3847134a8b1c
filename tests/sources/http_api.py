"""A real paged JSON API (aiohttp, on a free port of 127.0.0.1, in a background thread) for the
http source's tests.

Resources are lists of records (``dict``) the test fills and changes (:meth:`Api.put`); each is
served under every pagination style:

==========================================  ================================================
``GET /offset/{res}?offset&limit``          ``{"data": [...], "total": N}``
``GET /page/{res}?page&per_page``           ``{"results": [...], "has_more": bool}``
``GET /cursor/{res}?cursor&limit``          ``{"items": [...], "next_cursor": "..." | null}``
``GET /link/{res}?after&limit``             ``[...]`` with ``Link: <...>; rel="next"``
``GET /json_link/{res}?after&limit``        ``{"data": [...], "links": {"next": URL | null}}``
``GET /issues`` / ``/issues/{n}/comments``  a parent (``number``) and its children
``POST /oauth/token``                       client credentials (basic auth) → a bearer token
==========================================  ================================================

Records are ordered by ``id``; ``since`` keeps those whose ``updated_at`` is greater (ISO text).
``auth`` is the kind every data request must carry (``bearer``, ``api_key_header``,
``api_key_query``, ``api_key_cookie``, ``basic``, ``oauth2``; None: open); a wrong one gets 401.
``faults`` are answered instead of the next matching requests, in order: ``"429"`` (with
``Retry-After: 1``), ``"500"``, ``"408"``, ``"timeout"`` (answers after ``slow`` seconds), ``"404"``.
``delay`` slows every data request (to kill a client mid-pagination). ``served`` counts the
records returned per resource; ``log`` keeps each request's path and query.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["Api", "SECRET", "TOKEN"]

TOKEN = "tok-3f9a1c"  #: bearer token, api key and basic password of the test server
SECRET = "client-s3cret"  #: the OAuth client secret
CLIENT = "client-1"


@dataclass
class Api:
    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    auth: str | None = None
    faults: list[tuple[str, str]] = field(default_factory=list)  #: (path prefix, kind)
    delay: float = 0.0
    slow: float = 2.0
    token_ttl: float = 3600.0
    limit_reset: float | None = None  #: answer `X-RateLimit-Remaining: 0` and this `X-RateLimit-Reset`
    served: dict[str, int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    port: int = 0
    folder: str | None = None  #: serves ``<folder>/<table>.arrow`` (the toy source's files) at ``/db/<table>``

    # ------------------------------------------------------------------ test side

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def put(self, resource: str, records: list[dict[str, Any]]) -> None:
        """Adds or replaces records (by ``id``), kept ordered by ``id``."""
        with self._lock:
            rows = {r["id"]: r for r in self.resources.get(resource, [])}
            rows.update({r["id"]: dict(r) for r in records})
            self.resources[resource] = [rows[k] for k in sorted(rows)]

    def delete(self, resource: str, ids: set[Any]) -> None:
        with self._lock:
            self.resources[resource] = [r for r in self.resources[resource] if r["id"] not in ids]

    # ------------------------------------------------------------------ server side

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._issued: dict[str, float] = {}

    def _fault(self, path: str) -> str | None:
        with self._lock:
            for i, (prefix, kind) in enumerate(self.faults):
                if path.startswith(prefix):
                    del self.faults[i]
                    return kind
        return None

    def _authorised(self, req: web.Request) -> bool:
        kind = self.auth
        h = req.headers
        if kind is None:
            return True
        if kind == "bearer":
            return h.get("Authorization") == f"Bearer {TOKEN}"
        if kind == "api_key_header":
            return h.get("X-API-Key") == TOKEN
        if kind == "api_key_query":
            return req.query.get("api_key") == TOKEN
        if kind == "api_key_cookie":
            return req.cookies.get("session") == TOKEN
        if kind == "basic":
            return h.get("Authorization") == "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()
        if kind == "oauth2":
            token = h.get("Authorization", "").removeprefix("Bearer ")
            expires = self._issued.get(token)
            return expires is not None and time.monotonic() < expires
        raise AssertionError(kind)

    async def _token(self, req: web.Request) -> web.Response:
        form = await req.post()
        expect = "Basic " + base64.b64encode(f"{CLIENT}:{SECRET}".encode()).decode()
        if req.headers.get("Authorization") != expect or form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"at-{len(self.tokens) + 1}"
        self.tokens.append(token)
        self._issued[token] = time.monotonic() + self.token_ttl
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl})

    async def _gate(self, req: web.Request) -> web.Response | None:
        self.log.append(req.path_qs)
        if self.delay:
            await asyncio.sleep(self.delay)
        fault = self._fault(req.path)
        if fault == "429":
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "1"})
        if fault == "500":
            return web.json_response({"error": "boom"}, status=500)
        if fault == "408":
            return web.json_response({"error": "request timeout"}, status=408)
        if fault == "404":
            return web.json_response({"error": "no such thing"}, status=404)
        if fault == "timeout":
            await asyncio.sleep(self.slow)
        if not self._authorised(req):
            return web.json_response({"error": "unauthorised"}, status=401)
        return None

    def _select(self, resource: str, req: web.Request, after: Any = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = list(self.resources.get(resource, []))
        since = req.query.get("since")
        if since is not None:
            rows = [r for r in rows if str(r.get("updated_at") or "") > since]
        if after is not None:
            rows = [r for r in rows if r["id"] > after]
        return rows

    def _count(self, resource: str, rows: list[dict[str, Any]], style: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            self.served[resource] = self.served.get(resource, 0) + len(rows)
            if style is not None:
                key = f"/{style}/{resource}"
                self.served[key] = self.served.get(key, 0) + len(rows)
        return rows

    async def _page_style(self, req: web.Request) -> web.Response:
        denied = await self._gate(req)
        if denied is not None:
            return denied
        r = self._answer(req)
        if self.limit_reset is not None:
            r.headers["X-RateLimit-Remaining"] = "0"
            r.headers["X-RateLimit-Reset"] = str(self.limit_reset)
        return r

    def _answer(self, req: web.Request) -> web.Response:
        style, res = req.match_info["style"], req.match_info["res"]
        q = req.query
        if style == "offset":
            rows = self._select(res, req)
            offset, limit = int(q.get("offset", 0)), int(q.get("limit", 10))
            return web.json_response({"data": self._count(res, rows[offset:offset + limit]), "total": len(rows)})
        if style == "page":
            rows = self._select(res, req)
            page, size = int(q.get("page", 1)), int(q.get("per_page", 10))
            part = rows[(page - 1) * size:page * size]
            return web.json_response({"results": self._count(res, part), "has_more": page * size < len(rows)})
        limit = int(q.get("limit", 10))
        token = q.get("cursor") if style == "cursor" else q.get("after")
        after = int(base64.urlsafe_b64decode(token).decode()) if style == "cursor" and token else \
            (int(token) if token else None)
        rows = self._select(res, req, after)
        part = self._count(res, rows[:limit], style)
        more = len(rows) > limit
        last = part[-1]["id"] if part else None
        if style == "cursor":
            nxt = base64.urlsafe_b64encode(str(last).encode()).decode() if more else None
            return web.json_response({"items": part, "next_cursor": nxt})
        query = {k: v for k, v in q.items() if k != "after"}
        query["after"] = str(last)
        next_url = str(req.url.with_query(query)) if more else None
        if style == "link":
            headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else {}
            return web.json_response(part, headers=headers)
        return web.json_response({"data": part, "links": {"next": next_url}})

    async def _db(self, req: web.Request) -> web.Response:
        """A table of Arrow files as pages linked by ``Link: rel="next"``; values JSON can not
        hold (decimals, dates, times) as text."""
        import json
        from pathlib import Path

        import pyarrow as pa

        denied = await self._gate(req)
        if denied is not None:
            return denied
        path = Path(str(self.folder)) / f"{req.match_info['table']}.arrow"
        if not path.is_file():
            return web.json_response({"error": "no such table"}, status=404)
        with pa.memory_map(str(path)) as f:
            table = pa.ipc.open_file(f).read_all()
        offset, limit = int(req.query.get("offset", 0)), int(req.query.get("limit", 100))
        rows = table.slice(offset, limit).to_pylist()
        headers = {}
        if offset + limit < table.num_rows:
            headers["Link"] = f'<{req.url.with_query({**req.query, "offset": str(offset + limit)})}>; rel="next"'
        return web.Response(text=json.dumps(rows, default=str), content_type="application/json", headers=headers)

    async def _issues(self, req: web.Request) -> web.Response:
        denied = await self._gate(req)
        return denied or web.json_response(self._count("issues", self._select("issues", req)))

    async def _comments(self, req: web.Request) -> web.Response:
        denied = await self._gate(req)
        if denied is not None:
            return denied
        number = int(req.match_info["number"])
        rows = [r for r in self._select("comments", req) if r["issue"] == number]
        return web.json_response({"data": self._count("comments", rows)})

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Api:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_get("/issues", self._issues)
        app.router.add_get("/issues/{number}/comments", self._comments)
        app.router.add_get("/db/{table}", self._db)
        app.router.add_get("/{style}/{res}", self._page_style)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="http-api", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the test API did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def items(n: int, *, start: int = 1, updated: str = "2024-01-01T00:00:00Z") -> list[dict[str, Any]]:
    """``n`` records with a nested object, an array, a number and a timestamp."""
    return [{"id": i, "name": f"item {i}", "amount": i * 1.5, "updated_at": updated,
             "meta": {"color": "red" if i % 2 else "blue", "size": i}, "tags": [f"t{i}", "x"]}
            for i in range(start, start + n)]

"""Paginators: the request of each page, the next page from an answer, when to stop.

A page's *state* is a small JSON-safe dict, so it can sit in a position:

==============  ================================  ====================================================
type            state of the next page            next page after an answer
==============  ================================  ====================================================
``none``        ``{}``                            none
``offset``      ``{"offset": N}``                 N + records returned
``page``        ``{"page": N}``                   N + 1
``cursor``      ``{"cursor": TOKEN}``             the value at ``cursor_path``
``link_header`` ``{"url": URL}``                  the ``Link: <URL>; rel="next"`` target (RFC 8288)
``json_link``   ``{"url": URL}``                  the URL at ``next_path``
==============  ================================  ====================================================

Only the token- and link-based types can resume a crashed read at the page it stopped on (the
token or link still names the same next page); offset and page numbers shift when records are
added or removed in between, so a read that used them restarts (a full read from the start, an
incremental one from its last durable cursor).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

import httpx

from replicant.sources.http.records import find, find_one
from replicant.sources.http.settings import Paginate

__all__ = ["Pager"]

_NONE = Paginate.model_validate({"type": "none"})


class Pager:
    """The pagination of one stream (``Paginate`` settings; None: one page)."""

    def __init__(self, cfg: Paginate | None) -> None:
        self.cfg = cfg or _NONE

    @property
    def resumable(self) -> bool:
        """Whether a saved page state names the same page after a restart."""
        return self.cfg.type in ("cursor", "link_header", "json_link")

    def first(self) -> dict[str, Any]:
        t = self.cfg.type
        if t == "offset":
            return {"offset": 0}
        if t == "page":
            return {"page": self.cfg.start_page}
        return {}

    def request(self, state: dict[str, Any], url: str, params: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        """The URL and query parameters of the page ``state`` names. A next-link URL is used as
        the server wrote it (it carries its own query)."""
        c = self.cfg
        if "url" in state:
            return state["url"], None
        params = dict(params)
        if c.type == "offset":
            params[c.offset_param] = state["offset"]
            if c.page_size:
                params[c.limit_param] = c.page_size
        elif c.type == "page":
            params[c.page_param] = state["page"]
            if c.page_size and c.size_param:
                params[c.size_param] = c.page_size
        elif c.type == "cursor" and state.get("cursor") is not None:
            params[c.param] = state["cursor"]
        return url, params

    def next(self, state: dict[str, Any], response: httpx.Response, body: Any, count: int) -> dict[str, Any] | None:
        """The state of the page after ``state``'s, or None when ``state``'s was the last.

        Args:
            response: the page's answer (for its ``Link`` header and URL).
            body: its parsed JSON.
            count: how many records it held.
        """
        c = self.cfg
        pages = int(state.get("pages", 0)) + 1
        if c.type == "none" or (c.max_pages is not None and pages >= c.max_pages):
            return None
        if c.stop_path:
            negate = c.stop_path.startswith("!")
            flag = find_one(body, c.stop_path.lstrip("!"))
            if flag is not None and bool(flag) != negate:
                return None
        nxt: dict[str, Any] | None
        if c.type in ("offset", "page"):
            if count == 0 or (c.page_size is not None and count < c.page_size):
                return None
            if c.type == "offset":
                nxt = {"offset": int(state["offset"]) + count}
                seen = nxt["offset"]
            else:
                nxt = {"page": int(state["page"]) + 1}
                seen = (nxt["page"] - c.start_page) * (c.page_size or count)
            total = find_one(body, c.total_path) if c.total_path else None
            if total is not None and seen >= int(total):
                return None
        elif c.type == "cursor":
            assert c.cursor_path is not None
            token = find_one(body, c.cursor_path)
            if token in (None, "") or count == 0 or token == state.get("cursor"):
                return None
            nxt = {"cursor": token}
        elif c.type == "link_header":
            link = response.links.get("next", {}).get("url")
            if not link:
                return None
            nxt = {"url": urljoin(str(response.url), link)}
        else:
            assert c.next_path is not None
            link = find_one(body, c.next_path)
            if not link:
                return None
            nxt = {"url": urljoin(str(response.url), str(link))}
        nxt["pages"] = pages
        return nxt


def records_of(body: Any, path: str | None) -> list[Any]:
    """The records of a page: the matches of ``path``, or (no path) the body when it is a list,
    else the first of ``data``, ``items``, ``results``, ``records`` that is a list."""
    if path:
        found = find(body, path)
        if len(found) == 1 and isinstance(found[0], list) and not path.rstrip().endswith("[*]"):
            return list(found[0])
        return found
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("data", "items", "results", "records"):
            if isinstance(body.get(key), list):
                return list(body[key])
    return []

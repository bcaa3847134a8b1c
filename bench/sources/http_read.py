"""The http source reading a paged API, beside plain httpx fetching the same pages, in one run.

A local API (the tests' aiohttp server, ``tests/sources/http_api.py``) serves N records of 7
fields (a nested object and an array among them) in cursor-paged pages of ``--page`` records:

- ``httpx + json()``: the baseline, GET each page with one ``httpx.Client`` and parse its body;
  nothing more (no typing, no Arrow);
- ``HttpSource`` (``nested: struct``): the source's full read, pages typed into Arrow batches;
- ``HttpSource`` (``nested: json``): the same with nested values as JSON text (DuckDB ``to_json``).

Prints records/s of each and the source's share of the baseline. The server is the same for all
three, so its cost is in every figure. ``PYTHONPATH=src:tests .venv/bin/python bench/sources/http_read.py``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx

from replicant.config import SourceConfig
from replicant.model import ConnectorContext
from replicant.sources.http import HttpSource
from replicant.sources.select import resolve_streams
from sources.http_api import Api, items


def baseline(url: str, page: int) -> int:
    n, cursor = 0, None
    with httpx.Client() as client:
        while True:
            params: dict[str, Any] = {"limit": page, **({"cursor": cursor} if cursor else {})}
            body = client.get(f"{url}/cursor/items", params=params).json()
            n += len(body["items"])
            cursor = body["next_cursor"]
            if not cursor:
                return n


def source(url: str, page: int, nested: str) -> int:
    cfg = SourceConfig.model_validate({"type": "http", "base_url": url, "streams": [{
        "name": "items", "path": "/cursor/items", "params": {"limit": page}, "records": "$.items[*]", "nested": nested,
        "paginate": {"type": "cursor", "cursor_path": "$.next_cursor"}, "primary_key": ["id"]}]})
    with HttpSource(cfg, ConnectorContext("bench")) as src:
        (s,) = resolve_streams(cfg, src.discover())
        return sum(b.data.num_rows for b in src.read(s, None))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--page", type=int, default=1000)
    args = ap.parse_args()
    api = Api().start()
    try:
        api.put("items", items(args.records))
        ways = [("httpx + json() (baseline)", lambda: baseline(api.url, args.page)),
                ("HttpSource, nested: struct", lambda: source(api.url, args.page, "struct")),
                ("HttpSource, nested: json", lambda: source(api.url, args.page, "json"))]
        took = {}
        for name, fn in ways:
            started = time.perf_counter()
            n = fn()
            took[name] = time.perf_counter() - started
            print(f"{name:28s} {n:>9,d} records  {took[name]:6.2f} s  {n / took[name]:>10,.0f} records/s")
        base = took[ways[0][0]]
        for name, _ in ways[1:]:
            print(f"{name}: {base / took[name]:.2f}x the baseline's rate")
    finally:
        api.stop()


if __name__ == "__main__":
    main()

"""Compares two sides of a stream: checksums per key-hash bucket computed inside each
database, in parallel, then bisection of the buckets that differ down to the keys.

The first pass asks each side for its row count and the sums of both 32-bit halves of its
rows' hashes, without grouping (one scan, parallel inside PostgreSQL): equal tables stop here.
Otherwise buckets come in. Buckets are ranges of the key's hash (``hash(key) mod n``), never
of key values: gaps in the keys, text keys and compound keys split as evenly as integers. The
next pass computes ``n`` buckets on both sides at once (one scan each; ``n`` = 4096, doubled
up to 2¹⁸ until a bucket holds about 16 rows); a bucket is equal when its row
count and the sums of both 32-bit halves of its rows' hashes are equal. The buckets that
differ are split 64 ways (``n`` × 64, only inside them: one more scan each) until they hold
few enough rows to fetch (:data:`LEAF_ROWS`); then both sides' keys and row hashes of those
buckets are fetched and compared: a key on one side only is *missing* (at the destination)
or *extra*, a key on both with another hash *different*.

A difference is reported only if a second look at its bucket finds it again
(:func:`compare` ``recheck``): a change in flight when the first pass ran is not one. The
second look finds integer and text keys by value (the key's index), others by their buckets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from replicant.validate.sides import Side

__all__ = ["FIRST_BUCKETS", "LEAF_ROWS", "Comparison", "Difference", "compare", "readable_key"]

FIRST_BUCKETS = 4096
#: The first bucket pass aims at this many rows a bucket (at most MAX_FIRST_BUCKETS buckets):
#: few differences then fall in buckets small enough to fetch at once.
ROWS_PER_BUCKET = 16
MAX_FIRST_BUCKETS = 1 << 18
SPLIT = 64
LEAF_ROWS = 200_000
_MAX_BUCKETS = 1 << 40
_IN_CHUNK = 20_000

T = TypeVar("T")


@dataclass(frozen=True)
class Difference:
    """One differing key: ``kind`` is ``missing`` (at the destination), ``extra`` (only at the
    destination) or ``different``; ``key`` maps each key column to its canonical text (None:
    NULL); ``values`` are the key's values as the side holding it returned them."""

    kind: str
    key: dict[str, str | None]
    text: str
    values: tuple[Any, ...]


@dataclass
class Comparison:
    """What comparing one stream found."""

    source_rows: int = 0
    destination_rows: int = 0
    source_checksum: str = ""
    destination_checksum: str = ""
    differences: list[Difference] = field(default_factory=list)
    passes: int = 0
    seconds: float = 0.0

    @property
    def equal(self) -> bool:
        return not self.differences


def _both(pool: ThreadPoolExecutor, a: Callable[[], T], b: Callable[[], T]) -> tuple[T, T]:
    fa, fb = pool.submit(a), pool.submit(b)
    return fa.result(), fb.result()


def _text(total: tuple[int, int, int]) -> str:
    """A checksum as text: rows, then both sums of hash halves in hex."""
    return f"{total[0]}:{total[1]:x}:{total[2]:x}"


def readable_key(text: str, names: list[str]) -> dict[str, str | None]:
    """A key's canonical text (``v…`` per column, or ``n``, joined by U+001F) by column."""
    parts = text.split("\x1f") if len(names) > 1 else [text]
    return {n: (None if p == "n" else p[1:]) for n, p in zip(names, parts, strict=False)}


def _fetch(side: Side, n: int, buckets: list[int]) -> dict[str, tuple[int, tuple[Any, ...]]]:
    out: dict[str, tuple[int, tuple[Any, ...]]] = {}
    for i in range(0, len(buckets), _IN_CHUNK):
        out.update(side.rows(n, buckets[i:i + _IN_CHUNK]))
    return out


Rows = dict[str, tuple[int, tuple[Any, ...]]]


def _diff(src: Rows, dst: Rows, names: list[str]) -> dict[str, Difference]:
    found: dict[str, Difference] = {}
    for k, (h, vals) in src.items():
        other = dst.get(k)
        if other is None:
            found[k] = Difference("missing", readable_key(k, names), k, vals)
        elif other[0] != h:
            found[k] = Difference("different", readable_key(k, names), k, vals)
    for k, (_, vals) in dst.items():
        if k not in src:
            found[k] = Difference("extra", readable_key(k, names), k, vals)
    return found


def _again(pool: ThreadPoolExecutor, src: Side, dst: Side, found: dict[str, Difference], names: list[str],
           before_recheck: Callable[[], None] | None, buckets: Callable[[], tuple[Rows, Rows]]) -> dict[str, Difference]:
    """The differences ``found`` that a second look finds again: integer and text keys looked
    up by value, others by their buckets (``buckets``)."""
    if before_recheck is not None:
        before_recheck()
    keys = [d.values for d in found.values()]
    x, y = _both(pool, partial(src.rows_by_keys, keys), partial(dst.rows_by_keys, keys))
    if x is None or y is None:
        x, y = buckets()
    again = _diff(x, y, names)
    return {k: again[k] for k in found if k in again}


def compare(src: Side, dst: Side, *, recheck: bool = True, before_recheck: Callable[[], None] | None = None) -> Comparison:
    """Compares ``src`` with ``dst`` (see the module docstring); both sides' queries of a pass
    run at once, each on its own connection.

    Args:
        recheck: look at the differing buckets a second time and keep only the keys found both
            times. ``before_recheck`` runs first (it waits for the destination to catch up).
    """
    started = time.monotonic()
    out = Comparison()
    names = [c.name for c in src.keys]
    with ThreadPoolExecutor(2, thread_name_prefix="validate") as pool:
        ta, tb = _both(pool, src.total, dst.total)
        out.passes = 1
        out.source_rows, out.source_checksum = ta[0], _text(ta)
        out.destination_rows, out.destination_checksum = tb[0], _text(tb)
        n, parent, parents = FIRST_BUCKETS, 0, list[int]()
        while n < max(ta[0], tb[0]) // ROWS_PER_BUCKET and n < MAX_FIRST_BUCKETS:
            n *= 2
        while ta != tb:
            a, b = _both(pool, partial(src.buckets, n, parent, parents), partial(dst.buckets, n, parent, parents))
            out.passes += 1
            bad = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if not bad:
                break
            rows = sum(max(a.get(k, (0, 0, 0))[0], b.get(k, (0, 0, 0))[0]) for k in bad)
            if rows > LEAF_ROWS and n * SPLIT <= _MAX_BUCKETS:
                n, parent, parents = n * SPLIT, n, bad
                continue
            x, y = _both(pool, partial(_fetch, src, n, bad), partial(_fetch, dst, n, bad))
            out.passes += 1
            found = _diff(x, y, names)
            if found and recheck:
                found = _again(pool, src, dst, found, names, before_recheck,
                               partial(_both, pool, partial(_fetch, src, n, bad), partial(_fetch, dst, n, bad)))
                out.passes += 1
            out.differences = sorted(found.values(), key=lambda d: d.text)
            break
    out.seconds = time.monotonic() - started
    return out

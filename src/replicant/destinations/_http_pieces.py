"""The requests of an HTTP push: encoded rows, the pieces cut from them, their idempotency
keys, and the halves a rejected piece is split into. How they are used, and why the cut must
be deterministic, is in :mod:`replicant.destinations.http`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa

from replicant.model import utcnow

__all__ = ["Encoded", "Piece", "batch_id", "plan", "retry_after", "safe_url"]


def batch_id(pipeline: str, destination: str, stream: str, first: int, last: int) -> str:
    """The idempotency key of the request carrying log offsets ``first .. last`` (inclusive)."""
    text = "\x1f".join((pipeline, destination, stream, str(first), str(last)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Encoded:
    """Encoded records of consecutive log offsets ``first ..``: one JSON text per row, each
    followed by a comma, in one Arrow buffer (a request body takes a slice of it)."""

    def __init__(self, rows: pa.LargeStringArray, first: int) -> None:
        self.rows = rows
        self.first = first
        self.offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[rows.offset : rows.offset + len(rows) + 1]
        values = rows.buffers()[2]
        self.buf = memoryview(values) if values is not None else memoryview(b"")

    def records(self, start: int, end: int) -> memoryview:
        """The JSON records of rows ``start .. end - 1`` joined by commas (no trailing comma)."""
        return self.buf[self.offsets[start] : self.offsets[end] - 1]


@dataclass
class Piece:
    """One request: rows ``start .. end - 1`` of ``enc`` (log offsets ``enc.first + start ..``)."""

    enc: Encoded
    start: int
    end: int

    @property
    def first(self) -> int:
        return self.enc.first + self.start

    @property
    def last(self) -> int:
        return self.enc.first + self.end - 1

    @property
    def size(self) -> int:
        return self.end - self.start

    def halves(self) -> tuple[Piece, Piece]:
        """The two pieces a rejected piece of more than one record is split into: the first
        ``size // 2`` records and the rest. They depend only on the piece's offsets, so a
        re-delivery splits the same way and sends the same idempotency keys."""
        mid = (self.start + self.end) // 2
        return Piece(self.enc, self.start, mid), Piece(self.enc, mid, self.end)


def plan(enc: Encoded, batch_size: int, limit: int, overhead: int) -> list[Piece]:
    """Cuts rows into requests: ``batch_size`` rows from the first, then by ``limit`` bytes
    (``overhead`` of them the body's envelope; at least one record per request).

    ``enc`` starts at a multiple of ``batch_size`` rows from the chunk's first offset."""
    cum = enc.offsets - enc.offsets[0]  # bytes (with commas) before each row
    n = len(cum) - 1
    pieces: list[Piece] = []
    for w in range(0, n, batch_size):
        end_w = min(w + batch_size, n)
        s = w
        while s < end_w:
            # body = overhead + row bytes - the last row's trailing comma
            e = int(np.searchsorted(cum, cum[s] + limit - overhead + 1, side="right")) - 1
            e = min(max(e, s + 1), end_w)
            pieces.append(Piece(enc, s, e))
            s = e
    return pieces


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - utcnow()).total_seconds())


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment: what messages may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))

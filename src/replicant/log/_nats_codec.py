"""How :class:`replicant.log.nats.NatsLog` lays a staging log out in JetStream: subject
names, message headers, record payloads and the in-memory record index.

One JetStream stream (file storage) per log, ``REPLICANT_LOG_<prefix>``, holds every
replicant stream of the log on its own subjects::

    replicant.log.<prefix>.data.<stream>     the records, one message each (or parts + one)
    replicant.log.<prefix>.schema.<stream>   schema version n = the n-th message (IPC schema)
    replicant.log.<prefix>.name.<stream>     the full name, for names shortened with ``~hash``

``<stream>`` is the name percent-encoded (UTF-8) keeping only ``A-Z a-z 0-9 _ -``: dots,
spaces, wildcards and ``~`` become ``%XX``, so any name is one subject token.

A record is one message whose payload is the batch as a complete Arrow IPC stream (schema,
dictionaries, batch, end-of-stream; readable with ``pyarrow.ipc.open_stream`` alone,
optionally lz4/zstd body compression) and whose headers say where it sits:

=========================  ==========================================================
``Replicant-Offset``       the record's first offset
``Replicant-Rows``         row count (0 for a marker or a zero-row batch)
``Replicant-Schema``       schema version (-1: a marker before any schema)
``Replicant-Time``         append time, µs since the epoch, UTC (never decreases)
``Replicant-Position``     the source position after the record, JSON (absent: none)
``Replicant-Marker``       the marker, JSON (absent: data)
``Replicant-Parts``        sequences of the parts before this message, comma-separated
=========================  ==========================================================

A payload larger than one message allows (the server's ``max_payload``, 1 MiB by default)
is cut into *parts*: every part but the last is a message with only a ``Replicant-Part``
header (``<offset>/<index>``), published first; the last part carries the record headers
and the sequences of the others. The record exists once that last message is stored, so
parts left by a crash are orphans: no record lists them, readers skip them, and retention
purges them with the records around them.
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from bisect import bisect_left, bisect_right
from typing import Any
from urllib.parse import quote, unquote

__all__ = [
    "H_MARKER",
    "H_OFFSET",
    "H_PART",
    "H_PARTS",
    "H_POSITION",
    "H_ROWS",
    "H_SCHEMA",
    "H_TIME",
    "MAX_SUBJECT_TOKEN",
    "PREFIX_PATTERN",
    "Records",
    "decode_token",
    "encode_token",
]

H_OFFSET = "Replicant-Offset"
H_ROWS = "Replicant-Rows"
H_SCHEMA = "Replicant-Schema"
H_TIME = "Replicant-Time"
H_POSITION = "Replicant-Position"
H_MARKER = "Replicant-Marker"
H_PARTS = "Replicant-Parts"
H_PART = "Replicant-Part"

PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_SUBJECT_TOKEN = 400  #: longer encodings are cut and suffixed with ``~`` and a hash


def encode_token(name: str) -> tuple[str, bool]:
    """The subject token for a stream name, and whether it was shortened.

    Raises:
        ValueError: the name is empty.
    """
    if not name:
        raise ValueError("a stream name cannot be empty")
    encoded = quote(name, safe="").replace(".", "%2E").replace("~", "%7E")
    if len(encoded) <= MAX_SUBJECT_TOKEN:
        return encoded, False
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    cut = encoded[: MAX_SUBJECT_TOKEN - 17]
    cut = cut[: cut.rfind("%")] if "%" in cut[-2:] else cut  # never half an escape
    return f"{cut}~{digest}", True


def decode_token(token: str) -> str | None:
    """The stream name of an unshortened token, or None (shortened or not ours)."""
    if "~" in token:
        return None
    try:
        name = unquote(token, errors="strict")
    except UnicodeDecodeError:
        return None
    return name if name and encode_token(name)[0] == token else None


def json_header(value: Any) -> str:
    """Compact JSON, ASCII only (a header value must not hold newlines or raw UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)


class Records:
    """The index of one stream's records, column by column (one item per record).

    Columns are only appended to; retention replaces the whole object, so a reader holding
    a ``Records`` and a count sees a fixed set of records.
    """

    __slots__ = ("offset", "rows", "nexts", "time", "size", "schema", "seq", "parts", "position", "marker")

    def __init__(self) -> None:
        self.offset = array("q")
        self.rows = array("q")
        self.nexts = array("q")
        self.time = array("q")
        self.size = array("q")  # bytes on the server: payloads and headers of all parts
        self.schema = array("q")
        self.seq = array("q")  # sequence of the record's (last) message
        self.parts: dict[int, tuple[int, ...]] = {}  # record index -> sequences of earlier parts
        self.position: list[str | None] = []
        self.marker: list[str | None] = []

    def __len__(self) -> int:
        return len(self.seq)  # filled last

    def add(
        self,
        offset: int,
        rows: int,
        schema: int,
        time_us: int,
        size: int,
        seq: int,
        parts: tuple[int, ...],
        position: str | None,
        marker: str | None,
    ) -> None:
        i = len(self.seq)
        self.offset.append(offset)
        self.rows.append(rows)
        self.nexts.append(offset + (1 if marker is not None else rows))
        self.time.append(time_us)
        self.size.append(size)
        self.schema.append(schema)
        self.position.append(position)
        self.marker.append(marker)
        if parts:
            self.parts[i] = parts
        self.seq.append(seq)

    def add_headers(self, headers: dict[str, str], seq: int, size: int) -> None:
        """Adds the record described by a final message's headers."""
        parts = headers.get(H_PARTS)
        self.add(
            int(headers[H_OFFSET]),
            int(headers[H_ROWS]),
            int(headers[H_SCHEMA]),
            int(headers[H_TIME]),
            size,
            seq,
            tuple(int(p) for p in parts.split(",")) if parts else (),
            headers.get(H_POSITION),
            headers.get(H_MARKER),
        )

    def drop_first(self, k: int) -> Records:
        """A new index without the first ``k`` records."""
        out = Records()
        for name in ("offset", "rows", "nexts", "time", "size", "schema", "seq"):
            setattr(out, name, getattr(self, name)[k:])
        out.position = self.position[k:]
        out.marker = self.marker[k:]
        out.parts = {i - k: p for i, p in self.parts.items() if i >= k}
        return out

    def sequences(self, i: int) -> tuple[int, ...]:
        """Every message sequence of record ``i``, in payload order."""
        return (*self.parts.get(i, ()), self.seq[i])

    def first_after(self, offset: int, count: int) -> int:
        """The first of the first ``count`` records whose offsets reach past ``offset``."""
        return bisect_right(self.nexts, offset, 0, count)

    def first_at_time(self, ts_us: int, count: int) -> int:
        """The first of the first ``count`` records appended at or after ``ts_us``."""
        return bisect_left(self.time, ts_us, 0, count)

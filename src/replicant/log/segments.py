"""One segment of a local staging log stream: an Arrow IPC stream file and its index.

``<first offset>-<creation time>.arrow`` holds one schema message (the segment's schema
version) followed by one or more IPC messages per appended batch (dictionary batches,
then the record batch, optionally lz4/zstd-compressed), and an end-of-stream marker once
the segment is sealed. ``pyarrow.ipc.open_stream(path).read_all()`` reads it whole.

``<first offset>-<creation time>.idx`` has one JSON line per record (see
:data:`INDEX_SCHEMA`): its first offset, row count, byte range in the ``.arrow`` file,
schema version, position and marker (both as JSON text), append time and the min/max of
the ``_ts`` column (µs since the epoch, UTC). Every record of a segment has the
segment's schema version. The durability protocol is described in
:mod:`replicant.log.local`.
"""

from __future__ import annotations

import json
import os
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.json as pajson

from replicant.log.base import LogRecord
from replicant.log.files import fsync_dir, micros_to_datetime, parse_segment_stem, segment_stem, write_all
from replicant.model import decode_position

__all__ = ["INDEX_SCHEMA", "EOS", "Entries", "Segment", "encode_batch", "ts_range"]

INDEX_SCHEMA = pa.schema(
    [
        ("offset", pa.int64()),
        ("rows", pa.int64()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("schema", pa.int64()),
        ("time", pa.int64()),
        ("min_ts", pa.int64()),
        ("max_ts", pa.int64()),
        ("position", pa.string()),
        ("marker", pa.string()),
    ]
)
_PARSE = pajson.ParseOptions(explicit_schema=INDEX_SCHEMA, unexpected_field_behavior="ignore")
_COLUMNS = tuple(INDEX_SCHEMA.names)
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  #: the IPC end-of-stream marker

_sync = getattr(os, "fdatasync", os.fsync)


def encode_batch(batch: pa.RecordBatch, options: ipc.IpcWriteOptions) -> pa.Buffer:
    """The IPC messages of one batch (its dictionaries, then the batch), without a schema.

    Each batch carries its own dictionaries, so any record can be decoded on its own.
    Uncompressed batches are written into one buffer of the exact size (measured first on a
    mock stream): a growing buffer costs a page fault per page, 4-5x the copy itself.
    """
    skip = batch.schema.serialize().size
    if options.compression is None:
        mock = pa.MockOutputStream()
        ipc.new_stream(mock, batch.schema, options=options).write_batch(batch)
        buf = pa.allocate_buffer(mock.size())
        ipc.new_stream(pa.FixedSizeBufferWriter(buf), batch.schema, options=options).write_batch(batch)
        return buf.slice(skip)
    sink = pa.BufferOutputStream()
    ipc.new_stream(sink, batch.schema, options=options).write_batch(batch)
    return sink.getvalue().slice(skip)


def ts_range(batch: pa.RecordBatch) -> tuple[int | None, int | None]:
    """Min and max of the ``_ts`` column in µs since the epoch, or Nones without one."""
    index = batch.schema.get_field_index("_ts")
    if index < 0 or not pa.types.is_timestamp(batch.schema.field(index).type):
        return None, None
    column = batch.column(index).cast(pa.timestamp("us"), safe=False).cast(pa.int64())
    bounds = pc.min_max(column)
    return bounds["min"].as_py(), bounds["max"].as_py()


def _has_dictionary(t: pa.DataType) -> bool:
    return pa.types.is_dictionary(t) or any(_has_dictionary(t.field(i).type) for i in range(t.num_fields))


class Entries:
    """A segment's index in memory, column by column: one item per record (never per row).

    Integers live in ``array('q')`` (8 bytes each); ``min_ts``/``max_ts`` and the schema
    version (one per segment) stay on disk. Entries are only ever appended, so a reader
    holding an ``Entries`` and a count sees a fixed set of records.
    """

    __slots__ = ("offset", "rows", "start", "end", "time", "position", "marker", "nexts")
    _INTS = ("offset", "rows", "start", "end", "time")
    # set by name in __init__; declared for the type checker
    offset: array[int]
    rows: array[int]
    start: array[int]
    end: array[int]
    time: array[int]
    nexts: array[int]

    def __init__(self) -> None:
        for name in self._INTS + ("nexts",):
            setattr(self, name, array("q"))
        self.position: list[str | None] = []
        self.marker: list[str | None] = []

    def __len__(self) -> int:
        return len(self.nexts)  # filled last, so every column has at least this many items

    def add(self, entry: dict[str, Any]) -> None:
        for name in self._INTS:
            getattr(self, name).append(entry[name])
        self.position.append(entry["position"])
        self.marker.append(entry["marker"])
        self.nexts.append(entry["offset"] + (1 if entry["marker"] is not None else entry["rows"]))

    def extend(self, table: pa.Table) -> None:
        for name in self._INTS:
            getattr(self, name).extend(table.column(name).to_pylist())
        self.position.extend(table.column("position").to_pylist())
        self.marker.extend(table.column("marker").to_pylist())
        width = pc.if_else(pc.is_null(table.column("marker")), table.column("rows"), 1)
        self.nexts.extend(pc.add(table.column("offset"), width).to_pylist())

    def first_after(self, offset: int, count: int) -> int:
        """The first of the first ``count`` entries whose offsets reach past ``offset``."""
        return bisect_right(self.nexts, offset, 0, count)

    def first_at_time(self, ts_us: int, count: int) -> int:
        """The first of the first ``count`` entries appended at or after ``ts_us``."""
        return bisect_left(self.time, ts_us, 0, count)


def _parse_lines(raw: bytes) -> pa.Table:
    """Parses complete JSON lines fast; raises ``pa.ArrowInvalid`` on a malformed one."""
    if not raw:
        return INDEX_SCHEMA.empty_table()
    return pajson.read_json(pa.BufferReader(raw), parse_options=_PARSE).select(list(_COLUMNS))


def _parse_prefix(raw: bytes) -> tuple[pa.Table, int]:
    """The longest prefix of complete lines that parse, and its length in bytes.

    A line that does not parse (a torn write the writer has not recovered yet) ends the
    prefix: it is neither returned nor counted.
    """
    if not raw:
        return INDEX_SCHEMA.empty_table(), 0
    physical = raw.split(b"\n")[:-1]
    try:
        table = _parse_lines(raw)
        if table.num_rows == len(physical):
            return table, len(raw)
    except pa.ArrowInvalid:
        pass
    tables, used = [], 0
    for text in physical:
        try:
            one = _parse_lines(text + b"\n")
        except pa.ArrowInvalid:
            break
        if one.num_rows != 1:
            break
        tables.append(one)
        used += len(text) + 1
    return (pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()), used


class Segment:
    """A segment's files and its index as read so far. Thread-safe for one writer."""

    def __init__(self, directory: Path, base: int, created_us: int) -> None:
        self.base = base
        self.created_us = created_us
        self.stem = segment_stem(base, created_us)
        self.data_path = directory / f"{self.stem}.arrow"
        self.index_path = directory / f"{self.stem}.idx"
        self.entries = Entries()
        self.version: int | None = None  # known once an entry is read, or when created
        self.data_end = 0  # writer: bytes of data covered by the index
        self._index_read = 0  # bytes of the index file parsed so far
        self.loaded = False  # the index has been read (sealed segments load lazily)
        self.final = False  # read-only logs: read after it stopped being the tail
        self.damaged = False  # a failed append could not be undone: refuse more
        self._load_lock = threading.Lock()
        self._data_fd: int | None = None
        self._index_fd: int | None = None

    @classmethod
    def from_path(cls, index_path: Path) -> Segment | None:
        parsed = parse_segment_stem(index_path.stem)
        return None if parsed is None else cls(index_path.parent, *parsed)

    @classmethod
    def create(cls, directory: Path, base: int, created_us: int, schema: pa.Schema, version: int, fsync: bool) -> Segment:
        """Writes a new segment: the schema message, an empty index, then syncs the folder."""
        segment = cls(directory, base, created_us)
        header = schema.serialize()
        segment._data_fd = os.open(segment.data_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        write_all(segment._data_fd, header)
        segment._index_fd = os.open(segment.index_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        if fsync:
            _sync(segment._data_fd)
            fsync_dir(directory)
        segment.data_end = header.size
        segment.version = version
        segment.loaded = True
        return segment

    # -- reading the index ------------------------------------------------------------

    def load(self) -> Entries:
        """The whole index of a sealed segment, read on first use (until :meth:`unload`)."""
        with self._load_lock:
            if not self.loaded:
                self._read_new_lines()
                self.loaded = True
            return self.entries

    def refresh(self) -> Entries:
        """Reads the index lines appended since the last call (complete lines only)."""
        with self._load_lock:
            self._read_new_lines()
            self.loaded = True
            return self.entries

    def unload(self) -> None:
        """Forgets the index (readers still holding the old ``Entries`` keep it)."""
        with self._load_lock:
            self.entries = Entries()
            self._index_read = 0
            self.loaded = self.final = False

    def _read_new_lines(self) -> None:
        """Raises FileNotFoundError once retention removed the segment."""
        with open(self.index_path, "rb") as f:
            f.seek(self._index_read)
            raw = f.read()
        table, used = _parse_prefix(raw[: raw.rfind(b"\n") + 1])
        if table.num_rows:
            self.entries.extend(table)
            if self.version is None:
                self.version = table.column("schema")[0].as_py()
        self._index_read += used

    def recover(self, fsync: bool) -> bool:
        """Writer: cuts a torn tail off both files; False if no complete record remains.

        Keeps the longest prefix of index lines that parse and are consistent (offsets
        contiguous, byte ranges ascending and inside the data file, one schema version),
        then truncates the index to it and the data file to the last byte range.
        """
        raw = self.index_path.read_bytes()
        data_size = self.data_path.stat().st_size
        complete = raw[: raw.rfind(b"\n") + 1]
        physical = complete.split(b"\n")[:-1]
        lines = _parse_prefix(complete)[0].to_pylist()
        good, expected, last_end = 0, self.base, 0
        for entry in lines:
            if None in (entry["offset"], entry["rows"], entry["start"], entry["end"], entry["schema"], entry["time"]):
                break
            width = 1 if entry["marker"] is not None else entry["rows"]
            if entry["offset"] != expected or entry["rows"] < 0 or not last_end <= entry["start"] <= entry["end"] <= data_size:
                break
            if entry["schema"] != lines[0]["schema"] or (entry["marker"] is not None and entry["rows"] != 0):
                break
            good, expected, last_end = good + 1, entry["offset"] + width, entry["end"]
        if good == 0:
            return False
        keep = sum(len(text) + 1 for text in physical[:good])
        for path, size in ((self.index_path, keep), (self.data_path, last_end)):
            if path.stat().st_size != size:
                with open(path, "r+b") as f:
                    f.truncate(size)
                    if fsync:
                        os.fsync(f.fileno())
        self.unload()
        self.refresh()
        self.data_end = last_end
        return True

    # -- writing ---------------------------------------------------------------------

    def append(self, body: pa.Buffer | None, entry: dict[str, Any], fsync: bool) -> dict[str, Any]:
        """Writes ``body`` then the index line for ``entry`` (durably when ``fsync``).

        Fills ``start`` and ``end`` into ``entry`` and returns it; the caller publishes
        it with ``entries.add`` under its own lock, so readers never see half a record.
        """
        if self.damaged:
            raise OSError(f"an earlier write to {self.stem} failed and could not be undone; reopen the log to recover it")
        if self._data_fd is None or self._index_fd is None:  # both or neither: opened together
            self._data_fd = os.open(self.data_path, os.O_WRONLY | os.O_APPEND)
            self._index_fd = os.open(self.index_path, os.O_WRONLY | os.O_APPEND)
        data_fd, index_fd = self._data_fd, self._index_fd
        start = entry["start"] = self.data_end
        size = body.size if body is not None else 0
        entry["end"] = start + size
        line = (json.dumps({name: entry.get(name) for name in _COLUMNS}, separators=(",", ":")) + "\n").encode()
        try:
            if body is not None and size:
                write_all(data_fd, body)
                if fsync:
                    _sync(data_fd)
            write_all(index_fd, line)
            if fsync:
                _sync(index_fd)
        except OSError:
            # Undo a partial write (a full disk…), so the next append's byte range is right.
            try:
                os.ftruncate(data_fd, start)
                os.ftruncate(index_fd, self._index_read)
            except OSError:
                self.damaged = True
            raise
        self.data_end += size
        self._index_read += len(line)
        return entry

    def seal(self, fsync: bool) -> None:
        """Ends the IPC stream (no more appends) and closes the files."""
        if self._data_fd is None:
            self._data_fd = os.open(self.data_path, os.O_WRONLY | os.O_APPEND)
        write_all(self._data_fd, EOS)
        if fsync:
            _sync(self._data_fd)
        self.close()

    def close(self) -> None:
        for fd in (self._data_fd, self._index_fd):
            if fd is not None:
                os.close(fd)
        self._data_fd = self._index_fd = None

    def remove(self) -> None:
        """Deletes the index first (it defines the segment), then the data."""
        self.close()
        self.index_path.unlink(missing_ok=True)
        self.data_path.unlink(missing_ok=True)

    def size_bytes(self) -> int:
        try:
            return self.data_path.stat().st_size + self.index_path.stat().st_size
        except FileNotFoundError:
            return 0

    # -- reading records -------------------------------------------------------------

    def records(
        self, entries: Entries, schema: pa.Schema, lo: int, hi: int, start: int, end: int, *, copy: bool = False
    ) -> Iterator[LogRecord]:
        """Records of ``entries[lo:hi]``, sliced to offsets ``start .. end-1``.

        Batches are zero-copy views of the memory-mapped file (unless compressed or
        dictionary-encoded); zero-row records are skipped (they hold no offsets). With
        ``copy`` (compressed logs: decoding copies anyway) the bytes are read instead of
        mapped, so the pages read do not stay in the process's resident set.
        Raises FileNotFoundError once retention removed the segment.
        """
        e = entries
        mapped: pa.MemoryMappedFile | pa.OSFile | None = None
        try:
            for i in range(lo, hi):
                offset, rows, marker = e.offset[i], e.rows[i], e.marker[i]
                if offset >= end:
                    break
                batch = None
                if marker is None:
                    if rows == 0:
                        continue
                    if mapped is None or mapped.size() < e.end[i]:
                        if mapped is not None:
                            mapped.close()
                        mapped = pa.OSFile(str(self.data_path)) if copy else pa.memory_map(str(self.data_path))
                    batch = self._decode(mapped, schema, e.start[i], e.end[i])
                    if offset < start or offset + rows > end:
                        skip = max(start - offset, 0)
                        batch = batch.slice(skip, min(end - offset, rows) - skip)
                        offset += skip
                yield LogRecord(
                    offset=offset,
                    batch=batch,
                    marker=None if marker is None else json.loads(marker),
                    position=decode_position(e.position[i]),
                    schema_version=cast(int, self.version),  # set by create() or the first index line
                    ts=micros_to_datetime(e.time[i]),
                )
        finally:
            if mapped is not None:
                mapped.close()  # buffers handed out keep their mapping alive

    @staticmethod
    def _decode(mapped: pa.MemoryMappedFile | pa.OSFile, schema: pa.Schema, start: int, end: int) -> pa.RecordBatch:
        mapped.seek(start)
        body = mapped.read_buffer(end - start)  # a view of the mapping, not a copy
        if not any(_has_dictionary(f.type) for f in schema):
            return ipc.read_record_batch(ipc.read_message(body), schema)
        # Dictionaries travel as separate messages: let a stream reader pair them up.
        stream = pa.py_buffer(schema.serialize().to_pybytes() + body.to_pybytes())
        return ipc.open_stream(stream).read_next_batch()

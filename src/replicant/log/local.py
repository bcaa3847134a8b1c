"""The staging log on a local disk: Arrow IPC segment files, a JSON-lines index, fsync.

Layout (``root`` is the ``log:`` location of the pipeline)::

    root/
      LOCK                          writer lock (flock), holds the writer's pid
      replicant-log.json            {"format": "replicant-log", "version": 1}
      streams/
        public.orders/              one folder per stream, name percent-encoded
          schemas/000000.arrow      schema version 0 (an IPC stream without batches)
          schemas/000001.arrow      schema version 1 …
          00000000000000000000-20261121T101500.123456Z.arrow   segment: first offset, creation time
          00000000000000000000-20261121T101500.123456Z.idx     its index, one JSON line per record
          00000000000001000000-20261121T101731.040210Z.arrow
          00000000000001000000-20261121T101731.040210Z.idx

Every segment is an Arrow IPC *stream* of one schema version, readable without replicant:
``pyarrow.ipc.open_stream(path).read_all()``. Segments roll when they reach
``segment_bytes`` and whenever the schema version changes. See
:mod:`replicant.log.segments` for the index format and :mod:`replicant.log.files` for
the folder-name encoding.

Durability protocol of :meth:`LocalLog.append` (each step completes before the next):

1. a new schema version is written to ``schemas/NNNNNN.arrow.tmp``, fsynced, renamed into
   place, and the folder fsynced;
2. a new segment (on roll) gets its schema message written and fsynced, an empty index
   created, and the folder fsynced; the previous segment is sealed with an end-of-stream
   marker first;
3. the batch's IPC messages are appended to the segment and the segment fsynced;
4. one index line is appended and the index fsynced. The record exists from here on:
   ``append`` returns its offset, and readers in this process are notified.

A crash can therefore leave, at most: a schema version no record uses (harmless), a
segment with an empty index (deleted on open), data bytes beyond the last index line or
a partial index line. When a writer opens a stream it keeps the longest prefix of index
lines that parse and agree with each other and with the data file, truncates both files
to that prefix, and continues at the offset after it. Readers only ever follow complete
index lines, so they never see a torn record.

Concurrency: one writer per stream (appends to one stream are serialised), any number
of reader threads; a writer process takes an exclusive ``flock`` on ``LOCK`` when the log
is opened, so a second writer process fails at once with a :class:`FatalError` naming the
holder's pid (or waits, with ``lock_timeout``). Readers in other processes open the log
with ``read_only=True``: they take no lock and follow new index lines and segments as
they appear.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from replicant.errors import ConfigError, FatalError
from replicant.log.base import Log, LogRecord, Retention, check_append, ipc_write_options
from replicant.log.files import WriterLock, datetime_to_micros, decode_stream, encode_stream, fsync_dir, write_durably
from replicant.log.stream import RECENT_BYTES, IndexCache, StreamFiles
from replicant.model import Position

__all__ = ["LocalLog"]

FORMAT_FILE = "replicant-log.json"
FORMAT_VERSION = 1


class LocalLog(Log):
    """A staging log in a local folder (see the module docstring for layout and protocol).

    Args:
        root: the log folder; created (with parents) unless ``read_only``.
        segment_bytes: roll a segment once it holds this many bytes (a segment may exceed
            it by one batch).
        compression: ``"lz4"`` (the default: fast, and it makes the repeated ``_pos`` text of a
            batch almost free on disk), ``"zstd"`` (smaller) or ``None`` IPC body compression.
        fsync: sync files and folders so an append survives power loss when it returns.
            ``False`` only survives a process crash (the OS still has the bytes).
        read_only: follow a log another process writes: no lock, no append or retention.
        lock_timeout: seconds to wait for another writer to release the log; 0 fails at
            once, None waits forever.
        cached_segments: how many sealed segments' indexes to keep in memory.

    Raises:
        ConfigError: an unknown or unavailable compression, or a bad ``segment_bytes``.
        FatalError: another writer holds the log.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        segment_bytes: int = 256 * 1024 * 1024,
        compression: Literal["lz4", "zstd"] | None = "lz4",
        fsync: bool = True,
        read_only: bool = False,
        lock_timeout: float | None = 0.0,
        cached_segments: int = 64,
    ) -> None:
        problems = []
        if compression not in (None, "lz4", "zstd"):
            problems.append(("log.compression", f"{compression!r} is not one of lz4, zstd"))
        elif compression is not None and not pa.Codec.is_available(compression):
            problems.append(("log.compression", f"this pyarrow build lacks {compression}"))
        if not isinstance(segment_bytes, int) or segment_bytes <= 0:
            problems.append(("log.segment_bytes", "must be a positive number of bytes"))
        if problems:
            raise ConfigError("invalid staging log options", problems)
        self.root = Path(root).expanduser().absolute()
        self.segment_bytes = segment_bytes
        self.compression = compression
        self.fsync = fsync
        self.read_only = read_only
        self._write_options = ipc_write_options(compression)
        self._cache = IndexCache(cached_segments)
        self._streams: dict[str, StreamFiles] = {}
        self._lock = threading.Lock()
        self._trim_lock = threading.Lock()
        self._writer_lock: WriterLock | None = None
        self._closed = False
        if not read_only:
            self._open_for_writing(lock_timeout)

    def _open_for_writing(self, lock_timeout: float | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._writer_lock = WriterLock(self.root)
        self._writer_lock.acquire(lock_timeout)
        marker = self.root / FORMAT_FILE
        try:
            version = json.loads(marker.read_text()).get("version")
        except (FileNotFoundError, ValueError, AttributeError):
            version = None  # a new log (or a marker torn by a crash before its first append)
        if version is None:
            text = json.dumps({"format": "replicant-log", "version": FORMAT_VERSION}) + "\n"
            write_durably(marker, text.encode(), self.fsync)
        elif version != FORMAT_VERSION:
            self.close()
            raise FatalError(f"staging log at {self.root} has format version {version}; this replicant reads {FORMAT_VERSION}")
        (self.root / "streams").mkdir(exist_ok=True)
        if self.fsync:
            fsync_dir(self.root)

    def __enter__(self) -> LocalLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalLog({str(self.root)!r}{', read_only=True' if self.read_only else ''})"

    def stream_path(self, stream: str) -> Path:
        """The folder holding ``stream``'s segments and schemas (it may not exist yet)."""
        return self.root / "streams" / encode_stream(stream)

    def _stream(self, name: str) -> StreamFiles:
        """The stream's state: loaded (and recovered) once by a writer, refreshed at every
        call by a read-only log."""
        with self._lock:
            st = self._streams.get(name)
            if st is None:
                st = self._streams[name] = StreamFiles(name, self.stream_path(name), self._cache)
                st.copy_reads = self.compression is not None
        if self.read_only:
            with st.write_lock:
                st.refresh_for_reader()
        elif not st.loaded:
            with st.write_lock:
                if not st.loaded:
                    st.load_for_writer(self.fsync)
        return st

    # -- the Log interface -------------------------------------------------------------

    def append(
        self,
        stream: str,
        batch: pa.RecordBatch | None,
        *,
        position: Position | None,
        marker: dict[str, Any] | None = None,
    ) -> int:
        """See :meth:`Log.append`. Raises ``FatalError`` if the disk write fails or the log
        is read-only or closed; ``ValueError``/``TypeError`` for a malformed call."""
        check_append(batch, marker)
        self._check_writable()
        st = self._stream(stream)
        offset = st.append(batch, position, marker, self._write_options, self.segment_bytes, self.fsync)
        self._trim_recent(st)
        return offset

    def _trim_recent(self, appended: StreamFiles) -> None:
        """Keeps the records every stream holds in memory for readers in this process within
        ``RECENT_BYTES`` together, dropping the oldest first but never the one just appended.
        Each stream keeps its last two records, so without this a run's memory grew with its
        number of streams: 12 finished tables held ~45 MB of last batches no reader needed."""
        with self._lock:
            streams = list(self._streams.values())
        with self._trim_lock:
            while sum(st.recent_bytes for st in streams) > RECENT_BYTES:
                held = [(r[0].ts, i) for i, st in enumerate(streams)
                        if (r := st.recent) and not (st is appended and len(r) == 1)]
                if not held:
                    return
                streams[min(held)[1]].forget_oldest_recent()

    def _check_writable(self) -> None:
        if self._closed:
            raise FatalError(f"staging log at {self.root} is closed")
        if self.read_only:
            raise FatalError(f"staging log at {self.root} was opened read-only; open it without read_only=True to write")

    def apply_retention(self, stream: str, retention: Retention) -> int:
        """See :meth:`Log.apply_retention`. Never drops the segment being written to, so the
        end offset and last position survive; a segment goes when its newest record is
        older than ``max_age_seconds`` or while the stream's files exceed ``max_bytes``."""
        self._check_writable()
        return self._stream(stream).apply_retention(retention, self.fsync)

    def read(self, stream: str, start: int = 0, *, end: int | None = None) -> Iterator[LogRecord]:
        """See :meth:`Log.read`. Checks ``start`` at once (not on the first ``next``)."""
        if start < 0:
            raise ValueError(f"start must be >= 0, not {start}")
        return self._stream(stream).read(start, end, self.root)

    def end_offset(self, stream: str) -> int:
        return self._stream(stream).end

    def start_offset(self, stream: str) -> int:
        st = self._stream(stream)
        with st.cond:
            return st.segments[0].base if st.segments else st.end

    def last_position(self, stream: str) -> Position | None:
        return self._stream(stream).last_position()

    def offset_at(self, stream: str, ts: datetime) -> int:
        """See :meth:`Log.offset_at`: by append time (a naive ``ts`` is taken as UTC)."""
        return self._stream(stream).offset_at(datetime_to_micros(ts))

    def schemas(self, stream: str) -> list[pa.Schema]:
        st = self._stream(stream)
        with st.cond:
            return list(st.schemas)

    def streams(self) -> list[str]:
        folder = self.root / "streams"
        if not folder.is_dir():
            return []
        names = []
        for path in folder.iterdir():
            name = decode_stream(path) if path.is_dir() else None
            if name is not None and any(index.stat().st_size for index in path.glob("*.idx")):
                names.append(name)
        return sorted(names)

    def wait(self, stream: str, offset: int, timeout: float) -> bool:
        """See :meth:`Log.wait`: woken by appends in this process; a read-only log polls
        the files every 20 ms."""
        st = self._stream(stream)
        deadline = time.monotonic() + timeout
        if not self.read_only:
            with st.cond:
                st.cond.wait_for(lambda: st.end > offset or self._closed, timeout)
                return st.end > offset
        while st.end <= offset:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return False
            with st.cond:
                st.cond.wait(min(remaining, 0.02))
            self._stream(stream)
        return True

    def close(self) -> None:
        """Closes files and releases the writer lock. Idempotent."""
        with self._lock:
            self._closed = True
            streams = list(self._streams.values())
        for st in streams:
            st.close()
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None

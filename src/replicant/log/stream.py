"""One stream of a local staging log: its segments and schema versions, kept in step with
the files, and the operations :class:`replicant.log.local.LocalLog` delegates to it.

A writer loads a stream once (recovering a torn tail) and then keeps it up to date
itself; a read-only log re-reads the new parts of the folder on every call. ``cond``
guards what readers may see; ``write_lock`` serialises appends, loading and retention.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from replicant.errors import FatalError
from replicant.log.base import LogRecord, Retention
from replicant.log.files import NAME_FILE, fsync_dir, micros_to_datetime, now_micros, write_durably
from replicant.log.segments import Entries, Segment, encode_batch, ts_range
from replicant.model import Position, decode_position, encode_position

__all__ = ["RECENT_BYTES", "IndexCache", "StreamFiles"]

_EMPTY_SCHEMA = pa.schema([])
_RECENT_RECORDS = 2  #: newest records of a stream kept in memory for readers in the writing process
RECENT_BYTES = 8 << 20  #: what all streams of a log keep so together (LocalLog._trim_recent)


class IndexCache:
    """Keeps the indexes of at most ``capacity`` sealed segments in memory (least recently
    used go first), so a long-lived process reading a long history stays small."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._lru: OrderedDict[Segment, None] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, segment: Segment) -> Entries:
        entries = segment.load()
        self.touch(segment)
        return entries

    def touch(self, segment: Segment) -> None:
        """Records a use of a sealed segment's index, evicting the least recent ones."""
        with self._lock:
            self._lru[segment] = None
            self._lru.move_to_end(segment)
            evicted = [self._lru.popitem(last=False)[0] for _ in range(len(self._lru) - self.capacity)]
        for old in evicted:
            old.unload()

    def discard(self, segment: Segment) -> None:
        with self._lock:
            self._lru.pop(segment, None)


class StreamFiles:
    """The segments and schema versions of one stream folder."""

    def __init__(self, name: str, path: Path, cache: IndexCache) -> None:
        self.name = name
        self.path = path
        self.cache = cache
        self.segments: list[Segment] = []
        self.schemas: list[pa.Schema] = []
        self.end = 0  # the offset the next append gets
        self.last_time_us = 0
        self.loaded = False
        self.cond = threading.Condition(threading.Lock())
        self.write_lock = threading.Lock()
        # The newest records as appended (in memory): a reader in this process that keeps up
        # with the writer (the engine's deliveries) gets them without decoding the file.
        self.recent: tuple[LogRecord, ...] = ()
        self.recent_bytes = 0  # of the batches in ``recent``
        self.copy_reads = False  # read segment bytes instead of mapping them (compressed logs)

    # -- loading -----------------------------------------------------------------------

    def _listing(self) -> list[Segment]:
        found = (Segment.from_path(p) for p in self.path.glob("*.idx"))
        return sorted((s for s in found if s is not None), key=lambda s: (s.base, s.created_us))

    def _new_schemas(self) -> list[pa.Schema]:
        schemas = list(self.schemas)
        while (path := self.path / "schemas" / f"{len(schemas):06d}.arrow").exists():
            schemas.append(ipc.read_schema(pa.py_buffer(path.read_bytes())))
        return schemas

    def load_for_writer(self, fsync: bool) -> None:
        """Reads the stream once, cutting a torn tail (see :meth:`Segment.recover`), removing
        segments without a complete record and files a crash left without an index."""
        if self.path.is_dir():
            segments = self._listing()
            indexed = {segment.data_path for segment in segments}
            for orphan in [*self.path.glob("*.arrow"), *(self.path / "schemas").glob("*.tmp")]:
                if orphan not in indexed:
                    orphan.unlink()
            while segments and not segments[-1].recover(fsync):
                segments.pop().remove()
            if fsync:
                fsync_dir(self.path)
            self._publish(self._new_schemas(), segments)
        self.loaded = True

    def refresh_for_reader(self) -> None:
        """Follows another process's writes: new segments, index lines and schema versions."""
        if not self.path.is_dir():
            return
        found = self._listing()  # before the schemas: a listed segment's schema is on disk
        known = {segment.stem: segment for segment in self.segments}
        segments = [known.pop(segment.stem, segment) for segment in found]
        for gone in known.values():
            self.cache.discard(gone)
        live = []
        for segment in segments:
            is_tail = segment is segments[-1]
            try:
                if is_tail or (segment.loaded and not segment.final):
                    segment.refresh()  # the tail, or the tail when last read: it may have grown
                    if not is_tail:
                        segment.final = True
                        self.cache.touch(segment)
            except FileNotFoundError:
                continue  # removed by retention since the listing
            live.append(segment)
        self._publish(self._new_schemas(), live)

    def _publish(self, schemas: list[pa.Schema], segments: list[Segment]) -> None:
        with self.cond:
            self.schemas = schemas
            self.segments = segments
            tail = segments[-1] if segments else None
            if tail is not None:
                self.end = tail.entries.nexts[-1] if len(tail.entries) else tail.base
                if len(tail.entries):
                    self.last_time_us = max(self.last_time_us, tail.entries.time[-1])

    # -- writing -----------------------------------------------------------------------

    def append(
        self,
        batch: pa.RecordBatch | None,
        position: Position | None,
        marker: dict[str, Any] | None,
        options: ipc.IpcWriteOptions,
        segment_bytes: int,
        fsync: bool,
    ) -> int:
        """Writes one record (see the protocol in :mod:`replicant.log.local`); its offset."""
        with self.write_lock:
            if not self.path.exists():
                self._create_folder(fsync)
            version = len(self.schemas) - 1 if batch is None else self._version_for(batch.schema, fsync)
            rows = 0 if batch is None else batch.num_rows
            body = encode_batch(batch, options) if rows else None
            min_ts, max_ts = ts_range(batch) if rows else (None, None)
            segment, time_us = self._writable_segment(version, body is not None, segment_bytes, fsync)
            entry: dict[str, Any] = {
                "offset": self.end,
                "rows": rows,
                "schema": version,
                "time": time_us,
                "min_ts": min_ts,
                "max_ts": max_ts,
                "position": None if position is None else encode_position(position),
                "marker": None if marker is None else json.dumps(marker, sort_keys=True, separators=(",", ":"), default=str),
            }
            try:
                segment.append(body, entry, fsync)
            except OSError as exc:
                raise FatalError(f"stream {self.name!r}: could not append to {segment.data_path}: {exc}") from exc
            with self.cond:
                segment.entries.add(entry)
                self.end = segment.entries.nexts[-1]
                self.last_time_us = time_us
                if rows or marker is not None:
                    self._remember(LogRecord(
                        offset=entry["offset"], batch=batch if rows else None, marker=marker,
                        position=decode_position(entry["position"]), schema_version=version,
                        ts=micros_to_datetime(time_us),
                    ))
                self.cond.notify_all()
            return entry["offset"]

    def _remember(self, record: LogRecord) -> None:
        self._keep_recent((*self.recent, record)[-_RECENT_RECORDS:])

    def _keep_recent(self, recent: tuple[LogRecord, ...]) -> None:
        """Sets the records kept in memory and their bytes; the caller holds ``cond``."""
        self.recent = recent
        self.recent_bytes = sum(r.batch.nbytes for r in recent if r.batch is not None)

    def forget_oldest_recent(self) -> None:
        """Drops the oldest record kept in memory (readers then decode it from the file). Only
        the front goes: what stays is still the newest records, without a gap."""
        with self.cond:
            if self.recent:
                self._keep_recent(self.recent[1:])

    def _from_recent(self, recent: tuple[LogRecord, ...], start: int, stop: int) -> Iterator[LogRecord]:
        for rec in recent:
            if rec.next_offset <= start:
                continue
            if rec.offset >= stop:
                break
            if rec.batch is not None and (rec.offset < start or rec.next_offset > stop):
                skip = max(start - rec.offset, 0)
                batch = rec.batch.slice(skip, min(stop - rec.offset, rec.batch.num_rows) - skip)
                rec = dataclasses.replace(rec, offset=rec.offset + skip, batch=batch)
            yield rec

    def _create_folder(self, fsync: bool) -> None:
        (self.path / "schemas").mkdir(parents=True, exist_ok=True)
        if "~" in self.path.name:  # a shortened name: keep the full one beside it
            write_durably(self.path / NAME_FILE, self.name.encode("utf-8"), fsync)
        if fsync:
            for folder in (self.path, self.path.parent):
                fsync_dir(folder)

    def _version_for(self, schema: pa.Schema, fsync: bool) -> int:
        """The latest schema version if ``schema`` equals it (metadata included), else a new one."""
        if self.schemas and self.schemas[-1].equals(schema, check_metadata=True):
            return len(self.schemas) - 1
        version = len(self.schemas)
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, schema):
            pass  # a schema message and end-of-stream: readable with ipc.open_stream
        write_durably(self.path / "schemas" / f"{version:06d}.arrow", sink.getvalue().to_pybytes(), fsync)
        with self.cond:
            self.schemas.append(schema)
        return version

    def _writable_segment(self, version: int, has_data: bool, segment_bytes: int, fsync: bool) -> tuple[Segment, int]:
        """The tail segment, or a new one when the version changes or the tail is full."""
        time_us = max(now_micros(), self.last_time_us)  # append times never go back
        tail = self.segments[-1] if self.segments else None
        if tail is not None and tail.version == version and not (has_data and tail.data_end >= segment_bytes):
            return tail, time_us
        if tail is not None:
            time_us = max(time_us, tail.created_us + 1)  # keeps segment names unique and ordered
            tail.seal(fsync)
        schema = self.schemas[version] if version >= 0 else _EMPTY_SCHEMA
        segment = Segment.create(self.path, self.end, time_us, schema, version, fsync)
        with self.cond:
            self.segments.append(segment)
        if tail is not None:
            self.cache.touch(tail)
        return segment, time_us

    def apply_retention(self, retention: Retention, fsync: bool) -> int:
        """Drops a prefix of sealed segments (never the tail); the new start offset."""
        with self.write_lock:
            segments = self.segments
            sizes = [segment.size_bytes() for segment in segments]
            total = sum(sizes)
            oldest_kept = None if retention.max_age_seconds is None else now_micros() - int(retention.max_age_seconds * 1e6)
            drop = 0
            for segment, size in zip(segments[:-1], sizes):
                times = self.cache.load(segment).time
                too_old = oldest_kept is not None and bool(times) and times[-1] < oldest_kept
                too_big = retention.max_bytes is not None and total > retention.max_bytes
                if not (too_old or too_big):
                    break
                total -= size
                drop += 1
            if drop:
                with self.cond:
                    self.segments = segments[drop:]
                for segment in segments[:drop]:
                    self.cache.discard(segment)
                    segment.remove()
                if fsync:
                    fsync_dir(self.path)
            return self.segments[0].base if self.segments else self.end

    # -- reading -----------------------------------------------------------------------

    def _snapshot(self) -> tuple[list[Segment], Entries | None, int, int]:
        """The segments, the tail's entries and their count, and the end offset, as of now."""
        with self.cond:
            segments = list(self.segments)
            tail = segments[-1].entries if segments else None
            return segments, tail, len(tail) if tail is not None else 0, self.end

    def _entries(self, segment: Segment, segments: list[Segment], tail: Entries | None, tail_count: int) -> tuple[Entries, int]:
        if segment is segments[-1] and tail is not None:  # not None: segments is not empty
            return tail, tail_count
        entries = self.cache.load(segment)
        return entries, len(entries)

    def read(self, start: int, end: int | None, root: Path) -> Iterator[LogRecord]:
        """See :meth:`Log.read`; checks ``start`` before returning the iterator."""
        segments, tail, tail_count, stop = self._snapshot()
        stop = stop if end is None else min(end, stop)
        first = segments[0].base if segments else stop
        if start < first:
            if segments:
                since = micros_to_datetime(segments[0].created_us).isoformat()
                held = f"offsets {first} to {max(stop - 1, first)} (appended since {since})"
            else:
                held = "nothing"
            raise FatalError(
                f"stream {self.name!r}: offset {start} is no longer in the staging log at {root}; it holds {held}. "
                f"Replay from offset {first} or later, or re-snapshot the stream"
            )
        recent = self.recent
        if recent and recent[0].offset <= start:
            return self._from_recent(recent, start, stop)
        return self._records(segments, tail, tail_count, start, stop)

    def _records(
        self, segments: list[Segment], tail: Entries | None, tail_count: int, start: int, stop: int
    ) -> Iterator[LogRecord]:
        if start >= stop:
            return
        i = max(bisect_right([segment.base for segment in segments], start) - 1, 0)
        for segment in segments[i:]:
            if segment.base >= stop:
                break
            try:
                entries, count = self._entries(segment, segments, tail, tail_count)
                schema = self.schemas[segment.version] if segment.version is not None and segment.version >= 0 else _EMPTY_SCHEMA
                yield from segment.records(
                    entries, schema, entries.first_after(start, count), count, start, stop, copy=self.copy_reads
                )
            except FileNotFoundError as exc:
                raise FatalError(
                    f"stream {self.name!r}: segment {segment.stem} was removed by retention while being read; "
                    f"read again from offset {self.segments[0].base if self.segments else self.end} or later"
                ) from exc

    def offset_at(self, ts_us: int) -> int:
        """The first offset appended at or after ``ts_us`` (loads few segment indexes)."""
        segments, tail, tail_count, end = self._snapshot()
        try:
            i = max(bisect_right([segment.created_us for segment in segments], ts_us) - 1, 0)
            while i > 0:  # append times never go back, but a segment may start after ts
                entries, count = self._entries(segments[i - 1], segments, tail, tail_count)
                if not count or entries.time[count - 1] < ts_us:
                    break
                i -= 1
            for segment in segments[i:]:
                entries, count = self._entries(segment, segments, tail, tail_count)
                j = entries.first_at_time(ts_us, count)
                if j < count:
                    return entries.offset[j]
        except FileNotFoundError:
            return self.offset_at(ts_us)  # retention removed a segment meanwhile: look again
        return end

    def last_position(self) -> Position | None:
        segments, tail, tail_count, _ = self._snapshot()
        for segment in reversed(segments):
            entries, count = self._entries(segment, segments, tail, tail_count)
            if count:
                return decode_position(entries.position[count - 1])
        return None

    def close(self) -> None:
        with self.cond:
            for segment in self.segments:
                segment.close()
            self.cond.notify_all()

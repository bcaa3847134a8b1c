"""The files source: CSV, JSON lines, JSON and Parquet files in a folder or a bucket.

Modes: ``incremental`` (the default: only new and changed files, in arrival order), ``full``
(every file again) and ``snapshot_diff`` (a full read diffed against the previous one).

The resume rule, where resume bugs live. A position names the file being read and how far::

    {"seq": 7, "file": "in/a.csv", "id": "<etag or hash>", "offset": 8388608, "line": 91234,
     "last": 91400, "eof": false}

``seq`` is the file's place in the stream's read order (the files-seen record), ``offset`` and
``line`` where the chunk holding the last row returned starts (a decompressed byte offset, or a
Parquet row group) and how many lines come before it, ``last`` the ``_line`` of the last row
returned (-1 while a changed file's earlier rows are being deleted), ``eof`` whether the
file's last row was returned. Resuming re-reads that chunk and drops the rows up to ``last``:
nothing twice, nothing skipped. Files are read one after the other, so every file with a
smaller ``seq`` is complete in the log: :meth:`FilesSeenMixin.confirm_files` marks those
``loaded`` (and runs ``after_load``) from the log's last position at the start of a read and
when the engine acknowledges.

A changed file (another identity at the same path) is read again by its stream's write mode:
with a key, its rows are merged; without one the stream's key is ``(_file, _line)`` and the
file's earlier rows are first deleted by that key (every line up to the highest ``_line`` it
ever had), then its rows are read: the destination holds the new version only.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from replicant.config import SourceConfig
from replicant.errors import ConfigError, FatalError
from replicant.model import (
    OP_DELETE,
    OP_READ,
    ConnectorContext,
    DeadLetter,
    Position,
    ReadBatch,
    Stream,
    encode_position,
    utcnow,
    with_meta,
)
from replicant.secrets import Secret, resolve_all
from replicant.sources.base import Capabilities, Source
from replicant.sources.files import readers
from replicant.sources.files.listing import FileInfo, Folder, compression_of, content_hash, format_of
from replicant.sources.files.schema import (
    FILE,
    LINE,
    RESCUED,
    conform,
    data_fields,
    load_added,
    parse_type,
    save_added,
    stable,
    with_origin,
)
from replicant.sources.files.settings import FilesSettings, FileStreamSettings, file_stream_entry
from replicant.sources.stream_entries import stream_options

__all__ = ["FilesSource"]

log = logging.getLogger(__name__)

ORIGIN_KEY = (FILE, LINE)


class FilesSource(Source):
    """Reads files by glob per stream (see the module docstring)."""

    capabilities = Capabilities(modes=frozenset({"incremental", "full", "snapshot_diff"}))
    settings = FilesSettings
    stream_settings: ClassVar[type[FileStreamSettings]] = FileStreamSettings

    @classmethod
    def stream_entry(cls, entry: dict[str, Any]) -> dict[str, Any]:
        """A raw ``streams:`` entry in the common shape (see :func:`.settings.file_stream_entry`)."""
        return file_stream_entry(entry)

    @classmethod
    def resolve_config(cls, config: SourceConfig, *, base_dir: Path) -> SourceConfig:
        """A local ``url`` is relative to the pipeline file's folder; ``url`` is required."""
        if config.url is None:
            raise ConfigError("invalid pipeline file", [("source.url", "required key is missing: a folder or s3://bucket/prefix")])
        url = config.url.get_secret_value()
        if url.startswith("file://"):
            url = url.removeprefix("file://")
        if "://" not in url:
            path = Path(url).expanduser()
            url = str((path if path.is_absolute() else base_dir / path).resolve())
        return config.model_copy(update={"url": Secret(url)})

    def __init__(self, config: SourceConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        if config.url is None:
            raise ConfigError("invalid source", [("source.url", "required key is missing")])
        if not isinstance(config.streams, list):
            raise ConfigError("invalid source", [("source.streams", "a files source needs a list of streams "
                                                                    "(`- name: …, glob: …`), not `all`")])
        self._streams: dict[str, FileStreamSettings] = stream_options(config.streams, FileStreamSettings)
        self._folder: Folder | None = None
        self._store: Any = None
        self._added: dict[str, list[pa.Field]] = {}

    # ------------------------------------------------------------------ parts

    @property
    def folder(self) -> Folder:
        if self._folder is None:
            assert self.config.url is not None
            self._folder = Folder(self.config.url.get_secret_value(), resolve_all(self.options.storage_options))
        return self._folder

    def _state(self) -> Any:
        if self._store is None and self.context.state_url:
            from replicant.state import StateStore

            self._store = StateStore(self.context.state_url).open()
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        self._folder = None

    def _settings(self, stream: Stream | str) -> FileStreamSettings:
        name = stream if isinstance(stream, str) else stream.table[-1]
        found = self._streams.get(name)
        if found is None:
            raise FatalError(f"stream {name!r} is not a files stream of this source")
        return found

    # ------------------------------------------------------------------ discovery

    def check(self) -> list[str]:
        self.folder.check()
        return super().check()

    def discover(self) -> list[Stream]:
        """One stream per configured ``streams:`` entry; its columns from a sample of the first
        readable file (by path) the glob finds, ``schema:`` hints on top, plus the columns ``add`` joined
        in earlier runs, then ``_rescued`` (rescue), ``_file`` and ``_line``. Key: ``(_file,
        _line)`` unless the stream sets ``primary_key``."""
        out = []
        configured = self.config.streams if isinstance(self.config.streams, list) else []
        for name, fs in self._streams.items():
            fields = self._sample(name, fs)
            have = {f.name for f in fields}
            for f in load_added(self.workdir, name):
                if f.name not in have:
                    fields.append(f)
                    have.add(f.name)
            schema = with_origin(fields, fs.on_new_columns == "rescue")
            key = next((tuple(sc.primary_key) for sc in configured if sc.table == name and sc.primary_key), ORIGIN_KEY)
            out.append(Stream(name=name, table=(name,), schema=schema, primary_key=key,
                              options={"kind": "table", "files_columns": schema.names}))
        return out

    def _sample(self, name: str, fs: FileStreamSettings) -> list[pa.Field]:
        hints = {c: parse_type(t, f"source.streams ({name}).schema.{c}") for c, t in fs.schema_hints.items()}
        move = fs.after_load if fs.after_load is not None else self.options.after_load
        files = self.folder.list(fs.glob, exclude=move["move"].strip("/") + "/" if isinstance(move, dict) else None)
        inferred: list[pa.Field] = []
        for sample in files[:5]:  # the first file that can be read; a bad one fails when it is read
            fmt = self._format(fs, sample.path)
            try:
                inferred = [pa.field(f.name, stable(f.type)) for f in self._sample_schema(sample.path, fs, fmt, hints)]
                break
            except (pa.ArrowInvalid, OSError, FatalError) as e:
                log.warning("stream %s: cannot infer the schema from %r (%s); trying the next file", name, sample.path, e)
        fields = [pa.field(f.name, hints.get(f.name, f.type)) for f in inferred if f.name not in (FILE, LINE, RESCUED)]
        have = {f.name for f in fields}
        fields += [pa.field(c, t) for c, t in hints.items() if c not in have]
        return fields

    def _sample_schema(self, path: str, fs: FileStreamSettings, fmt: str, hints: dict[str, pa.DataType]) -> list[pa.Field]:
        """The columns of a sample of ``path`` (Parquet: its schema; CSV without rows: its header, as text)."""
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with self.folder.open(path) as raw:
                return list(pq.ParquetFile(raw).schema_arrow)
        piece = next(self._pieces(path, fs, fmt, pa.schema([]), hints, 0, 0, fs.sample_bytes, 1000), None)
        if piece is not None:
            return [f for f in piece.table.schema if f.name != LINE]
        if fmt == "csv":
            stream = self.folder.open_decoded(path, compression_of(path, fs.compression))
            try:
                names = readers.csv_header(stream, fs.csv).names
            finally:
                stream.close()
            return [pa.field(n, hints.get(n, pa.string())) for n in names]
        return []

    def _format(self, fs: FileStreamSettings, path: str) -> str:
        fmt = fs.format or format_of(path)
        if fmt is None:
            raise FatalError(f"cannot tell the format of {path!r}: set `format:` on its stream (csv, jsonl, json, parquet)")
        return fmt

    # ------------------------------------------------------------------ reading

    def read(self, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        """``incremental`` here; ``full`` and ``snapshot_diff`` through their strategies."""
        if stream.mode == "incremental":
            return self._incremental(stream, position)
        return super().read(stream, position)

    def read_full(self, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        """Every file the glob finds, by path; positions as in the module docstring plus the
        snapshot's ``mode`` and id; the last batch empty and ``final``."""
        fs = self._settings(stream)
        resume = position if position and position.get("mode") == "full" and not position.get("done") else None
        snapshot = str(resume["snapshot"]) if resume else uuid.uuid4().hex[:16]
        state = self._state()
        if state is not None:
            self._confirm(stream, state, int(resume.get("seq", 0)) if resume else 0, False)
        files = self.folder.list(fs.glob, exclude=self._after_move_prefix(stream))
        records = state.file_records(self.context.pipeline, stream.name, tenant=self.context.tenant) if state else {}
        for info in files:
            if resume and info.path < resume["file"]:
                continue
            here = resume if resume and info.path == resume["file"] else None
            for rb in self._read_file(stream, info, here, changed=False, rec=records.get(info.path)):
                if not rb.data.num_rows:  # a file's end: the snapshot's final position covers it
                    continue
                pos = {**rb.position, "mode": "full", "snapshot": snapshot}
                yield ReadBatch(rb.data, pos)
            resume = None if here else resume
        done = {"mode": "full", "snapshot": snapshot, "done": True}
        yield ReadBatch(self._empty(stream), done, final=True)

    def _incremental(self, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        state = self._state()
        if state is None:
            raise FatalError(f"stream {stream.name!r}: mode incremental needs the pipeline's state store (files seen)")
        fs = self._settings(stream)
        resume = position if position and "seq" in position else None
        self._confirm(stream, state, int(resume["seq"]) if resume else 0, bool(resume and resume.get("eof")))
        records = state.file_records(self.context.pipeline, stream.name, tenant=self.context.tenant)
        listing = self.folder.list(fs.glob, exclude=self._after_move_prefix(stream))
        if resume and not resume.get("eof"):
            info = next((f for f in listing if f.path == resume["file"]), None)
            if info is not None:
                listing = [f for f in listing if f.path != info.path]
                identity = self._identity(info, records.get(info.path))
                same = identity == resume.get("id")
                yield from self._read_file(stream, info, resume if same else None, changed=True, identity=identity,
                                           rec=records.get(info.path),
                                           previous_last=int(resume.get("last") or 0))
        candidates = []
        for info in listing:
            rec = records.get(info.path)
            if rec is not None and rec["status"] == "loaded" and self._unchanged(info, rec):
                continue
            candidates.append((info, rec))
        candidates.sort(key=lambda c: (c[0].modified.timestamp() if c[0].modified else 0.0, c[0].path))
        for info, rec in candidates:
            yield from self._read_file(stream, info, None, changed=rec is not None and rec["loads"] > 0, rec=rec,
                                       identity=self._identity(info, rec))

    def watch(self, streams: list[Stream], stop: threading.Event, on_change: Callable[[list[str]], None]) -> bool:
        """A local folder: wakes a stream when a file matching its glob appears or changes
        (:mod:`.watch`, inotify); an object store is listed every ``poll_interval`` instead."""
        from replicant.sources.files.watch import watch_folder

        if self.folder.remote:
            return False
        mine = {s.name: self._streams[s.name] for s in streams if s.name in self._streams}
        if not mine:
            return False
        return watch_folder(self.folder.root, {n: fs.glob for n, fs in mine.items()},
                            {n: self._after_move_prefix(n) for n in mine}, stop, on_change)

    def pending(self) -> bool:
        """Whether the next incremental read has a file to load: one never seen, not loaded yet
        (or failed), or changed since (the service's ``schedule: {on: file}`` asks this)."""
        state = self._state()
        for name, fs in self._streams.items():
            records = state.file_records(self.context.pipeline, name, tenant=self.context.tenant) if state else {}
            for info in self.folder.list(fs.glob, exclude=self._after_move_prefix(name)):
                rec = records.get(info.path)
                if rec is None or rec["status"] != "loaded" or not self._unchanged(info, rec):
                    return True
        return False

    def _unchanged(self, info: FileInfo, rec: dict[str, Any]) -> bool:
        if info.etag is not None:
            return bool(rec["etag"] == info.etag)
        if rec["size"] == info.size and _same_time(rec["modified_at"], info.modified):
            return True
        return bool(rec["etag"] == content_hash(self.folder, info.path))

    def _identity(self, info: FileInfo, rec: dict[str, Any] | None) -> str:
        if info.etag is not None:
            return info.etag
        if rec is not None and rec["size"] == info.size and _same_time(rec["modified_at"], info.modified) and rec["etag"]:
            return str(rec["etag"])
        return content_hash(self.folder, info.path)

    def _read_file(self, stream: Stream, info: FileInfo, resume: Position | None, *, changed: bool, rec: dict[str, Any] | None,
                   identity: str | None = None, previous_last: int = 0) -> Iterator[ReadBatch]:
        """One file's batches after ``resume`` (None: from its start), the last one ``done``."""
        fs = self._settings(stream)
        state = self._state()
        pipeline, tenant = self.context.pipeline, self.context.tenant
        identity = identity or info.etag or f"{info.size}:{info.modified}"
        seq = int(resume["seq"]) if resume else 0
        if state is not None and (resume is None or rec is None or rec["status"] != "reading"):
            seq = state.start_file(pipeline, stream.name, info.path, size=info.size, etag=identity,
                                   modified_at=info.modified, tenant=tenant)
        base: dict[str, Any] = {"seq": seq, "file": info.path, "id": identity}
        pending: ReadBatch | None = None
        keyless = tuple(stream.primary_key) == ORIGIN_KEY
        last_before = max(int(rec["last_line"]) if rec else 0, previous_last)
        if keyless and changed and last_before > 0 and (resume is None or int(resume.get("last", 0)) < 0):
            for batch in self._deletes(stream, info.path, last_before):
                if pending is not None:
                    yield pending
                pos = {**base, "offset": 0, "line": 0, "last": -1, "eof": False}
                pending = ReadBatch(with_meta(batch, OP_DELETE, encode_position({"file": info.path}), utcnow()), pos)
            resume = None
        rows = bad_count = 0
        top = 0
        first_error: tuple[str, int] | None = None
        try:
            for batch, where in self._rows(stream, fs, info, resume):
                if isinstance(batch, list):  # bad records of a chunk
                    bad_count += len(batch)
                    if first_error is None and batch:
                        first_error = (batch[0].reason, batch[0].line)
                    self._bad(stream, fs, info.path, batch, identity, resumed=resume is not None)
                    continue
                if pending is not None:
                    yield pending
                rows += batch.num_rows
                top = max(top, where["last"])
                pending = ReadBatch(with_meta(batch, OP_READ, encode_position({"file": info.path, "offset": where["offset"]}),
                                              utcnow()), {**base, **where, "eof": False})
        except (FatalError, pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeError, ValueError) as e:
            # the file cannot be read (on_bad_record: fail, not Parquet…): recorded as failed, the
            # stream stops; the file is read again at the next run
            if state is not None:
                state.fail_file(pipeline, stream.name, info.path, str(e), line=first_error[1] if first_error else None,
                                tenant=tenant)
            if isinstance(e, FatalError):
                raise
            raise FatalError(f"stream {stream.name!r}: cannot read {info.path!r}: {e}") from None
        done = {**(pending.position if pending else {**base, "offset": 0, "line": 0, "last": 0}), "eof": True}
        yield ReadBatch(pending.data if pending else self._empty(stream), done)
        if state is not None:
            state.finish_file(pipeline, stream.name, info.path, rows=rows, bad_records=bad_count, last_line=top,
                              first_error=first_error[0] if first_error else None,
                              first_error_line=first_error[1] if first_error else None, tenant=tenant)
        if bad_count:
            log.warning("stream %s: %s: %d bad record(s) %s (first at line %d: %s)", stream.name, info.path, bad_count,
                        "dead-lettered" if fs.on_bad_record == "dead_letter" else "found",
                        first_error[1] if first_error else 0, first_error[0] if first_error else "")

    def _rows(self, stream: Stream, fs: FileStreamSettings, info: FileInfo,
              resume: Position | None) -> Iterator[tuple[Any, dict[str, int]]]:
        """``(batch, {offset, line, last})`` per batch of rows, and ``(bad records, {})`` per chunk with any."""
        fmt = self._format(fs, info.path)
        offset = int(resume["offset"]) if resume else 0
        line = int(resume["line"]) if resume else 0
        last = int(resume["last"]) if resume else 0
        size = int(stream.options.get("batch_size") or self.config.batch_size)
        known = pa.schema([stream.schema.field(n) if n in stream.schema.names else pa.field(n, pa.string())
                           for n in stream.options.get("files_columns", stream.schema.names)])
        known = pa.schema([*known, *[f for f in self._added.get(stream.name, []) if f.name not in known.names]])
        hints = {f.name: f.type for f in data_fields(known)}
        for piece in self._pieces(info.path, fs, fmt, known, hints, offset, line, fs.chunk_bytes, size):
            table, bad = piece.table, piece.bad
            if last > 0:
                import pyarrow.compute as pc

                table = table.filter(pc.greater(table.column(LINE), last))
                bad = [b for b in bad if b.line > last]
            table, added, wrong = conform(table, known, info.path, fs.on_new_columns)
            if added:
                known = pa.schema([*known, *added])
                self._added[stream.name] = [*self._added.get(stream.name, []), *added]
                save_added(self.workdir, stream.name, self._added[stream.name])
            if bad or wrong:
                yield sorted(bad + wrong, key=lambda b: b.line), {}
            extra = {f.name for f in self._added.get(stream.name, [])}
            lines = table.column(LINE).combine_chunks()
            table = table.select([n for n in table.column_names if n in stream.schema.names or n in extra]).combine_chunks()
            done = 0
            for batch in table.to_batches(max_chunksize=size):
                if batch.num_rows:
                    done += batch.num_rows
                    yield batch, {"offset": piece.offset, "line": piece.line, "last": int(lines[done - 1].as_py())}

    def _pieces(self, path: str, fs: FileStreamSettings, fmt: str, known: pa.Schema, hints: dict[str, pa.DataType],
                offset: int, line: int, chunk_bytes: int, batch_size: int) -> Iterator[readers.Piece]:
        folder = self.folder
        if fmt == "parquet":
            with folder.open(path) as raw:
                yield from readers.parquet_pieces(raw, offset=offset, line=line, batch_size=batch_size)
            return
        stream = folder.open_decoded(path, compression_of(path, fs.compression))
        try:
            if fmt == "json":
                yield from readers.json_pieces(stream)
                return
            if fmt == "csv":
                layout = readers.csv_header(stream, fs.csv)
                start = max(offset, layout.data_offset)
                if start == layout.data_offset:
                    line = layout.data_line
                _seek(folder, path, fs, stream_holder := [stream], start)
                stream = stream_holder[0]
                yield from readers.csv_pieces(stream, layout, fs.csv, hints, offset=start, line=line, chunk_bytes=chunk_bytes)
                return
            _seek(folder, path, fs, holder := [stream], offset)
            stream = holder[0]
            schema = pa.schema([pa.field(n, t) for n, t in hints.items()])
            yield from readers.jsonl_pieces(stream, schema, offset=offset, line=line, chunk_bytes=chunk_bytes)
        finally:
            stream.close()

    def _bad(self, stream: Stream, fs: FileStreamSettings, path: str, bad: list[readers.Bad], identity: str,
             *, resumed: bool) -> None:
        if fs.on_bad_record == "fail" or self._state() is None:
            b = bad[0]
            raise FatalError(f"stream {stream.name!r}: {path}, line {b.line}: {b.reason} (on_bad_record: fail; "
                             "set it to dead_letter to load the other rows)" if fs.on_bad_record == "fail" else
                             f"stream {stream.name!r}: {path}, line {b.line}: {b.reason} (no dead-letter store)")
        letters = [DeadLetter(reason=b.reason, origin=f"{path}:{b.line}",
                              payload={"file": path, "line": b.line, "text": b.text, "version": identity}) for b in bad]
        self._state().add_read_dead_letters(self.context.pipeline, stream.name, letters, tenant=self.context.tenant,
                                            skip_known=resumed)

    def _deletes(self, stream: Stream, path: str, upto: int) -> Iterator[pa.RecordBatch]:
        """Deletes of lines 1..``upto`` of ``path`` (by the key ``(_file, _line)``)."""
        size = int(stream.options.get("batch_size") or self.config.batch_size)
        schema = self._schema(stream)
        for start in range(1, upto + 1, size):
            lines = pa.array(np.arange(start, min(upto, start + size - 1) + 1), pa.int64())
            n = len(lines)
            cols = [lines if f.name == LINE else pa.repeat(pa.scalar(path, pa.string()), n) if f.name == FILE
                    else pa.nulls(n, f.type) for f in schema]
            yield pa.RecordBatch.from_arrays(cols, schema=schema)

    def _schema(self, stream: Stream) -> pa.Schema:
        extra = [f for f in self._added.get(stream.name, []) if f.name not in stream.schema.names]
        return pa.schema([*stream.schema, *extra], metadata=stream.schema.metadata)

    def _empty(self, stream: Stream) -> pa.RecordBatch:
        schema = self._schema(stream)
        empty = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)
        return with_meta(empty, OP_READ, encode_position(None), utcnow())

    # ------------------------------------------------------------------ acknowledgement

    def acknowledge(self, stream: Stream, position: Position) -> None:
        """Marks files durable in the log ``loaded`` (then ``after_load``); see the module docstring."""
        super().acknowledge(stream, position)
        state = self._state()
        if state is None or not position:
            return
        if "seq" in position:
            self._confirm(stream, state, int(position["seq"]), bool(position.get("eof")))
        elif position.get("done"):  # a full or snapshot_diff read ended: every file in it is durable
            self._confirm(stream, state, 2**62, True)

    def _confirm(self, stream: Stream, state: Any, seq: int, done: bool) -> None:
        loaded = state.confirm_files(self.context.pipeline, stream.name, seq=seq, done=done, tenant=self.context.tenant)
        action = self._after_load(stream)
        if not loaded or action == "keep":
            return
        for path in loaded:
            try:
                if action == "delete":
                    self.folder.delete(path)
                    note = "deleted"
                else:
                    note = f"moved to {self.folder.move(path, action['move'])}"
            except FileNotFoundError:
                note = "gone before after_load"
            state.note_file(self.context.pipeline, stream.name, path, note, tenant=self.context.tenant)

    def _after_load(self, stream: Stream | str) -> Any:
        fs = self._settings(stream)
        return fs.after_load if fs.after_load is not None else self.options.after_load

    def _after_move_prefix(self, stream: Stream | str) -> str | None:
        action = self._after_load(stream)
        return action["move"].strip("/") + "/" if isinstance(action, dict) else None


def _seek(folder: Folder, path: str, fs: FileStreamSettings, holder: list[Any], offset: int) -> None:
    """Positions ``holder[0]`` (a decoded stream of ``path``) at decompressed byte ``offset``:
    a seek on a plain file, else read from the start and discard (compressed data cannot seek)."""
    stream = holder[0]
    codec = compression_of(path, fs.compression)
    if codec is None:
        stream.seek(offset)
        return
    stream.close()
    stream = folder.open_decoded(path, codec)
    holder[0] = stream
    left = offset
    while left > 0:
        got = stream.read(min(left, 1 << 22))
        if not got:
            break
        left -= len(got)


def _same_time(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a.timestamp() - b.timestamp()) < 1e-3

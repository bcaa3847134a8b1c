"""Files destination: change batches as Parquet, CSV or JSON Lines in a folder or bucket.

``path`` is an absolute local folder or any fsspec URL (``s3://bucket/prefix``,
``gs://…``, ``file:///…``); ``storage_options`` go to fsspec as they are (for S3:
``endpoint_url``, ``key``, ``secret``…; they are never logged or put in a message).

Layout, one file per log record chunk written by the engine::

    <path>/<stream>/date=2026-11-21/00000000000000000100-00000000000000000199.parquet
    <path>/<stream>/_manifests/00000000000000000100-00000000000000000199.json

``<stream>`` is the stream name, or the destination's ``tables:`` mapping or template applied
to it when ``tables:`` is set (:meth:`Destination.target_table`).

* The file is named by the log offset range of its rows (``first-last``, 20 digits so
  names sort by offset). The engine hands the same ranges on every retry, restart and
  replay, so a re-delivery *overwrites* the file instead of adding a copy: nothing doubled.
* The partition is derived from the data, never from the clock: the UTC date (``partition:
  date``, the default; ``hour`` adds ``hour=HH/``; ``none`` drops it) of each row's ``_ts``.
  A chunk whose rows span two dates is written as one file per date, each named by the
  chunk's range. Readers use Hive partitioning (``date`` becomes a column; a data column of
  that name would clash).
* Every file is written whole or not at all: locally to a hidden temp name in the same
  folder, fsynced, then ``os.replace``; on object stores with one PUT of the finished
  bytes (an object is visible only once complete). Temp files left by a crash start with
  ``.`` and are ignored by readers (and by ``*.parquet`` globs).
* After the data files, a manifest (JSON) lists them with rows, offsets, ``_ts`` range,
  format, compression and schema. Directories starting with ``_`` are skipped by
  ``pyarrow.dataset``; DuckDB globs ``<stream>/**/*.parquet`` never match ``.json``.
* Files keep the metadata columns ``_op``, ``_pos`` and ``_ts``: they hold change events,
  deletes included. Only ``write: append`` exists; ``merge`` and ``replace`` need a table.

Formats: ``parquet`` (Arrow types as they are, but an ``interval`` as a struct of
``months``, ``days``, ``nanoseconds``, which Parquet's millisecond ``INTERVAL`` cannot hold;
compression ``snappy`` by default, or ``zstd``, ``gzip``, ``lz4``, ``brotli``, ``none``), ``csv`` (``pyarrow.csv``, header row;
decimals exact text, timestamps ISO 8601, intervals ISO 8601 durations, ``infinity`` and
years outside 0001–9999 in their lossless text, binary base64, nested values JSON text) and
``jsonl`` (one JSON object per line; mapping in :mod:`replicant.destinations.records`).
CSV and JSON Lines may be compressed with ``gzip`` or ``zstd`` (``.csv.gz``, ``.jsonl.zst``),
which DuckDB and pandas read directly.

A record the format cannot hold (encoding it fails while an empty table of the same columns
encodes) goes to the dead letters with its origin (``log offset N``) and the reason, and the
other rows are written under the chunk's name (found by bisection, see
:mod:`replicant.destinations._bad_records`); a failure of the columns' types, or no
dead-letter store, or ``on_bad_record: fail``, raises :class:`FatalError`. Parquet, CSV and
JSON Lines hold every value of the Arrow types sources produce today, so this is a guard.

docs/measurements.md (Files) has the write rate of each format.

The folder names a stream by its log name (``tenant/name`` for a tenant's stream), or by its
``tables:`` target. A name of only letters, digits, ``.``, ``_`` and ``-`` (not starting with
``.``) is the folder name as it is (``public.orders`` stays ``public.orders``); any other has
every other character replaced by ``_`` and ``~`` plus 8 hex digits of its SHA-256 appended
(``a b`` → ``a_b~c8687a08``, ``acme/orders`` → ``acme_orders~…``), so names that sanitise
alike never share a folder (:mod:`replicant.destinations._names`). Two streams that
``tables:`` maps to one folder are refused by :meth:`FilesDestination.prepare` (their files,
named by offsets, would overwrite each other). Tenants' streams that ``tables:`` maps to one
folder share it, as they share a SQL table: there each file and manifest name starts with the
tenant's id (folder-escaped the same way) and ``-``, since every tenant's offsets start at 0.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any, Literal

import duckdb
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from replicant.destinations._names import readable_unique
from replicant.destinations._values import INTERVAL_STRUCT, interval_struct
from replicant.destinations.base import Capabilities, Destination
from replicant.destinations.records import iso_text, joined_lines, row_json, text_table
from replicant.errors import ConfigError, ConnectionError, FatalError, RecordError, RetriableError
from replicant.model import META_COLUMNS, OP_DELETE, ConnectorContext, Stream
from replicant.secrets import resolve_all

__all__ = ["FilesDestination", "FilesSettings"]

log = logging.getLogger(__name__)

_PARQUET_CODECS = ("snappy", "zstd", "gzip", "lz4", "brotli", "none")
_TEXT_CODECS = {"gzip": ".gz", "zstd": ".zst", "none": ""}
_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_EPOCH = dt.datetime(1970, 1, 1)
#: What encoding a value the format cannot hold raises (Arrow's writers, DuckDB's JSON).
_ENCODE_ERRORS: tuple[type[Exception], ...] = (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, duckdb.Error)
_PARTITIONS = {"date": "date=%Y-%m-%d", "hour": "date=%Y-%m-%d/hour=%H"}


class FilesSettings(BaseModel):
    """The keys of a ``type: files`` destination besides ``name``, ``type``, ``path``, ``write``."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["parquet", "csv", "jsonl"] = Field("parquet", description="File format.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        repr=False,
        description="fsspec options for the filesystem (S3: endpoint_url, key, secret, client_kwargs…).",
    )
    partition: Literal["date", "hour", "none"] = Field(
        "date", description="Folders under the stream's: UTC date (and hour) of each row's `_ts`, or none."
    )
    compression: str | None = Field(
        None,
        description="parquet: snappy (default), zstd, gzip, lz4, brotli, none; csv/jsonl: none (default), gzip, zstd.",
    )

    @field_validator("compression")
    @classmethod
    def _codec_fits_format(cls, codec: str | None, info: ValidationInfo) -> str | None:
        fmt = info.data.get("format", "parquet")
        if codec is None:
            return codec
        allowed = _PARQUET_CODECS if fmt == "parquet" else tuple(_TEXT_CODECS)
        if codec not in allowed:
            raise ValueError(f"{codec!r} is not available for {fmt}; use one of {', '.join(allowed)}")
        return codec


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _folder(name: str) -> str:
    return readable_unique(name, _UNSAFE, lead_dot=True)


class FilesDestination(Destination):
    """Writes each log record chunk of a stream as one offset-named file (see the module doc).

    Errors: a missing bucket or refused credentials raise :class:`ConnectionError`; other
    I/O failures :class:`RetriableError` (the engine retries the same chunk, which rewrites
    the same file).
    """

    capabilities = Capabilities(transactional=False, merge=False, replace=False, truncate=True)
    settings = FilesSettings

    def __init__(self, config: Any, context: ConnectorContext) -> None:
        super().__init__(config, context)
        key = f"destinations.{self.name}"
        if not config.path:
            raise ConfigError("invalid destination", [(f"{key}.path", "a files destination needs `path:` (a folder or s3://bucket/prefix)")])
        path = str(config.path)
        if "://" not in path:
            path = str(Path(path).expanduser().resolve())
        self.path = path
        opts: FilesSettings = self.options
        self.format = opts.format
        default = "snappy" if opts.format == "parquet" else "none"
        self.compression = opts.compression or default
        self._fs: fsspec.AbstractFileSystem | None = None
        self._root = ""
        self._owners: dict[str, str] = {}  # folder -> the stream (log name) writing into it

    def _file_name(self, stream: Stream, first: int, last: int) -> str:
        """``<first>-<last>`` (20 digits each), after ``<tenant>-`` when tenants share the folder."""
        name = f"{first:020d}-{last:020d}"
        shared = stream.tenant is not None and getattr(self.config, "tables", None) is not None
        return f"{_folder(stream.tenant)}-{name}" if shared and stream.tenant is not None else name

    def _folder_of(self, stream: Stream) -> str:
        """The stream's folder: its name, or :meth:`target_table` when ``tables:`` is set."""
        return _folder(stream.log_name if getattr(self.config, "tables", None) is None else self.target_table(stream))

    def folder(self, stream: Stream) -> str:
        """The folder (or URL prefix) holding ``stream``'s files."""
        return f"{self.path.rstrip('/')}/{self._folder_of(stream)}"

    @property
    def extension(self) -> str:
        if self.format == "parquet":
            return ".parquet"
        return f".{self.format}{_TEXT_CODECS[self.compression]}"

    # ------------------------------------------------------------------ contract

    def open(self) -> None:
        if self._fs is not None:
            return
        try:
            options = resolve_all(self.options.storage_options)  # secrets by reference: resolved now, not kept
            fs, root = fsspec.core.url_to_fs(self.path, **options)
        except (ImportError, ValueError, TypeError) as e:
            raise ConfigError(
                "invalid destination", [(f"destinations.{self.name}.path", f"cannot open {self._where()}: {type(e).__name__}")]
            ) from None
        self._fs, self._root = fs, root.rstrip("/")
        if self._local:
            os.makedirs(self._root, exist_ok=True)

    def applied_offset(self, stream: Stream) -> int:
        return -1

    def prepare(self, stream: Stream) -> None:
        """Opens the filesystem and claims the stream's folder.

        Raises:
            ConfigError: another stream of this destination writes into the same folder
                (``tables:`` maps both to one name), naming both.
        """
        folder = self._folder_of(stream)
        owner = self._owners.setdefault(folder, stream.name)  # tenants of one stream share it (names differ)
        if owner != stream.name:
            raise ConfigError(
                "invalid destination",
                [(f"destinations.{self.name}.tables",
                  f"streams {owner!r} and {stream.name!r} would both write into folder {folder!r} and overwrite "
                  "each other's files; map them to different names")],
            )
        self.open()

    def write(self, stream: Stream, data: pa.Table, *, last_offset: int, offsets: pa.Array | None = None) -> None:
        n = data.num_rows
        if n == 0:
            return
        first = last_offset - n + 1
        self._write_file(stream, data, self._file_name(stream, first, last_offset), {"first_offset": first, "last_offset": last_offset},
                         first=first)

    def redeliver(self, stream: Stream, data: pa.Table, *, retry_id: str) -> None:
        """Writes re-sent dead letters as one file (and manifest) named ``retry-<retry_id>``
        beside the offset-named ones, so readers of the folder find them; a repeat of the same
        retry writes the same name again (no offset is involved)."""
        if data.num_rows:
            self._write_file(stream, data, f"retry-{retry_id}", {"retry": retry_id}, first=None)

    def _write_file(self, stream: Stream, data: pa.Table, name: str, identity: dict[str, Any], *, first: int | None) -> None:
        """The file(s) of ``data`` named ``name`` (one per partition) and their manifest.
        ``first``: the log offset of the first row, for the dead letters of records the
        format cannot hold; None (a retry of dead letters): such a record fails the write."""
        self.open()
        folder = self._folder_of(stream)
        data = _with_delete_nulls(data, stream)
        try:
            parts = [(part, rows, self._encode(rows)) for part, rows in self._parts(data)]
        except _ENCODE_ERRORS as e:  # a value the format cannot hold: set that record aside
            if first is None:
                raise
            data = self._set_aside(stream, data, first, e)
            parts = [(part, rows, self._encode(rows)) for part, rows in self._parts(data)] if data.num_rows else []
        files = []
        for part, rows, body in parts:
            rel = f"{folder}/{part}/{name}{self.extension}" if part else f"{folder}/{name}{self.extension}"
            self._put(rel, body, stream)
            files.append({"path": rel, "rows": rows.num_rows, **_ts_range(rows)})
        manifest = {
            "stream": stream.name,
            **identity,
            "rows": data.num_rows,
            "format": self.format,
            "compression": self.compression,
            **_ts_range(data),
            "files": files,
            "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in data.schema],
        }
        self._put(f"{folder}/_manifests/{name}.json", json.dumps(manifest, indent=1).encode(), stream)

    def truncate(self, stream: Stream, *, last_offset: int) -> None:
        """Files hold events, so a TRUNCATE is recorded, not applied: a manifest
        ``_manifests/<offset>-<offset>.json`` with ``"op": "truncate"``."""
        self.open()
        name = self._file_name(stream, last_offset, last_offset)
        manifest = {
            "stream": stream.name,
            "op": "truncate",
            "first_offset": last_offset,
            "last_offset": last_offset,
            "rows": 0,
            "files": [],
        }
        self._put(f"{self._folder_of(stream)}/_manifests/{name}.json", json.dumps(manifest, indent=1).encode(), stream)

    def evolve(self, stream: Stream, old: Stream) -> None:
        """Every file carries its own schema (and the manifest lists it): new columns and
        widened types need nothing here; read with ``union_by_name``."""

    def begin_replace(self, stream: Stream) -> None:
        raise FatalError(f"destination {self.name!r} (files) cannot replace; it only appends")

    def commit_replace(self, stream: Stream, *, last_offset: int) -> None:
        raise FatalError(f"destination {self.name!r} (files) cannot replace; it only appends")

    def close(self) -> None:
        self._fs = None

    # ------------------------------------------------------------------ internals

    @property
    def _local(self) -> bool:
        return isinstance(self._fs, LocalFileSystem)

    def _where(self) -> str:
        """The path for messages: a URL's scheme and bucket/path, never options or credentials."""
        return re.sub(r"//[^/@]*@", "//", self.path)

    def _parts(self, data: pa.Table) -> list[tuple[str, pa.Table]]:
        """``(partition folder, rows)`` pairs, by the UTC date (hour) of each row's ``_ts``.

        Integer arithmetic on the epoch values (numpy), not per-row formatting: only the
        distinct periods are formatted."""
        fmt = _PARTITIONS.get(self.options.partition)
        if fmt is None:
            return [("", data)]
        ts = data["_ts"]
        period = (3600 if self.options.partition == "hour" else 86400) * _PER_SECOND[ts.type.unit]
        nulls = ts.null_count
        raw = pc.fill_null(ts.cast(pa.int64()), 0) if nulls else ts.cast(pa.int64())
        slots = np.floor_divide(raw.to_numpy(), period)
        if nulls:
            slots[pc.is_null(ts).to_numpy(zero_copy_only=False)] = np.iinfo(np.int64).min
        unique, inverse = np.unique(slots, return_inverse=True)

        def folder(slot: int) -> str:
            if slot == np.iinfo(np.int64).min:
                return "date=__HIVE_DEFAULT_PARTITION__"
            return (_EPOCH + dt.timedelta(seconds=int(slot) * period // _PER_SECOND[ts.type.unit])).strftime(fmt)

        if len(unique) == 1:
            return [(folder(unique[0]), data)]
        return [(folder(u), data.filter(pa.array(inverse == k))) for k, u in enumerate(unique)]

    def _set_aside(self, stream: Stream, data: pa.Table, first: int, error: Exception) -> pa.Table:
        """The rows of ``data`` (at offsets from ``first``) that encode; the others go to the
        dead letters (:mod:`replicant.destinations._bad_records`). A failure of the columns'
        types (an empty table fails too), no dead-letter store or ``on_bad_record: fail``
        raise FatalError."""
        from replicant.destinations._bad_records import find_rejected, letters_for

        where = f"destination {self.name!r}, stream {stream.name!r}: cannot write as {self.format}"
        try:
            self._encode(data.slice(0, 0))
        except _ENCODE_ERRORS:
            raise FatalError(f"{where}: {type(error).__name__}: {error}; leave the column out with `exclude:`") from error
        if self.dead_letter is None or getattr(self.config, "on_bad_record", "dead_letter") == "fail":
            raise FatalError(f"{where}: {type(error).__name__}: {error} (no dead-letter store, or `on_bad_record: fail`)") from error

        def probe(rows: pa.Table) -> None:
            try:
                self._encode(rows)
            except _ENCODE_ERRORS as e:
                raise RecordError(f"{where}: {type(e).__name__}: {e}") from None

        keep, rejected = find_rejected(data, probe, f"{where}: {type(error).__name__}: {error}", cumulative=False)
        index = np.array([i for i, _ in rejected], dtype=np.int64)
        letters = letters_for(self, stream, data.take(index), index + first, [why for _, why in rejected])
        log.warning("destination %r, stream %r: %d record(s) cannot be encoded, sent to dead letters", self.name, stream.name, len(letters))
        self.dead_letter(stream, letters)
        return data.take(keep)

    def _encode(self, table: pa.Table) -> pa.Buffer:
        sink = pa.BufferOutputStream()
        if self.format == "parquet":
            codec = None if self.compression == "none" else self.compression
            pq.write_table(_parquet_ready(table), sink, compression=codec)
            return sink.getvalue()
        out = sink if self.compression == "none" else pa.CompressedOutputStream(sink, self.compression)
        if self.format == "csv":
            pcsv.write_csv(text_table(table), out)
        else:
            out.write(joined_lines(row_json(table, newline=True)))
        if out is not sink:
            out.close()
        return sink.getvalue()

    def _put(self, rel: str, body: pa.Buffer | bytes, stream: Stream) -> None:
        """Writes ``body`` at ``<root>/<rel>`` atomically (see the module doc)."""
        fs, target = self._fs, f"{self._root}/{rel}"
        try:
            if self._local:
                folder, base = os.path.split(target)
                os.makedirs(folder, exist_ok=True)
                tmp = os.path.join(folder, f".{base}.tmp-{uuid.uuid4().hex}")
                try:
                    with open(tmp, "wb") as f:
                        f.write(memoryview(body))
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, target)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
                _fsync_dir(folder)
            else:
                fs.pipe_file(target, bytes(body) if isinstance(body, pa.Buffer) else body)
        except PermissionError as e:
            raise ConnectionError(
                f"destination {self.name!r}: access to {self._where()} refused writing {rel!r} "
                f"(stream {stream.name!r}): {type(e).__name__}; check credentials and permissions"
            ) from None
        except FileNotFoundError as e:
            raise ConnectionError(
                f"destination {self.name!r}: {self._where()} not found writing {rel!r} (stream {stream.name!r}): "
                f"{_short(e)}; create the bucket or folder"
            ) from None
        except OSError as e:
            raise RetriableError(
                f"destination {self.name!r}: could not write {rel!r} under {self._where()} (stream {stream.name!r}): {_short(e)}"
            ) from None


def _parquet_ready(table: pa.Table) -> pa.Table:
    """``table`` with the columns Parquet cannot hold exactly in another lossless form:
    ``month_day_nano_interval`` (PostgreSQL ``interval``) as a struct of ``months``, ``days``
    and ``nanoseconds`` (:data:`replicant.destinations._values.INTERVAL_STRUCT`)."""
    for i, f in enumerate(table.schema):
        if f.type == pa.month_day_nano_interval():
            field = pa.field(f.name, INTERVAL_STRUCT, f.nullable, f.metadata)
            table = table.set_column(i, field, interval_struct(table.column(i)))
    return table


def _ts_range(table: pa.Table) -> dict[str, str | None]:
    """``min_ts``/``max_ts`` of a change table's ``_ts`` as ISO 8601 (None when empty)."""
    if "_ts" not in table.column_names or table.num_rows == 0:
        return {"min_ts": None, "max_ts": None}
    mm = pc.min_max(table["_ts"])
    pair = pa.array([mm["min"].as_py(), mm["max"].as_py()], table.schema.field("_ts").type)
    lo, hi = iso_text(pair).to_pylist()
    return {"min_ts": lo, "max_ts": hi}


def _short(e: BaseException) -> str:
    """An exception's class and first line, without fsspec's option dumps."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _fsync_dir(folder: str) -> None:
    """Makes a rename durable (POSIX: the directory entry is data of the directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _with_delete_nulls(data: pa.Table, stream: Stream) -> pa.Table:
    """``data`` with every data column but the key nullable when it holds a delete: a delete carries
    its key and nulls, also in a column the source declares NOT NULL (a files source's ``_file``)."""
    if "_op" not in data.column_names or not pc.any(pc.equal(data["_op"], OP_DELETE)).as_py():
        return data
    keep = set(stream.primary_key) | set(META_COLUMNS)
    if all(f.nullable or f.name in keep for f in data.schema):
        return data
    fields = [f if f.nullable or f.name in keep else f.with_nullable(True) for f in data.schema]
    return data.cast(pa.schema(fields, metadata=data.schema.metadata))

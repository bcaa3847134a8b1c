"""Where a files source's files are: a local folder or an object store, through fsspec.

A file's *identity* decides new vs changed, never its modified time alone: an object store's
ETag; for a local file its size and modified time, and when those differ from the record, a
content hash (BLAKE2b) compared with the recorded one, so a touched but unchanged file is not
loaded again. Paths are kept relative to the source url (``_file``, the files-seen record).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import pyarrow as pa

from replicant.errors import ConnectionError, FatalError

__all__ = ["FileInfo", "Folder", "content_hash"]

_HASH_BLOCK = 1 << 20
_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}


@dataclass(frozen=True)
class FileInfo:
    """One listed file: ``path`` relative to the source url."""

    path: str
    size: int | None
    etag: str | None  #: the store's ETag, or None (a local file: hashed when it matters)
    modified: datetime | None

    @property
    def local_identity(self) -> str:
        """Size and modified time: equal to the record's means unchanged without hashing."""
        stamp = self.modified.timestamp() if self.modified else 0
        return f"{self.size}:{stamp:.6f}"


def compression_of(path: str, setting: str) -> str | None:
    """The codec of ``path`` (``gzip``, ``zstd``) by ``setting`` or its extension; None: plain."""
    if setting == "none":
        return None
    if setting != "infer":
        return setting
    return _SUFFIXES.get(posixpath.splitext(path)[1].lower())


def format_of(path: str) -> str | None:
    """``csv``, ``jsonl``, ``json`` or ``parquet`` from the extension (after a compression suffix)."""
    stem = path
    if posixpath.splitext(stem)[1].lower() in _SUFFIXES:
        stem = posixpath.splitext(stem)[0]
    ext = posixpath.splitext(stem)[1].lower().lstrip(".")
    return {"csv": "csv", "tsv": "csv", "txt": "csv", "jsonl": "jsonl", "ndjson": "jsonl", "json": "json",
            "parquet": "parquet", "pq": "parquet"}.get(ext)


class Folder:
    """The files under one url (``/abs/folder``, ``file://…``, ``s3://bucket/prefix``).

    Args:
        url: where the files are.
        storage_options: fsspec options, secrets resolved (do not keep them elsewhere).
    """

    def __init__(self, url: str, storage_options: dict[str, Any]) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.remote = "://" in url and not url.startswith("file://")
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **storage_options)
        except (ImportError, ValueError) as e:
            raise ConnectionError(f"cannot open {self.url!r}: {e}") from None
        self.root = root.rstrip("/")

    def full(self, path: str) -> str:
        return f"{self.root}/{path}" if self.root else path

    def check(self) -> None:
        """Raises ConnectionError when the folder or bucket cannot be reached (never a secret)."""
        try:
            exists = self.fs.exists(self.root) if self.root else True
        except Exception as e:  # noqa: BLE001 - fsspec backends raise their own kinds
            raise ConnectionError(f"cannot reach {self.url!r}: {type(e).__name__}: {_first_line(e)}") from None
        if not exists and not self.remote:
            raise ConnectionError(f"cannot open folder {self.url!r}: no such folder")

    def list(self, pattern: str, *, exclude: str | None = None) -> list[FileInfo]:
        """The files matching ``pattern`` (a glob relative to the url), sorted by path."""
        self.check()
        try:
            found = self.fs.glob(self.full(pattern), detail=True)
        except FileNotFoundError:
            return []
        except Exception as e:  # noqa: BLE001 - fsspec backends raise their own kinds
            raise ConnectionError(f"cannot list {self.url!r}: {type(e).__name__}: {_first_line(e)}") from None
        out = []
        prefix = self.root + "/" if self.root else ""
        for name, info in found.items():
            if info.get("type") == "directory":
                continue
            rel = name[len(prefix):] if prefix and name.startswith(prefix) else name
            if exclude and rel.startswith(exclude):
                continue
            etag = info.get("ETag") or info.get("etag")
            out.append(FileInfo(rel, info.get("size"), str(etag).strip('"') if etag else None, _modified(info)))
        return sorted(out, key=lambda f: f.path)

    def info(self, path: str) -> FileInfo | None:
        """The file now, or None when it is gone."""
        try:
            info = self.fs.info(self.full(path))
        except FileNotFoundError:
            return None
        etag = info.get("ETag") or info.get("etag")
        return FileInfo(path, info.get("size"), str(etag).strip('"') if etag else None, _modified(info))

    def open(self, path: str) -> BinaryIO:
        """The raw bytes of ``path`` (seekable)."""
        try:
            return self.fs.open(self.full(path), "rb")
        except FileNotFoundError:
            raise FatalError(f"file {path!r} under {self.url!r} is gone") from None

    def open_decoded(self, path: str, compression: str | None) -> Any:
        """A readable stream of ``path``'s decompressed bytes (pyarrow's codecs)."""
        raw = self.open(path)
        if compression is None:
            return raw
        return pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), compression)

    def delete(self, path: str) -> None:
        self.fs.rm(self.full(path))

    def move(self, path: str, prefix: str) -> str:
        """Moves ``path`` under ``prefix`` (relative to the url); returns the new relative path."""
        target = posixpath.join(prefix.strip("/"), path)
        self.fs.makedirs(posixpath.dirname(self.full(target)), exist_ok=True)
        self.fs.mv(self.full(path), self.full(target))
        return target


def content_hash(folder: Folder, path: str) -> str:
    """``blake2b:<hex>`` of the file's bytes (read in 1 MB blocks)."""
    h = hashlib.blake2b(digest_size=20)
    with folder.open(path) as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            h.update(block)
    return f"blake2b:{h.hexdigest()}"


def iter_blocks(stream: Any, size: int) -> Iterator[bytes]:
    while True:
        block = stream.read(size)
        if not block:
            return
        yield bytes(block)


def _modified(info: dict[str, Any]) -> datetime | None:
    raw = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or info.get("created")
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    if isinstance(raw, (int, float)):
        return datetime.fromtimestamp(raw, UTC)
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:300]

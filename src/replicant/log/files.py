"""File-system helpers of the local staging log: names, durable writes, the writer lock.

Stream names become folder names by percent-encoding (:func:`encode_stream`): every byte
outside ``A-Z a-z 0-9 _ . -`` is written ``%XX`` (UTF-8), as is a leading dot, so names
with spaces, quotes, slashes, unicode or ``..`` are safe and :func:`decode_stream` gives
the name back exactly. A name whose encoding would exceed :data:`MAX_FOLDER_NAME` bytes
is shortened to a prefix plus ``~`` and a hash, and the full name is kept in a
``name.txt`` file inside the folder (``~`` never occurs in an unshortened encoding).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, unquote

from replicant.errors import FatalError

__all__ = [
    "MAX_FOLDER_NAME",
    "encode_stream",
    "decode_stream",
    "segment_stem",
    "parse_segment_stem",
    "micros_to_datetime",
    "datetime_to_micros",
    "now_micros",
    "fsync_dir",
    "write_all",
    "write_durably",
    "WriterLock",
]

MAX_FOLDER_NAME = 200  #: longest folder name written (most file systems allow 255 bytes)
NAME_FILE = "name.txt"
_SEGMENT_STEM = re.compile(r"^(\d{20})-(\d{8}T\d{6}\.\d{6}Z)$")
_STEM_TIME = "%Y%m%dT%H%M%S.%fZ"


def encode_stream(name: str) -> str:
    """The folder name of a stream: percent-encoded, reversible, never ``.``/``..``/hidden.

    Raises:
        ValueError: the name is empty.
    """
    if not name:
        raise ValueError("a stream name cannot be empty")
    encoded = quote(name, safe="").replace("~", "%7E")
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if len(encoded) > MAX_FOLDER_NAME:
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
        cut = encoded[: MAX_FOLDER_NAME - 17]
        # Do not cut a %XX escape in half: the prefix is only a hint for people browsing.
        cut = cut[: cut.rfind("%")] if "%" in cut[-2:] else cut
        encoded = f"{cut}~{digest}"
    return encoded


def decode_stream(folder: Path) -> str | None:
    """The stream name of a folder written by :func:`encode_stream`, or None for a stranger."""
    if "~" in folder.name:
        try:
            name = (folder / NAME_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
    else:
        try:
            name = unquote(folder.name, errors="strict")
        except UnicodeDecodeError:
            return None
    return name if name and encode_stream(name) == folder.name else None


def segment_stem(base: int, created_us: int) -> str:
    """``00000000000000000042-20261121T101500.123456Z``: first offset, then creation time (UTC)."""
    return f"{base:020d}-{micros_to_datetime(created_us).strftime(_STEM_TIME)}"


def parse_segment_stem(stem: str) -> tuple[int, int] | None:
    """``(first offset, creation time in µs)`` of a segment file stem, or None if not one."""
    match = _SEGMENT_STEM.match(stem)
    if match is None:
        return None
    created = datetime.strptime(match[2], _STEM_TIME).replace(tzinfo=UTC)
    return int(match[1]), datetime_to_micros(created)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros_to_datetime(us: int) -> datetime:
    """UTC datetime of microseconds since the epoch (exact: no float rounding)."""
    return _EPOCH + timedelta(microseconds=us)


def datetime_to_micros(ts: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def now_micros() -> int:
    return time.time_ns() // 1000


def fsync_dir(path: Path) -> None:
    """Makes the creation, renaming or removal of entries in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: memoryview | bytes) -> None:
    """``os.write`` until every byte is written (a write may be partial)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_durably(path: Path, data: bytes, fsync: bool) -> None:
    """Replaces ``path`` atomically: a temporary file, fsynced, renamed, folder fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)
    if fsync:
        fsync_dir(path.parent)


class WriterLock:
    """An exclusive ``flock`` on ``LOCK`` in the log folder, holding the owner's pid.

    The lock belongs to the open file, so the operating system releases it when the
    process dies, even by ``kill -9``: a stale lock never needs cleaning up.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / "LOCK"
        self._fd: int | None = None

    def acquire(self, timeout: float | None) -> None:
        """Takes the lock, waiting up to ``timeout`` seconds (None: forever, 0: not at all).

        Raises:
            FatalError: another process (or another LocalLog of this process) holds it.
        """
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise FatalError(self._busy_message()) from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _busy_message(self) -> str:
        try:
            pid = self.path.read_text().strip() or "unknown"
        except OSError:
            pid = "unknown"
        root = self.path.parent
        if pid == str(os.getpid()):
            return (
                f"pipeline log at {root} is already open for writing by another LocalLog in this "
                f"process (pid {pid}); share that instance or close it first"
            )
        return (
            f"pipeline log at {root} is in use by another process (pid {pid}); stop that run "
            "or let it finish, then run again"
        )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None

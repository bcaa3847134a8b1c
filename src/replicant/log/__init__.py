"""The staging log: the contract (:mod:`.base`), its backends (local segments in
:mod:`.local`, NATS JetStream in :mod:`.nats`), and :func:`open_log`, which picks one from
the pipeline's ``log:`` location: a local folder or ``file://`` URL, or ``nats://``/``tls://``.
Object stores (``s3://``, other fsspec URLs) are not staging log locations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from replicant.errors import ConfigError
from replicant.log.base import (
    MARKER_SNAPSHOT_ABORT,
    MARKER_SNAPSHOT_END,
    MARKER_SNAPSHOT_START,
    Log,
    LogRecord,
    Retention,
)

if TYPE_CHECKING:
    from replicant.log.local import LocalLog

__all__ = [
    "Log",
    "LogRecord",
    "Retention",
    "LocalLog",
    "open_log",
    "MARKER_SNAPSHOT_START",
    "MARKER_SNAPSHOT_END",
    "MARKER_SNAPSHOT_ABORT",
]


def __getattr__(name: str) -> Any:
    if name == "LocalLog":  # lazy: importing the package opens nothing and stays light
        from replicant.log.local import LocalLog

        return LocalLog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_log(location: str | Path, **options: Any) -> Log:
    """Opens the staging log at ``location`` (the pipeline file's ``log:`` value).

    Args:
        location: a folder path (``~`` expanded) or a ``file://`` URL: a :class:`LocalLog`;
            ``nats://host:port[/prefix]`` (or ``tls://``): a :class:`replicant.log.nats.NatsLog`.
        **options: passed to the backend, e.g. ``compression="lz4"``, ``read_only=True``
            (``readonly=True`` is accepted too).

    Raises:
        ConfigError: any other scheme (``s3://`` and other fsspec URLs included: the local
            log needs fsync and file locks), at key ``log``.
        ConnectionError: the NATS server cannot be reached.
        FatalError: another process writes to the log (see :class:`LocalLog`, ``NatsLog``).
    """
    from replicant.log.local import LocalLog

    if "readonly" in options:  # the spelling callers also use (``replicant status``)
        options["read_only"] = options.pop("readonly")
    text = str(location)
    if "://" not in text:
        return LocalLog(text, **options)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("unsupported staging log location", [("log", f"file URL with a remote host {parts.netloc!r}")])
        return LocalLog(unquote(parts.path), **options)
    if scheme in ("nats", "tls", "nats+tls"):
        from replicant.log.nats import NatsLog

        return NatsLog(text, **options)
    raise ConfigError(
        "unsupported staging log location",
        [("log", f"no staging log backend for {scheme}://; use a local folder, a file:// URL or nats://host:port/prefix")],
    )

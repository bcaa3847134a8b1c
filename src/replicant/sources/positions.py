"""Comparing source positions: has a stream's position reached the source's current one?

:meth:`Source.current_position` reads where the source is *now* (PostgreSQL ``log``:
``pg_current_wal_lsn()``; MariaDB/MySQL ``log``: ``SHOW MASTER STATUS``; ``trigger``: the
shadow table's highest sequence or transaction id). :func:`reached` says whether a position a
pipeline saved (a stream's last position in the log, or the change feed's checkpoint) covers
that point, and :func:`distance` how far behind it is, in the source's own unit.

Positions by kind:

- PostgreSQL ``log``: ``{"lsn": N}``; reached when ``lsn >= N``; distance in WAL bytes.
- MariaDB/MySQL ``log``: ``{"file": F, "pos": P}``; ordered by (file number, pos); distance in
  bytes within one file (None across files).
- ``trigger``: ``{"mode": "trigger", "txid": X}`` (PostgreSQL: every shadow row below ``X`` is
  read) or ``{"mode": "trigger", "seq": S}`` (every shadow row up to ``S`` is read); distance in
  sequence values or transaction ids.

A position whose snapshot is still open never counts as reached (its changes are not all in).
"""

from __future__ import annotations

from typing import Any

from replicant.model import Position

__all__ = ["distance", "reached"]


def _binlog_key(pos: Position) -> tuple[int, int]:
    name = str(pos["file"])
    suffix = name.rsplit(".", 1)[-1]
    return (int(suffix) if suffix.isdigit() else 0, int(pos["pos"]))


def _kind(target: Position) -> str | None:
    if "lsn" in target:
        return "lsn"
    if "file" in target and "pos" in target:
        return "binlog"
    if "txid" in target:
        return "txid"
    if "seq" in target:
        return "seq"
    return None


def _usable(position: Position | None, kind: str) -> bool:
    if not position or position.get("snapshot") is not None or position.get("_snapshot") == "open":
        return False
    if kind == "binlog":
        return "file" in position and "pos" in position
    if kind == "txid":  # a closed set read only in part ("upto") covers up to its txid only
        return position.get("txid") is not None
    return position.get(kind) is not None


def reached(position: Position | None, target: Position) -> bool:
    """Whether ``position`` (saved by a pipeline) covers the source point ``target``."""
    kind = _kind(target)
    if kind is None or position is None or not _usable(position, kind):
        return False
    if kind == "binlog":
        return _binlog_key(position) >= _binlog_key(target)
    return int(position[kind]) >= int(target[kind])


def distance(position: Position | None, target: Position) -> int | None:
    """How far ``position`` is behind ``target`` (0 when reached), in the source's unit
    (WAL bytes, binlog bytes, sequence values, transaction ids); None when it cannot be told
    (no usable position, or a binlog position in an earlier file)."""
    kind = _kind(target)
    if kind is None or position is None or not _usable(position, kind):
        return None
    if reached(position, target):
        return 0
    if kind == "binlog":
        a, b = _binlog_key(position), _binlog_key(target)
        return b[1] - a[1] if a[0] == b[0] else None
    return int(target[kind]) - int(position[kind])


def unit(target: Any) -> str:
    """The unit :func:`distance` counts in for ``target``."""
    kind = _kind(target) if isinstance(target, dict) else None
    return {"lsn": "WAL bytes", "binlog": "binlog bytes", "txid": "transaction ids", "seq": "changes"}.get(kind or "", "")

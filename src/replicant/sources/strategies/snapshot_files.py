"""The files of ``snapshot_diff`` runs under the source's work dir (layout: :mod:`.snapshot_diff`):
a run's folder, the previous snapshot it is diffed against, and their durable JSON markers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from replicant.model import Stream, utcnow

__all__ = ["Run", "fsync", "home_of", "ident", "load_json", "previous_usable", "promote", "sql_str", "write_json"]

log = logging.getLogger("replicant.sources.strategies.snapshot_diff")

_PREVIOUS = "previous.json"
_HASH_TAG = f"duckdb-hash {duckdb.__version__}"


def home_of(workdir: Path, stream: Stream) -> Path:
    """The folder of ``stream``'s runs and previous snapshot under the source's work dir."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stream.name)[:60]
    digest = hashlib.sha1(stream.name.encode()).hexdigest()[:8]
    return Path(workdir) / "snapshot_diff" / f"{safe}-{digest}"


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Writes ``path`` atomically and durably (temporary file, fsync, rename, fsync folder)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)


def promote(home: Path, run_id: str) -> None:
    """Makes run ``run_id`` the previous snapshot, if it completed and is not already."""
    previous = load_json(home / _PREVIOUS)
    if previous is not None and previous.get("run") == run_id:
        return  # already promoted (a repeated acknowledgement: touch nothing, a run may be going)
    run_dir = home / "runs" / run_id
    counts = load_json(run_dir / "diffed.json")
    meta = load_json(run_dir / "run.json")
    if counts is None or meta is None:
        return  # gone (superseded by a newer run) or never finished: nothing to promote
    write_json(home / _PREVIOUS, {"run": run_id, "parts": counts["parts"], "key": meta["key"], "hash": meta["hash"]})
    log.debug("snapshot_diff: run %s promoted to previous snapshot", run_id)
    for old in (home / "runs").iterdir():
        if old.name != run_id:
            shutil.rmtree(old, ignore_errors=True)
    for f in run_dir.iterdir():  # the rows and the diff are emitted: keep the keys only
        if f.is_dir():
            shutil.rmtree(f, ignore_errors=True)
        elif not (f.name.startswith("keys-") or f.suffix == ".json"):
            f.unlink()


def sql_str(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Run:
    """One run's folder and facts."""

    def __init__(self, home: Path, run_id: str, base: bool, ts: datetime) -> None:
        self.home, self.id, self.base, self.ts = home, run_id, base, ts
        self.dir = home / "runs" / run_id

    @classmethod
    def start(cls, home: Path, stream: Stream, base: bool) -> Run:
        previous = load_json(home / _PREVIOUS)
        runs = home / "runs"
        if runs.exists():  # runs that crashed or were superseded, not the previous snapshot
            for old in runs.iterdir():
                if previous is None or old.name != previous.get("run"):
                    shutil.rmtree(old, ignore_errors=True)
        base = base and previous_usable(home, previous, stream)
        run = cls(home, uuid.uuid4().hex[:16], base, utcnow())
        run.dir.mkdir(parents=True)
        meta = {"base": base, "ts": run.ts.isoformat(), "key": list(stream.primary_key), "hash": _HASH_TAG}
        write_json(run.dir / "run.json", meta)
        fsync(runs)
        return run

    def previous_parts(self) -> list[Path]:
        previous = load_json(self.home / _PREVIOUS) or {}
        prev = Run(self.home, str(previous["run"]), True, self.ts)
        return [prev.keys_path(k) for k in range(int(previous["parts"]))]

    @classmethod
    def resume(cls, home: Path, run_id: str) -> Run | None:
        run_dir = home / "runs" / run_id
        try:
            meta = json.loads((run_dir / "run.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(home, run_id, bool(meta["base"]), datetime.fromisoformat(meta["ts"]))

    def rows_path(self, part: int) -> Path:
        return self.dir / f"rows-{part:05d}.arrow"

    def keys_path(self, part: int) -> Path:
        return self.dir / f"keys-{part:05d}.parquet"

    def parts(self) -> int:
        """The number of complete parts (both files present), counted from 0."""
        k = 0
        while self.rows_path(k).exists() and self.keys_path(k).exists():
            k += 1
        return k

    def drop_parts_from(self, k: int) -> None:
        for p in self.dir.glob("rows-*.arrow"):
            if int(p.stem.split("-")[1]) >= k:
                p.unlink()
        for p in self.dir.glob("keys-*.parquet"):
            if int(p.stem.split("-")[1]) >= k:
                p.unlink()

    def diffed(self) -> dict[str, int] | None:
        try:
            return json.loads((self.dir / "diffed.json").read_text())
        except (OSError, ValueError):
            return None


def previous_usable(home: Path, previous: dict[str, Any] | None, stream: Stream) -> bool:
    """Whether the previous snapshot can be diffed against: it exists and has this key."""
    if previous is None:
        return False
    prev = Run(home, str(previous["run"]), True, utcnow())
    if any(not prev.keys_path(k).exists() for k in range(int(previous["parts"]))):
        log.warning("stream %r: the previous snapshot's files are missing; emitting a full snapshot "
                    "(rows deleted since the last run cannot be detected this once)", stream.name)
        return False
    if previous["key"] != list(stream.primary_key):
        log.warning(
            "stream %r: the previous snapshot has key %s, the stream now %s; emitting a full "
            "snapshot (rows deleted since the last run cannot be detected this once)",
            stream.name, previous["key"], list(stream.primary_key),
        )
        return False
    if previous["hash"] != _HASH_TAG:
        log.warning(
            "stream %r: the previous snapshot was hashed by %r, this run hashes with %r; "
            "every row will be reported as updated once", stream.name, previous["hash"], _HASH_TAG,
        )
    return True

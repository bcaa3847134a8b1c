"""``mode: snapshot_diff``: read the whole table, diff it against the previous snapshot.

Needs only SELECT at the source and catches hard deletes. Each run:

1. **read**: the stream is read with the source's own ``full`` read (any source that has one:
   key-range chunks of a SQL table, a file, an API); every
   batch is hashed per row by DuckDB (``hash(c1, c2, …)``) and written to the run's folder:
   the rows as Arrow IPC files (every Arrow type round-trips exactly, intervals included),
   and ``(key columns, row hash, row number)`` as Parquet. One pair of files per *part*
   (``chunk_size`` rows), so a crash resumes at the last complete part.
2. **diff**: DuckDB joins the new ``(key, hash)`` snapshot with the previous one in one full
   outer join, out of core (``memory_limit``, spilling to the run's folder): a new key is an
   insert, a changed hash an update (both as row numbers, in row order), a vanished key a
   delete (its key columns, after the upserts), written to ``diff.parquet``.
3. **emit**: inserts and updates carry the new row (taken from the IPC files by row number),
   then deletes carry the key columns and nulls. The first run, or a run from position None,
   has no previous snapshot to compare with and emits every row as ``read``.

A run's snapshot becomes the *previous* one only when the engine acknowledges the run's
``done`` position (:func:`acknowledge`: ``previous.json`` atomically replaced to name the
run), i.e. once every change is durable in the staging log. Until then, a new run diffs against the older snapshot again and
re-derives the same changes (the log and merge destinations absorb the repeat).

Positions (the resume rule of :mod:`replicant.sources.base` holds for each)::

    read phase   {"mode": "snapshot_diff", "run": ID, "phase": "read", "parts": K, "full": POS}
                 on an empty batch after each complete part; resuming drops parts >= K and
                 reads on from the full read's position POS (older positions: "after": [key])
    emit phase   {"mode": "snapshot_diff", "run": ID, "phase": "emit", "after": N}
                 N changes of the run emitted; resuming emits change N+1 on, without
                 touching the source
    done         {"mode": "snapshot_diff", "run": ID, "done": true}
                 on the run's last batch (empty, ``final=False``: not a full snapshot)

Reading from a ``done`` position promotes that run's snapshot (in case the acknowledgement
was lost in a crash) and starts a new run. A position whose run folder is gone starts a new
run too (a logged warning): the changes are derived again against the previous snapshot.

Folder layout, under ``source.workdir/snapshot_diff/<stream>/``::

    previous.json             {"run": ID, "parts": K, "key": [...], "hash": ...}: the last
                              acknowledged run, whose folder keeps only its keys-*.parquet
    runs/ID/run.json          {"base": diff against previous?, "ts": extract time, …}
    runs/ID/rows-00000.arrow  the rows of part 0 (Arrow IPC file, the stream's schema)
    runs/ID/keys-00000.parquet  part 0's key columns, __sd_hash, __sd_row
    runs/ID/diff.parquet      __sd_row, __sd_op (1 insert, 2 update, 3 delete), key columns;
                              by __sd_row, deletes (no row) last
    runs/ID/diffed.json       the diff is complete: counts

Limits: the key (``primary_key``) must be unique. Row hashes are DuckDB's 64-bit
``hash``; a DuckDB version that hashes differently reports every row as updated once (a
warning says so). Adding or changing a column changes every row's hash, so every row is
re-emitted as an update once, which carries the new column.

Stream options: ``memory_limit`` (DuckDB's, default ``512MB``), ``duckdb_threads``,
``chunk_size`` (rows per part, default the source's chunk size), ``batch_size``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from replicant.errors import FatalError
from replicant.model import (
    OP_DELETE,
    OP_INSERT,
    OP_READ,
    OP_UPDATE,
    Position,
    ReadBatch,
    Stream,
    encode_position,
    strip_meta,
)
from replicant.sources.strategies.snapshot_files import (
    Run,
    fsync,
    home_of,
    ident,
    promote,
    sql_str,
    write_json,
)

__all__ = ["acknowledge", "home_of", "read"]

log = logging.getLogger(__name__)

MODE = "snapshot_diff"
_HASH = "__sd_hash"
_ROW = "__sd_row"
_OP = "__sd_op"
#: ``__sd_op`` codes index this array.
_OPS = pa.array([OP_READ, OP_INSERT, OP_UPDATE, OP_DELETE], pa.string())
#: Parquet options for the (key, hash, row) files: hashes and row numbers do not compress,
#: and dictionary encoding them costs more than the rest of the write (measured: 8x).
_KEYS_PARQUET: dict[str, Any] = {"use_dictionary": False, "compression": "none", "write_statistics": False}
_DEFAULT_MEMORY = "512MB"


# ---------------------------------------------------------------------------- public API


def read(source: Any, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
    """Reads one snapshot_diff run of ``stream`` from ``source``: any source that can read it
    in ``full`` mode (``Source.read`` of the stream in mode full is all this uses).

    Raises:
        FatalError: the stream has no key, or the source has no ``workdir`` (raised here,
            before iterating); the table or a column is gone (while iterating).
    """
    if not stream.primary_key:
        raise FatalError(
            f"stream {stream.name!r}: mode snapshot_diff needs a key to match rows between "
            "snapshots, and the table has no primary key; set `primary_key:` on the stream"
        )
    if "full" not in source.capabilities.modes:
        raise FatalError(f"stream {stream.name!r}: mode snapshot_diff needs a source that can read in full")
    if source.workdir is None:
        raise FatalError(f"stream {stream.name!r}: mode snapshot_diff needs a workdir in the source's context")
    clash = sorted({_HASH, _ROW, _OP} & set(stream.schema.names))
    if clash:
        raise FatalError(f"stream {stream.name!r}: column(s) {clash} collide with snapshot_diff's own; exclude them")
    return _read(source, stream, position)


def snapshot_again(position: Position) -> Position | None:
    """Unchanged: each read compares every row with the previous snapshot, so rows whose
    added column got a value are updates of the next diff."""
    return position


def acknowledge(source: Any, stream: Stream, position: Position) -> None:
    """Promotes run ID's snapshot to the previous one when ``position`` is its ``done``
    position; any other position is ignored. Idempotent: a run already promoted (its folder
    gone) is left alone."""
    if source.workdir is None or not position or position.get("mode") != MODE or not position.get("done"):
        return
    promote(home_of(source.workdir, stream), str(position["run"]))


# ---------------------------------------------------------------------------- the run


def _read(source: Any, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
    home = home_of(source.workdir, stream)
    home.mkdir(parents=True, exist_ok=True)
    run: Run | None = None
    resume: Position | None = None
    if position and position.get("mode") == MODE:
        if position.get("done"):
            promote(home, str(position["run"]))
        else:
            run = Run.resume(home, str(position["run"]))
            resume = position
            if run is None:
                log.warning(
                    "stream %r: the files of snapshot_diff run %s are gone; starting a new run "
                    "(changes already emitted are derived again)", stream.name, position["run"],
                )
    if run is None:
        run, resume = Run.start(home, stream, base=position is not None), None
    elif resume is not None and resume.get("phase") == "read" and run.parts() < int(resume["parts"]):
        log.warning("stream %r: snapshot_diff run %s lost parts; starting a new run", stream.name, run.id)
        run, resume = Run.start(home, stream, base=True), None
    elif resume is not None and resume.get("phase") == "emit" and run.diffed() is None:
        log.warning("stream %r: snapshot_diff run %s lost its diff; starting a new run", stream.name, run.id)
        run, resume = Run.start(home, stream, base=True), None

    batch_size = int(stream.options.get("batch_size") or source.config.batch_size)
    con = _connect(stream, run)
    try:
        counts = run.diffed()
        if counts is None:
            read_from = resume if resume is not None and resume.get("phase") == "read" else None
            yield from _read_phase(source, stream, run, con, read_from)
            counts = _diff_phase(stream, run, con)
        after = int(resume["after"]) if resume is not None and resume.get("phase") == "emit" else 0
        yield from _emit_phase(stream, run, counts, after, batch_size)
    finally:
        con.close()
    yield ReadBatch(_empty_change(stream), {"mode": MODE, "run": run.id, "done": True}, final=False)


def _connect(stream: Stream, run: Run) -> duckdb.DuckDBPyConnection:
    config: dict[str, Any] = {
        "memory_limit": str(stream.options.get("memory_limit") or _DEFAULT_MEMORY),
        "temp_directory": str(run.dir / "tmp"),
    }
    if stream.options.get("duckdb_threads"):
        config["threads"] = int(stream.options["duckdb_threads"])
    return duckdb.connect(":memory:", config=config)


def _keys_schema(stream: Stream) -> pa.Schema:
    fields = [stream.schema.field(k) for k in stream.primary_key]
    return pa.schema([*fields, pa.field(_HASH, pa.uint64(), False), pa.field(_ROW, pa.int64(), False)])


def _hashable(batch: pa.RecordBatch) -> pa.Table:
    """``batch`` with the columns DuckDB cannot scan from Arrow (decimal256) as exact text."""
    cols = [c.cast(pa.string()) if pa.types.is_decimal256(c.type) else c for c in batch.columns]
    return pa.Table.from_arrays(cols, names=[f"c{i}" for i in range(len(cols))])


def _hash(con: duckdb.DuckDBPyConnection, batch: pa.RecordBatch) -> pa.Array:
    """One uint64 per row: DuckDB's hash of all the row's values (order preserved)."""
    table = _hashable(batch)
    con.register("__sd_batch", table)
    try:
        cols = ", ".join(ident(n) for n in table.column_names)
        out = con.sql(f"SELECT hash({cols}) AS h FROM __sd_batch").to_arrow_table().column(0).combine_chunks()
    finally:
        con.unregister("__sd_batch")
    if len(out) != batch.num_rows:  # pragma: no cover - DuckDB contract
        raise FatalError("snapshot_diff: DuckDB returned a wrong number of row hashes")
    return out


class _PartWriter:
    """Writes one part: the rows (Arrow IPC) and their keys, hashes and row numbers (Parquet)."""

    def __init__(self, run: Run, part: int, stream: Stream) -> None:
        self.run, self.part, self.stream = run, part, stream
        self.rows = 0
        self._rows = pa.ipc.new_file(str(run.rows_path(part)) + ".tmp", stream.schema)
        self._keys_schema = _keys_schema(stream)
        self._keys = pq.ParquetWriter(str(run.keys_path(part)) + ".tmp", self._keys_schema, **_KEYS_PARQUET)

    def write(self, data: pa.RecordBatch, hashes: pa.Array, first_row: int) -> None:
        self._rows.write_batch(data)
        n = data.num_rows
        cols = [data.column(k) for k in self.stream.primary_key]
        rows = pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
        self._keys.write_batch(pa.RecordBatch.from_arrays([*cols, hashes, rows], schema=self._keys_schema))
        self.rows += n

    def abort(self) -> None:
        self._rows.close()
        self._keys.close()

    def close(self) -> None:
        """Closes, syncs and renames both files into place (a part exists whole or not at all)."""
        self._rows.close()
        self._keys.close()
        for final in (self.run.rows_path(self.part), self.run.keys_path(self.part)):
            tmp = Path(str(final) + ".tmp")
            fsync(tmp)
            os.replace(tmp, final)
        fsync(self.run.dir)


def _rows_before(run: Run, parts: int) -> int:
    return sum(pq.ParquetFile(run.keys_path(k)).metadata.num_rows for k in range(parts))


def _read_phase(source: Any, stream: Stream, run: Run, con: duckdb.DuckDBPyConnection,
                resume: Position | None) -> Iterator[ReadBatch]:
    """Reads the table into the run's parts; yields an empty batch after each complete part."""
    part_rows = int(stream.options.get("chunk_size") or source.config.chunk_size)
    part = int(resume["parts"]) if resume else 0
    run.drop_parts_from(part)
    for tmp in run.dir.glob("*.tmp"):
        tmp.unlink()
    row = _rows_before(run, part)
    full_pos = _full_position(run, resume)
    schema = stream.schema
    writer: _PartWriter | None = None
    try:
        for rb in source.read(dataclasses.replace(stream, mode="full"), full_pos):
            data = strip_meta(rb.data)
            if data.num_rows:
                data = pa.RecordBatch.from_arrays(data.columns, schema=schema)
                if writer is None:
                    writer = _PartWriter(run, part, stream)
                writer.write(data, _hash(con, data), row)
                row += data.num_rows
            if writer is not None and (writer.rows >= part_rows or rb.final):
                writer.close()
                writer = None
                part += 1
                if rb.resumable and not rb.final:
                    pos = {"mode": MODE, "run": run.id, "phase": "read", "parts": part, "full": rb.position}
                    yield ReadBatch(_empty_change(stream), pos)
    finally:
        if writer is not None:  # interrupted: the part stays a .tmp and is dropped on resume
            writer.abort()


def _full_position(run: Run, resume: Position | None) -> Position | None:
    """Where the full read resumes: the full position kept in the read phase's position (one
    written before the full position was kept whole holds its keyset ``after`` only)."""
    if not resume:
        return None
    if "full" in resume:
        return dict(resume["full"])
    return {"mode": "full", "snapshot": run.id, "after": resume["after"]}


def _diff_phase(stream: Stream, run: Run, con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Against the previous snapshot, writes diff.parquet; returns the counts (also in
    diffed.json, which marks the diff complete)."""
    parts = run.parts()
    if parts == 0:  # an empty table: one empty part, so that there is a snapshot to promote
        _PartWriter(run, 0, stream).close()
        parts = 1
    new_parts = [run.keys_path(k) for k in range(parts)]
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in new_parts)
    counts = {"parts": parts, "rows": total, "changes": total}
    if run.base:
        on = " AND ".join(
            f"n.{ident(k)} {'IS NOT DISTINCT FROM' if stream.schema.field(k).nullable else '='} o.{ident(k)}"
            for k in stream.primary_key
        )

        def scan(paths: list[Path]) -> str:
            return f"read_parquet([{', '.join(sql_str(p) for p in paths)}])"

        keys = ", ".join(f"o.{ident(k)} AS {ident(k)}" for k in stream.primary_key)
        diff = run.dir / "diff.parquet"
        con.execute(
            f"COPY (SELECT n.{_ROW} AS {_ROW}, "
            f"(CASE WHEN n.{_HASH} IS NULL THEN 3 WHEN o.{_HASH} IS NULL THEN 1 ELSE 2 END)::UTINYINT AS {_OP}, "
            f"{keys} FROM {scan(new_parts)} n FULL OUTER JOIN {scan(run.previous_parts())} o ON {on} "
            f"WHERE o.{_HASH} IS DISTINCT FROM n.{_HASH} ORDER BY n.{_ROW} NULLS LAST) "
            f"TO {sql_str(str(diff) + '.tmp')} (FORMAT parquet)"
        )
        fsync(Path(str(diff) + ".tmp"))
        os.replace(str(diff) + ".tmp", diff)
        counts["changes"] = pq.ParquetFile(diff).metadata.num_rows
    write_json(run.dir / "diffed.json", counts)
    shutil.rmtree(run.dir / "tmp", ignore_errors=True)
    return counts


# ---------------------------------------------------------------------------- emitting


class _RowStore:
    """Random access to the run's rows by row number, one IPC record batch at a time.

    Batch sizes are learnt through a memory map (zero-copy: only the batches' headers are
    touched); rows are then read with plain file reads, one batch at a time, so that the
    process holds one batch, not the mapped file.
    """

    def __init__(self, run: Run) -> None:
        self._files: list[pa.OSFile] = []
        self._where: list[tuple[pa.ipc.RecordBatchFileReader, int]] = []
        starts: list[int] = []
        n = 0
        for k in range(run.parts()):
            path = str(run.rows_path(k))
            with pa.memory_map(path) as mm:
                mapped = pa.ipc.open_file(mm)
                sizes = [mapped.get_batch(i).num_rows for i in range(mapped.num_record_batches)]
            f = pa.OSFile(path)
            self._files.append(f)
            reader = pa.ipc.open_file(f)
            for i, size in enumerate(sizes):
                starts.append(n)
                self._where.append((reader, i))
                n += size
        self.starts = np.array(starts, dtype=np.int64)
        self.total = n
        self._cached: tuple[int, pa.RecordBatch] | None = None

    def batch(self, j: int) -> pa.RecordBatch:
        if self._cached is None or self._cached[0] != j:
            reader, i = self._where[j]
            self._cached = (j, reader.get_batch(i))
        return self._cached[1]

    def batches_from(self, row: int) -> Iterator[pa.RecordBatch]:
        """Every row from ``row`` on, in stored batches (the first one sliced)."""
        if row >= self.total:
            return
        j = int(np.searchsorted(self.starts, row, side="right") - 1)
        first = self.batch(j).slice(row - int(self.starts[j]))
        if first.num_rows:
            yield first
        for k in range(j + 1, len(self._where)):
            reader, i = self._where[k]
            yield reader.get_batch(i)

    def take(self, rows: np.ndarray) -> pa.RecordBatch:
        """The rows numbered ``rows`` (ascending), in that order."""
        which = np.searchsorted(self.starts, rows, side="right") - 1
        uniq, first = np.unique(which, return_index=True)
        ends = [*first[1:], len(rows)]
        pieces = [
            self.batch(int(j)).take(pa.array(rows[s:e] - self.starts[j]))
            for j, s, e in zip(uniq, first, ends)
        ]
        return pieces[0] if len(pieces) == 1 else pa.concat_batches(pieces)

    def close(self) -> None:
        for f in self._files:
            f.close()


def _change(stream: Stream, columns: list[pa.Array], ops: pa.Array, pos: Position, ts: datetime) -> pa.RecordBatch:
    n = len(ops)
    meta = [
        ops,
        pa.repeat(pa.scalar(encode_position(pos), pa.string()), n),
        pa.repeat(pa.scalar(ts, pa.timestamp("us", tz="UTC")), n),
    ]
    return pa.RecordBatch.from_arrays([*columns, *meta], schema=stream.change_schema)


def _empty_change(stream: Stream) -> pa.RecordBatch:
    schema = stream.change_schema
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)


def _skip(batches: Iterator[pa.RecordBatch], skip: int) -> Iterator[pa.RecordBatch]:
    for b in batches:
        if skip >= b.num_rows:
            skip -= b.num_rows
            continue
        if skip:
            b, skip = b.slice(skip), 0
        yield b


def _emit_phase(stream: Stream, run: Run, counts: dict[str, int], after: int, batch_size: int) -> Iterator[ReadBatch]:
    """Yields the run's changes from change number ``after`` on."""
    store = _RowStore(run)
    try:
        emitted = after

        def pos() -> Position:
            return {"mode": MODE, "run": run.id, "phase": "emit", "after": emitted}

        if not run.base:  # a full snapshot: every row, as read
            for b in store.batches_from(after):
                emitted += b.num_rows
                yield ReadBatch(_change(stream, b.columns, pa.repeat(pa.scalar(OP_READ), b.num_rows), pos(), run.ts), pos())
            return
        changes = pq.ParquetFile(run.dir / "diff.parquet").iter_batches(batch_size=batch_size)
        for b in _skip(changes, after):
            n_up = b.num_rows - b.column(_ROW).null_count  # deletes (no row number) come last
            if n_up:
                up = b.slice(0, n_up)
                data = store.take(up.column(_ROW).to_numpy())
                emitted += n_up
                yield ReadBatch(_change(stream, data.columns, _OPS.take(up.column(_OP)), pos(), run.ts), pos())
            if n_up < b.num_rows:
                dels = b.slice(n_up)
                n = dels.num_rows
                cols = [
                    dels.column(f.name).cast(f.type) if f.name in stream.primary_key else pa.nulls(n, f.type)
                    for f in stream.schema
                ]
                emitted += n
                yield ReadBatch(_change(stream, cols, pa.repeat(pa.scalar(OP_DELETE), n), pos(), run.ts), pos())
    finally:
        store.close()

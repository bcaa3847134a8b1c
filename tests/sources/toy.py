"""A non-SQL toy source written only against the source contract: each ``<name>.arrow`` file
(Arrow IPC) of a folder is a stream, its key in the schema metadata ``primary_key``.

It reads in full on its own (``read_full``) and declares nothing else, so it gets ``full``
and ``snapshot_diff`` (which needs only a full read) from the read strategies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from replicant.errors import ConnectionError, FatalError
from replicant.model import (
    OP_READ,
    Position,
    ReadBatch,
    Stream,
    encode_position,
    utcnow,
    with_meta,
)
from replicant.sources.base import Capabilities, Source


class ArrowFolderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str = Field(description="The folder of `<stream>.arrow` files.")


class ArrowFolderSource(Source):
    """Streams are the Arrow IPC files of ``source.folder``; ``full`` positions count rows of
    one version of the file (its size and mtime), so a resume never mixes two versions."""

    capabilities = Capabilities(modes=frozenset({"full", "snapshot_diff"}))
    settings = ArrowFolderSettings

    def _folder(self) -> Path:
        folder = Path(self.options.folder)
        if not folder.is_dir():
            raise ConnectionError(f"cannot open folder {str(folder)!r}: no such folder")
        return folder

    def discover(self) -> list[Stream]:
        out = []
        for path in sorted(self._folder().glob("*.arrow")):
            schema = pa.ipc.open_file(path).schema
            key = tuple(k for k in (schema.metadata or {}).get(b"primary_key", b"").decode().split(",") if k)
            fields = [f.with_nullable(f.name not in key) for f in schema]
            out.append(Stream(name=path.stem, table=("main", path.stem), schema=pa.schema(fields), primary_key=key))
        return out

    def read_full(self, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        path = self._folder() / f"{stream.table[-1]}.arrow"
        if not path.is_file():
            raise FatalError(f"stream {stream.name!r}: {str(path)!r} is gone")
        st = os.stat(path)
        version = f"{st.st_size}-{st.st_mtime_ns}"
        skip = 0
        if position and position.get("mode") == "full" and not position.get("done"):
            if position.get("version") != version:
                raise FatalError(f"stream {stream.name!r}: {path.name} changed during a snapshot; start it over")
            skip = int(position["rows"])
        table = pa.ipc.open_file(path).read_all().select(stream.schema.names).cast(stream.schema)
        size = int(stream.options.get("batch_size") or self.config.batch_size)
        rows = skip
        for batch in table.slice(skip).to_batches(max_chunksize=size):
            rows += batch.num_rows
            pos = {"mode": "full", "version": version, "rows": rows}
            yield ReadBatch(with_meta(batch, OP_READ, encode_position(pos), utcnow()), pos)
        done = {"mode": "full", "done": True}
        empty = pa.RecordBatch.from_pylist([], schema=stream.schema)
        yield ReadBatch(with_meta(empty, OP_READ, encode_position(done), utcnow()), done, final=True)

    def close(self) -> None:
        """Nothing held open between reads."""

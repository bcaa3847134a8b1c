"""A destination seen through its ``transforms:``: what delivery and replay write into.

:class:`TransformedDestination` wraps a destination and presents it the log's streams
transformed: ``prepare``, ``evolve``, ``write_mode`` and the offsets see each stream's output
schema and key, and ``write`` gets the transformed rows. Delivery (:mod:`replicant.delivery`)
and replay need not know: they talk to the wrapper as to any destination. Rows a filter drops
leave no gap in the exactly-once bookkeeping: the offset written with them is the log's.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from replicant.model import Stream
from replicant.transforms.chain import TransformChain

__all__ = ["TransformedDestination"]


class TransformedDestination:
    """``dest`` with ``chain`` applied to everything it is given (other attributes pass through)."""

    def __init__(self, dest: Any, chain: TransformChain) -> None:
        self.dest = dest
        self.chain = chain

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dest, name)

    def __enter__(self) -> TransformedDestination:
        self.dest.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.dest.close()

    def out(self, stream: Stream) -> Stream:
        return self.chain.output_stream(stream)

    def _rows(self, stream: Stream, data: pa.Table) -> pa.Table:
        batches = [self.chain.apply(stream.name, b) for b in data.to_batches()] or [
            self.chain.apply(stream.name, pa.RecordBatch.from_arrays([pa.array([], f.type) for f in data.schema], schema=data.schema))]
        return pa.Table.from_batches(batches, schema=self.chain.output_schema(stream.name, data.schema))

    def prepare(self, stream: Stream) -> None:
        self.dest.prepare(self.out(stream))

    def evolve(self, stream: Stream, old: Stream) -> None:
        new, before = self.out(stream), self.out(old)
        if not new.schema.equals(before.schema, check_metadata=True):
            self.dest.evolve(new, before)

    def write(self, stream: Stream, data: pa.Table, *, last_offset: int, offsets: pa.Array | None = None) -> int:
        """Writes the transformed rows; returns how many (delivery counts those, not the log's)."""
        out = self._rows(stream, data)
        self.dest.write(self.out(stream), out, last_offset=last_offset,
                        offsets=offsets if offsets is not None and out.num_rows == data.num_rows else None)
        return out.num_rows

    def applied_offset(self, stream: Stream) -> int:
        return int(self.dest.applied_offset(self.out(stream)))

    def write_mode(self, stream: Stream) -> str:
        return str(self.dest.write_mode(self.out(stream)))

    def target_table(self, stream: Stream) -> str:
        return str(self.dest.target_table(self.out(stream)))

    def require_key(self, stream: Stream) -> None:
        self.dest.require_key(self.out(stream))

    def begin_snapshot(self, stream: Stream, snapshot: str) -> None:
        self.dest.begin_snapshot(self.out(stream), snapshot)

    def end_snapshot(self, stream: Stream) -> None:
        self.dest.end_snapshot(self.out(stream))

    def begin_replace(self, stream: Stream) -> None:
        self.dest.begin_replace(self.out(stream))

    def commit_replace(self, stream: Stream, *, last_offset: int) -> None:
        self.dest.commit_replace(self.out(stream), last_offset=last_offset)

    def truncate(self, stream: Stream, *, last_offset: int) -> None:
        self.dest.truncate(self.out(stream), last_offset=last_offset)

    def record_offset(self, stream: Stream, last_offset: int) -> None:
        self.dest.record_offset(self.out(stream), last_offset)

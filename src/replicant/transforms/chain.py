"""A transform list, composed: what each stream's schema becomes and what each batch becomes.

A :class:`TransformChain` holds the transforms of one placement (before the log, or one
destination) in order, each with the streams it takes. Output schemas are cached per input
schema (a source's schema may change mid-run: each new version is mapped once), and every
transform's output is held to the schema it announced, so what the log or a destination
stores is exactly what ``prepare`` and ``evolve`` saw.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pyarrow as pa

from replicant.errors import ConfigError, FatalError
from replicant.model import META_FIELDS, Stream
from replicant.transforms.base import Transform, key_of

__all__ = ["Step", "TransformChain"]


@dataclasses.dataclass(frozen=True)
class Step:
    """One transform of a chain: its key path (``transforms[1]``), the streams it takes (None:
    all) and the transform."""

    path: str
    streams: tuple[str, ...] | None
    transform: Transform

    def takes(self, stream: str) -> bool:
        return self.streams is None or stream in self.streams


class TransformChain:
    """The transforms of one placement, in order.

    Args:
        steps: the steps in the order they run.
    """

    def __init__(self, steps: list[Step]) -> None:
        self.steps = list(steps)
        self._schemas: dict[tuple[str, bytes], list[pa.Schema]] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.steps)

    def for_stream(self, stream: str) -> list[Step]:
        return [s for s in self.steps if s.takes(stream)]

    def _versions(self, stream: str, change_schema: pa.Schema) -> list[pa.Schema]:
        """Per step of ``stream``, its output schema for input ``change_schema``.

        Raises:
            ConfigError: a transform does not fit the schema (the problem at its key path).
        """
        cache = (stream, change_schema.serialize().to_pybytes())  # Schema equality ignores metadata
        with self._lock:
            found = self._schemas.get(cache)
        if found is not None:
            return found
        out, schema = [], change_schema
        for step in self.for_stream(stream):
            try:
                schema = step.transform.output_schema(schema)
            except ValueError as e:
                raise ConfigError("invalid pipeline file", [(f"{step.path}.{step.transform.name}", f"stream {stream!r}: {e}")]) from None
            out.append(schema)
        with self._lock:
            self._schemas[cache] = out
        return out

    def output_schema(self, stream: str, change_schema: pa.Schema) -> pa.Schema:
        """The change schema ``stream``'s batches of ``change_schema`` come out in."""
        versions = self._versions(stream, change_schema)
        return versions[-1] if versions else change_schema

    def output_stream(self, stream: Stream) -> Stream:
        """``stream`` as it comes out: its data schema and key (a renamed key is renamed)."""
        if not self.for_stream(stream.name):
            return stream
        out = self.output_schema(stream.name, stream.change_schema)
        data = pa.schema([f for f in out if f.name not in {m.name for m in META_FIELDS}], metadata=out.metadata)
        return dataclasses.replace(stream, schema=data, primary_key=tuple(key_of(data)) if key_of(data) else stream.primary_key)

    def problems(self, streams: list[Stream], known: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
        """What does not fit each stream's schema, every problem at once. ``known``: stream
        names a step may scope although ``streams`` lacks them (another tenant's)."""
        found: list[tuple[str, str]] = []
        for s in streams:
            try:
                self.output_schema(s.name, s.change_schema)
            except ConfigError as e:
                found.extend(p for p in e.problems if p not in found)
        names = {s.name for s in streams} | known
        for step in self.steps:
            for n in step.streams or ():
                if n not in names:
                    from replicant.config import suggest

                    found.append((f"{step.path}.streams", f"no stream named {n!r}{suggest(n, sorted(names))}"))
        return found

    def apply(self, stream: str, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` (a change batch of ``stream``) through every step that takes ``stream``."""
        steps = self.for_stream(stream)
        if not steps:
            return batch
        try:
            versions = self._versions(stream, batch.schema)
        except ConfigError as e:  # a new schema version the transforms do not fit: this stream stops
            raise FatalError(f"{e.problems[0][0]}: {e.problems[0][1]}") from None
        for step, expected in zip(steps, versions, strict=True):
            batch = step.transform.apply(batch)
            if not batch.schema.equals(expected, check_metadata=True):
                batch = _conformed(batch, expected, step)
        return batch


def _conformed(batch: pa.RecordBatch, expected: pa.Schema, step: Step) -> pa.RecordBatch:
    """``batch`` in the schema its transform announced (field metadata, order, nullability)."""
    try:
        index = [batch.schema.get_field_index(f.name) for f in expected]
        if min(index, default=0) < 0:
            raise KeyError(expected.field(index.index(-1)).name)
        columns: list[Any] = [batch.column(i) for i in index]
        columns = [c if c.type == f.type else c.cast(f.type) for c, f in zip(columns, expected, strict=True)]
        return pa.RecordBatch.from_arrays(columns, schema=expected)
    except (KeyError, IndexError, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise FatalError(f"{step.path}.{step.transform.name}: its output does not match the schema it announced "
                         f"({type(e).__name__}); it must give the same columns for every batch") from None

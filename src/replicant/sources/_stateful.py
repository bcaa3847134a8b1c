"""Stateful transforms of a derived pipeline, between its upstream log and its own log.

A stateful transform (``aggregate``…) in a derived pipeline's ``transforms:`` reads one
upstream stream and writes its output stream (``as:``) in place of it. Its keyed state lives
in :class:`~replicant.transforms.state.KeyedState` under the pipeline's home
(``.replicant/<pipeline>/stateful/state.duckdb``, one file per tenant).

Exactly once (see :mod:`replicant.transforms.state`): per upstream record, the state changes in
an open transaction that also records ``applied`` = the upstream offset after the record;
the output is yielded, appended durably to the derived log by the engine, and only when the
engine acknowledges it (:meth:`StatefulStage.commit`) is the transaction committed. Before
reading, :meth:`StatefulStage.catch_up` brings the committed state to the derived log's
position: a state behind it (a kill between append and commit) re-applies the records between
without emitting; a state ahead of it (the derived stream was resynced) starts over.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa

from replicant.log.base import MARKER_TRUNCATE, Log
from replicant.model import META_COLUMNS, Stream

__all__ = ["StatefulStage", "build_stateful"]


def build_stateful(entries: list[dict[str, Any]], inputs: list[str]) -> list[Any]:
    """The stateful transforms of checked ``transforms:`` entries (see
    :mod:`replicant.transforms.config`), each with ``.input`` set to the stream it reads."""
    from replicant.transforms.aggregate import Aggregate

    out = []
    for e in entries:
        e = dict(e)
        streams, name = e.pop("streams", None), e.pop("as", None)
        [(kind, value)] = e.items()
        src = streams[0] if streams else (inputs[0] if len(inputs) == 1 else None)
        if src is None:
            from replicant.errors import ConfigError

            raise ConfigError("invalid pipeline file", [("transforms", f"{kind} needs `streams: [NAME]`: which stream it reads")])
        name = name or value.get("as") or src
        if kind == "aggregate":
            t = Aggregate(value["by"], value["values"], name)
        else:  # pragma: no cover - refused by the config check
            raise ValueError(kind)
        t.input = src
        out.append(t)
    return out


class StatefulStage:
    """The stateful transforms of one derived pipeline (or tenant) and their state file."""

    def __init__(self, transforms: list[Any], path: Path) -> None:
        self.transforms = {t.output_name: t for t in transforms}
        self.path = path
        self._state: Any = None

    @property
    def state(self) -> Any:
        if self._state is None:
            from replicant.transforms.state import KeyedState

            self._state = KeyedState(self.path)
        return self._state

    def inputs(self) -> set[str]:
        return {t.input for t in self.transforms.values()}

    def streams(self, discovered: list[Stream]) -> list[Stream]:
        """``discovered`` with each stateful input replaced by its outputs."""
        by_name = {s.name: s for s in discovered}
        out = [s for s in discovered if s.name not in self.inputs()]
        for name, t in self.transforms.items():
            src = by_name.get(t.input)
            if src is None:
                from replicant.errors import ConfigError

                raise ConfigError("invalid pipeline file", [("transforms", f"{t.name} reads stream {t.input!r}, which the "
                                                                            "upstream log does not hold")])
            try:
                change = t.output_schema(src.change_schema)
            except ValueError as e:
                from replicant.errors import ConfigError

                raise ConfigError("invalid pipeline file", [(f"transforms ({t.name} {name})", str(e))]) from None
            data = pa.schema([f for f in change if f.name not in META_COLUMNS], metadata=change.metadata)
            out.append(dataclasses.replace(src, name=name, table=tuple(name.split(".")), schema=data,
                                           primary_key=tuple(t.by), options={**src.options, "input": t.input}))
        return out

    def transform_of(self, stream: str) -> Any:
        return self.transforms.get(stream)

    def catch_up(self, t: Any, lg: Log, upstream: str, position: int) -> None:
        """Brings ``t``'s committed state to the derived log's ``position`` (see the module
        docstring), emitting nothing."""
        state = self.state
        applied = state.applied(t.owner)
        if applied is not None and applied > position:  # resynced behind the state: start over
            state.begin()
            t.reset(state)
            state.commit()
            applied = None
        start = applied or 0
        if start >= position:
            return
        state.begin()
        if applied is None:
            t.reset(state)
        for rec in lg.read(upstream, start, end=position):
            self.apply(t, rec)
        state.commit()

    def apply(self, t: Any, rec: Any) -> pa.RecordBatch | None:
        """Applies upstream record ``rec`` to ``t``'s state (in the open transaction); its
        output batch (None for a truncate)."""
        state = self.state
        state.begin()
        out = None
        if rec.marker is None:
            out = t.process(rec.batch, state)
        elif rec.marker.get("kind") == MARKER_TRUNCATE:
            t.reset(state)
        state.set_applied(t.owner, rec.next_offset)
        return out

    def empty(self, t: Any, schema: pa.Schema) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist([], schema=t.output_schema(schema))

    def commit(self) -> None:
        if self._state is not None:
            self._state.commit()

    def rollback(self) -> None:
        if self._state is not None:
            self._state.rollback()

    def status(self) -> dict[str, Any]:
        """State size and rows for ``status`` (read-only; a running pipeline holds the file)."""
        if not self.path.exists():
            return {"file": str(self.path), "bytes": 0, "rows": {}}
        if self._state is not None:
            return dict(self._state.sizes())
        import duckdb

        from replicant.transforms.state import KeyedState

        try:
            st = KeyedState.__new__(KeyedState)
            st.path, st.con, st._open = self.path, duckdb.connect(str(self.path), read_only=True), False
        except duckdb.Error:
            return {"file": str(self.path), "bytes": self.path.stat().st_size, "rows": "in use by a running pipeline"}
        try:
            return dict(st.sizes())
        finally:
            st.con.close()

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None

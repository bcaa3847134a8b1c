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
import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from replicant.errors import ConfigError
from replicant.log.base import MARKER_TRUNCATE, Log
from replicant.model import META_COLUMNS, Stream
from replicant.transforms.base import key_of

__all__ = ["StatefulStage", "build_stateful"]

#: At most how often (seconds) a running stage writes its state's size and rows for ``status``.
_PUBLISH_EVERY = 1.0


def build_stateful(entries: list[dict[str, Any]], inputs: list[str]) -> list[Any]:
    """The stateful transforms of checked ``transforms:`` entries (see
    :mod:`replicant.transforms.config`), each with ``.input`` set to the stream it reads."""
    from replicant.transforms.aggregate import Aggregate
    from replicant.transforms.config import join_value
    from replicant.transforms.join import Join

    out = []
    for e in entries:
        e = dict(e)
        streams, name, path = e.pop("streams", None), e.pop("as", None), e.pop("_path", "transforms")
        [(kind, value)] = e.items()
        src = streams[0] if streams else (inputs[0] if len(inputs) == 1 else None)
        if src is None:
            raise ConfigError("invalid pipeline file", [(f"{path}.streams", f"{kind} needs `streams: [NAME]`: which stream it reads")])
        name = name or (value.get("as") if isinstance(value, dict) else None) or src
        t: Any
        if kind == "aggregate":
            t = Aggregate(value["by"], value["values"], name)
        elif kind == "join":
            value = join_value(value)
            t = Join(value["with"], value["on"], list(value.get("columns") or []), value.get("how", "inner"), name)
        elif kind == "python":
            from replicant.transforms.python import import_target
            from replicant.transforms.python_stateful import PythonStateful

            try:
                t = PythonStateful(value, import_target(value), name)
            except ValueError as err:
                raise ConfigError("invalid pipeline file", [(f"{path}.{kind}", str(err))]) from None
        else:  # pragma: no cover - refused by the config check
            raise ValueError(kind)
        t.input = src
        t.path = f"{path}.{kind}"
        out.append(t)
    return out


class StatefulStage:
    """The stateful transforms of one derived pipeline (or tenant) and their state file."""

    def __init__(self, transforms: list[Any], path: Path) -> None:
        self.transforms = {t.output_name: t for t in transforms}
        self.path = path
        self._state: Any = None
        self._published = float("-inf")
        self._dirty = False

    @property
    def state(self) -> Any:
        if self._state is None:
            from replicant.transforms.state import KeyedState

            self._state = KeyedState(self.path)
        return self._state

    def inputs(self) -> set[str]:
        return {t.input for t in self.transforms.values()}

    def streams(self, discovered: list[Stream]) -> list[Stream]:
        """``discovered`` with each stateful input replaced by its outputs.

        Raises:
            ConfigError: a transform reads a stream the upstream log has not, or does not fit
                its schema.
        """
        by_name = {s.name: s for s in discovered}
        out = [s for s in discovered if s.name not in self.inputs()]
        for name, t in self.transforms.items():
            missing = [n for n in t.sides.values() if n not in by_name]
            if missing:
                raise ConfigError("invalid pipeline file", [(t.path, f"{t.name} {name!r} reads stream {missing[0]!r}, "
                                                                     "which the upstream log does not hold")])
            src = by_name[t.input]
            try:
                if "with" in t.sides:
                    t.bind(by_name[t.sides["with"]].change_schema)
                change = t.remember(src.change_schema)
            except ValueError as e:
                raise ConfigError("invalid pipeline file", [(t.path, f"stream {name!r}: {e}")]) from None
            data = pa.schema([f for f in change if f.name not in META_COLUMNS], metadata=change.metadata)
            out.append(dataclasses.replace(src, name=name, table=tuple(name.split(".")), schema=data,
                                           primary_key=tuple(key_of(change)), options={**src.options, "input": t.input}))
        return out

    def bind(self, lg: Log, tenant: str | None) -> None:
        """Gives each transform its streams' latest schemas from the upstream log (a join's
        output schema needs its ``with`` stream's)."""
        from replicant.model import META_FIELDS, data_schema, log_stream_name

        def change(name: str) -> pa.Schema:
            schemas = lg.schemas(log_stream_name(name, tenant))
            data = data_schema(schemas[-1]) if schemas else pa.schema([])
            return pa.schema(list(data) + list(META_FIELDS), metadata=data.metadata)

        for t in self.transforms.values():
            if "with" in t.sides:
                t.bind(change(t.sides["with"]))
            t.remember(change(t.input))

    def transform_of(self, stream: str) -> Any:
        return self.transforms.get(stream)

    def catch_up(self, t: Any, side: str, lg: Log, upstream: str, position: int) -> None:
        """Brings the committed state of ``t``'s ``side`` to the derived log's ``position`` (see
        the module docstring), emitting nothing."""
        state = self.state
        owner = f"{t.owner}/{side}"
        applied = state.applied(owner)
        if applied is not None and applied > position:
            # the derived stream was resynced (a truncate marker at the upstream offset it restarts
            # from) or its log recreated: its output is empty there, so is the state
            state.begin()
            self._reset(t, side)
            state.set_applied(owner, position)
            state.commit()
            return
        start = applied or 0
        if start >= position:
            return
        state.begin()
        if applied is None:
            self._reset(t, side)
        for rec in lg.read(upstream, start, end=position):
            self.apply(t, side, rec)
        state.commit()

    def _reset(self, t: Any, side: str) -> None:
        t.reset(self.state, side)

    def apply(self, t: Any, side: str, rec: Any) -> tuple[pa.RecordBatch, bool]:
        """Applies upstream record ``rec`` of ``t``'s ``side`` to the state (in the open
        transaction); its output batch, and whether the output is truncated first."""
        state = self.state
        state.begin()
        truncated = False
        if rec.marker is None:
            out = t.process(side, rec.batch, state)
        elif rec.marker.get("kind") == MARKER_TRUNCATE:
            self._reset(t, side)
            truncated = side == "main"
            out = t.recompute_all(state) if not truncated else t.empty()
        else:  # snapshot markers: nothing to say downstream; the position moves on
            out = t.empty()
        state.set_applied(f"{t.owner}/{side}", rec.next_offset)
        return out, truncated

    def commit(self) -> None:
        if self._state is not None:
            self._state.commit()
            self._dirty = True
            if time.monotonic() - self._published >= _PUBLISH_EVERY:
                self.publish()

    def publish(self) -> None:
        """Publishes the state's figures if they changed since last time (also when the
        capture goes idle, so a status during a quiet follow is current)."""
        if self._state is not None and self._dirty:
            self._published, self._dirty = time.monotonic(), False
            self._publish()

    def _publish(self) -> None:
        """Writes the state's size and rows beside it (``<file>.status.json``), for a ``status``
        that cannot open the file a running pipeline holds."""
        side = self.path.with_name(self.path.name + ".status.json")
        tmp = side.with_name(side.name + ".tmp")
        tmp.write_text(json.dumps(self._state.sizes()))
        os.replace(tmp, side)

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
        except duckdb.Error:  # a running pipeline holds it: what it last published
            side = self.path.with_name(self.path.name + ".status.json")
            try:
                return {**json.loads(side.read_text()), "bytes": self.path.stat().st_size, "running": True}
            except (OSError, ValueError):
                return {"file": str(self.path), "bytes": self.path.stat().st_size, "rows": "in use by a running pipeline"}
        try:
            return dict(st.sizes())
        finally:
            st.con.close()

    def close(self) -> None:
        if self._state is not None:
            self.publish()  # the last figures, for a status run after this one
            self._state.close()
            self._state = None

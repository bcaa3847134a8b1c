"""``python: module:Class`` in a derived pipeline: user logic with keyed state.

The class (constructed without arguments) declares::

    key = ["card"]                     # the output stream's key columns
    state_key = ["card"]               # the key of its state rows
    state_schema = pa.schema([...])    # the columns of its state rows (state_key among them)

    def output_schema(self, schema: pa.Schema) -> pa.Schema: ...   # input data columns -> output data columns
    def process(self, batch: pa.RecordBatch, state: State) -> pa.RecordBatch | pa.Table: ...

``process`` gets each input change batch (data columns, ``_op``, ``_pos``, ``_ts``) and returns
output rows: the output data columns, and ``_op`` when it deletes (default: ``update``, an
upsert by ``key``). Its :class:`State` reads and writes many keys at once (Arrow tables), in
the transaction that is committed with the output's append (see
:mod:`replicant.sources._stateful`), so a crash neither loses nor repeats a state change.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from replicant.errors import FatalError
from replicant.model import META_COLUMNS, META_FIELDS, OP_UPDATE
from replicant.transforms.base import Transform, with_key

__all__ = ["PythonStateful", "State"]


class State:
    """The keyed state of one ``python: module:Class`` transform (batch calls only)."""

    def __init__(self, store: Any, table: str, key: list[str]) -> None:
        self._store, self._table, self.key = store, table, list(key)

    def get(self, keys: pa.Table) -> pa.Table:
        """The state rows whose ``state_key`` equals a row of ``keys``."""
        return self._store.get(self._table, keys, self.key)

    def put(self, rows: pa.Table) -> None:
        """Inserts or replaces ``rows`` (by ``state_key``)."""
        self._store.put(self._table, rows, self.key)

    def delete(self, keys: pa.Table) -> None:
        """Deletes the state rows of ``keys``."""
        self._store.delete(self._table, keys, self.key)


class PythonStateful(Transform):
    """Runs a user class (see the module docstring)."""

    name = "python"
    stateful = True

    def __init__(self, target: str, cls: Any, output_name: str) -> None:
        self.target = target
        self.obj = cls()
        for attr in ("key", "state_key", "state_schema", "output_schema", "process"):
            if not hasattr(self.obj, attr):
                raise ValueError(f"{target} has no {attr!r} (docs/transforms.md: a stateful python class)")
        self.output_name = output_name
        self.owner = f"python:{output_name}"
        self.input = ""
        self.path = "transforms"  # its key path (``transforms[0].aggregate``), for errors

    @property
    def sides(self) -> dict[str, str]:
        return {"main": self.input}

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        data = pa.schema([f for f in schema if f.name not in META_COLUMNS], metadata=schema.metadata)
        out = self.obj.output_schema(data)
        missing = [k for k in self.obj.key if k not in out.names]
        if missing:
            raise ValueError(f"{self.target}: the output has no key column {missing[0]!r}")
        return with_key(pa.schema(list(out) + list(META_FIELDS)), list(self.obj.key))

    def remember(self, schema: pa.Schema) -> pa.Schema:
        self._out_schema = self.output_schema(schema)
        return self._out_schema

    def empty(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist([], schema=self._out_schema)

    def recompute_all(self, state: Any) -> pa.RecordBatch:  # pragma: no cover - one side only
        return self.empty()

    def process(self, side: str, batch: pa.RecordBatch, state: Any) -> pa.RecordBatch:
        schema = self.remember(batch.schema)
        table = f"{self.owner}.state"
        state.table(table, self.obj.state_schema)
        try:
            out = self.obj.process(batch, State(state, table, self.obj.state_key))
        except Exception as e:  # noqa: BLE001 - the user's code: this stream stops, saying where
            raise FatalError(f"python {self.target}: {type(e).__name__}: {e}") from None
        if isinstance(out, pa.RecordBatch):
            out = pa.Table.from_batches([out])
        n = out.num_rows
        last = batch.num_rows - 1
        meta = {"_op": pa.repeat(pa.scalar(OP_UPDATE), n),
                "_pos": pa.repeat(batch.column("_pos")[last] if n and last >= 0 else pa.scalar(""), n),
                "_ts": pa.repeat(batch.column("_ts")[last] if n and last >= 0 else pa.scalar(0, pa.timestamp("us", tz="UTC")), n)}
        try:
            arrays = [out.column(f.name).cast(f.type) if f.name in out.column_names else meta[f.name].cast(f.type)
                      if f.name in meta else pa.nulls(n, f.type) for f in schema]
            return pa.Table.from_arrays(arrays, schema=schema).combine_chunks().to_batches(max_chunksize=max(n, 1))[0] \
                if n else self.empty()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise FatalError(f"python {self.target}: its output does not fit its output_schema: {e}") from None

    def reset(self, state: Any, side: str = "main") -> None:
        state.clear(self.owner)

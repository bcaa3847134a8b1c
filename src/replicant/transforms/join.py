"""``join``: a stream enriched with columns of another, kept equal to the SQL join of both.

::

    transforms:
      - join: {with: accounts, on: {account_id: id}, columns: [client_id, branch], how: inner}
        streams: [transactions]
        as: enriched

The output is keyed by the input stream's key; ``on`` maps input columns to the ``with``
stream's key columns (a many-to-one lookup: each input row matches at most one ``with``
row). Both streams' rows are kept in the state (the row caches), and both sides' changes are
read from the upstream log, so the output follows changes on **both** sides:

* an input change recomputes its rows (a delete deletes them);
* a ``with`` change (insert, update, delete) recomputes every input row joined to its key: a
  changed account re-emits its transactions; a deleted account deletes them (``how: inner``)
  or nulls their columns (``how: left``).

Recomputing is one DuckDB join of the row caches restricted to the touched input keys; inner
rows that no longer match are deleted downstream.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from replicant.model import META_COLUMNS, META_FIELDS, OP_DELETE, OP_UPDATE
from replicant.transforms.aggregate import emit, latest_changes
from replicant.transforms.base import Transform, data_names, key_of, need_columns, with_key
from replicant.transforms.sql import quote as _q

__all__ = ["Join"]


class Join(Transform):
    """See the module docstring.

    Args:
        with_stream: the looked-up stream (``with:``).
        on: input column → ``with`` key column.
        columns: the ``with`` columns added to each row.
        how: ``inner`` or ``left``.
        output_name: the output stream (``as:``).
    """

    name = "join"
    stateful = True

    def __init__(self, with_stream: str, on: dict[str, str], columns: list[str], how: str, output_name: str) -> None:
        self.with_stream = with_stream
        self.on = dict(on)
        self.columns = list(columns)
        self.how = how
        self.output_name = output_name
        self.owner = f"join:{output_name}"
        self.input = ""
        self.path = "transforms"  # its key path (``transforms[0].aggregate``), for errors
        self._with_schema: pa.Schema | None = None

    @property
    def sides(self) -> dict[str, str]:
        return {"main": self.input, "with": self.with_stream}

    def bind(self, with_schema: pa.Schema) -> None:
        """Checks the ``with`` stream's change schema and keeps it (for the output schema).

        Raises:
            ValueError: a missing column, or ``on`` does not name the ``with`` stream's key.
        """
        need_columns(with_schema, [*self.on.values(), *self.columns], f"with {self.with_stream!r}")
        if sorted(self.on.values()) != sorted(key_of(with_schema)):
            raise ValueError(f"on: must map to the key of {self.with_stream!r} ({', '.join(key_of(with_schema)) or 'none'}): "
                             "a join looks up one row of it per input row")
        self._with_schema = with_schema

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        need_columns(schema, self.on, "on")
        if not key_of(schema):
            raise ValueError("the input stream has no key")
        if self._with_schema is None:
            raise ValueError(f"the stream {self.with_stream!r} is not in the upstream log")
        clash = [c for c in self.columns if c in data_names(schema)]
        if clash:
            raise ValueError(f"columns: {clash[0]!r} is a column of the input stream too")
        added = [self._with_schema.field(c).with_nullable(True) for c in self.columns]
        data = [f for f in schema if f.name not in META_COLUMNS]
        return with_key(pa.schema(data + added + list(META_FIELDS)), key_of(schema))

    # ------------------------------------------------------------------ changes

    def process(self, side: str, batch: pa.RecordBatch, state: Any) -> pa.RecordBatch:
        """The output of one change batch of ``side`` (``main`` or ``with``); changes ``state``."""
        table = f"{self.owner}.{side}"
        key = key_of(batch.schema)
        state.table(table, pa.schema([f for f in batch.schema if f.name not in META_COLUMNS]))
        latest = latest_changes(state, batch, key)
        state.delete(table, latest, key)
        live = state.sql(f"SELECT {', '.join(_q(c) for c in data_names(batch.schema))} FROM _n WHERE _op <> '{OP_DELETE}'",
                         _n=latest)
        if live.num_rows:
            state.put(table, live, key)
        main = f"{self.owner}.main"
        if side == "main":
            self.remember(batch.schema)
            gone = state.sql(f"SELECT {', '.join(_q(k) for k in key)} FROM _n WHERE _op = '{OP_DELETE}'", _n=latest)
            touched = live.select(key)
        else:  # every input row joined to a touched `with` key
            if not self._has(state, main):
                return self.empty()
            on = " AND ".join(f"m.{_q(a)} IS NOT DISTINCT FROM n.{_q(b)}" for a, b in self.on.items())
            mkey = ", ".join(f"m.{_q(k)}" for k in self._main_key(state))
            touched = state.sql(f"SELECT DISTINCT {mkey} FROM {_q(main)} m JOIN _n n ON {on}", _n=latest)
            gone = touched.slice(0, 0)
        return self._recompute(state, touched, gone, batch)

    def recompute_all(self, state: Any) -> pa.RecordBatch:
        """Every output row again (after the ``with`` stream was truncated)."""
        main = f"{self.owner}.main"
        if not self._has(state, main):
            return self.empty()
        keys = state.sql(f"SELECT {', '.join(_q(k) for k in self._main_key(state))} FROM {_q(main)}")
        return self._recompute(state, keys, keys.slice(0, 0), self.empty())

    def _recompute(self, state: Any, touched: pa.Table, gone: pa.Table, like: pa.RecordBatch) -> pa.RecordBatch:
        main, other = f"{self.owner}.main", f"{self.owner}.with"
        out_schema = self._out_schema
        key = key_of(out_schema)
        data = [f.name for f in out_schema if f.name not in META_COLUMNS]
        have_with = self._has(state, other)
        cols = ", ".join([f"m.{_q(c)}" for c in data if c not in self.columns] +
                         [f"w.{_q(c)}" if have_with else f"NULL AS {_q(c)}" for c in self.columns])
        sel = " AND ".join(f"m.{_q(k)} IS NOT DISTINCT FROM t.{_q(k)}" for k in key)
        join = ""
        if have_with:
            on = " AND ".join(f"m.{_q(a)} IS NOT DISTINCT FROM w.{_q(b)}" for a, b in self.on.items())
            join = f"{'LEFT' if self.how == 'left' else ''} JOIN {_q(other)} w ON {on}"
        elif self.how != "left":
            join = "JOIN (SELECT 1 WHERE false) w ON true"
        rows = state.sql(f"SELECT {cols} FROM {_q(main)} m {join} WHERE EXISTS (SELECT 1 FROM _t t WHERE {sel})", _t=touched)
        ksel = " AND ".join(f"r.{_q(k)} IS NOT DISTINCT FROM t.{_q(k)}" for k in key)
        unmatched = state.sql(f"SELECT * FROM _t t WHERE NOT EXISTS (SELECT 1 FROM _r r WHERE {ksel})", _t=touched, _r=rows)
        deletes = pa.concat_tables([gone.select(key), unmatched.select(key)], promote_options="permissive")
        return emit(out_schema, like, ((rows, OP_UPDATE), (deletes, OP_DELETE)))

    # ------------------------------------------------------------------ helpers

    _out_schema: pa.Schema

    def remember(self, main_schema: pa.Schema) -> pa.Schema:
        """Keeps the output schema of input change schema ``main_schema`` (the stage calls it)."""
        self._out_schema = self.output_schema(main_schema)
        return self._out_schema

    def _main_key(self, state: Any) -> list[str]:
        return key_of(self._out_schema)

    def empty(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist([], schema=self._out_schema)

    @staticmethod
    def _has(state: Any, table: str) -> bool:
        return bool(state.sql(f"SELECT count(*) AS n FROM information_schema.tables WHERE table_name = '{table}'")
                    .column("n")[0].as_py())

    def reset(self, state: Any, side: str = "main") -> None:
        """Forgets one side's rows (a truncate of it, or a resync)."""
        state.execute(f"DROP TABLE IF EXISTS {_q(f'{self.owner}.{side}')}")

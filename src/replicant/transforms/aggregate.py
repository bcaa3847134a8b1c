"""``aggregate``: a keyed running GROUP BY, kept equal to the GROUP BY over the upstream table.

::

    transforms:
      - aggregate:
          by: [client_id]
          values:
            deposits: "sum(amount) FILTER (WHERE kind = 'deposit')"
            n: "count(*)"
          as: client_totals            # (or beside `aggregate:`) the output stream's name
        streams: [transactions]        # the input stream (default: the only one)

How, per input change batch (no per-row Python; DuckDB over the batch and the state):

1. the batch's last change per input key wins (its ``_op`` and new image);
2. the previous image of each of those keys is read from the state's row cache (the "local
   cache": the input table as last seen, keyed by the upstream key, so no REPLICA IDENTITY
   FULL is needed); the groups touched are the old images' groups and the new images';
3. the row cache is updated (deletes removed, new images put);
4. the touched groups are recomputed from the row cache with the user's expressions
   (``SELECT by, … FROM rows WHERE group touched GROUP BY by``): so sum, count, avg, min, max
   and ``FILTER`` are exact under updates, moves between groups and deletes;
5. out: an ``update`` (upsert) per recomputed group, a ``delete`` per touched group left empty.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from replicant.model import META_COLUMNS, META_FIELDS, OP_DELETE, OP_UPDATE
from replicant.transforms.base import Transform, data_names, key_of, need_columns, with_key
from replicant.transforms.sql import quote as _q

__all__ = ["Aggregate", "emit", "latest_changes"]


def latest_changes(state: Any, batch: pa.RecordBatch, key: list[str]) -> pa.Table:
    """The last change of each key in ``batch`` (its ``_op`` and image), in one DuckDB query."""
    keys = ", ".join(_q(k) for k in key)
    return state.sql(f"SELECT * EXCLUDE (_i, _rn) FROM (SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY _i DESC) "
                     f"AS _rn FROM _b) WHERE _rn = 1",
                     _b=pa.Table.from_batches([batch]).append_column("_i", pa.array(range(batch.num_rows), pa.int64())))


class Aggregate(Transform):
    """See the module docstring.

    Args:
        by: the group columns (the output key).
        values: output column → DuckDB aggregate expression.
        output_name: the output stream (``as:``).
    """

    name = "aggregate"
    stateful = True

    def __init__(self, by: list[str], values: dict[str, str], output_name: str) -> None:
        self.by = list(by)
        self.values = dict(values)
        self.output_name = output_name
        self.owner = f"aggregate:{output_name}"
        self.input = ""
        self.path = "transforms"  # its key path (``transforms[0].aggregate``), for errors

    def _select(self, source: str, where: str = "") -> str:
        by = ", ".join(_q(b) for b in self.by)
        vals = ", ".join(f"({e}) AS {_q(n)}" for n, e in self.values.items())
        return f"SELECT {by}, {vals} FROM {source} {where} GROUP BY {by}"

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        import duckdb

        need_columns(schema, self.by, "by")
        if not key_of(schema):
            raise ValueError("the input stream has no key: an aggregate keeps each row's previous image by its key")
        empty = pa.table({f.name: pa.array([], f.type) for f in schema if f.name not in META_COLUMNS})
        con = duckdb.connect()
        try:
            con.register("rows", empty)
            out = con.sql(self._select("rows")).to_arrow_table().schema
        except duckdb.Error as e:
            raise ValueError(f"values: {str(e).splitlines()[0]}") from None
        finally:
            con.close()
        return with_key(pa.schema(list(out) + list(META_FIELDS)), self.by)

    @property
    def sides(self) -> dict[str, str]:
        """The upstream streams it reads, by side."""
        return {"main": self.input}

    def remember(self, schema: pa.Schema) -> pa.Schema:
        """Keeps (and returns) the output schema of input change schema ``schema``."""
        self._out_schema = self.output_schema(schema)
        return self._out_schema

    def empty(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist([], schema=self._out_schema)

    def recompute_all(self, state: Any) -> pa.RecordBatch:  # pragma: no cover - one side: a truncate empties the output
        return self.empty()

    def process(self, side: str, batch: pa.RecordBatch, state: Any) -> pa.RecordBatch:
        """The output change batch of one input change batch; changes ``state`` (in its open
        transaction)."""
        out_schema = self.remember(batch.schema)
        key = key_of(batch.schema)
        rows = f"{self.owner}.rows"
        data = pa.schema([f for f in batch.schema if f.name not in META_COLUMNS])
        state.table(rows, data)
        latest = latest_changes(state, batch, key)
        old = state.get(rows, latest, key)
        by = ", ".join(_q(b) for b in self.by)
        touched = state.sql(f"SELECT DISTINCT {by} FROM _old UNION SELECT DISTINCT {by} FROM _new WHERE _op <> '{OP_DELETE}'",
                            _old=old, _new=latest)
        state.delete(rows, latest, key)
        live = state.sql(f"SELECT {', '.join(_q(c) for c in data_names(batch.schema))} FROM _new WHERE _op <> '{OP_DELETE}'",
                         _new=latest)
        if live.num_rows:
            state.put(rows, live, key)
        on = " AND ".join(f"r.{_q(b)} IS NOT DISTINCT FROM t.{_q(b)}" for b in self.by)
        groups = state.sql(self._select(f"{_q(rows)} r", f"WHERE EXISTS (SELECT 1 FROM _t t WHERE {on})"), _t=touched)
        on2 = " AND ".join(f"g.{_q(b)} IS NOT DISTINCT FROM t.{_q(b)}" for b in self.by)
        gone = state.sql(f"SELECT * FROM _t t WHERE NOT EXISTS (SELECT 1 FROM _g g WHERE {on2})", _t=touched, _g=groups)
        return emit(out_schema, batch, ((groups, OP_UPDATE), (gone, OP_DELETE)))

    def reset(self, state: Any, side: str = "main") -> None:
        """Forgets the state (a truncate or resync of the input)."""
        state.clear(self.owner)


def emit(out_schema: pa.Schema, like: pa.RecordBatch, parts: tuple[tuple[pa.Table, str], ...]) -> pa.RecordBatch:
    """One output change batch of ``out_schema``: each ``(table, op)`` of ``parts`` as rows of
    that op (missing columns null), all carrying the position and time of ``like``'s last row."""
    pos = like.column("_pos")[like.num_rows - 1] if like.num_rows else pa.scalar("", pa.string())
    ts = like.column("_ts")[like.num_rows - 1] if like.num_rows else pa.scalar(0, pa.timestamp("us", tz="UTC"))
    tables = []
    for table, op in parts:
        n = table.num_rows
        if not n:
            continue
        cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(n, f.type)
                for f in out_schema if f.name not in META_COLUMNS]
        cols += [pa.repeat(pa.scalar(op, pa.string()), n), pa.repeat(pos.cast(pa.string()), n),
                 pa.repeat(ts.cast(pa.timestamp("us", tz="UTC")), n)]
        tables.append(pa.Table.from_arrays(cols, schema=out_schema))
    if not tables:
        return pa.RecordBatch.from_pylist([], schema=out_schema)
    return pa.concat_tables(tables).combine_chunks().to_batches()[0]

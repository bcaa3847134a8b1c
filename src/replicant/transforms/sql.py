"""DuckDB over the batch: ``derive`` (expressions), ``filter`` (a predicate) and ``sql`` (a query).

The batch is registered in an in-process DuckDB connection as ``batch`` (zero-copy Arrow
scan) with its metadata columns ``_op``, ``_pos``, ``_ts``; DuckDB keeps the rows' order
(``preserve_insertion_order``, its default). Only the computed columns come back from DuckDB:
the other columns are the batch's own arrays, with their exact Arrow types.

The ``_op`` rule of ``filter``, for a stream with a key:

* an ``insert`` or ``read`` row that fails the predicate is dropped (nothing downstream has it);
* an ``update`` whose new image fails becomes a ``delete`` of its key (its old image may have
  passed, so a destination may hold it); its other nullable columns are nulled;
* a ``delete`` always passes (it may carry only the key, and deleting a row a destination
  never had is a no-op).

A stream without a key cannot delete: an update that fails is dropped like an insert.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from replicant.errors import FatalError
from replicant.model import META_COLUMNS, META_FIELDS, OP_DELETE, OP_UPDATE
from replicant.transforms.base import Transform, key_of

__all__ = ["Derive", "Filter", "Sql", "check_expression", "check_query", "quote"]

_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_expression(expr: str) -> None:
    """Raises ValueError when ``expr`` is not one DuckDB expression (parsed, not bound: the
    columns are checked against the stream's schema later)."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError("needs a DuckDB SQL expression")
    try:
        statements = duckdb.extract_statements(f"SELECT ({expr}) AS v FROM batch")
    except duckdb.Error as e:
        raise ValueError(f"{expr!r} does not parse: {_first_line(e)}") from None
    if len(statements) != 1:
        raise ValueError(f"{expr!r} is not one expression")


def check_query(query: str) -> None:
    """Raises ValueError unless ``query`` is one DuckDB SELECT statement."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("needs a DuckDB query `SELECT … FROM batch`")
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise ValueError(f"the query does not parse: {_first_line(e)}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise ValueError("must be one SELECT statement over `batch`")


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0]


def _scrubbed(e: BaseException) -> str:
    """A DuckDB error without the values it quotes (they may be personal data)."""
    return _QUOTED.sub("'…'", _first_line(e))


class _DuckDB(Transform):
    """Runs queries over a batch in a private in-process DuckDB connection."""

    def __init__(self) -> None:
        self._con: Any = None
        self._lock = threading.Lock()

    def query(self, batch: pa.RecordBatch, sql: str, *, scrub: bool = False) -> pa.Table:
        """``sql`` over ``batch``; a DuckDB error becomes a ValueError (``scrub``: without the
        values it quotes, for batches with rows)."""
        with self._lock:
            if self._con is None:
                self._con = duckdb.connect()
                self._con.execute("SET TimeZone = 'UTC'")  # timestamptz comes back as UTC, as it went in
            self._con.register("batch", pa.Table.from_batches([batch], schema=batch.schema))
            try:
                return self._con.sql(sql).to_arrow_table()
            except duckdb.Error as e:
                raise ValueError(_scrubbed(e) if scrub else _first_line(e)) from None
            finally:
                self._con.unregister("batch")

    def run(self, batch: pa.RecordBatch, sql: str) -> pa.Table:
        """:meth:`query` for a batch with rows: a failure stops the stream (FatalError)."""
        try:
            return self.query(batch, sql, scrub=True)
        except ValueError as e:
            raise FatalError(f"{self.name}: {e}") from None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_con", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._con, self._lock = None, threading.Lock()


class Derive(_DuckDB):
    """``derive: {column: expression}``: adds (or replaces) columns computed by DuckDB."""

    name = "derive"

    def __init__(self, expressions: dict[str, str]) -> None:
        super().__init__()
        self.expressions = dict(expressions)
        self._select = ", ".join(f"({e}) AS {quote(c)}" for c, e in self.expressions.items())

    def _computed(self, batch: pa.RecordBatch, *, checking: bool) -> pa.Table:
        """The derived columns; ``checking`` (an empty batch, at planning): a ValueError, else a FatalError."""
        sql = f"SELECT {self._select} FROM batch"
        return self.query(batch, sql) if checking else self.run(batch, sql)

    def _combine(self, schema: pa.Schema, columns: list[Any], computed: pa.Table) -> tuple[pa.Schema, list[Any]]:
        fields, arrays = [], []
        data = [f for f in schema if f.name not in META_COLUMNS]
        by_name = {f.name: i for i, f in enumerate(schema)}
        for f in data:
            if f.name in self.expressions:
                col = computed.column(f.name)
                fields.append(pa.field(f.name, col.type))
                arrays.append(col)
            else:
                fields.append(f)
                arrays.append(columns[by_name[f.name]])
        for name in self.expressions:
            if name not in by_name:
                col = computed.column(name)
                fields.append(pa.field(name, col.type))
                arrays.append(col)
        for m in META_COLUMNS:
            if m in by_name:
                fields.append(schema.field(m))
                arrays.append(columns[by_name[m]])
        return pa.schema(fields, metadata=schema.metadata), arrays

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        bad = [c for c in self.expressions if c in META_COLUMNS]
        if bad:
            raise ValueError(f"derive: {bad[0]!r} is a metadata column; derive another name")
        lost = [c for c in self.expressions if c in key_of(schema)]
        if lost:
            raise ValueError(f"derive: {lost[0]!r} is a key column of the stream; derive a new column instead")
        computed = self._computed(_empty(schema), checking=True)
        out, _ = self._combine(schema, [None] * len(schema), computed)
        return out

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        computed = self._computed(batch, checking=False).combine_chunks()
        schema, arrays = self._combine(batch.schema, list(batch.columns), computed)
        arrays = [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in arrays]
        return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)


class Filter(_DuckDB):
    """``filter: predicate``: keeps the rows for which the DuckDB predicate is true, with the
    ``_op`` rule of this module's docstring."""

    name = "filter"

    def __init__(self, predicate: str) -> None:
        super().__init__()
        self.predicate = predicate

    def _sql(self) -> str:
        return f"SELECT coalesce(({self.predicate}), false)::BOOLEAN AS keep FROM batch"

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self.query(_empty(schema), self._sql())  # binds the columns: an unknown one is a config problem
        return schema

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.num_rows == 0:
            return batch
        keep = self.run(batch, self._sql()).column("keep").combine_chunks()
        if "_op" not in batch.schema.names:
            return batch.filter(keep)
        op = batch.column(batch.schema.get_field_index("_op"))
        delete = pc.equal(op, OP_DELETE)
        key = key_of(batch.schema)
        none = pa.repeat(pa.scalar(False), batch.num_rows)
        to_delete = pc.and_(pc.equal(op, OP_UPDATE), pc.invert(keep)) if key else none  # keyless: cannot delete
        passes = pc.or_(pc.or_(keep, delete), to_delete)
        if pc.all(keep).as_py():
            return batch
        if pc.any(to_delete).as_py():
            batch = _as_deletes(batch, to_delete, set(key))
        return batch.filter(passes)


def _as_deletes(batch: pa.RecordBatch, rows: pa.Array, key: set[str]) -> pa.RecordBatch:
    """``batch`` with ``rows`` turned into deletes of their key: ``_op`` set to delete, the
    other nullable data columns nulled (the image that failed the filter is not passed on)."""
    columns = []
    for f, col in zip(batch.schema, batch.columns, strict=True):
        if f.name == "_op":
            col = pc.if_else(rows, pa.scalar(OP_DELETE), col)
        elif f.name not in META_COLUMNS and f.name not in key and f.nullable:
            col = pc.if_else(rows, pa.nulls(1, f.type)[0], col)
        columns.append(col)
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


class Sql(_DuckDB):
    """``sql: "SELECT … FROM batch"``: any DuckDB query over the batch. The result is the new
    batch: keep ``_op``, ``_pos``, ``_ts`` (``SELECT *, …`` does); a result without them that has
    as many rows gets the input's. Columns passed through keep their Arrow type and field
    metadata; the stream's key columns must be in the result."""

    name = "sql"

    def __init__(self, query: str) -> None:
        super().__init__()
        self.sql = query

    def _shape(self, schema: pa.Schema, result: pa.Table) -> tuple[pa.Schema, list[Any]]:
        fields, arrays = [], []
        for f, col in zip(result.schema, result.columns, strict=True):
            i = schema.get_field_index(f.name)
            if f.name in META_COLUMNS and i >= 0 and col.type != schema.field(i).type:
                col = col.cast(schema.field(i).type)
            fields.append(schema.field(i) if i >= 0 and schema.field(i).type == col.type else pa.field(f.name, col.type))
            arrays.append(col)
        missing = [m for m in META_FIELDS if m.name not in result.schema.names]
        if missing:
            fields += missing
            arrays += [None] * len(missing)
        lost = [k for k in key_of(schema) if k not in result.schema.names]
        if lost:
            raise ValueError(f"sql: the result has no key column {lost[0]!r}; keep the stream's key")
        order = sorted(range(len(fields)), key=lambda i: fields[i].name in META_COLUMNS)  # data, then metadata
        return pa.schema([fields[i] for i in order], metadata=schema.metadata), [arrays[i] for i in order]

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        out, _ = self._shape(schema, self.query(_empty(schema), self.sql))
        return out

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        result = self.run(batch, self.sql)
        schema, arrays = self._shape(batch.schema, result)
        out = []
        for f, a in zip(schema, arrays, strict=True):
            if a is None:
                if result.num_rows != batch.num_rows:
                    raise FatalError(f"sql: the query changed the number of rows but dropped {f.name!r}; "
                                     "select `_op`, `_pos` and `_ts` (`SELECT *, …`)")
                a = batch.column(batch.schema.get_field_index(f.name))
            out.append(a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a)
        return pa.RecordBatch.from_arrays(out, schema=schema)


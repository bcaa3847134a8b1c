"""Reads a PostgreSQL table into a change table, as a PostgreSQL source delivers it.

Uses :class:`replicant.sources.postgres.PostgresSource` when it is available; until then
(or if it cannot be imported) it reads with ADBC and applies the source mapping itself:
``numeric(p,s)`` → ``decimal128``/``decimal256``, unconstrained ``numeric`` → string, every
field tagged with its declared type (``replicant.sql_type``) and the schema with dialect
``postgresql``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from replicant.model import DIALECT_KEY, SQL_TYPE_KEY, Stream, utcnow, with_meta

__all__ = ["read_pg_table"]


def read_pg_table(url: str, table: str, key: tuple[str, ...] = ("id",)) -> tuple[Stream, pa.Table]:
    try:
        from replicant.sources.postgres import PostgresSource  # noqa: F401
    except ImportError:
        return _read_with_adbc(url, table, key)
    return _read_with_source(url, table)


def _read_with_source(url: str, table: str) -> tuple[Stream, pa.Table]:
    from replicant.config import SourceConfig
    from replicant.model import ConnectorContext
    from replicant.sources.postgres import PostgresSource

    src = PostgresSource(SourceConfig(type="postgres", url=url, streams=[{"table": f"public.{table}"}]), ConnectorContext("test"))
    try:
        stream = next(s for s in src.discover() if s.table[-1] == table)
        batches = [rb.data for rb in src.read(stream, None)]
    finally:
        src.close()
    return stream, pa.Table.from_batches(batches, schema=stream.change_schema)


def _read_with_adbc(url: str, table: str, key: tuple[str, ...]) -> tuple[Stream, pa.Table]:
    import adbc_driver_postgresql.dbapi as adbc_pg

    with adbc_pg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT attname::text, format_type(atttypid, atttypmod), atttypmod FROM pg_attribute "
            "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (table,),
        )
        declared = cur.fetchall()
        cur.execute(f'SELECT * FROM "{table}" ORDER BY 1')
        data = cur.fetch_arrow_table()
    fields, columns = [], []
    for (name, type_sql, typmod), col in zip(declared, data.columns):
        if type_sql.startswith("numeric("):
            precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
            target = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
            col = pc.cast(col, target)
        fields.append(pa.field(name, col.type, metadata={SQL_TYPE_KEY: type_sql.encode()}))
        columns.append(col)
    schema = pa.schema(fields, metadata={DIALECT_KEY: b"postgresql"})
    stream = Stream(name=f"public.{table}", table=("public", table), schema=schema, primary_key=key)
    batches = [with_meta(b, "read", "{}", utcnow()) for b in pa.Table.from_arrays(columns, schema=schema).to_batches()]
    return stream, pa.Table.from_batches(batches, schema=stream.change_schema)

"""``validate --repair``: the differing keys re-read from the source and appended to the
pipeline's staging log through the one ingest path, then delivered to every destination.

* a key missing at, or different in, the destination: its row is read again from the source
  (by the pipeline's own source, so types are read exactly as a run reads them) and appended
  as an ``update``; the transforms before the log run on it as on any batch;
* a key only the destination has: a ``delete`` carrying the key is appended.

The batches carry the stream's last durable source position, so the stream resumes where it
was; then each destination gets what the log holds beyond its applied offset, by the normal
delivery (:class:`~replicant.delivery.StreamWriter`), so every destination heals the same way
and a crash anywhere is resumed by the next ``run``, ``replay`` or ``validate --repair``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from replicant.ingest import Ingest
from replicant.model import OP_DELETE, OP_UPDATE, Stream, encode_position, with_meta
from replicant.validate.canon import DIALECTS
from replicant.validate.compare import Difference
from replicant.validate.sides import Column, Side
from replicant.validate.targets import Plan, full_read, is_sql

__all__ = ["append_repairs", "deliver_all"]

_KEYS_PER_READ = 500


def append_repairs(plan: Plan, source: Any, source_dialect: str, diffs: list[Difference], ingest: Ingest, lg: Any) -> int:
    """Appends the rows (and deletes) that heal ``diffs`` of ``plan.stream`` to the log;
    returns how many changes were appended."""
    stream = plan.stream
    position = lg.last_position(stream.log_name) or {}
    pos_text = encode_position({"repair": "validate"})
    now = datetime.now(UTC)
    n = 0
    reread = [d for d in diffs if d.kind in ("missing", "different")]
    for i in range(0, len(reread), _KEYS_PER_READ):
        for batch in _read_keys(plan, source, source_dialect, [d.text for d in reread[i:i + _KEYS_PER_READ]]):
            if batch.num_rows:
                ingest.append(stream, with_meta(batch, OP_UPDATE, pos_text, now), position)
                n += batch.num_rows
    extra = [d for d in diffs if d.kind == "extra"]
    if extra:
        ingest.append(stream, with_meta(_deletes(plan, extra), OP_DELETE, pos_text, now), position)
        n += len(extra)
    return n


def _read_keys(plan: Plan, source: Any, dialect: str, texts: list[str]) -> Iterator[pa.RecordBatch]:
    """The source rows whose canonical key text is one of ``texts``: by a query at a database
    source; else picked by DuckDB out of the source's full read (files, http, singer)."""
    if not is_sql(source):
        yield from _scan_keys(plan, source, texts)
        return
    d = DIALECTS[dialect]
    fields = plan.compared.schema
    keys = [Column(k, fields.field(k), f"t.{source.quote(plan.origin[k])}") for k in plan.keys]
    side = Side("source", dialect, lambda sql: [], "", keys, [])
    where = f"{side.key_text()} IN ({', '.join(d.literal(t) for t in texts)})"
    columns = source.columns(plan.stream)
    yield from source.query_batches(plan.stream, source.select_sql(plan.stream, columns, [where]), columns, 10_000)


def _scan_keys(plan: Plan, source: Any, texts: list[str]) -> Iterator[pa.RecordBatch]:
    """The rows of ``texts``' keys in a full read of a source SQL cannot reach, batch by batch."""
    import duckdb

    d = DIALECTS["duckdb"]
    fields = plan.compared.schema
    keys = [Column(k, fields.field(k), d.quote(plan.origin[k])) for k in plan.keys]
    where = f"{Side('source', 'duckdb', lambda sql: [], '', keys, []).key_text()} IN ({', '.join(d.literal(x) for x in texts)})"
    with duckdb.connect() as con:
        for batch in full_read(source, plan.stream):
            con.register("batch", batch)
            picked = con.sql(f"SELECT * FROM batch WHERE {where}").to_arrow_table()
            con.unregister("batch")
            yield from picked.cast(batch.schema).to_batches()


def _deletes(plan: Plan, extra: list[Difference]) -> pa.RecordBatch:
    """A batch of ``plan.stream``'s schema holding the keys of ``extra`` (other columns null)."""
    schema = plan.stream.schema
    by_source = {plan.origin[k]: i for i, k in enumerate(plan.keys)}
    arrays = []
    for f in schema:
        i = by_source.get(f.name)
        arrays.append(pa.nulls(len(extra), f.type) if i is None else pa.array([d.values[i] for d in extra], type=f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def deliver_all(config: Any, lg: Any, state: Any, streams: list[Stream], tenant: str | None) -> dict[str, int]:
    """Delivers what the log holds beyond each destination's applied offset, for ``streams``
    (their log names), to every destination that takes them; returns rows per destination."""
    from replicant import runtime
    from replicant.delivery import StreamWriter
    from replicant.model import data_schema
    from replicant.plan import log_stream
    from replicant.transforms.destination import TransformedDestination
    from replicant.transforms.placement import at_destination

    written: dict[str, int] = {}
    for index, dest in enumerate(runtime.build_destinations(config)):
        chain = at_destination(config.destinations[index], index)
        target = TransformedDestination(dest, chain) if chain else dest
        try:
            target.open()
            for s in streams:
                if dest.config.streams and s.name not in dest.config.streams:
                    continue
                schemas = lg.schemas(s.log_name)
                if not schemas:
                    continue
                ls = log_stream(config, s.name, data_schema(schemas[-1]), tenant=tenant)
                target.prepare(ls)
                w = StreamWriter(target, ls, lg, state, config.pipeline, lambda *a: None)
                w.step()
                w.flush_mirror()
                written[dest.name] = written.get(dest.name, 0) + w.rows
        finally:
            target.close()
    return written

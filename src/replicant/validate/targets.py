"""What to compare, read from the pipeline: per stream and destination, the two sides.

The pipeline's transforms decide how (:func:`trace`):

* ``rename``, ``drop``, ``select`` and masks other than ``hash`` are followed in SQL: the
  source side reads each compared column under its source name (*pushdown*, the fast path);
  a dropped column is not compared; a ``redact``/``last4`` mask or a non-deterministic
  ``encrypt`` leaves a column that cannot be compared: it is listed as *unverified*;
* ``mask: hash``, a deterministic ``encrypt``, and any other transform (``derive``, ``cast``,
  ``filter``, ``sql``, ``python``, a destination's ``transforms:``) change values: the
  source's rows are read by the pipeline's own source, run through the same transforms and
  checksummed by DuckDB in memory, one batch at a time (*client* mode).

``_tenant`` is never compared: it scopes the destination side (``_tenant = 'ID'``) when a
tenant is validated; the source side is that tenant's source.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pyarrow as pa

from replicant.config import DestinationConfig, PipelineConfig
from replicant.config_values import normalize_url
from replicant.destinations.base import OFFSETS_TABLE
from replicant.errors import FatalError
from replicant.model import META_COLUMNS, ConnectorContext, Stream, with_meta
from replicant.transforms.chain import TransformChain
from replicant.transforms.columns import Drop, Rename, Select
from replicant.transforms.crypto import Encrypt
from replicant.transforms.mask import Mask
from replicant.transforms.tenant import AddTenant
from replicant.validate.canon import DIALECTS, kind
from replicant.validate.sides import (
    Column,
    Side,
    StreamSide,
    duckdb_connection,
    mysql_connection,
    pg_connection,
    sqlite_connection,
)

__all__ = ["TENANT_COLUMN", "CannotValidate", "Plan", "Trace", "destination_side", "plan_stream", "source_side", "trace"]

TENANT_COLUMN = "_tenant"
QUERYABLE = ("postgres", "mysql", "sqlite", "duckdb", "files")


class CannotValidate(Exception):
    """This stream or destination cannot be compared (exit 2): the message says why."""


@dataclass
class Trace:
    """Where each column of a stream comes from through a transform list."""

    origin: dict[str, str]  # output name -> source name
    unverified: dict[str, str] = field(default_factory=dict)  # output name -> why
    client: bool = False  # values change: compare in client mode
    recomputed: set[str] = field(default_factory=set)  # output names whose values a transform computes


def trace(chain: TransformChain | None, stream: str, names: list[str]) -> Trace:
    """Follows ``names`` through ``chain``'s steps for ``stream`` (see the module docstring)."""
    t = Trace({n: n for n in names})
    for step in chain.for_stream(stream) if chain else []:
        tr = step.transform
        if isinstance(tr, Rename):
            t.origin = {tr.mapping.get(n, n): s for n, s in t.origin.items()}
            t.unverified = {tr.mapping.get(n, n): why for n, why in t.unverified.items()}
            t.recomputed = {tr.mapping.get(n, n) for n in t.recomputed}
        elif isinstance(tr, Drop):
            t.origin = {n: s for n, s in t.origin.items() if n not in tr.columns}
        elif isinstance(tr, Select):
            t.origin = {n: s for n, s in t.origin.items() if n in tr.columns}
        elif isinstance(tr, Mask):
            for col, rule in tr.rules.items():
                if rule.method == "hash":
                    t.client = True
                    t.recomputed.add(col)
                else:
                    t.unverified[col] = f"mask: {rule.method}"
        elif isinstance(tr, Encrypt):
            for col, erule in tr.rules.items():
                if erule.deterministic:
                    t.client = True
                    t.recomputed.add(col)
                else:
                    t.unverified[col] = "encrypt (not deterministic)"
        elif isinstance(tr, AddTenant):
            pass  # `_tenant`: scopes the destination side, never compared
        else:
            t.client = True
            t.recomputed.update(t.origin)  # derive, cast, sql, python: any column may change
    return t


@dataclass
class Plan:
    """One stream at one destination: what the log holds (``logged``), what the destination
    holds (``compared``), the compared columns, and how the source side reads."""

    stream: Stream
    logged: Stream
    compared: Stream
    keys: list[str]
    values: list[str]
    origin: dict[str, str]
    unverified: dict[str, str]
    client: bool
    pre: TransformChain
    post: TransformChain | None
    recomputed: set[str] = field(default_factory=set)


def plan_stream(stream: Stream, pre: TransformChain, post: TransformChain | None) -> Plan:
    """The comparison of ``stream`` (as discovered at the source) at a destination whose
    transforms are ``post``."""
    logged = pre.output_stream(stream)
    compared = post.output_stream(logged) if post else logged
    names = [f.name for f in stream.schema]
    t = trace(pre, stream.name, names)
    if post and post.for_stream(stream.name):
        after = trace(post, stream.name, list(t.origin))
        t = Trace({n: t.origin.get(s, s) for n, s in after.origin.items()}, {**t.unverified, **after.unverified}, True,
                  {n for n in after.origin if after.origin[n] in t.recomputed} | after.recomputed)
    unverified = dict(t.unverified)
    usable = []
    for f in compared.schema:
        if f.name == TENANT_COLUMN or f.name in unverified:
            continue
        if kind(f.type) is None:
            unverified[f.name] = f"type {f.type} is not compared"
            continue
        usable.append(f.name)
    keys = [k for k in compared.primary_key if k != TENANT_COLUMN]
    if not keys:
        raise CannotValidate(f"stream {stream.name!r} has no key: give it `primary_key:` to validate it")
    lost = [k for k in keys if k not in usable]
    if lost:
        raise CannotValidate(f"stream {stream.name!r}: key column {lost[0]!r} is {unverified.get(lost[0], 'not comparable')}")
    return Plan(stream, logged, compared, keys, [n for n in usable if n not in keys], t.origin, unverified, t.client, pre, post,
                t.recomputed)


# ------------------------------------------------------------------------------ source side


def source_side(plan: Plan, source: Any, source_url: str, *, stream: bool = False) -> Side:
    """The source side: pushdown SQL on the source database; or, in client mode (or when
    ``stream``: a DuckDB destination, where DuckDB hashing both sides beats MD5 in the source
    database), the source's rows read by the pipeline's own source (through the transforms in
    client mode) and checksummed batch by batch by DuckDB in memory."""
    c = plan.compared
    if plan.client or stream or not is_sql(source):
        d = DIALECTS["duckdb"]
        cols = {n: Column(n, c.schema.field(n), d.quote(n if plan.client else plan.origin[n])) for n in plan.keys + plan.values}
        schema = c.schema if plan.client else plan.stream.schema
        lookup = None if plan.client or not is_sql(source) else partial(_source_keys, plan, source, normalize_url(source_url)[0])
        return StreamSide("source", "duckdb", lambda sql: [], "replicant_source", [cols[k] for k in plan.keys],
                          [cols[v] for v in plan.values], batches=lambda: _source_batches(plan, source), schema=schema,
                          lookup=lookup)
    dialect, url = normalize_url(source_url)
    d = DIALECTS[dialect]
    execute, close = _connect(dialect, url, "source")
    cols = {n: Column(n, c.schema.field(n), d.quote(plan.origin[n])) for n in plan.keys + plan.values}
    return Side("source", dialect, execute, source.display(plan.stream.table), [cols[k] for k in plan.keys],
                [cols[v] for v in plan.values], close=close)


def _source_keys(plan: Plan, source: Any, dialect: str, keys: Sequence[tuple[Any, ...]]) -> Iterator[pa.RecordBatch]:
    """The source rows of ``keys`` (integer or text key values), read by the pipeline's source."""
    d = DIALECTS[dialect]

    def lit(v: Any) -> str:
        return str(int(v)) if isinstance(v, int) else d.literal(str(v))

    if not keys:
        return iter(())
    cols = [f"t.{source.quote(plan.origin[k])}" for k in plan.keys]
    if len(cols) == 1:
        where = f"{cols[0]} IN ({', '.join(lit(k[0]) for k in keys)})"
    else:
        where = f"({', '.join(cols)}) IN ({', '.join('(' + ', '.join(lit(v) for v in k) + ')' for k in keys)})"
    columns = source.columns(plan.stream)
    return source.query_batches(plan.stream, source.select_sql(plan.stream, columns, [where]), columns, 100_000)


def is_sql(source: Any) -> bool:
    """Whether ``source`` is a database that SQL can be pushed down to (else its rows are read
    through the source contract: files, http, singer)."""
    return hasattr(source, "read_range")


def full_read(source: Any, stream: Stream) -> Iterator[pa.RecordBatch]:
    """Every row of ``stream`` as the source reads it in full, without the change columns."""
    if is_sql(source):
        yield from source.read_range(stream, [], batch_size=200_000)
        return
    try:
        reads = source.read_full(stream, None)
    except NotImplementedError:
        raise CannotValidate(f"stream {stream.name!r}: a {source.config.type} source has no full read to compare") from None
    for rb in reads:
        data = rb.data
        if data.num_rows:
            yield data.select([n for n in data.schema.names if n not in META_COLUMNS])


def _source_batches(plan: Plan, source: Any) -> Iterator[pa.RecordBatch]:
    """The stream's rows as the pipeline reads them; through its transforms in client mode."""
    now = datetime.now(UTC)
    for b in full_read(source, plan.stream):
        if not plan.client:
            yield b
            continue
        batch = plan.pre.apply(plan.stream.name, with_meta(b, "read", "{}", now))
        if plan.post:
            batch = plan.post.apply(plan.stream.name, batch)
        yield batch.select([n for n in batch.schema.names if n not in META_COLUMNS])


def _connect(dialect: str, url: str, label: str) -> Any:
    if dialect == "postgresql":
        return pg_connection(url, label)
    if dialect == "mysql":
        return mysql_connection(url, label)
    if dialect == "sqlite":
        return sqlite_connection(url.partition(":///")[2], label)
    raise CannotValidate(f"{label}: a {dialect} database cannot be validated")


# ------------------------------------------------------------------------------ destination side


def destination_side(plan: Plan, dest: Any, dcfg: DestinationConfig, pipeline: str, tenant: str | None) -> tuple[Side, int | None]:
    """The destination side, and the log offset the destination says it applied for the
    stream (None: it keeps no offset of its own, see the state store)."""
    label = f"destination {dcfg.name}"
    c = plan.compared
    stream = plan.logged if tenant is None else _with_tenant(plan.logged, tenant)
    if dcfg.type not in QUERYABLE:
        raise CannotValidate(f"{label}: a {dcfg.type} destination cannot be queried; validate compares databases and files")
    if dcfg.type == "files":
        from replicant.validate.files_side import files_side

        return files_side(plan, dest, dcfg, stream, tenant), None
    if dcfg.type == "duckdb":
        dialect = "duckdb"
        execute, close = duckdb_connection(str(dcfg.path), label)
    elif dcfg.type == "sqlite":
        dialect = "sqlite"
        execute, close = sqlite_connection(str(dcfg.path), label)
    else:
        assert dcfg.url is not None
        dialect, url = normalize_url(dcfg.url.get_secret_value())
        execute, close = _connect(dialect, url, label)
        if dialect == "mysql" and not dest.schema:  # set by connect(): the URL's database
            from sqlalchemy.engine import make_url

            dest.schema = dcfg.schema_name or make_url(url).database or ""
    table = dest.table_name(stream)
    fold = dest.fold if dialect == "postgresql" else (lambda n: n)
    cols = {n: Column(n, c.schema.field(n), dest.quote(fold(n))) for n in plan.keys + plan.values}
    where = [f"{dest.quote(TENANT_COLUMN)} = {DIALECTS[dialect].literal(tenant)}"] if tenant is not None else []
    side = Side(label, dialect, execute, dest.qualified(table), [cols[k] for k in plan.keys], [cols[v] for v in plan.values],
                where=where, close=close)
    try:
        lit = DIALECTS[dialect].literal
        rows = execute(f"SELECT log_offset FROM {dest.qualified(OFFSETS_TABLE)} WHERE pipeline = {lit(pipeline)} "
                       f"AND stream = {lit(stream.log_name)}")
    except FatalError:
        rows = []
    return side, int(rows[0][0]) if rows else -1


def _with_tenant(stream: Stream, tenant: str) -> Stream:
    from dataclasses import replace

    return replace(stream, tenant=tenant)


def build_destination(cfg: PipelineConfig, index: int) -> tuple[DestinationConfig, Any]:
    """The destination ``index`` (resolved, not opened)."""
    from replicant import runtime
    from replicant.registry import destination_class

    dcfg = runtime.resolve_destination_config(cfg, cfg.destinations[index], index)
    return dcfg, destination_class(dcfg.type, index)(dcfg, ConnectorContext(cfg.pipeline))

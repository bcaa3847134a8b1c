"""The transform contract: a stream's schema to its output schema, a change batch to a change batch.

A transform sees *change batches* (:mod:`replicant.model`): the data columns followed by
``_op``, ``_pos`` and ``_ts``. The stream's key columns travel in the schema metadata
(:data:`replicant.plan.KEY_METADATA`), so a transform that renames or replaces a key column
says so by changing that metadata in :meth:`Transform.output_schema`; the stream's
``primary_key`` downstream is read back from it.

Rules every transform keeps:

* :meth:`Transform.output_schema` is pure and cheap; it is called up front (destination
  ``prepare``, the log's stored schema, config checks with a ``ValueError`` whose message
  becomes the problem at the entry's key path) and for every new input schema version.
* :meth:`Transform.apply` returns a batch whose schema equals ``output_schema(batch.schema)``
  (the chain enforces it), vectorised: Arrow compute or DuckDB over the whole batch.
* ``_op`` semantics are kept: a transform that drops rows must turn an update whose new
  image it drops into a delete of its key (see :class:`replicant.transforms.sql.Filter`).
* ``stateful = False``. A stateful transform (aggregate, join, ``python: module:Class``)
  sets it, keeps keyed state between batches and runs only in a derived pipeline; it names
  its output stream with ``as:`` (:attr:`Transform.output_name`). docs/transforms.md says how
  one plugs in.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

from replicant.model import META_COLUMNS

__all__ = ["KEY_METADATA", "Transform", "data_names", "key_of", "with_key"]

#: Schema metadata holding a stream's key columns, comma-separated (the same key as
#: :data:`replicant.plan.KEY_METADATA`; defined here so transforms need not import the planner).
KEY_METADATA = b"replicant.primary_key"


class Transform:
    """One step of a transform list.

    Attributes:
        name: the built-in's name (``rename``, ``mask``…): errors and metrics say it.
        stateful: True for a transform that keeps state between batches (derived pipelines only).
        output_name: the output stream's name (``as:``), or None: the input stream's name.
    """

    name: ClassVar[str] = "transform"
    stateful: ClassVar[bool] = False
    output_name: str | None = None

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        """The change schema this transform makes of change schema ``schema``.

        Raises:
            ValueError: the transform does not fit the schema (a missing column, a key dropped);
                the message is shown at the entry's key path.
        """
        raise NotImplementedError

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The change batch this transform makes of ``batch`` (vectorised)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"  # never the settings: they may hold keys


def data_names(schema: pa.Schema) -> list[str]:
    """The data column names of a change schema."""
    return [n for n in schema.names if n not in META_COLUMNS]


def key_of(schema: pa.Schema) -> list[str]:
    """The key columns recorded in the schema metadata."""
    raw = (schema.metadata or {}).get(KEY_METADATA)
    return [k for k in raw.decode().split(",") if k] if raw else []


def with_key(schema: pa.Schema, key: list[str]) -> pa.Schema:
    """``schema`` with ``key`` as its key columns in the metadata."""
    md = dict(schema.metadata or {})
    md[KEY_METADATA] = ",".join(key).encode()
    return schema.with_metadata(md)


def need_columns(schema: pa.Schema, columns: Any, what: str) -> None:
    """Raises ValueError naming the first of ``columns`` that ``schema`` has not (with a
    did-you-mean)."""
    from replicant.config import suggest

    names = data_names(schema)
    for c in columns:
        if c not in names:
            raise ValueError(f"{what}: no column {c!r}{suggest(str(c), names)}")

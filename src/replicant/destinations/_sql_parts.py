"""The nouns shared by the SQL destination base and its dialects: what a bulk loader gets
(:class:`Encoded`), the Arrow ↔ dialect type mapping (:class:`TypeMapper`), what a catalog says
of a column (:class:`ColumnInfo`) and what a destination knows of a table it writes
(:class:`Table`). The state machine using them is :mod:`replicant.destinations._sql_base`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import pyarrow as pa

__all__ = ["ColumnInfo", "Encoded", "KeyExists", "Table", "TypeMapper"]

@dataclass(frozen=True)
class Encoded:
    """Rows ready for a dialect's bulk loader (see :meth:`TypeMapper.encode`).

    Attributes:
        data: the columns rewritten (Arrow kernels) into types the loader sends exactly.
        exprs: per column, ``None`` (store the loaded value as it is) or an SQL expression
            with ``{v}`` standing for the loaded value (``UNHEX({v})``, ``CAST({v} AS UUID)``).
    """

    data: pa.Table
    exprs: list[str | None]


class TypeMapper(ABC):
    """Arrow ↔ one SQL dialect, in one place: the DDL type of a new column and the encoder
    of the values a bulk load sends. One signature for every dialect.

    Attributes:
        dialect: the SQLAlchemy dialect name whose declared column types
            (``replicant.sql_type`` field metadata) this mapper keeps verbatim, or None when
            it maps from Arrow types only (also what schema drift compares, see
            :func:`replicant.destinations.drift.plan`).
    """

    dialect: ClassVar[str | None] = None

    @abstractmethod
    def ddl_type(self, field: pa.Field, schema: pa.Schema, *, key: bool = False) -> str:
        """The column type of ``field`` (of ``schema``) in a new table; ``key``: it is part of
        the primary key (MySQL bounds key strings).

        Raises:
            FatalError: an Arrow type the dialect cannot store, naming the column.
        """

    @abstractmethod
    def encode(self, rows: pa.Table, declared: Mapping[str, str]) -> Encoded:
        """``rows`` as the dialect's loader sends them into columns of the ``declared`` types
        (by folded column name; missing names: the type :meth:`ddl_type` would give).
        Column-wise Arrow kernels only: no per-row Python.

        Raises:
            pa.ArrowInvalid: a value the target cannot hold (translated to FatalError).
        """

    def refused(self, rows: pa.Table) -> dict[int, str]:
        """Rows with a value the dialect cannot hold at all (MariaDB: ``±infinity``, a year
        outside 0001–9999, ``NaN``): row index → reason. They go to the dead letters before
        the write (:func:`replicant.destinations._bad_records.set_aside_refused`)."""
        return {}


class ColumnInfo(Protocol):
    """A column of an existing table as a dialect's catalog describes it."""

    @property
    def name(self) -> str: ...
    @property
    def type_sql(self) -> str: ...
    @property
    def nullable(self) -> bool: ...
    @property
    def has_default(self) -> bool: ...


@dataclass
class Table:
    """What a destination object knows about one table it writes.

    Attributes:
        name: the table name as stored.
        columns: by folded name (:meth:`SQLDestination.fold`).
        fresh: empty when prepared, written since only by this object with reads of one
            snapshot: the fast path (a bulk insert, no upsert) is safe.
        loaded: rows went in through the fast path (a later snapshot's start ends ``fresh``).
        unique: a primary key or unique index on exactly the stream's key exists.
        insert_first: try a plain bulk insert for batches of distinct new keys (until one
            meets an existing key).
        key: the stream's key columns (merge matches rows by them).
        key_pending: the table was created without its primary key for the fast path's bulk
            load; :meth:`SQLDestination.build_key` adds it when the fast path ends.
    """

    name: str
    columns: dict[str, Any]
    fresh: bool = False
    loaded: bool = False
    unique: bool = False
    insert_first: bool = False
    key: tuple[str, ...] = ()
    key_pending: bool = False

    def nulls(self, present: Sequence[str], fold: Callable[[str], str]) -> list[Any]:
        """Columns a write must set to NULL: not among ``present`` (dropped at the source,
        kept here), nullable and without a default (a column added by hand with a default
        is left alone)."""
        have = {fold(n) for n in present}
        return [c for k, c in self.columns.items() if k not in have and c.nullable and not c.has_default]


class KeyExists(Exception):
    """Raised by :meth:`SQLDestination.insert` with ``new_keys=True`` when a key already
    exists; the base rolls back and merges the batch instead. A signal between the base
    and a dialect that users never see (hence not an ``*Error``)."""

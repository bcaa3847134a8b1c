"""``python: module:function``: an Arrow change batch in, an Arrow change batch out.

The function gets a ``pyarrow.RecordBatch`` with the data columns and ``_op``, ``_pos``,
``_ts`` and returns a ``RecordBatch`` or ``Table``. It is called once with an empty batch to
learn its output schema, so it must work on zero rows. A result without the metadata
columns but with as many rows gets the input's. The key columns must be kept. Vectorise inside
(``pyarrow.compute``, numpy, DuckDB): it runs on the ingest or delivery path.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from replicant.errors import FatalError
from replicant.model import META_COLUMNS, META_FIELDS
from replicant.transforms.base import Transform, key_of

__all__ = ["PythonFunction", "import_target"]


def import_target(target: str) -> Any:
    """The object ``module:name`` names.

    Raises:
        ValueError: not ``module:name``, or it cannot be imported (with the reason).
    """
    if not isinstance(target, str) or target.count(":") != 1:
        raise ValueError(f"{target!r} is not `module:function`")
    module, _, name = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module's: say which
        raise ValueError(f"cannot import {target!r}: {type(e).__name__}: {e}") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"cannot import {target!r}: module {module!r} has no {part!r}")
        obj = getattr(obj, part)
    return obj


def is_stateful_target(obj: Any) -> bool:
    """A class (``module:Class``) is a stateful transform; a function is stateless."""
    return inspect.isclass(obj)


class PythonFunction(Transform):
    """Calls ``function(batch)`` per change batch."""

    name = "python"

    def __init__(self, target: str, function: Callable[[pa.RecordBatch], Any] | None = None) -> None:
        self.target = target
        self.function = function if function is not None else import_target(target)
        if not callable(self.function):
            raise ValueError(f"{target!r} is not callable")

    def _call(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        out = self.function(batch)
        if isinstance(out, pa.Table):
            out = pa.RecordBatch.from_arrays([c.combine_chunks() for c in out.columns], schema=out.schema)
        if not isinstance(out, pa.RecordBatch):
            raise ValueError(f"{self.target} returned {type(out).__name__}, not a pyarrow RecordBatch or Table")
        missing = [m for m in META_FIELDS if m.name not in out.schema.names]
        if missing:
            if out.num_rows != batch.num_rows:
                raise ValueError(f"{self.target} changed the number of rows but dropped {missing[0].name!r}")
            arrays = list(out.columns) + [batch.column(batch.schema.get_field_index(m.name)) for m in missing]
            out = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(list(out.schema) + missing))
        fields = []
        for f in out.schema:
            i = batch.schema.get_field_index(f.name)
            fields.append(batch.schema.field(i) if i >= 0 and batch.schema.field(i).type == f.type else f)
        lost = [k for k in key_of(batch.schema) if k not in out.schema.names]
        if lost:
            raise ValueError(f"{self.target} dropped the key column {lost[0]!r}")
        order = [n for n in out.schema.names if n not in META_COLUMNS] + list(META_COLUMNS)
        schema = pa.schema(fields, metadata=batch.schema.metadata)
        return pa.RecordBatch.from_arrays(out.columns, schema=schema).select(order)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        empty = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)
        try:
            return self._call(empty).schema
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's code: shown where it is configured
            raise ValueError(f"{self.target} failed on an empty batch: {type(e).__name__}: {e}") from None

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        try:
            return self._call(batch)
        except ValueError as e:
            raise FatalError(f"python: {e}") from None

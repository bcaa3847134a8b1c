"""Transforms: reshape a stream's change batches before the log or per destination.

One transform per module, composed as a list (:class:`~replicant.transforms.chain.TransformChain`):
:mod:`~replicant.transforms.columns` (``rename``, ``cast``, ``select``, ``drop``),
:mod:`~replicant.transforms.sql` (``derive``, ``filter``, ``sql``: DuckDB over the batch),
:mod:`~replicant.transforms.mask`, :mod:`~replicant.transforms.crypto` (``encrypt`` and
:func:`decrypt`), :mod:`~replicant.transforms.python` (``python: module:function``). The
contract is :class:`~replicant.transforms.base.Transform`; docs/transforms.md shows each
built-in and how a stateful transform plugs in.

Names load lazily: importing this package imports neither DuckDB nor ``cryptography``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Cast", "Derive", "Drop", "Encrypt", "Filter", "Mask", "PythonFunction", "Rename", "Select", "Sql",
    "Transform", "TransformChain", "decrypt",
]

_WHERE = {
    "Transform": "base", "TransformChain": "chain", "Cast": "columns", "Drop": "columns", "Rename": "columns",
    "Select": "columns", "Derive": "sql", "Filter": "sql", "Sql": "sql", "Mask": "mask", "Encrypt": "crypto",
    "decrypt": "crypto", "PythonFunction": "python",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'replicant.transforms' has no attribute {name!r}")
    return getattr(importlib.import_module(f"replicant.transforms.{_WHERE[name]}"), name)

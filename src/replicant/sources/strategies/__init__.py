"""Read strategies, registered per mode: how a stream is read, separate from what it is read from.

==================  ==================================================  =======================
mode                strategy                                            needs of the source
==================  ==================================================  =======================
``full``            :mod:`.full`: the whole table, in key-range chunks  :class:`.RangeReader`,
                                                                        or ``read_full``
``cursor``          :mod:`.cursor`: rows after a watermark column       :class:`.RangeReader`
``snapshot_diff``   :mod:`.snapshot_diff`: a full read diffed against   a full read (any source
                    the previous one                                    whose modes have full)
``trigger``         :mod:`.trigger`: shadow rows written by triggers    :class:`.TriggerSource`
==================  ==================================================  =======================

``log`` is not a read strategy: a source's one change feed reads every ``log`` stream
(:meth:`replicant.sources.base.Source.capture`), and lives with its dialect.

A strategy is a module with ``read(source, stream, position)`` and
``acknowledge(source, stream, position)`` (:class:`ReadStrategy`); it reaches the source only
through the public protocols of :mod:`.protocols`. :meth:`Source.read` and
:meth:`Source.acknowledge` dispatch here by ``stream.mode``.
"""

from __future__ import annotations

import importlib
from typing import cast

from replicant.errors import FatalError
from replicant.sources.strategies.protocols import (
    RangeReader,
    ReadStrategy,
    TriggerSource,
)

__all__ = ["STRATEGIES", "RangeReader", "ReadStrategy", "TriggerSource", "strategy"]

#: mode → module of its strategy, imported on first use.
STRATEGIES: dict[str, str] = {
    "full": "replicant.sources.strategies.full",
    "cursor": "replicant.sources.strategies.cursor",
    "snapshot_diff": "replicant.sources.strategies.snapshot_diff",
    "trigger": "replicant.sources.strategies.trigger",
}


def strategy(mode: str) -> ReadStrategy:
    """The read strategy of ``mode``.

    Raises:
        FatalError: ``mode`` has none (``log`` streams are read by ``capture()``).
    """
    target = STRATEGIES.get(mode)
    if target is None:
        raise FatalError(f"mode {mode!r} is read by capture(), not read()")
    return cast(ReadStrategy, importlib.import_module(target))

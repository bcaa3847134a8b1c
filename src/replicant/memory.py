"""Arrow's allocator for a replicant process: jemalloc, returning freed pages within 250 ms.

pyarrow's default pool (mimalloc in the wheels) keeps freed pages for reuse, and
``pa.set_memory_pool`` after import only changes the pool pyarrow's Python calls pass: the C++
readers and kernels (CSV parsing, IPC, compute) keep using the pool chosen from
``ARROW_DEFAULT_MEMORY_POOL`` when pyarrow is first imported. With batches of several sizes
flowing through reader, staging log and destination at once, the retained pages were most of a
files load's peak RSS (bench/files, 5M CSV rows: 306 MB into PostgreSQL, 416 MB into DuckDB).

So, when ``replicant`` is imported before pyarrow and the environment does not choose,
:func:`choose_pool` (run when this module is imported, first thing in ``replicant/__init__``)
sets ``ARROW_DEFAULT_MEMORY_POOL=jemalloc`` and jemalloc's decay times to :data:`DECAY_MS`
(``JE_ARROW_MALLOC_CONF``; freed pages go back to the system within that time), and
:func:`configure` (called by the CLI) sets the decay again through pyarrow. A process that
imported pyarrow first keeps its pool; ``ARROW_DEFAULT_MEMORY_POOL`` set by the user always wins.

Why 250 ms and not 0 (measured 2026-12-06, 2 vCPUs, local PostgreSQL 15): with a decay of 0
every freed batch was unmapped at once and the next one faulted its pages in again. The kernel
time was a quarter of a copy's CPU: PG→PG 5M narrow rows 1.2 system CPU-s at 0 against 0.55
at 250 ms (5.5 → 5.1 s), 1M wide rows 0.52 → 0.25 (2.4 → 2.3 s), bench/files into PostgreSQL
7.6 → 5.8 s. Peak RSS rose from ~220 to ~230 MB (PG→PG) and not at all for the files loads
(197–240 MB): freed pages wait a quarter of a second, not until the end.

Except beside an engine running in the process (DuckDB,
:attr:`~replicant.destinations.base.Capabilities.in_process_engine`): its own buffers share the
budget, and a files → DuckDB load of 3M rows peaked at 247 MB with a decay of 0 against 263–269
MB at 100–250 ms, at the same speed (DuckDB's inserts bound it, not page faults). Before its
stream tasks start, a run with such a destination calls :func:`return_freed_pages_at_once`.
"""

from __future__ import annotations

import os
import sys

__all__ = ["choose_pool", "configure", "return_freed_pages_at_once"]

#: jemalloc's dirty and muzzy decay: how long freed pages stay mapped for reuse.
DECAY_MS = 250
_DECAY = f"dirty_decay_ms:{DECAY_MS},muzzy_decay_ms:{DECAY_MS}"


def choose_pool() -> None:
    """Before pyarrow is imported: jemalloc with no decay, unless the environment chose."""
    if "pyarrow" in sys.modules or "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc"
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", _DECAY)


def configure() -> str:
    """The CLI's start: freed jemalloc pages are returned after :data:`DECAY_MS`; returns the pool's name."""
    import pyarrow as pa

    _set_decay(DECAY_MS)
    return str(pa.default_memory_pool().backend_name)


def return_freed_pages_at_once() -> None:
    """jemalloc's decay to 0 from now on. jemalloc applies it to the arenas it makes after this
    call (up to 4 per core, made as threads first allocate): a ``replicant run`` makes its
    stream tasks' arenas afterwards; a long-lived process (a service worker) that made all its
    arenas before keeps their decay. Only memory use changes, never what is written."""
    _set_decay(0)


def _set_decay(ms: int) -> None:
    import pyarrow as pa

    if pa.default_memory_pool().backend_name == "jemalloc":
        try:
            pa.jemalloc_set_decay_ms(ms)
        except NotImplementedError:  # pragma: no cover - a jemalloc pool implies the setter
            pass


choose_pool()  # at import: ``replicant/__init__`` imports this module before anything imports pyarrow

"""``run --follow`` on a local folder: wake a stream at once when a file matching its glob
appears or changes, instead of waiting for the next listing.

:func:`watch_folder` uses ``watchfiles`` (inotify on Linux, FSEvents/ReadDirectoryChangesW
elsewhere) on the folder and calls ``on_change`` with the names of the streams whose glob
matches a changed path. It only wakes: the stream's read still lists the folder and decides by
each file's identity what to load, so a missed or duplicated event cannot load a file twice or
skip one, and the listing every ``poll_interval`` goes on as the fallback (an object store is
always listed; so is a folder where inotify cannot be used: no ``watchfiles``, the watch limit
reached, a network file system).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable

__all__ = ["watch_folder"]

log = logging.getLogger(__name__)

_DEBOUNCE_MS = 300  # changes grouped into one wake-up for at most this long
_STEP_MS = 50  # a group ends after this long without a new change
_CHECK_STOP_MS = 500  # how often the watcher looks at ``stop`` while the folder is quiet


def _matcher(globs: dict[str, str], skip: dict[str, str | None]) -> Callable[[str], list[str]]:
    from fsspec.utils import glob_translate

    compiled = {name: re.compile(glob_translate(g)) for name, g in globs.items()}

    def streams_of(rel: str) -> list[str]:
        return [name for name, rx in compiled.items()
                if rx.fullmatch(rel) and not (skip.get(name) and rel.startswith(skip[name] or ""))]

    return streams_of


def watch_folder(root: str, globs: dict[str, str], skip: dict[str, str | None], stop: threading.Event,
                 on_change: Callable[[list[str]], None]) -> bool:
    """Watches ``root`` until ``stop``; ``globs``: per stream, its glob relative to ``root``;
    ``skip``: per stream, a prefix whose files are not its own (``after_load: {move: …}``).
    Returns False at once when the folder cannot be watched (the caller keeps listing)."""
    try:
        import watchfiles
    except ImportError:
        log.info("watchfiles is not installed: the folder %s is listed every poll_interval", root)
        return False
    if not os.path.isdir(root):
        return False
    streams_of = _matcher(globs, skip)
    try:
        for changes in watchfiles.watch(root, stop_event=stop, debounce=_DEBOUNCE_MS, step=_STEP_MS,
                                        rust_timeout=_CHECK_STOP_MS, yield_on_timeout=False, raise_interrupt=False,
                                        recursive=True, watch_filter=None, force_polling=False):
            woken: set[str] = set()
            for kind, path in changes:
                if kind == watchfiles.Change.deleted:
                    continue
                woken.update(streams_of(os.path.relpath(path, root).replace(os.sep, "/")))
            if woken:
                log.debug("files changed under %s: waking %s", root, ", ".join(sorted(woken)))
                on_change(sorted(woken))
    except Exception as e:  # noqa: BLE001 - inotify limits, a folder removed: listing goes on without it
        log.warning("watching the folder %s stopped (%s: %s); it is listed every poll_interval instead", root,
                    type(e).__name__, e)
        return False
    return True

"""The scheduler: turns schedules and triggers into entries of the run queue.

One :meth:`Scheduler.tick` looks at every pipeline of the catalog once:

- ``every`` / ``cron``: when ``next_due`` passed, one run is queued and the next due time is
  computed *from now*, so after downtime the missed ticks make one run (catch-up once), not
  one per tick. A new ``every`` pipeline runs at once (onboarding), a new ``cron`` one at its
  first fire time.
- ``follow: true``: there is always one ``follow`` entry queued or running; when it fails it is
  queued again after a back-off that doubles per failure in a row (:func:`~replicant.errors.retry_delay`).
- ``after: [upstream]``: a succeeded run of an upstream pipeline that appended rows queues one.
- ``on: file``: a new or changed file in the watched folder queues one (the folder's listing
  is remembered); a source with a ``pending()`` method (``True`` when it has new input) is
  asked instead when no ``path`` is given.
- webhooks and the API queue runs themselves (:meth:`Scheduler.trigger`).

Overlap: the queue keeps at most one queued entry per (pipeline, tenant, command) and a
worker never claims a (pipeline, tenant) that runs (:mod:`replicant.state._queue`).
Priorities: an entry gets its schedule's ``priority``; a pipeline's first runs (onboarding,
no run succeeded yet) get one less, so a wave of onboarding does not starve interval syncs.
Time comes from an injected clock (tests move it; nothing here sleeps).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from replicant.errors import ReplicantError, retry_delay
from replicant.service.catalog import Catalog, PipelineFile
from replicant.service.schedule import next_fire

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)


class Scheduler:
    """Queues runs for the catalog's pipelines.

    Args:
        store: the open state store (the queue lives there).
        catalog: the served pipelines.
        clock: the current time, timezone-aware (injectable).
        follow_backoff: the longest wait before a failed ``follow`` pipeline restarts.
        on_finished: called with every entry that finished since the last tick (notifications).
    """

    def __init__(self, store: Any, catalog: Catalog, clock: Callable[[], datetime], *, follow_backoff: float = 60.0,
                 on_finished: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.store = store
        self.catalog = catalog
        self.clock = clock
        self.follow_backoff = follow_backoff
        self.on_finished = on_finished
        self._baseline: int | None = None
        self._seen: set[int] = set()

    def trigger(self, name: str, *, trigger: str = "api", tenant: str | None = None, command: str = "run",
                params: dict[str, Any] | None = None) -> tuple[int, bool]:
        """Queues a run of pipeline ``name`` now (coalesced with one already queued).

        Raises:
            KeyError: no such pipeline in the catalog.
        """
        entry = self.catalog.pipelines[name]
        assert entry.config is not None
        schedule = entry.config.schedule
        priority = schedule.priority if schedule else 0
        if command == "run" and self._onboarding(name):
            priority -= 1
        return self.store.enqueue(name, str(entry.path), tenant=tenant, command=command, params=params, trigger=trigger,
                                  priority=priority, concurrency=schedule.concurrency if schedule else 1)

    def tick(self) -> list[int]:
        """One pass over every pipeline; returns the ids of the entries it queued."""
        now = self.clock()
        queued: list[int] = []
        finished = self._finished()
        paused = {c["pipeline"] for c in self.store.paused_controls() if c["tenant"] is None and c["stream"] is None}
        for name, entry in sorted(self.catalog.pipelines.items()):
            if entry.config is None or entry.config.schedule is None or name in paused:
                continue
            try:
                queued += self._pipeline(name, entry, now, finished)
            except ReplicantError as e:  # one pipeline's trouble (a folder gone, a source down) stops no other
                log.warning("schedule of %s: %s", name, e)
        return queued

    # -- one pipeline ----------------------------------------------------------------------

    def _pipeline(self, name: str, entry: PipelineFile, now: datetime, finished: list[dict[str, Any]]) -> list[int]:
        assert entry.config is not None and entry.config.schedule is not None
        schedule = entry.config.schedule
        queued: list[int] = []

        def run(trigger: str, command: str = "run", not_before: datetime | None = None) -> None:
            priority = schedule.priority - (1 if command == "run" and self._onboarding(name) else 0)
            entry_id, created = self.store.enqueue(name, str(entry.path), command=command, trigger=trigger,
                                                   priority=priority, concurrency=schedule.concurrency,
                                                   not_before=not_before)
            if created:
                queued.append(entry_id)
                log.info("queued %s of %s (%s), entry %d", command, name, trigger, entry_id)

        state = self.store.schedule_state(name)
        if schedule.timed:
            due = state["next_due"]
            if due is None:
                due = now if schedule.every is not None else next_fire(schedule, now, seed=name)
                self.store.save_schedule_state(name, next_due=due)
            if due is not None and now >= due:
                run("schedule")
                self.store.save_schedule_state(name, next_due=next_fire(schedule, now, seed=name), last_fired=now)
        if schedule.follow:
            self._follow(name, state, finished, now, run)
        if schedule.after:
            for done in finished:
                if done["pipeline"] in schedule.after and done["status"] == "succeeded" and _appended(done):
                    run("after")
        if schedule.on == "file" and self._new_files(name, entry, state):
            run("file")
        return queued

    def _follow(self, name: str, state: dict[str, Any], finished: list[dict[str, Any]], now: datetime,
                run: Callable[..., None]) -> None:
        failures = int(state["failures"])
        for done in finished:
            if done["pipeline"] == name and done["command"] == "follow" and done["status"] != "cancelled":
                failures = failures + 1 if done["status"] == "failed" else 0
        if failures != state["failures"]:
            self.store.save_schedule_state(name, failures=failures)
        if any(p == name and c == "follow" for p, _t, c in self.store.active_keys()):
            return
        wait = retry_delay(failures, most=self.follow_backoff) if failures else 0.0
        run("follow", "follow", now + timedelta(seconds=wait) if wait else None)

    def _new_files(self, name: str, entry: PipelineFile, state: dict[str, Any]) -> bool:
        assert entry.config is not None and entry.config.schedule is not None
        schedule = entry.config.schedule
        if schedule.path is None:
            # the source answers "not loaded yet" until a run has loaded the file: while one is
            # queued or running, asking again would queue a second run for the same file; a file
            # that arrives during the run is still pending when it ends, and triggers then
            if any(p == name for p, _t, _c in self.store.active_keys()):
                return False
            return _source_pending(entry)
        folder = Path(schedule.path)
        folder = folder if folder.is_absolute() else entry.config.base_dir / folder
        listing = {p.name: [p.stat().st_size, p.stat().st_mtime_ns]
                   for p in (folder.iterdir() if folder.is_dir() else []) if p.is_file() and fnmatch.fnmatch(p.name, schedule.glob)}
        seen = state["seen"] or {}
        if all(seen.get(k) == v for k, v in listing.items()):
            return False
        self.store.save_schedule_state(name, seen=listing)
        return True

    # -- shared ----------------------------------------------------------------------------

    def _finished(self) -> list[dict[str, Any]]:
        """Entries that finished since the last tick, oldest first (from the scheduler's start:
        what finished while it was down triggers nothing)."""
        if self._baseline is None:
            latest = self.store.queue_entries(limit=1)
            self._baseline = latest[0]["id"] if latest else 0
            return []
        fresh = [e for e in self.store.finished_since(self._baseline) if e["id"] not in self._seen]
        self._seen.update(e["id"] for e in fresh)
        open_ids = [e["id"] for e in self.store.queue_entries(status="queued", limit=1_000)]
        open_ids += [e["id"] for e in self.store.queue_entries(status="running", limit=1_000)]
        # every entry at or below the baseline is final: the seen set only holds ids above it
        top = max(self._seen, default=self._baseline)
        self._baseline = max(self._baseline, min(open_ids, default=top + 1) - 1 if open_ids else top)
        self._seen = {i for i in self._seen if i > self._baseline}
        if self.on_finished is not None:
            for done in fresh:
                self.on_finished(done)
        return fresh

    def _onboarding(self, name: str) -> bool:
        return not any(r["status"] == "succeeded" for r in self.store.runs(name, limit=5))


def _appended(entry: dict[str, Any]) -> bool:
    """Whether a finished run appended rows to its staging log."""
    result = entry.get("result") or {}
    return sum((result.get("rows_read") or {}).values()) > 0


def _source_pending(entry: PipelineFile) -> bool:
    """The seam for sources that know their new input (the files source): ``pending()``."""
    from replicant import runtime

    assert entry.config is not None
    source = runtime.build_source(entry.config)
    try:
        pending = getattr(source, "pending", None)
        return bool(pending()) if pending is not None else False
    finally:
        source.close()

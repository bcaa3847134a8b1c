"""The run queue of ``replicant serve`` (:class:`~replicant.state.store.StateStore` inherits it):
entries claimed by worker processes with leases, a fencing epoch, pauses, schedules' memory,
live workers and webhook ids.

Claiming is one write transaction: on PostgreSQL the candidate rows are read ``FOR UPDATE
SKIP LOCKED`` under a transaction-scoped advisory lock (so the "never twice at once" and
concurrency checks see every claim before theirs); on SQLite ``BEGIN IMMEDIATE`` serialises
writers. A running entry whose lease expired is a candidate too: claiming it again increments
``epoch``, which fences the previous owner (:mod:`replicant.state.fenced`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicant.state.schema import runs
from replicant.state.service_tables import controls, hook_ids, queue, schedules, workers

__all__ = ["FINAL", "QueueMixin"]

#: Statuses of an entry that is over.
FINAL = ("succeeded", "failed", "cancelled")

# Key of the PostgreSQL advisory lock that serialises claims ("rclm").
_PG_CLAIM_LOCK = 0x72636C6D


class QueueMixin:
    """Queue, pauses, schedule memory, workers and webhook ids, on the store's clock."""

    # the store's own (annotations only)
    _clock: Callable[[], datetime]
    _insert: Callable[[sa.Table], Any]
    _upsert: Callable[[sa.Table, dict[str, Any]], Any]
    _begin: Callable[..., AbstractContextManager[Connection]]

    @property
    def dialect(self) -> str:  # the store's own property wins (StateStore is first in the MRO)
        raise NotImplementedError

    # -- queue ---------------------------------------------------------------------------

    def enqueue(
        self, pipeline: str, path: str, *, tenant: str | None = None, command: str = "run",
        params: dict[str, Any] | None = None, trigger: str = "api", priority: int = 0, concurrency: int = 1,
        not_before: datetime | None = None,
    ) -> tuple[int, bool]:
        """Queues a run unless the same run (pipeline, tenant, command, params) is already
        queued: a trigger during a run queues at most one more.

        Returns:
            ``(entry id, created)``: the new entry, or the one already queued (``created`` False).
        """
        text = json.dumps(params or {}, sort_keys=True)
        key = (queue.c.pipeline == pipeline, queue.c.tenant == (tenant or ""), queue.c.command == command,
               queue.c.params == text, queue.c.status == "queued")
        with self._begin(write=True) as conn:
            found = conn.execute(sa.select(queue.c.id).where(*key)).scalar()
            if found is not None:
                return int(found), False
            values = {
                "pipeline": pipeline, "tenant": tenant or "", "path": path, "command": command, "params": text,
                "trigger": trigger, "priority": priority, "concurrency": concurrency, "status": "queued",
                "requested_at": self._clock(), "not_before": not_before,
            }
            return int(conn.execute(sa.insert(queue).values(**values).returning(queue.c.id)).scalar_one()), True

    def claim(self, owner: str, ttl_seconds: float, *, max_running: int | None = None) -> dict[str, Any] | None:
        """Takes the next runnable entry for ``owner`` for ``ttl_seconds``: the highest
        priority, then the oldest, that is queued (and due) or running with an expired lease;
        skipping paused pipelines and tenants, a (pipeline, tenant) already running, a pipeline
        at its ``concurrency`` and everything when ``max_running`` runs already run.

        Returns:
            the entry (see :meth:`queue_entry`) with its new ``epoch``, or ``None``.
        """
        now = self._clock()
        due = sa.or_(
            sa.and_(queue.c.status == "queued", sa.or_(queue.c.not_before.is_(None), queue.c.not_before <= now)),
            sa.and_(queue.c.status == "running", queue.c.lease_expires <= now),
        )
        candidates = sa.select(queue).where(due).order_by(queue.c.priority.desc(), queue.c.id).limit(100)
        live = sa.select(queue.c.pipeline, queue.c.tenant).where(queue.c.status == "running", queue.c.lease_expires > now)
        with self._begin(write=True) as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_CLAIM_LOCK)))
                candidates = candidates.with_for_update(skip_locked=True)
            rows = conn.execute(candidates).mappings().all()
            running = conn.execute(live).all()
            if max_running is not None and len(running) >= max_running:
                return None
            paused = {(p, t) for p, t in conn.execute(
                sa.select(controls.c.pipeline, controls.c.tenant).where(controls.c.stream == ""))}
            busy = {(p, t) for p, t in running}
            per_pipeline: dict[str, int] = {}
            for p, _t in running:
                per_pipeline[p] = per_pipeline.get(p, 0) + 1
            for row in rows:
                key = (row["pipeline"], row["tenant"])
                if key in busy or (row["pipeline"], "") in paused or key in paused:
                    continue
                if per_pipeline.get(row["pipeline"], 0) >= max(1, row["concurrency"]):
                    continue
                if row["cancel"]:
                    conn.execute(sa.update(queue).where(queue.c.id == row["id"])
                                 .values(status="cancelled", finished_at=now, lease_expires=None))
                    continue
                values = {"status": "running", "owner": owner, "epoch": row["epoch"] + 1, "attempts": row["attempts"] + 1,
                          "lease_expires": now + timedelta(seconds=ttl_seconds), "started_at": row["started_at"] or now}
                conn.execute(sa.update(queue).where(queue.c.id == row["id"]).values(**values))
                return _entry({**row, **values})
        return None

    def renew_entry(self, entry_id: int, owner: str, epoch: int, ttl_seconds: float) -> dict[str, Any] | None:
        """Extends ``owner``'s lease of a running entry; ``None`` when it lost it (another worker
        took it over, or it was finished): the work must stop. Else ``{"cancel": bool}``."""
        now = self._clock()
        mine = (queue.c.id == entry_id, queue.c.owner == owner, queue.c.epoch == epoch, queue.c.status == "running")
        with self._begin(write=True) as conn:
            changed = conn.execute(sa.update(queue).where(*mine).values(
                lease_expires=now + timedelta(seconds=ttl_seconds))).rowcount
            if changed != 1:
                return None
            cancel = conn.execute(sa.select(queue.c.cancel).where(queue.c.id == entry_id)).scalar()
        return {"cancel": bool(cancel)}

    def finish_entry(self, entry_id: int, owner: str, epoch: int, status: str, *, error: str | None = None,
                     result: dict[str, Any] | None = None, run_ids: list[int] | None = None) -> bool:
        """Ends ``owner``'s entry with ``status`` (one of :data:`FINAL`), or puts it back in the
        queue (``status="queued"``: a drained worker's unfinished run); ``False`` when fenced."""
        from replicant.errors import redact

        if status not in (*FINAL, "queued"):
            raise ValueError(f"an entry ends succeeded, failed, cancelled or queued, not {status!r}")
        values: dict[str, Any] = {"status": status, "lease_expires": None, "owner": None if status == "queued" else owner}
        if status != "queued":
            values["finished_at"] = self._clock()
        if error is not None:
            values["error"] = redact(error)
        if result is not None:
            values["result"] = json.dumps(result, default=str)
        mine = (queue.c.id == entry_id, queue.c.owner == owner, queue.c.epoch == epoch, queue.c.status == "running")
        with self._begin(write=True) as conn:
            if run_ids:
                known = conn.execute(sa.select(queue.c.run_ids).where(queue.c.id == entry_id)).scalar() or ""
                values["run_ids"] = ",".join([*filter(None, known.split(",")), *map(str, run_ids)])
            return conn.execute(sa.update(queue).where(*mine).values(**values)).rowcount == 1

    def cancel_entry(self, entry_id: int) -> str | None:
        """Cancels a queued entry at once, or asks the worker of a running one to stop it.
        Returns the entry's status after the call (``None``: no such entry)."""
        with self._begin(write=True) as conn:
            status = conn.execute(sa.select(queue.c.status).where(queue.c.id == entry_id)).scalar()
            if status == "queued":
                conn.execute(sa.update(queue).where(queue.c.id == entry_id)
                             .values(status="cancelled", cancel=1, finished_at=self._clock()))
                return "cancelled"
            if status == "running":
                conn.execute(sa.update(queue).where(queue.c.id == entry_id).values(cancel=1))
            return status

    def queue_entry(self, entry_id: int) -> dict[str, Any] | None:
        """One entry: ``id``, ``pipeline``, ``tenant``, ``path``, ``command``, ``params``,
        ``trigger``, ``priority``, ``status``, times, ``owner``, ``epoch``, ``attempts``,
        ``run_ids``, ``error``, ``result`` (decoded), or ``None``."""
        with self._begin() as conn:
            row = conn.execute(sa.select(queue).where(queue.c.id == entry_id)).mappings().first()
        return None if row is None else _entry(row)

    def queue_entries(self, *, pipeline: str | None = None, tenant: str | None = None, status: str | None = None,
                      trigger: str | None = None, limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
        """Entries, newest first, filtered by what is given."""
        query = sa.select(queue)
        for column, value in ((queue.c.pipeline, pipeline), (queue.c.tenant, tenant), (queue.c.status, status),
                              (queue.c.trigger, trigger)):
            if value is not None:
                query = query.where(column == value)
        if before is not None:
            query = query.where(queue.c.id < before)
        with self._begin() as conn:
            return [_entry(r) for r in conn.execute(query.order_by(queue.c.id.desc()).limit(limit)).mappings()]

    def queue_mark(self, pipeline: str) -> tuple[int, int]:
        """``(newest entry id, finished entries)`` of ``pipeline``: changes when one of its runs
        is queued or ends (a cache of what its runs wrote is stale then)."""
        done = sa.func.count().filter(queue.c.status.not_in(("queued", "running")))
        with self._begin() as conn:
            newest, finished = conn.execute(sa.select(sa.func.max(queue.c.id), done).where(queue.c.pipeline == pipeline)).one()
        return int(newest or 0), int(finished or 0)

    def queue_depth(self) -> dict[str, int]:
        """How many entries are ``queued`` and ``running`` (with a live lease)."""
        now = self._clock()
        with self._begin() as conn:
            queued = conn.execute(sa.select(sa.func.count()).where(queue.c.status == "queued")).scalar() or 0
            running = conn.execute(sa.select(sa.func.count()).where(
                queue.c.status == "running", queue.c.lease_expires > now)).scalar() or 0
        return {"queued": int(queued), "running": int(running)}

    def active_keys(self) -> set[tuple[str, str, str]]:
        """``(pipeline, tenant, command)`` of every queued or running entry."""
        with self._begin() as conn:
            return {(p, t, c) for p, t, c in conn.execute(sa.select(queue.c.pipeline, queue.c.tenant, queue.c.command)
                                                          .where(queue.c.status.in_(("queued", "running"))))}

    def finished_since(self, after_id: int) -> list[dict[str, Any]]:
        """Entries finished with an id above ``after_id``, oldest first (the scheduler's
        ``after:`` triggers and notifications follow them)."""
        query = sa.select(queue).where(queue.c.id > after_id, queue.c.status.in_(FINAL)).order_by(queue.c.id)
        with self._begin() as conn:
            return [_entry(r) for r in conn.execute(query).mappings()]

    def last_runs(self) -> dict[str, dict[str, Any]]:
        """Every pipeline's most recent run (as :meth:`StateStore.runs` gives them), in one query."""
        latest = sa.select(sa.func.max(runs.c.id)).group_by(runs.c.pipeline).scalar_subquery()
        with self._begin() as conn:
            rows = conn.execute(sa.select(runs).where(runs.c.id.in_(latest))).mappings().all()
        return {row["pipeline"]: {**row, "tenant": row["tenant"] or None} for row in rows}

    # -- pauses ----------------------------------------------------------------------------

    def set_paused(self, pipeline: str, paused: bool, *, tenant: str | None = None, stream: str | None = None) -> None:
        """Pauses (or resumes) a whole pipeline, one tenant of it, or one stream (of a tenant)."""
        key = {"pipeline": pipeline, "tenant": tenant or "", "stream": stream or ""}
        with self._begin(write=True) as conn:
            if paused:
                conn.execute(self._upsert(controls, {**key, "paused_at": self._clock()}))
            else:
                conn.execute(sa.delete(controls).where(*(controls.c[k] == v for k, v in key.items())))

    def paused_controls(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Pauses set through the service: ``pipeline``, ``tenant`` and ``stream`` (``None``:
        all of them), ``paused_at``."""
        query = sa.select(controls)
        if pipeline is not None:
            query = query.where(controls.c.pipeline == pipeline)
        with self._begin() as conn:
            return [{**r, "tenant": r["tenant"] or None, "stream": r["stream"] or None}
                    for r in conn.execute(query).mappings()]

    # -- schedules' memory -------------------------------------------------------------------

    def schedule_state(self, pipeline: str) -> dict[str, Any]:
        """``next_due``, ``last_fired``, ``seen`` (decoded) and ``failures`` of a pipeline's schedule."""
        with self._begin() as conn:
            row = conn.execute(sa.select(schedules).where(schedules.c.pipeline == pipeline)).mappings().first()
        if row is None:
            return {"next_due": None, "last_fired": None, "seen": None, "failures": 0}
        return {**row, "seen": None if row["seen"] is None else json.loads(row["seen"])}

    def schedule_states(self) -> dict[str, dict[str, Any]]:
        """:meth:`schedule_state` of every pipeline that has one, in one query."""
        with self._begin() as conn:
            rows = conn.execute(sa.select(schedules)).mappings().all()
        return {r["pipeline"]: {**r, "seen": None if r["seen"] is None else json.loads(r["seen"])} for r in rows}

    def save_schedule_state(self, pipeline: str, **values: Any) -> None:
        """Updates the given keys of :meth:`schedule_state` (``seen`` is encoded as JSON)."""
        if "seen" in values:
            values["seen"] = json.dumps(values["seen"])
        current = {k: v for k, v in self.schedule_state(pipeline).items() if k != "pipeline"}
        current["seen"] = json.dumps(current["seen"]) if current["seen"] is not None else None
        with self._begin(write=True) as conn:
            conn.execute(self._upsert(schedules, {**current, **values, "pipeline": pipeline}))

    # -- workers ---------------------------------------------------------------------------

    def worker_beat(self, name: str, *, host: str, pid: int, entry: int | None) -> None:
        """Records that worker ``name`` is alive (and which entry it runs)."""
        now = self._clock()
        with self._begin(write=True) as conn:
            insert = self._insert(workers).values(name=name, host=host, pid=pid, started_at=now, heartbeat_at=now, entry=entry)
            conn.execute(insert.on_conflict_do_update(index_elements=[workers.c.name],
                                                      set_={"heartbeat_at": now, "entry": entry}))

    def worker_gone(self, name: str) -> None:
        with self._begin(write=True) as conn:
            conn.execute(sa.delete(workers).where(workers.c.name == name))

    def live_workers(self, within_seconds: float) -> list[dict[str, Any]]:
        """Workers whose last heartbeat is at most ``within_seconds`` old."""
        since = self._clock() - timedelta(seconds=within_seconds)
        with self._begin() as conn:
            return [dict(r) for r in conn.execute(sa.select(workers).where(workers.c.heartbeat_at >= since)).mappings()]

    # -- webhook ids -----------------------------------------------------------------------

    def remember_hook_id(self, pipeline: str, message_id: str, *, keep_seconds: float) -> bool:
        """Records a webhook message id; ``False`` when it was seen already (a replay). Ids
        older than ``keep_seconds`` are forgotten (their timestamps are refused anyway)."""
        now = self._clock()
        with self._begin(write=True) as conn:
            conn.execute(sa.delete(hook_ids).where(hook_ids.c.received_at < now - timedelta(seconds=keep_seconds)))
            seen = conn.execute(sa.select(hook_ids.c.id).where(hook_ids.c.pipeline == pipeline,
                                                               hook_ids.c.id == message_id)).first()
            if seen is not None:
                return False
            conn.execute(sa.insert(hook_ids).values(pipeline=pipeline, id=message_id, received_at=now))
            return True


def _entry(row: Any) -> dict[str, Any]:
    entry = dict(row)
    entry["tenant"] = entry["tenant"] or None
    entry["params"] = json.loads(entry["params"] or "{}")
    entry["result"] = json.loads(entry["result"]) if entry.get("result") else None
    entry["run_ids"] = [int(x) for x in (entry.get("run_ids") or "").split(",") if x]
    entry["cancel"] = bool(entry["cancel"])
    return entry

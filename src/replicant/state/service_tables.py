"""Tables of ``replicant serve`` in the state store: the run queue, schedules, pauses,
workers and the webhook ids already seen.

- ``replicant_queue``: one row per requested run. ``queued`` → ``running`` (a worker holds
  it: ``owner``, ``epoch``, ``lease_expires``) → ``succeeded`` | ``failed`` | ``cancelled``.
  A running entry whose lease expired is claimed again by another worker with
  ``epoch + 1``: the fencing token every checkpoint and offset write of the old owner is
  checked against (:mod:`replicant.state.fenced`).
- ``replicant_schedules``: per pipeline, when its schedule fires next and what the trigger
  saw last (an upstream's last run id, a folder's fingerprint), and follow failures in a row.
- ``replicant_controls``: pauses set through the API: a pipeline (tenant and stream
  ``''``), a tenant (stream ``''``) or a single stream.
- ``replicant_workers``: live workers and their last heartbeat.
- ``replicant_hook_ids``: webhook message ids accepted (a replayed id is rejected).

The DDL here is what the migration creates: change these tables only with a new migration.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicant.state.schema import UTCDateTime

__all__ = ["QUEUE_STATUSES", "controls", "create", "hook_ids", "queue", "schedules", "service_metadata", "workers"]

#: Every status of a queue entry; the last three are final.
QUEUE_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_NAME = sa.String(255)

service_metadata = sa.MetaData()

queue = sa.Table(
    "replicant_queue",
    service_metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("pipeline", _NAME, nullable=False),
    sa.Column("tenant", _NAME, nullable=False, server_default=""),
    sa.Column("path", sa.Text, nullable=False),  # the pipeline file the worker loads
    sa.Column("command", sa.String(32), nullable=False),  # run | follow | replay | validate
    sa.Column("params", sa.Text, nullable=False, server_default="{}"),  # JSON
    sa.Column("trigger", sa.String(32), nullable=False),  # schedule | api | webhook | after | file | follow
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("concurrency", sa.Integer, nullable=False, server_default="1"),  # runs of the pipeline at once
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("requested_at", UTCDateTime, nullable=False),
    sa.Column("not_before", UTCDateTime, nullable=True),
    sa.Column("owner", _NAME, nullable=True),
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_expires", UTCDateTime, nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("run_ids", sa.Text, nullable=False, server_default=""),  # the state store's runs, comma separated
    sa.Column("cancel", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("result", sa.Text, nullable=True),  # JSON: rows per stream and destination, errors, seconds
    sa.Index("replicant_queue_status_idx", "status", "priority", "id"),
    sa.Index("replicant_queue_pipeline_idx", "pipeline", "tenant", "status"),
)

schedules = sa.Table(
    "replicant_schedules",
    service_metadata,
    sa.Column("pipeline", _NAME, primary_key=True),
    sa.Column("next_due", UTCDateTime, nullable=True),
    sa.Column("last_fired", UTCDateTime, nullable=True),
    sa.Column("seen", sa.Text, nullable=True),  # JSON: what the trigger saw last
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
)

controls = sa.Table(
    "replicant_controls",
    service_metadata,
    sa.Column("pipeline", _NAME, primary_key=True),
    sa.Column("tenant", _NAME, primary_key=True, server_default=""),
    sa.Column("stream", _NAME, primary_key=True, server_default=""),
    sa.Column("paused_at", UTCDateTime, nullable=False),
)

workers = sa.Table(
    "replicant_workers",
    service_metadata,
    sa.Column("name", _NAME, primary_key=True),
    sa.Column("host", _NAME, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    sa.Column("entry", sa.BigInteger, nullable=True),  # the queue entry it runs
)

hook_ids = sa.Table(
    "replicant_hook_ids",
    service_metadata,
    sa.Column("pipeline", _NAME, primary_key=True),
    sa.Column("id", _NAME, primary_key=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
)


def create(conn: Connection) -> None:
    """The migration: creates the service's tables (frozen: a later change is a new migration)."""
    service_metadata.create_all(conn)

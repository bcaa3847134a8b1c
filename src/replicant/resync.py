"""``replicant resync PIPELINE.yml --stream NAME [--tenant ID]``: a fresh snapshot of one stream.

What a Debezium incremental snapshot or an Airbyte "reset stream" user expects: the stream is
read again in full from its source while the other streams (and tenants) keep their positions,
and every destination converges to the source, rows deleted at the source since included.

How: a ``truncate`` marker is appended to the stream's staging log with a position that asks
for a new snapshot, the same one the engine itself uses when an added column fills the
existing rows (``snapshot_again`` of :mod:`replicant.sources.strategies`):

* ``cursor``, ``trigger``, ``snapshot_diff``, ``full``: the strategy's ``snapshot_again``
  position (from the start); the next run reads the whole table after the marker.
* ``log``: the stream's position with ``"snapshot": {"after": None}``; the next capture
  snapshots that table alone at a new consistent point and goes on streaming the others
  (PostgreSQL and MySQL/MariaDB captures both read this).

Each destination empties the stream's table at the marker (for a tenant's stream only that
tenant's rows, ``_tenant = ID``), then takes the snapshot's rows: the table is briefly empty
(for that tenant). The marker is durable before the command returns; a crash of the next run
anywhere resumes the snapshot from the log like any other.

It needs the staging log for writing. A running ``replicant run --follow`` holds it: for a
pipeline with ``tenants:`` the request is handed to that run, which restarts only that tenant's
feed after appending the marker (the other tenants keep flowing); without tenants, stop the run
first, then start it again.
"""

from __future__ import annotations

from typing import Any

from replicant.config import PipelineConfig
from replicant.errors import ConfigError, FatalError
from replicant.log.base import MARKER_TRUNCATE
from replicant.model import Position, log_stream_name

__all__ = ["no_such_stream", "resync", "start_over"]


def resync(config: PipelineConfig, stream: str, *, tenant: str | None = None) -> list[str]:
    """Asks for a fresh snapshot of ``stream`` (of ``tenant``; with ``tenants:`` and no
    ``tenant``, of every tenant) on the next run; returns one line per stream started over.

    With ``tenants:``, while a ``run --follow`` holds the staging log, the resync is handed
    to it (:mod:`replicant.tenants.requests`): it snapshots the stream again at once while the
    other tenants go on.

    Raises:
        ConfigError: no such stream (or tenant), with a did-you-mean.
        FatalError: a run holds the staging log (a pipeline without tenants).
    """
    from replicant import runtime
    from replicant.tenants.config import tenant_ids, tenant_of

    if config.source.type == "pipeline":
        from replicant.sources.pipeline import resync_stream

        start = resync_stream(config, stream, tenant=tenant)
        return [f"{stream}: starts over from upstream offset {start} on the next run"]
    if tenant is not None:
        if not config.tenants:
            raise ConfigError("--tenant needs `tenants:` in the pipeline file", [("tenants", "the pipeline has none")])
        tenant_of(config, tenant)
    tenants: list[str | None] = [tenant] if tenant is not None or not config.tenants else list(tenant_ids(config))
    try:
        lg = runtime.open_pipeline_log(config)
    except FatalError as e:
        if not config.tenants or "in use by another process" not in str(e):
            raise
        from replicant.tenants.requests import request_resync  # a following run of the tenants takes it

        return request_resync(config, stream, [t for t in tenants if t is not None])
    try:
        return start_over(config, lg, stream, tenants)
    finally:
        lg.close()


def start_over(config: PipelineConfig, lg: Any, stream: str, tenants: list[str | None]) -> list[str]:
    """Appends the marker asking for ``stream``'s new snapshot, for each of ``tenants``, to
    ``lg`` (open for writing); returns one line per stream started over.

    Raises:
        ConfigError: no such stream of any of ``tenants`` in the log.
    """
    names = lg.streams()
    lines = []
    for t in tenants:
        pos, what = _again(config, lg, stream, t, names)
        if pos is None:
            continue
        lg.append(log_stream_name(stream, t), None, position=pos, marker={"kind": MARKER_TRUNCATE})
        lines.append(f"{stream}{'' if t is None else f' of tenant {t}'}: {what} on the next run")
    if not lines:
        no_such_stream(stream, names, tenants)
    return lines


def _again(config: PipelineConfig, lg: object, stream: str, tenant: str | None, names: list[str]) -> tuple[Position | None, str]:
    """The position that asks for ``stream``'s new snapshot, and what it does; (None, "") when
    the log has no such stream of ``tenant``."""
    from replicant.dead_letters import stream_in_log
    from replicant.sources.strategies import strategy

    found = stream_in_log(config, lg, stream, tenant)
    if found is None:
        return None, ""
    last = {k: v for k, v in (lg.last_position(found.log_name) or {}).items() if not k.startswith("_")}  # type: ignore[attr-defined]
    mode = _mode(config, stream, tenant)
    if mode == "log":
        if not last:
            return {}, "its initial snapshot was not done yet; it is read in full"
        return {**last, "snapshot": {"after": None}}, "emptied and snapshotted again by the change feed"
    if mode == "full":
        return {}, "emptied and read again in full"
    return strategy(mode).snapshot_again(last) or {}, "emptied and read again from the start"


def _mode(config: PipelineConfig, stream: str, tenant: str | None) -> str:
    """``stream``'s read strategy as the file (the tenant's source settings) says."""
    from replicant.tenants.config import source_for

    source = source_for(config, tenant) if tenant is not None and config.tenants else config.source
    for sc in source.streams if isinstance(source.streams, list) else []:
        if sc.table == stream:
            return sc.mode
    return source.default_mode


def no_such_stream(stream: str, names: list[str], tenants: list[str | None]) -> None:
    """Raises the ConfigError for a ``--stream`` the log does not hold (with a did-you-mean)."""
    from replicant.config import suggest

    known = sorted({n.split("/", 1)[-1] for n in names})
    who = "" if tenants == [None] else f" of tenant {tenants[0]}" if len(tenants) == 1 else " of any tenant"
    have = ", ".join(known) or "none yet: run the pipeline first"
    raise ConfigError("no such stream", [("--stream", f"the staging log has no stream {stream!r}{who} (it has {have})"
                                                      f"{suggest(stream, known)}")])

"""``/metrics``: Prometheus text format, read from the state store and the staging logs at scrape
time, so the figures of every worker process (and machine) are in one place.

Names follow Debezium/PeerDB/Sequin where they fit (rows, lag in records and seconds, slot
WAL retained, last success); the table of names is docs/metrics.md, and a test checks that it
lists exactly what is exported. Labels: ``pipeline``, ``tenant`` (``""``: none), ``stream``,
``destination``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["METRICS", "ServiceCollector", "render"]

#: name → (type, help). docs/metrics.md has the same table.
METRICS: dict[str, tuple[str, str]] = {
    "replicant_rows_read": ("counter", "Rows read from the source into the staging log, per stream."),
    "replicant_rows_written": ("counter", "Rows applied to a destination, per stream, by the service's runs."),
    "replicant_log_bytes": ("gauge", "Bytes the staging log keeps on local disk, per log stream (local logs only)."),
    "replicant_log_records": ("gauge", "Records the staging log holds up to its end offset, per stream."),
    "replicant_lag_records": ("gauge", "Log records a destination has still to apply (Debezium: QueueRemainingCapacity's dual)."),
    "replicant_lag_seconds": ("gauge", "Seconds since a lagging destination last applied a record (0 when caught up)."),
    "replicant_snapshot_streams": ("gauge", "Streams of the pipeline (snapshot progress: tables total)."),
    "replicant_snapshot_streams_remaining": ("gauge", "Streams without a checkpoint yet (snapshot progress: remaining)."),
    "replicant_dead_letters": ("gauge", "Records in the dead-letter store, per stream."),
    "replicant_paused_streams": ("gauge", "Streams a destination paused (schema drift, a fatal error)."),
    "replicant_replication_slot_retained_wal_bytes": ("gauge", "WAL a replication slot retains (PeerDB: slot lag)."),
    "replicant_runs": ("counter", "Finished runs, per pipeline, command and status."),
    "replicant_run_duration_seconds": ("gauge", "Duration of the last finished run, per pipeline and command."),
    "replicant_last_success_timestamp_seconds": ("gauge", "When the last successful run of a pipeline ended (Unix time)."),
    "replicant_queue_depth": ("gauge", "Runs queued and running."),
    "replicant_workers": ("gauge", "Live worker processes."),
    "replicant_pipelines": ("gauge", "Pipelines served, and files with errors."),
}


def _family(name: str, labels: list[str]) -> GaugeMetricFamily | CounterMetricFamily:
    kind, text = METRICS[name]
    if kind == "counter":
        return CounterMetricFamily(name, text, labels=labels)
    return GaugeMetricFamily(name, text, labels=labels)


class ServiceCollector:
    """Collects the service's metrics (``service``: statuses, queue, workers, slot facts)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        store = service.store
        now: datetime = service.now()
        fam = {
            "replicant_rows_read": _family("replicant_rows_read", ["pipeline", "tenant", "stream"]),
            "replicant_rows_written": _family("replicant_rows_written", ["pipeline", "tenant", "destination", "stream"]),
            "replicant_log_records": _family("replicant_log_records", ["pipeline", "tenant", "stream"]),
            "replicant_log_bytes": _family("replicant_log_bytes", ["pipeline", "stream"]),
            "replicant_lag_records": _family("replicant_lag_records", ["pipeline", "tenant", "destination", "stream"]),
            "replicant_lag_seconds": _family("replicant_lag_seconds", ["pipeline", "tenant", "destination", "stream"]),
            "replicant_snapshot_streams": _family("replicant_snapshot_streams", ["pipeline", "tenant"]),
            "replicant_snapshot_streams_remaining": _family("replicant_snapshot_streams_remaining", ["pipeline", "tenant"]),
            "replicant_dead_letters": _family("replicant_dead_letters", ["pipeline", "tenant", "stream"]),
            "replicant_paused_streams": _family("replicant_paused_streams", ["pipeline"]),
            "replicant_replication_slot_retained_wal_bytes":
                _family("replicant_replication_slot_retained_wal_bytes", ["pipeline", "tenant"]),
            "replicant_run_duration_seconds": _family("replicant_run_duration_seconds", ["pipeline", "command"]),
            "replicant_last_success_timestamp_seconds": _family("replicant_last_success_timestamp_seconds", ["pipeline"]),
        }
        for name, entry in sorted(service.catalog.pipelines.items()):
            status = service.status(entry.config)
            paused = 0
            tenants: dict[str, list[dict[str, Any]]] = {}
            for s in status["streams"]:
                t = s["tenant"] or ""
                tenants.setdefault(t, []).append(s)
                fam["replicant_rows_read"].add_metric([name, t, s["name"]], s["rows"])
                fam["replicant_log_records"].add_metric([name, t, s["name"]], s["log_end_offset"])
                fam["replicant_dead_letters"].add_metric([name, t, s["name"]], s["dead_letters"])
            for t, streams in tenants.items():
                fam["replicant_snapshot_streams"].add_metric([name, t], len(streams))
                fam["replicant_snapshot_streams_remaining"].add_metric(
                    [name, t], sum(1 for s in streams if s["position"] is None))
            saved = store.pipeline_state(name)
            applied = {(t or "", dest, stream): off for t, ts in saved.tenants.items()
                       for (dest, stream), off in ts.offsets.items()}
            written = service.rows_written(name)
            for d in status["destinations"]:
                t = d["tenant"] or ""
                labels = [name, t, d["destination"], d["stream"]]
                off = applied.get((t, d["destination"], d["stream"]))
                fam["replicant_rows_written"].add_metric(labels, written.get((t, d["destination"], d["stream"]), 0))
                fam["replicant_lag_records"].add_metric(labels, d["lag"])
                since = (now - off.updated_at).total_seconds() if d["lag"] and off else 0.0
                fam["replicant_lag_seconds"].add_metric(labels, max(since, 0.0))
                paused += 1 if d.get("paused") else 0
            fam["replicant_paused_streams"].add_metric([name], paused)
            for stream, size in sorted(_log_bytes(entry.config).items()):
                fam["replicant_log_bytes"].add_metric([name, stream], size)
            for tenant, wal in service.slot_facts(name).items():
                fam["replicant_replication_slot_retained_wal_bytes"].add_metric([name, tenant or ""], wal)
            last_ok = next((r for r in store.runs(name, limit=50) if r["status"] == "succeeded"), None)
            if last_ok is not None and last_ok["finished_at"] is not None:
                fam["replicant_last_success_timestamp_seconds"].add_metric([name], last_ok["finished_at"].timestamp())
        runs = _family("replicant_runs", ["pipeline", "command", "status"])
        for (pipeline, command, status_), (count, seconds) in sorted(service.run_counts().items()):
            runs.add_metric([pipeline, command, status_], count)
            fam["replicant_run_duration_seconds"].add_metric([pipeline, command], seconds)
        depth = _family("replicant_queue_depth", ["state"])
        for state, n in store.queue_depth().items():
            depth.add_metric([state], n)
        workers = _family("replicant_workers", [])
        workers.add_metric([], len(store.live_workers(service.settings.seconds("lease"))))
        pipelines = _family("replicant_pipelines", ["state"])
        pipelines.add_metric(["ok"], len(service.catalog.pipelines))
        pipelines.add_metric(["error"], len(service.catalog.broken))
        yield from fam.values()
        yield from (runs, depth, workers, pipelines)


def _log_bytes(config: Any) -> dict[str, int]:
    """Bytes per log stream of a local staging log (``streams/NAME/…`` under its folder)."""
    from replicant import runtime

    location = runtime.log_location(config)
    streams = Path(location) / "streams"
    if "://" in location or not streams.is_dir():
        return {}
    from replicant.log.files import decode_stream

    sizes: dict[str, int] = {}
    for folder in streams.iterdir():
        name = decode_stream(folder) if folder.is_dir() else None
        if name is not None:
            sizes[name] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return sizes


def render(service: Any) -> bytes:
    """The metrics in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    return generate_latest(registry)


_LABEL = re.compile(r'(pipeline|tenant)="((?:[^"\\]|\\.)*)"')


def scoped(request: Any, body: bytes) -> bytes:
    """``body`` with only the samples a tenant-scoped token may see: its tenants' series, and
    tenant-less series of pipelines that have one of its tenants (unscoped: unchanged)."""
    from replicant.service.auth import scope, visible

    tenants = scope(request)
    if tenants is None:
        return body
    keep: list[str] = []
    seen: dict[str, bool] = {}
    for line in body.decode().splitlines():
        labels = dict(_LABEL.findall(line)) if not line.startswith("#") else {}
        tenant, pipeline = labels.get("tenant"), labels.get("pipeline")
        if tenant and tenant not in tenants:
            continue
        if pipeline is not None:
            if pipeline not in seen:
                seen[pipeline] = visible(request, pipeline)
            if not seen[pipeline]:
                continue
        keep.append(line)
    return ("\n".join(keep) + "\n").encode()

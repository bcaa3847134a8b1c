"""``replicant validate``: every stream of a pipeline compared at each destination, pinned to a
log position, optionally repaired, recorded in the state store.

Pinning: before a stream is compared, the log's last offset for it (and the source position
that offset covers) is read; the comparison waits, up to ``wait`` seconds, until the
destination has applied at least that offset. A destination still behind after the wait is
compared anyway and its lag (in log offsets) is in the report; either way, the buckets that
differ are looked at a second time after another wait, and only the keys that differ both
times are reported, so a change in flight is not a false positive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from replicant.config import PipelineConfig
from replicant.errors import ReplicantError, redact
from replicant.validate.compare import Comparison, compare
from replicant.validate.files_side import unverified_text
from replicant.validate.sides import agree
from replicant.validate.targets import (
    QUERYABLE,
    CannotValidate,
    Plan,
    build_destination,
    destination_side,
    is_sql,
    plan_stream,
    source_side,
)

__all__ = ["StreamResult", "ValidationReport", "validate_pipeline"]


@dataclass
class StreamResult:
    """One stream (of one tenant) compared at one destination."""

    stream: str
    destination: str
    tenant: str | None = None
    verdict: str = "error"  # equal | differences | error | skipped
    error: str | None = None
    mode: str = ""  # pushdown | client
    comparison: Comparison | None = None
    unverified: dict[str, str] = field(default_factory=dict)
    log_offset: int | None = None  # the log offset compared (the stream's last when pinned)
    source_position: Any = None  # the source position that offset covers
    source_target: Any = None  # log/trigger: the source's own position read at the start (waited for)
    source_reached: bool | None = None  # whether the log covered source_target when compared
    source_lag: int | None = None  # how far the log was behind source_target (positions.unit)
    note: str | None = None  # what was compared when a wait ran out
    applied_offset: int | None = None  # what the destination had applied when compared
    found: int = 0  # differences found by the first comparison
    repaired: int = 0  # changes appended to the log by --repair
    found_before_repair: list[Any] = field(default_factory=list)

    @property
    def lag(self) -> int | None:
        if self.log_offset is None or self.applied_offset is None:
            return None
        return max(self.log_offset - self.applied_offset, 0)


@dataclass
class ValidationReport:
    pipeline: str
    started_at: datetime
    finished_at: datetime | None = None
    results: list[StreamResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 every stream equal, 1 differences found, 2 something could not be validated."""
        if any(r.verdict == "differences" for r in self.results):
            return 1
        if any(r.verdict == "error" for r in self.results) or not self.results:
            return 2
        return 0


def _tenants(cfg: PipelineConfig, tenant: str | None) -> list[str | None]:
    if tenant is not None:
        return [tenant]
    listed = getattr(cfg, "tenants", None) or []
    return [t.id for t in listed] or [None]


def validate_pipeline(
    cfg: PipelineConfig,
    *,
    destination: str | None = None,
    streams: list[str] | None = None,
    tenant: str | None = None,
    repair: bool = False,
    wait: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    on_result: Callable[[StreamResult], None] | None = None,
) -> ValidationReport:
    """Validates ``cfg`` (see the module docstring); never raises for one stream's failure
    (its result says why, verdict ``error``); config errors raise."""
    from replicant import runtime
    from replicant.engine import Engine
    from replicant.plan import chosen
    from replicant.transforms.placement import at_destination, before_log

    report = ValidationReport(cfg.pipeline, datetime.now(UTC))
    names = [d.name for d in cfg.destinations]
    if destination is not None:
        cfg.destination(destination)  # a ConfigError naming the known ones
    indexes = [names.index(destination)] if destination is not None else list(range(len(names)))
    state = runtime.open_state(cfg)
    try:
        for t in _tenants(cfg, tenant):
            pre = before_log(cfg, t)  # a tenant's own transforms, then the file's, then `_tenant`
            engine = Engine(cfg, tenant=t)
            # read-only: no state store for the source (a files source would record the files it read)
            source = runtime.build_source(engine.config, replace(runtime.source_context(engine.config, t), state_url=None))
            try:
                found = engine.streams(source)
                if streams:
                    unknown = [s for s in streams if s not in {x.name for x in found}]
                    if unknown:
                        from replicant.errors import ConfigError

                        raise ConfigError("invalid --stream", [("--stream", f"no stream named {unknown[0]!r}")])
                    found = [s for s in found if s.name in streams]
                source_url = source.config.url.get_secret_value() if is_sql(source) and source.config.url else ""
                for i in indexes:
                    kind = cfg.destinations[i].type
                    if kind not in QUERYABLE:
                        r = StreamResult("*", names[i], t, verdict="error" if destination else "skipped",
                                         error=f"a {kind} destination cannot be queried: validate compares databases and files")
                        report.results.append(r)
                        continue
                    dcfg, dest = build_destination(cfg, i)
                    post = at_destination(cfg.destinations[i], i) or None
                    logged = {pre.output_stream(s).name: s for s in found}
                    for s in [logged[x.name] for x in chosen(dcfg, [pre.output_stream(s) for s in found])]:
                        r = _one(cfg, state, s, source, source_url, dcfg, dest, pre, post, t, repair, wait, clock)
                        report.results.append(r)
                        if on_result is not None:
                            on_result(r)
            finally:
                source.close()
    finally:
        state.close()
    report.finished_at = datetime.now(UTC)
    return report


def _one(cfg: PipelineConfig, state: Any, stream: Any, source: Any, source_url: str, dcfg: Any, dest: Any, pre: Any, post: Any,
         tenant: str | None, repair: bool, wait: float, clock: Callable[[], float]) -> StreamResult:
    from replicant.config_values import normalize_url

    r = StreamResult(stream.name, dcfg.name, tenant)
    try:
        plan = plan_stream(stream, pre, post)
        unverified_text(plan, dest, dcfg)
        r.unverified = plan.unverified
        r.mode = "client" if plan.client else "pushdown"
        r.comparison = _compare(cfg, state, plan, source, source_url, dcfg, dest, tenant, wait, clock, r)
        r.found = len(r.comparison.differences)
        if r.found and repair:
            r.found_before_repair = list(r.comparison.differences)
            dialect = normalize_url(source_url)[0] if is_sql(source) else "duckdb"  # else: keys found in a full read
            r.repaired = _repair(cfg, state, plan, source, dialect, r.comparison, tenant)
            r.comparison = _compare(cfg, state, plan, source, source_url, dcfg, dest, tenant, wait, clock, r)
        r.verdict = "differences" if r.comparison.differences else "equal"
    except (CannotValidate, ReplicantError) as e:
        r.error = redact(str(e))
    details = {"mode": r.mode, "lag": r.lag, "log_offset": r.log_offset, "error": r.error, "source_target": r.source_target,
               "source_reached": r.source_reached, "source_lag": r.source_lag, "note": r.note,
               "rows": [r.comparison.source_rows, r.comparison.destination_rows] if r.comparison else None}
    try:
        state.add_validation(cfg.pipeline, dcfg.name, stream.name, verdict=r.verdict, differences=len(r.comparison.differences)
                             if r.comparison else 0, repaired=r.repaired, details=details, tenant=tenant)
    except ReplicantError as e:  # the result is still reported
        r.error = (r.error + "; " if r.error else "") + f"not recorded in the state store: {redact(str(e))}"
    return r


def _applied(dest_offset: Callable[[], int | None], cfg: PipelineConfig, state: Any, dcfg: Any, stream: str, tenant: str | None) -> int:
    got = dest_offset()
    if got is not None:
        return got
    off = state.offsets(cfg.pipeline, tenant=tenant).get((dcfg.name, stream))
    return off.offset if off else -1


def _compare(cfg: PipelineConfig, state: Any, plan: Plan, source: Any, source_url: str, dcfg: Any, dest: Any, tenant: str | None,
             wait: float, clock: Callable[[], float], r: StreamResult) -> Comparison:
    from replicant.validate.pin import pin, source_now

    target, why = source_now(source, plan.stream)
    src = source_side(plan, source, source_url, stream=dcfg.type in ("duckdb", "files"))
    try:
        dst, offset = destination_side(plan, dest, dcfg, cfg.pipeline, tenant)
        try:
            agree(src, dst)

            def current() -> int:
                got = None
                if offset is not None:  # re-read from the destination's own table
                    got = destination_side_offset(dst, dest, cfg.pipeline, plan.stream.log_name)
                return _applied(lambda: got, cfg, state, dcfg, plan.stream.name, tenant)

            pin(cfg, state, plan.stream, tenant, target, wait, clock, current, r)
            first = r.source_reached

            def again() -> None:  # a change in flight: the source's position now, waited for once more
                if first is False:  # the pipeline did not keep up the first time: the result says what was compared
                    r.applied_offset = current()
                    return
                fresh = source_now(source, plan.stream)[0] if first else None
                pin(cfg, state, plan.stream, tenant, fresh, wait, clock, current, r)

            out = compare(src, dst, before_recheck=again)
            if why:
                r.note = f"{r.note}; {why}" if r.note else why
            return out
        finally:
            dst.close()
    finally:
        src.close()


def destination_side_offset(side: Any, dest: Any, pipeline: str, log_name: str) -> int:
    from replicant.destinations.base import OFFSETS_TABLE

    lit = side.dialect.literal
    try:
        rows = side.execute(f"SELECT log_offset FROM {dest.qualified(OFFSETS_TABLE)} WHERE pipeline = {lit(pipeline)} "
                            f"AND stream = {lit(log_name)}")
    except ReplicantError:
        return -1
    return int(rows[0][0]) if rows else -1


def _repair(cfg: PipelineConfig, state: Any, plan: Plan, source: Any, source_dialect: str, comparison: Comparison,
            tenant: str | None) -> int:
    from replicant import runtime
    from replicant.ingest import Ingest
    from replicant.validate.repair import append_repairs, deliver_all

    computed = [k for k in plan.keys if k in plan.recomputed]
    if computed:
        raise CannotValidate(f"stream {plan.stream.name!r}: --repair finds rows at the source by key, and key column "
                             f"{computed[0]!r} is computed by a transform")
    lg = runtime.open_pipeline_log(cfg)
    try:
        ingest = Ingest(cfg.pipeline, lg, state, tenant=tenant, transforms=plan.pre)
        n = append_repairs(plan, source, source_dialect, comparison.differences, ingest, lg)
        deliver_all(cfg, lg, state, [plan.stream], tenant)
        return n
    finally:
        lg.close()

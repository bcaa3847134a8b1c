"""Dead letters sent again: ``replicant dead-letters retry``.

A dead letter's payload is the record as JSON, in one of the two forms destinations store:

* a *change record* ``{"op", "key", "data", "position", "ts"}`` (the HTTP push, and
  :func:`replicant.destinations.records.record_json`): ``data`` holds the columns (``key``
  for a delete of a keyed stream), ``position`` and ``ts`` the row's ``_pos`` and ``_ts``;
* a *row*: the columns by name, with ``_op``, ``_pos`` and ``_ts`` when the destination kept
  them (:func:`replicant.destinations.records.row_json`); ``_op`` defaults to ``insert``.

:func:`payload_table` turns one back into a one-row change table in the stream's *current*
schema (the staging log's newest schema version): each JSON value is read back by the mapping
of :mod:`replicant.destinations.records` (decimals and timestamps from their exact text, binary
from base64, ``"NaN"``/``"Infinity"`` floats, dates, times); a column the record lacks is null,
a field the schema no longer has is left out. A value that does not fit the column's type
keeps the letter, with that as its new reason.

:func:`retry` re-sends each letter on its own through
:meth:`replicant.destinations.base.Destination.redeliver`, so one bad record never holds back
the good ones that shared its request or transaction when they were rejected together. What
the destination accepts leaves the store; what it rejects again (through its dead-letter sink,
as in a run) stays with the new reason and ``attempts`` one higher. A failure that is not about
the record (the endpoint is down, a refused login) stops that destination's letters unchanged.
Per-record Python is fine here: this is an operator's command over rejected records, not the
delivery path.

Offsets: a retry is outside the log's offsets. It never moves a destination's applied offset
(see ``redeliver``); the caller holds the staging log's writer lock meanwhile, so no run
delivers to the same destination at the same time.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time
from typing import Any

import pyarrow as pa

from replicant.errors import RecordError, ReplicantError, redact
from replicant.model import (
    OP_INSERT,
    SQL_TYPE_KEY,
    ConnectorContext,
    DeadLetter,
    Stream,
    data_schema,
    encode_position,
    log_stream_name,
    utcnow,
)

__all__ = ["RetryReport", "payload_table", "retry", "stream_in_log"]

_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_RECORD_KEYS = frozenset({"op", "data", "position"})


@dataclass
class RetryReport:
    """What a retry did.

    Attributes:
        accepted: ids of letters the destination accepted (deleted from the store).
        rejected: id → the new reason, for letters rejected again (kept, attempts + 1).
        skipped: one line per letter or group not tried, saying why.
        errors: one line per destination whose letters were left unchanged by a failure.
    """

    accepted: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _columns_and_meta(payload: dict[str, Any]) -> tuple[dict[str, Any], str, Any, Any]:
    """``(columns, op, position, ts)`` of either payload form (see the module docstring)."""
    if payload.keys() >= _RECORD_KEYS and isinstance(payload.get("data"), dict | None):
        columns = payload["data"] if payload["data"] is not None else (payload.get("key") or {})
        return columns, str(payload["op"] or OP_INSERT), payload.get("position"), payload.get("ts")
    columns = {k: v for k, v in payload.items() if k not in ("_op", "_pos", "_ts")}
    return columns, str(payload.get("_op") or OP_INSERT), payload.get("_pos"), payload.get("_ts")


def _time(text: str, t: pa.DataType) -> int:
    """A time's text as the integer a ``time32``/``time64`` of unit ``t.unit`` holds."""
    v = time.fromisoformat(text)
    micros = ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    return {"s": micros // 1_000_000, "ms": micros // 1_000, "us": micros, "ns": micros * 1_000}[t.unit]


def _array(f: pa.Field, value: Any) -> pa.Array:
    """One value in the JSON form of :mod:`replicant.destinations.records` as an array of ``f.type``."""
    t = f.type
    if value is None:
        return pa.nulls(1, t)
    sql_type = (f.metadata or {}).get(SQL_TYPE_KEY, b"").decode(errors="replace").lower()
    if pa.types.is_floating(t) and isinstance(value, str):
        value = _FLOATS[value] if value in _FLOATS else float(value)
    elif pa.types.is_decimal(t) or pa.types.is_timestamp(t) or pa.types.is_date(t):
        return pa.array([str(value)], pa.string()).cast(t)
    elif pa.types.is_time(t):
        return pa.array([_time(str(value), t)], pa.int64()).cast(pa.int32() if t.bit_width == 32 else pa.int64()).view(t)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        value = base64.b64decode(value, validate=True) if isinstance(value, str) else bytes(value)
    elif (pa.types.is_string(t) or pa.types.is_large_string(t)) and not isinstance(value, str):
        # an embedded JSON value (a json/jsonb column), or a number
        embedded = sql_type in ("json", "jsonb") or isinstance(value, dict | list)
        value = json.dumps(value, separators=(",", ":")) if embedded else str(value)
    return pa.array([value], t)


def payload_table(stream: Stream, payload: dict[str, Any], origin: str = "") -> pa.Table:
    """A dead letter's payload as a one-row change table of ``stream.change_schema``.

    Raises:
        RecordError: a value does not fit its column's current type (the message names it).
    """
    columns, op, position, ts = _columns_and_meta(payload)
    arrays = []
    for f in stream.schema:
        try:
            arrays.append(_array(f, columns.get(f.name)))
        except (pa.ArrowException, ValueError, TypeError, KeyError) as e:
            raise RecordError(f"column {f.name!r}: {columns.get(f.name)!r} does not fit its type {f.type} now: {e}") from None
    pos = position if isinstance(position, str) else origin if position is None else encode_position(position)
    try:
        stamp = pa.array([str(ts)], pa.string()).cast(pa.timestamp("us", tz="UTC")) if ts else None
    except pa.ArrowException:
        stamp = None
    if stamp is None:
        stamp = pa.array([utcnow()], pa.timestamp("us", tz="UTC"))
    arrays += [pa.array([op], pa.string()), pa.array([pos], pa.string()), stamp]
    return pa.Table.from_arrays(arrays, schema=stream.change_schema)


def retry(
    letters: list[dict[str, Any]],
    *,
    stream_for: Callable[[str, str | None], Stream | None],
    destination_for: Callable[[str, ConnectorContext], Any],
    pipeline: str,
    on_accepted: Callable[[int], None],
    on_rejected: Callable[[int, str], None],
) -> RetryReport:
    """Re-sends ``letters`` (as :meth:`StateStore.find_dead_letters` lists them), oldest first.

    Args:
        stream_for: ``(stream name, tenant)`` → the stream in its current schema, or None when
            the staging log has no such stream.
        destination_for: ``(destination name, context)`` → a new, unopened destination, or a
            :class:`~replicant.errors.ConfigError` when the pipeline has no such destination.
        on_accepted, on_rejected: record each outcome in the store as it happens (a retry
            interrupted half-way keeps what it did).
    """
    report = RetryReport()
    groups: dict[str, list[dict[str, Any]]] = {}
    for letter in sorted(letters, key=lambda x: x["id"]):
        if letter["destination"] is None:
            report.skipped.append(
                f"#{letter['id']} ({letter['stream']}): rejected before any destination, nothing to re-send it to; "
                "fix its source and read it again, then discard it"
            )
            continue
        groups.setdefault(letter["destination"], []).append(letter)
    for dest_name, group in groups.items():
        _retry_group(dest_name, group, report, stream_for, destination_for, pipeline, on_accepted, on_rejected)
    return report


def _retry_group(
    dest_name: str, group: list[dict[str, Any]], report: RetryReport, stream_for: Callable[[str, str | None], Stream | None],
    destination_for: Callable[[str, ConnectorContext], Any], pipeline: str, on_accepted: Callable[[int], None],
    on_rejected: Callable[[int, str], None],
) -> None:
    refused: list[DeadLetter] = []

    def sink(stream: Stream, records: list[DeadLetter]) -> None:  # rejected again: kept by the caller
        refused.extend(records)

    try:
        dest = destination_for(dest_name, ConnectorContext(pipeline, dead_letter=sink))
    except ReplicantError as e:
        report.skipped.append(f"{len(group)} letters of destination {dest_name!r}: {e}")
        return
    streams: dict[tuple[str, str | None], Stream | None] = {}
    try:
        dest.open()
        for letter in group:
            key = (letter["stream"], letter["tenant"])
            if key not in streams:
                streams[key] = stream_for(*key)
                if streams[key] is not None:
                    dest.prepare(streams[key])
            stream = streams[key]
            if stream is None:
                report.skipped.append(f"#{letter['id']}: the staging log has no stream {letter['stream']!r} any more")
                continue
            refused.clear()
            try:
                table = payload_table(stream, letter["payload"], letter["origin"])
                dest.redeliver(stream, table, retry_id=f"{letter['id']}.{letter['attempts'] + 1}")
            except RecordError as e:
                refused.append(DeadLetter(reason=str(e), payload=letter["payload"], origin=letter["origin"]))
            if refused:
                reason = redact(refused[0].reason)
                on_rejected(letter["id"], reason)
                report.rejected[letter["id"]] = reason
            else:
                on_accepted(letter["id"])
                report.accepted.append(letter["id"])
    except ReplicantError as e:
        report.errors.append(f"destination {dest_name!r}: {e}")
    finally:
        try:
            dest.close()
        except Exception:  # noqa: BLE001 - closing after a failure must not hide it
            pass


def stream_in_log(config: Any, lg: Any, name: str, tenant: str | None) -> Stream | None:
    """The stream ``name`` of ``tenant`` in the newest schema version the staging log holds."""
    from replicant.plan import log_stream

    log_name = log_stream_name(name, tenant)
    schemas = lg.schemas(log_name) if log_name in lg.streams() else []
    if not schemas:
        return None
    return log_stream(config, name, data_schema(schemas[-1]), tenant=tenant)



def retry_pipeline(config: Any, *, ids: list[int] | None = None, stream: str | None = None,
                   destination: str | None = None, tenant: str | None = None) -> tuple[RetryReport, list[dict[str, Any]]]:
    """``replicant dead-letters retry`` (and the service's retry): re-sends the pipeline's dead
    letters chosen by ``ids``/``stream``/``destination``/``tenant`` (``tenant`` None: every
    tenant's), each destination's through its own ``transforms:``. Holds the staging log's
    writer lock meanwhile, so no run delivers at the same time.

    Returns:
        the report and the letters that were chosen.
    """
    from replicant import runtime
    from replicant.registry import destination_class
    from replicant.state import ALL_TENANTS

    names = [d.name for d in config.destinations]

    def destination_for(name: str, context: Any) -> Any:
        config.destination(name)  # a ConfigError naming the known ones
        index = names.index(name)
        dcfg = runtime.resolve_destination_config(config, config.destinations[index], index)
        return destination_class(dcfg.type, index)(dcfg, context)

    with runtime.open_state(config) as state:
        letters = state.find_dead_letters(config.pipeline, ids=ids, stream=stream, destination=destination,
                                          tenant=ALL_TENANTS if tenant is None else tenant)
        lg = runtime.open_pipeline_log(config)  # the writer lock: no run delivers meanwhile
        try:
            report = RetryReport()
            # per destination: its letters hold rows as its transforms made them, so each is
            # rebuilt in the stream as that destination sees it
            for dest_name in dict.fromkeys(x["destination"] for x in letters):
                part = retry(
                    [x for x in letters if x["destination"] == dest_name],
                    stream_for=_stream_for(config, lg, dest_name), destination_for=destination_for,
                    pipeline=config.pipeline, on_accepted=lambda i: state.discard_dead_letters(config.pipeline, ids=[i]),
                    on_rejected=lambda i, why: state.rejected_again(config.pipeline, i, why),
                )
                report.accepted += part.accepted
                report.rejected.update(part.rejected)
                report.skipped += part.skipped
                report.errors += part.errors
        finally:
            lg.close()
    return report, letters


def _stream_for(config: Any, lg: Any, dest_name: str | None) -> Callable[[str, str | None], Stream | None]:
    """``(stream, tenant)`` → the stream in the log's newest schema, as destination
    ``dest_name`` sees it through its ``transforms:`` (None: not in the log)."""
    from replicant.transforms.placement import at_destination

    names = [d.name for d in config.destinations]
    chain = at_destination(config.destinations[names.index(dest_name)], names.index(dest_name)) if dest_name in names else None

    def stream_for(name: str, tenant: str | None) -> Stream | None:
        found = stream_in_log(config, lg, name, tenant)
        return chain.output_stream(found) if chain and found is not None else found

    return stream_for

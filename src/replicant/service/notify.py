"""Notifications: a POST per event to each ``notify:`` URL of replicant.yml.

Events: ``failure`` (a run failed), ``recovery`` (a run succeeded after a failed one of the same
pipeline and tenant), ``drift`` (a destination paused a stream: schema drift or a fatal error),
``slot_lag`` (a replication slot retains more WAL than ``slot_lag_bytes``; told once until it
is back under). ``format: json`` posts ``{"event", "pipeline", "tenant", "stream", "destination",
"run", "message", "time"}``; ``format: slack`` posts a Slack incoming-webhook payload
(``{"text", "blocks"}``) with the same facts. A target that fails is logged and retried on the
next event, never raising into the scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from replicant.errors import redact

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

_ICON = {"failure": ":red_circle:", "recovery": ":large_green_circle:", "drift": ":warning:", "slot_lag": ":hourglass:"}


class Notifier:
    """Decides which events happened and sends them.

    Args:
        targets: the ``notify:`` entries.
        clock: the current time.
        post: sends ``(url, json body)``; default httpx with a short timeout.
    """

    def __init__(self, targets: list[Any], clock: Callable[[], datetime],
                 post: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.targets = targets
        self.clock = clock
        self.post = post or _post
        self._failing: set[tuple[str, str | None]] = set()
        self._paused: set[tuple[str, str | None, str, str]] | None = None
        self._lagging: set[tuple[str, str | None]] = set()

    def finished(self, entry: dict[str, Any]) -> None:
        """A run finished: a failure, or a recovery after one."""
        if entry["command"] not in ("run", "follow"):
            return
        key = (entry["pipeline"], entry["tenant"])
        if entry["status"] == "failed":
            self._failing.add(key)
            self.send("failure", entry["pipeline"], tenant=entry["tenant"], run=entry["id"],
                      message=" ".join((entry.get("error") or "the run failed").split())[:1000])
        elif entry["status"] == "succeeded" and key in self._failing:
            self._failing.discard(key)
            self.send("recovery", entry["pipeline"], tenant=entry["tenant"], run=entry["id"], message="the run succeeded again")

    def pauses(self, pipeline_states: dict[str, Any]) -> None:
        """The destinations' paused streams now (``pipeline → PipelineState``): new ones are drift events."""
        now = {(name, tenant, dest, stream): pause.reason
               for name, st in pipeline_states.items() for tenant, ts in st.tenants.items()
               for (dest, stream), pause in ts.paused.items()}
        if self._paused is not None:
            for (name, tenant, dest, stream), reason in now.items():
                if (name, tenant, dest, stream) not in self._paused:
                    self.send("drift", name, tenant=tenant, stream=stream, destination=dest, message=reason)
        self._paused = set(now)

    def slot_lag(self, pipeline: str, tenant: str | None, retained: int, threshold: int) -> None:
        """A slot's retained WAL: an event when it crosses ``threshold`` (once until it is back under)."""
        key = (pipeline, tenant)
        if retained > threshold and key not in self._lagging:
            self._lagging.add(key)
            self.send("slot_lag", pipeline, tenant=tenant,
                      message=f"the replication slot retains {retained:,} bytes of WAL (threshold {threshold:,})")
        elif retained <= threshold:
            self._lagging.discard(key)

    def send(self, event: str, pipeline: str, *, tenant: str | None = None, stream: str | None = None,
             destination: str | None = None, run: int | None = None, message: str = "") -> None:
        body = {"event": event, "pipeline": pipeline, "tenant": tenant, "stream": stream, "destination": destination,
                "run": run, "message": redact(message), "time": self.clock().isoformat()}
        for target in self.targets:
            if event not in target.events:
                continue
            payload = _slack(body) if target.format == "slack" else body
            try:
                self.post(target.url.get_secret_value(), payload)
            except Exception as e:  # noqa: BLE001 - a notification target down must not stop the scheduler
                log.warning("notification %s of %s not sent: %s", event, pipeline, redact(str(e)))


def _slack(body: dict[str, Any]) -> dict[str, Any]:
    where = " / ".join(str(body[k]) for k in ("pipeline", "tenant", "destination", "stream") if body[k])
    text = f"{_ICON.get(body['event'], '')} replicant {body['event']}: {where}: {body['message']}"
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in body.items() if v is not None and k != "message"]
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}},
                                     {"type": "section", "fields": fields[:10]}]}


def _post(url: str, payload: dict[str, Any]) -> None:
    httpx.post(url, json=payload, timeout=10.0).raise_for_status()

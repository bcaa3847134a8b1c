"""Notifications decided from run ends, paused streams and slot lag (the sending is tested end
to end in test_serve.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from replicant.service.notify import Notifier
from replicant.service.settings import NotifyConfig
from replicant.state.records import Pause, PipelineState, TenantState

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def notifier(events: list[str] | None = None) -> tuple[Notifier, list[tuple[str, dict[str, Any]]]]:
    sent: list[tuple[str, dict[str, Any]]] = []
    target = NotifyConfig(url="http://hooks.example/x", **({"events": events} if events else {}))
    return Notifier([target], lambda: NOW, post=lambda url, body: sent.append((url, body))), sent


def entry(status: str, **kw: Any) -> dict[str, Any]:
    return {"id": 7, "pipeline": "p", "tenant": None, "command": "run", "status": status, "error": "boom\nmore", **kw}


def test_failure_then_recovery_once() -> None:
    n, sent = notifier()
    n.finished(entry("succeeded"))
    assert sent == []  # no failure before: nothing recovered
    n.finished(entry("failed", error="the table is gone\ntraceback"))
    n.finished(entry("succeeded"))
    n.finished(entry("succeeded"))
    assert [(b["event"], b["message"]) for _, b in sent] == [("failure", "the table is gone traceback"),
                                                            ("recovery", "the run succeeded again")]
    n.finished(entry("failed", command="replay p"))  # a replay's failure is not the pipeline's
    assert len(sent) == 2


def test_a_new_drift_pause_is_notified_once() -> None:
    n, sent = notifier()
    state = PipelineState(pipeline="p", tenants={None: TenantState(tenant=None)})
    n.pauses({"p": state})
    paused = TenantState(tenant="acme")
    paused.paused[("warehouse", "orders")] = Pause("column amount: integer → text cannot be applied", NOW)
    n.pauses({"p": PipelineState(pipeline="p", tenants={"acme": paused})})
    n.pauses({"p": PipelineState(pipeline="p", tenants={"acme": paused})})
    assert [(b["event"], b["tenant"], b["destination"], b["stream"]) for _, b in sent] == [
        ("drift", "acme", "warehouse", "orders")]


def test_slot_lag_over_the_threshold_once_until_back_under() -> None:
    n, sent = notifier(events=["slot_lag"])
    n.slot_lag("p", None, 10, threshold=100)
    n.slot_lag("p", None, 200, threshold=100)
    n.slot_lag("p", None, 300, threshold=100)
    n.slot_lag("p", None, 50, threshold=100)
    n.slot_lag("p", None, 150, threshold=100)
    assert [b["event"] for _, b in sent] == ["slot_lag", "slot_lag"]
    n.finished(entry("failed"))  # not one of this target's events
    assert len(sent) == 2

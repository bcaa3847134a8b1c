"""The roles × endpoints × tenants matrix against a real ``replicant serve``: every route of the
one permission table (``ACTIONS``), called by every kind of caller (viewer, operator, admin, an
operator and an admin scoped to tenant ``acme``, no token, a bad, an expired and a revoked
token), on its own tenant's object and on another's; each cell asserted. A route added to the
table without a request here fails the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from replicant.access.keys import generate_key
from replicant.access.tokens import ROLE_PERMISSIONS
from replicant.service.api.permissions import ACTIONS, PUBLIC
from replicant.state.store import StateStore

from .access_env import CALLERS, AccessEnv, make_env
from .serve_proc import ServeProcess

UNAUTHENTICATED = ("none", "bad", "expired", "revoked")


@dataclass
class Served:
    env: AccessEnv
    serve: ServeProcess
    runs: dict[str, int]

    def client(self, caller: str) -> httpx.Client:
        token = self.env.tokens.get(caller)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"http://127.0.0.1:{self.serve.port}", headers=headers, timeout=30)

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        with self.client("admin") as c:
            r = c.request(method, path, **kw)
        assert r.is_success, (r.status_code, r.text)
        return r.json()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("matrix")
    env = make_env(folder)
    mp = pytest.MonkeyPatch()
    mp.setenv("REPLICANT_MASTER_KEY", generate_key())
    serve = ServeProcess(folder, workers=0, token=env.tokens["admin"]).start()
    try:
        s = Served(env, serve, {})
        for tenant in ("acme", "globex"):
            s.runs[tenant] = s.admin("POST", "/api/v1/pipelines/shop/runs", json={"tenant": tenant})["id"]
        yield s
    finally:
        assert serve.stop() == 0, serve.log()
        mp.undo()


def _fresh_run(s: Served, tenant: str) -> int:
    """A queued run of ``tenant`` that nobody cancelled yet."""
    return int(s.admin("POST", "/api/v1/pipelines/shop/runs", json={"tenant": tenant})["id"])


def _fresh_token(s: Served, tenant: str) -> str:
    return str(s.admin("POST", "/api/v1/tokens", json={"role": "viewer", "tenants": [tenant]})["id"])


Request = tuple[str, str, dict[str, Any]]
#: route → (kind, own, other). kind: "tenant" (the target names a tenant: acme / globex),
#: "pipeline" (pipeline-wide on shop, which has acme / on solo, which has not), "global".
Builder = Callable[[Served, str], Request]


def _t(method: str, path: str, *, body: bool = False, query: bool = False) -> Builder:
    def build(s: Served, tenant: str) -> Request:
        kw: dict[str, Any] = {}
        if body:
            kw["json"] = {"tenant": tenant} | ({"from_start": True} if "replay" in path else {}) | (
                {"ids": [987654]} if "discard" in path else {})
        if query:
            kw["params"] = {"tenant": tenant}
        return method, path.format(tenant=tenant), kw
    return build


def _p(method: str, path: str) -> Builder:
    return lambda s, tenant: (method, path.format(pipeline="shop" if tenant == "acme" else "solo"), {})


def _g(method: str, path: str, **kw: Any) -> Builder:
    return lambda s, tenant: (method, path, kw)


ROUTES: dict[str, tuple[str, Builder]] = {
    "list_pipelines": ("global", _g("GET", "/api/v1/pipelines")),
    "get_pipeline": ("pipeline", _p("GET", "/api/v1/pipelines/{pipeline}")),
    "pipeline_status": ("pipeline", _p("GET", "/api/v1/pipelines/{pipeline}/status")),
    "trigger_run": ("tenant", _t("POST", "/api/v1/pipelines/shop/runs", body=True)),
    "pause_pipeline": ("pipeline", _p("POST", "/api/v1/pipelines/{pipeline}/pause")),
    "resume_pipeline": ("pipeline", _p("POST", "/api/v1/pipelines/{pipeline}/resume")),
    "pause_tenant": ("tenant", _t("POST", "/api/v1/pipelines/shop/tenants/{tenant}/pause")),
    "resume_tenant": ("tenant", _t("POST", "/api/v1/pipelines/shop/tenants/{tenant}/resume")),
    "pause_stream": ("tenant", _t("POST", "/api/v1/pipelines/shop/streams/orders/pause", query=True)),
    "resume_stream": ("tenant", _t("POST", "/api/v1/pipelines/shop/streams/orders/resume", query=True)),
    "resync_stream": ("tenant", _t("POST", "/api/v1/pipelines/shop/streams/orders/resync", query=True)),
    "replay_destination": ("tenant", _t("POST", "/api/v1/pipelines/shop/destinations/warehouse/replay", body=True)),
    "validate_pipeline": ("tenant", _t("POST", "/api/v1/pipelines/shop/validate", body=True)),
    "list_runs": ("global", _g("GET", "/api/v1/runs")),
    "get_run": ("tenant", lambda s, tenant: ("GET", f"/api/v1/runs/{s.runs[tenant]}", {})),
    "cancel_run": ("tenant", lambda s, tenant: ("POST", f"/api/v1/runs/{_fresh_run(s, tenant)}/cancel", {})),
    "list_dead_letters": ("tenant", _t("GET", "/api/v1/pipelines/shop/dead-letters", query=True)),
    "download_dead_letters": ("tenant", _t("GET", "/api/v1/pipelines/shop/dead-letters/download", query=True)),
    "retry_dead_letters": ("tenant", _t("POST", "/api/v1/pipelines/shop/dead-letters/retry", body=True)),
    "discard_dead_letters": ("tenant", _t("POST", "/api/v1/pipelines/shop/dead-letters/discard", body=True)),
    "list_workers": ("global", _g("GET", "/api/v1/workers")),
    "service_status": ("global", _g("GET", "/api/v1/status")),
    "list_tokens": ("global", _g("GET", "/api/v1/tokens")),
    "create_token": ("global", _g("POST", "/api/v1/tokens", json={"role": "viewer", "tenants": ["acme"]})),
    "revoke_token": ("global", lambda s, tenant: ("DELETE", f"/api/v1/tokens/{_fresh_token(s, tenant)}", {})),
    "list_secrets": ("global", _g("GET", "/api/v1/secrets")),
    "set_secret": ("global", _g("PUT", "/api/v1/secrets/MATRIX_SECRET", json={"value": "not-a-real-password"})),
    "query_audit": ("global", _g("GET", "/api/v1/audit")),
    "export_audit": ("global", _g("GET", "/api/v1/audit/export")),
    "whoami": ("global", _g("GET", "/api/v1/whoami")),
}


def expected(caller: str, route: str, target: str) -> int:
    """The status class of one cell: 2 (allowed), 401, 403 or 404."""
    if caller in UNAUTHENTICATED:
        return 401
    role, tenants = CALLERS[caller]
    permission = ACTIONS[route]
    kind = ROUTES[route][0]
    if tenants and target == "other" and kind in ("tenant", "pipeline"):
        return 404  # another tenant's object: not found, not forbidden
    if permission not in ROLE_PERMISSIONS[role]:
        return 403
    if tenants and permission not in ("read", "audit") and kind != "tenant":
        return 403  # pipeline-wide or service-wide action by a tenant's token
    return 2


CELLS = [(caller, route, target) for route in ACTIONS if route not in PUBLIC
         for caller in (*CALLERS, *UNAUTHENTICATED) for target in ("own", "other")]


def test_every_route_of_the_table_has_a_request_here() -> None:
    assert set(ROUTES) == set(ACTIONS) - PUBLIC


@pytest.mark.parametrize(("caller", "route", "target"), CELLS, ids=["-".join(c) for c in CELLS])
def test_matrix_cell(served: Served, caller: str, route: str, target: str) -> None:
    method, path, kw = ROUTES[route][1](served, "acme" if target == "own" else "globex")
    with served.client(caller) as c:
        r = c.request(method, path, **kw)
    want = expected(caller, route, target)
    if want == 2:
        assert r.is_success, (caller, route, target, r.status_code, r.text)
    else:
        assert r.status_code == want, (caller, route, target, r.status_code, r.text)
        assert "rpl_" not in r.text  # a refusal never echoes a token


def test_tenant_scope_filters_lists_and_metrics(served: Served) -> None:
    with served.client("acme_operator") as c:
        assert [p["name"] for p in c.get("/api/v1/pipelines").json()] == ["shop"]
        runs = c.get("/api/v1/runs").json()
        assert runs and {r["tenant"] for r in runs} == {"acme"}
        letters = c.get("/api/v1/pipelines/shop/dead-letters").json()
        assert letters and {x["tenant"] for x in letters} == {"acme"}
        detail = c.get("/api/v1/pipelines/shop").json()
        assert set(detail["tenants"]) <= {"acme"} and all(r.get("tenant") == "acme" for r in detail["runs"])
        assert set(detail["lag_history"]) <= {"warehouse"}
        metrics = c.get("/metrics").text
        assert 'pipeline="shop"' in metrics and 'tenant="globex"' not in metrics and 'pipeline="solo"' not in metrics
    with served.client("admin") as c:
        assert {p["name"] for p in c.get("/api/v1/pipelines").json()} == {"shop", "solo"}
        assert 'tenant="globex"' in c.get("/metrics").text
    with served.client("none") as c:
        assert c.get("/metrics").status_code == 401


def test_every_mutating_call_is_audited_with_who_and_where(served: Served) -> None:
    with served.client("acme_operator") as c:
        assert c.post("/api/v1/pipelines/shop/streams/items/pause", params={"tenant": "acme"}).status_code == 200
        assert c.post("/api/v1/pipelines/shop/pause").status_code == 403
    mutating = set()
    with served.client("admin") as c:
        for route, (_, build) in ROUTES.items():
            method, path, kw = build(served, "acme")
            if method != "GET":
                mutating.add(route)
                assert c.request(method, path, **kw).is_success, route
    with served.client("acme_admin") as c:
        mine = c.get("/api/v1/audit").json()
    assert mine and {e["tenant"] for e in mine} == {"acme"}
    store = StateStore(served.env.state_url).open()
    try:
        entries = store.audit_entries()
    finally:
        store.close()
    ok = [e for e in entries if e["action"] == "pause_stream" and e["stream"] == "items"]
    assert ok[-1]["actor"] == f"token:{served.env.ids['acme_operator']} (acme_operator)"
    assert ok[-1]["result"] == "ok" and ok[-1]["tenant"] == "acme" and ok[-1]["pipeline"] == "shop"
    assert ok[-1]["origin"] == "127.0.0.1"
    refused = [e for e in entries if e["action"] == "pause_pipeline" and e["actor"].endswith("(acme_operator)")]
    assert refused and refused[-1]["result"] == "refused 403"
    admin_ok = {e["action"] for e in entries if e["actor"].endswith("(admin)") and e["result"] == "ok"}
    assert len(mutating) == 16 and mutating <= admin_ok, mutating - admin_ok
    assert not any("rpl_" in str(e) for e in entries)

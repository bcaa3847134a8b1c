"""The web dashboard at ``/``: server-rendered pages (plain string templates, no build step)
and one vanilla JavaScript file that reads and acts through ``/api/v1`` with the user's session.

Login with a token: ``POST /login`` checks it (:meth:`~replicant.service.auth.Authorizer.login`)
and sets the session cookie (HttpOnly, SameSite=Strict, Secure under TLS; the token itself is
not in it). CSRF: every mutating API call from the page sends the session's CSRF value in an
``X-CSRF-Token`` header (double submit: the value is in the page, not in a cookie an attacker
could read) and a same-origin ``Origin``; SameSite=Strict keeps the cookie off cross-site
requests in the first place. Buttons a role cannot use are not rendered.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from replicant.access.tokens import ROLE_PERMISSIONS, AuthenticationError, Principal
from replicant.service.auth import OPEN, SESSION_COOKIE, Authorizer

__all__ = ["install"]

STATIC = Path(__file__).parent / "static"
_TYPES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · replicant</title><link rel="stylesheet" href="/static/dashboard.css">
<meta name="csrf-token" content="{csrf}"><meta name="role" content="{role}">
<meta name="can" content="{can}">
</head><body>
<a class="skip" href="#main">Skip to content</a>
<header><nav aria-label="Main"><a href="/" class="brand">replicant</a>{who}</nav></header>
<main id="main" tabindex="-1">{body}</main>
<script src="/static/dashboard.js" defer></script>
</body></html>
"""

_LOGIN = """<h1>Log in</h1>
<form method="post" action="/login" class="login">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="off" required autofocus>
<button type="submit">Log in</button>
{error}
</form>
<p class="hint">Create a token with <code>replicant token create --role viewer PIPELINE.yml</code>.</p>
"""

_INDEX = """<h1>Pipelines</h1>
<p id="status" role="status" aria-live="polite" class="muted">Loading…</p>
<table id="pipelines" class="grid"><caption class="sr-only">Pipelines with their state, last and next run and lag</caption>
<thead><tr><th scope="col">Pipeline</th><th scope="col">State</th><th scope="col">Last run</th>
<th scope="col">Next run</th><th scope="col">Lag (records)</th></tr></thead><tbody></tbody></table>
"""

_PIPELINE = """<h1>Pipeline <span id="pipeline-name">{name}</span></h1>
<div id="actions" class="actions" data-pipeline="{name}">{buttons}</div>
<p id="status" role="status" aria-live="polite" class="muted">Loading…</p>
<section aria-labelledby="h-run"><h2 id="h-run">Current run</h2><div id="run-progress">No run yet.</div></section>
<section aria-labelledby="h-streams"><h2 id="h-streams">Streams</h2>
<table id="streams" class="grid"><thead><tr><th scope="col">Stream</th><th scope="col">Tenant</th><th scope="col">Rows</th>
<th scope="col">This run</th><th scope="col">Lag</th><th scope="col">State</th><th scope="col">Actions</th></tr></thead>
<tbody></tbody></table></section>
<section aria-labelledby="h-lag"><h2 id="h-lag">Lag over time</h2><div id="lag-charts"></div></section>
<section aria-labelledby="h-tenants"><h2 id="h-tenants">Tenants</h2><ul id="tenants"></ul></section>
<section aria-labelledby="h-runs"><h2 id="h-runs">Runs</h2>
<table id="runs" class="grid"><thead><tr><th scope="col">Run</th><th scope="col">Command</th><th scope="col">Status</th>
<th scope="col">Started</th><th scope="col">Finished</th><th scope="col">Error</th></tr></thead><tbody></tbody></table>
<div id="run-detail" aria-live="polite"></div></section>
<section aria-labelledby="h-dl"><h2 id="h-dl">Dead letters</h2>
<table id="dead-letters" class="grid"><thead><tr><th scope="col">Id</th><th scope="col">Stream (tenant)</th><th scope="col">Destination</th>
<th scope="col">Reason</th><th scope="col">Actions</th></tr></thead><tbody></tbody></table></section>
"""

#: Button → (permission, label); only the ones the role has are rendered.
_BUTTONS = (
    ("run", "trigger", "Run now"),
    ("pause", "pause", "Pause pipeline"),
    ("resume", "resume", "Resume pipeline"),
    ("validate", "validate", "Validate"),
)


def _permissions(p: Principal) -> frozenset[str]:
    return ROLE_PERMISSIONS.get(p.role, frozenset())


def _page(title: str, body: str, *, principal: Principal | None, csrf: str = "") -> HTMLResponse:
    who = ""
    if principal is not None:
        scope = f" · tenants {', '.join(principal.tenants)}" if principal.tenants else ""
        logout = ('<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="'
                  f'{html.escape(csrf)}"><button type="submit">Log out</button></form>') if principal is not OPEN else ""
        who = f'<span class="who">{html.escape(principal.name)} ({html.escape(principal.role)}{html.escape(scope)})</span>{logout}'
    can = " ".join(sorted(_permissions(principal))) if principal is not None else ""
    text = _PAGE.format(title=html.escape(title), csrf=html.escape(csrf), role=html.escape(principal.role if principal else ""),
                        can=html.escape(can), who=who, body=body)
    return HTMLResponse(text, headers={"cache-control": "no-store", "x-frame-options": "DENY",
                                       "content-security-policy": "default-src 'self'; frame-ancestors 'none'"})


def install(app: FastAPI) -> None:
    """Adds the dashboard's pages, login/logout and static files to ``app``."""
    authorizer: Authorizer = app.state.authorizer

    async def current(request: Request) -> tuple[Principal, str] | None:
        if not authorizer.enforced():
            return OPEN, ""
        found = await run_in_threadpool(authorizer.session, request.cookies.get(SESSION_COOKIE))
        return None if found is None else (found[1], found[0].csrf)

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        who = await current(request)
        if who is None:
            return RedirectResponse("/login", status_code=303)
        return _page("Pipelines", _INDEX, principal=who[0], csrf=who[1])

    @app.get("/pipelines/{name}", include_in_schema=False)
    async def pipeline_page(request: Request, name: str) -> Response:
        who = await current(request)
        if who is None:
            return RedirectResponse("/login", status_code=303)
        can = _permissions(who[0])
        buttons = "".join(f'<button type="button" data-action="{a}">{label}</button>' for a, perm, label in _BUTTONS
                          if perm in can)
        return _page(name, _PIPELINE.format(name=html.escape(name), buttons=buttons), principal=who[0], csrf=who[1])

    @app.get("/login", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        return _page("Log in", _LOGIN.format(error=""), principal=None)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        from replicant.service.audit_log import audit

        origin = request.headers.get("origin")
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        if origin and origin.split("://", 1)[-1].rstrip("/") != request.headers.get("host", ""):
            return _page("Log in", _LOGIN.format(error='<p class="error" role="alert">Cross-site login refused.</p>'),
                         principal=None)
        try:
            sid, _session, principal = await run_in_threadpool(authorizer.login, token)
        except AuthenticationError:
            await run_in_threadpool(audit, request, "login", 401)
            body = _LOGIN.format(error='<p class="error" role="alert">That token is not valid.</p>')
            return HTMLResponse(_page("Log in", body, principal=None).body, status_code=401)
        request.state.principal = principal
        await run_in_threadpool(audit, request, "login", 200)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https", max_age=int(authorizer.session_seconds))
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        sid = request.cookies.get(SESSION_COOKIE)
        found = await run_in_threadpool(authorizer.session, sid)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        if found is not None and (form.get("csrf") or [""])[0] == found[0].csrf:
            authorizer.logout(sid)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/static/{file}", include_in_schema=False)
    def static(file: str) -> Response:
        if file not in _TYPES:
            return Response(status_code=404)
        return Response((STATIC / file).read_bytes(), media_type=_TYPES[file], headers={"cache-control": "no-cache"})



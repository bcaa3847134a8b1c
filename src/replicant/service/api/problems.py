"""Errors as ``application/problem+json`` (RFC 9457) with a stable ``code``.

``{"type": "https://replicant.dev/problems/CODE", "title", "status", "detail", "code"}``;
a configuration error adds ``problems: [{key, message}]``. The codes are a contract: clients
branch on them, never on ``detail``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from replicant.errors import ConfigError, ConnectionError, FatalError, ReplicantError, RetriableError, redact

__all__ = ["ApiProblem", "Problem", "install", "PROBLEM_RESPONSES"]

MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    """The body of every error response."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    problems: list[dict[str, str]] | None = None


class ApiProblem(Exception):
    """Raised by a route: becomes a problem response."""

    def __init__(self, status: int, code: str, detail: str, *, title: str | None = None,
                 problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.title = title or code.replace("_", " ")
        self.problems = problems


def _response(status: int, code: str, detail: str, title: str | None = None,
              problems: list[dict[str, str]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": f"https://replicant.dev/problems/{code}", "title": title or code.replace("_", " "),
                            "status": status, "detail": redact(detail), "code": code}
    if problems is not None:
        body["problems"] = problems
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


def from_replicant(e: ReplicantError) -> ApiProblem:
    """The problem for a replicant error (by what the caller should do)."""
    if isinstance(e, ConfigError):
        return ApiProblem(422, "invalid_config", e.message or str(e),
                          problems=[{"key": k, "message": m} for k, m in e.problems])
    if isinstance(e, ConnectionError):
        return ApiProblem(409, "unreachable", str(e))
    if isinstance(e, RetriableError):
        return ApiProblem(409, "busy", str(e))
    if isinstance(e, FatalError):
        return ApiProblem(409, "failed", str(e))
    return ApiProblem(409, "failed", str(e))


def install(app: FastAPI) -> None:
    """Every error the app can raise becomes a problem response."""

    @app.exception_handler(ApiProblem)
    async def _problem(request: Request, e: ApiProblem) -> JSONResponse:
        return _response(e.status, e.code, e.detail, e.title, e.problems)

    @app.exception_handler(ReplicantError)
    async def _replicant(request: Request, e: ReplicantError) -> JSONResponse:
        p = from_replicant(e)
        return _response(p.status, p.code, p.detail, p.title, p.problems)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = [{"key": ".".join(str(x) for x in err["loc"]), "message": str(err["msg"])} for err in e.errors()]
        return _response(422, "invalid_request", "the request is not valid", problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _response(e.status_code, code, str(e.detail))


def _doc(description: str) -> dict[str, Any]:
    return {"description": description, "model": Problem, "content": {MEDIA_TYPE: {}}}


#: The error responses routes declare in the OpenAPI document.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("The body is not JSON (code `invalid_request`)."),
    401: _doc("No token, or an invalid, expired or revoked one (code `unauthenticated`)."),
    403: _doc("The token's role or tenants do not allow it (codes `forbidden`, `csrf`)."),
    404: _doc("No such pipeline, run, stream or destination, or another tenant's (code `not_found`)."),
    409: _doc("The request cannot be done now (codes `failed`, `busy`, `unreachable`, `paused`)."),
    422: _doc("Invalid request or pipeline (codes `invalid_request`, `invalid_config`)."),
}

"""Request authentication of the http source, as :class:`httpx.Auth` flows.

Secrets are resolved when a request is built (:meth:`replicant.secrets.Secret.get_secret_value`)
and never kept on the flow; errors name the token endpoint, never a secret. The OAuth 2 token
is cached with its expiry (``expires_in``) on a clock the tests can set, fetched again
``refresh_before`` seconds before it expires, and once more when the API answers 401.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from urllib.parse import urljoin

import httpx

from replicant.errors import ConnectionError
from replicant.sources.http.settings import ApiKeyAuth, BasicAuth, BearerAuth, OAuth2ClientCredentials

__all__ = ["OAuth2Flow", "build_auth"]


class _Bearer(httpx.Auth):
    def __init__(self, cfg: BearerAuth) -> None:
        self.cfg = cfg

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.cfg.token.get_secret_value()}"
        yield request


class _ApiKey(httpx.Auth):
    def __init__(self, cfg: ApiKeyAuth) -> None:
        self.cfg = cfg

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        value = self.cfg.value.get_secret_value()
        if self.cfg.in_ == "header":
            request.headers[self.cfg.name] = value
        elif self.cfg.in_ == "query":
            request.url = request.url.copy_merge_params({self.cfg.name: value})
        else:
            cookie = f"{self.cfg.name}={value}"
            old = request.headers.get("Cookie")
            request.headers["Cookie"] = f"{old}; {cookie}" if old else cookie
        yield request


class _Basic(httpx.Auth):
    def __init__(self, cfg: BasicAuth) -> None:
        self.cfg = cfg

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield from httpx.BasicAuth(self.cfg.username, self.cfg.password.get_secret_value()).auth_flow(request)


class OAuth2Flow(httpx.Auth):
    """Client credentials: a cached token, refreshed before expiry and after a 401.

    Args:
        cfg: the ``auth:`` settings.
        base_url: a relative ``token_url`` is resolved against it.
        clock: seconds, monotonic (tests pass their own).
        timeout: seconds for the token request.
    """

    def __init__(self, cfg: OAuth2ClientCredentials, base_url: str, *, clock: Callable[[], float] = time.monotonic,
                 timeout: float = 30.0, verify: bool = True) -> None:
        self.cfg = cfg
        self.url = urljoin(base_url.rstrip("/") + "/", cfg.token_url)
        self.clock = clock
        self.timeout = timeout
        self.verify = verify
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        #: Tokens fetched so far (status and tests).
        self.fetched = 0

    def token(self, *, renew: bool = False) -> str:
        with self._lock:
            if renew or self._token is None or self.clock() >= self._expires - self.cfg.refresh_before:
                self._fetch()
            assert self._token is not None
            return self._token

    def _fetch(self) -> None:
        form = {"grant_type": "client_credentials", **self.cfg.extra}
        if self.cfg.scope:
            form["scope"] = self.cfg.scope
        try:
            r = httpx.post(self.url, data=form, auth=(self.cfg.client_id, self.cfg.client_secret.get_secret_value()),
                           timeout=self.timeout, verify=self.verify)
        except httpx.HTTPError as e:
            raise ConnectionError(f"OAuth 2 token endpoint {self.url}: {type(e).__name__}") from None
        if r.status_code != 200:
            raise ConnectionError(f"OAuth 2 token endpoint {self.url} answered {r.status_code} for client "
                                  f"{self.cfg.client_id!r}: check client_id and client_secret")
        try:
            body = r.json()
            self._token = str(body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise ConnectionError(f"OAuth 2 token endpoint {self.url}: no access_token in its answer") from None
        self._expires = self.clock() + float(body.get("expires_in") or 3600)
        self.fetched += 1

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        response = yield request
        if response.status_code == 401:  # revoked or expired early: one more try with a new token
            request.headers["Authorization"] = f"Bearer {self.token(renew=True)}"
            yield request


def build_auth(cfg: object, base_url: str, *, clock: Callable[[], float] = time.monotonic, timeout: float = 30.0,
               verify: bool = True) -> httpx.Auth | None:
    """The flow of an ``auth:`` setting (None: no auth)."""
    if isinstance(cfg, BearerAuth):
        return _Bearer(cfg)
    if isinstance(cfg, ApiKeyAuth):
        return _ApiKey(cfg)
    if isinstance(cfg, BasicAuth):
        return _Basic(cfg)
    if isinstance(cfg, OAuth2ClientCredentials):
        return OAuth2Flow(cfg, base_url, clock=clock, timeout=timeout, verify=verify)
    return None

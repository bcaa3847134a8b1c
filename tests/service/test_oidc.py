"""OIDC/JWT bearer tokens: a served folder whose ``replicant.yml`` names an issuer, an audience
and a JWKS file; JWTs signed here (a throwaway RSA key) act with the role and tenants of their
claims; a wrong audience, issuer, key, algorithm or role, or an expired token, is 401. The JWKS
from a URL (a local HTTP server) is checked against the verifier directly."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from replicant.access.tokens import AuthenticationError
from replicant.service.oidc import OidcConfig, OidcVerifier

from .access_env import make_env
from .serve_proc import ServeProcess

ISSUER, AUDIENCE = "https://login.example.test/", "replicant"


def _jwks(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [public | {"kid": kid, "use": "sig", "alg": "RS256"}]}


def _sign(key: Any, kid: str = "k1", alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "email": "alice@example.test", "iat": now,
            "exp": now + 600, "replicant_role": "operator"} | claims
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, keys: Any) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("oidc")
    make_env(folder, prerun=False)
    (folder / "jwks.json").write_text(json.dumps(_jwks(keys[0], "k1")))
    (folder / "replicant.yml").write_text(f"oidc:\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n  jwks_file: jwks.json\n")
    serve = ServeProcess(folder, workers=0, token=_sign(keys[0], replicant_role="admin", sub="root")).start()
    try:
        yield serve
    finally:
        assert serve.stop() == 0, serve.log()


def _call(serve: ServeProcess, token: str, method: str, path: str, **kw: Any) -> httpx.Response:
    with httpx.Client(base_url=f"http://127.0.0.1:{serve.port}", headers={"authorization": f"Bearer {token}"}) as c:
        return c.request(method, path, **kw)


def test_claims_give_the_role_and_tenants(served: ServeProcess, keys: Any) -> None:
    token = _sign(keys[0], replicant_tenants=["acme"])
    me = _call(served, token, "GET", "/api/v1/whoami").json()
    assert me == {"id": "oidc:alice", "name": "alice@example.test", "role": "operator", "tenants": ["acme"]}
    assert _call(served, token, "POST", "/api/v1/pipelines/shop/runs", json={"tenant": "acme"}).status_code == 202
    assert _call(served, token, "POST", "/api/v1/pipelines/shop/runs", json={"tenant": "globex"}).status_code == 404
    assert _call(served, token, "GET", "/api/v1/pipelines/solo").status_code == 404
    assert _call(served, token, "GET", "/api/v1/tokens").status_code == 403
    assert served.http.get("/api/v1/tokens").status_code == 200  # the admin JWT
    viewer = _sign(keys[0], replicant_role="viewer", sub="bob")
    assert _call(served, viewer, "POST", "/api/v1/pipelines/solo/pause").status_code == 403
    audit = [e for e in served.get("/api/v1/audit") if e["action"] == "trigger_run"]
    assert audit[-1]["actor"] == "token:oidc:alice (alice@example.test)" and audit[-1]["result"] == "refused 404"


@pytest.mark.parametrize("case", ["audience", "issuer", "expired", "other_key", "unknown_kid", "role", "none_alg", "no_sub"])
def test_a_bad_jwt_is_401(served: ServeProcess, keys: Any, case: str) -> None:
    token = {
        "audience": lambda: _sign(keys[0], aud="someone-else"),
        "issuer": lambda: _sign(keys[0], iss="https://evil.example.test/"),
        "expired": lambda: _sign(keys[0], exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "other_key": lambda: _sign(keys[1]),
        "unknown_kid": lambda: _sign(keys[1], kid="k9"),
        "role": lambda: _sign(keys[0], replicant_role="root"),
        "none_alg": lambda: jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 600,
                                        "replicant_role": "admin"}, None, algorithm="none"),
        "no_sub": lambda: _sign(keys[0], sub=None),
    }[case]()
    r = _call(served, token, "GET", "/api/v1/whoami")
    assert r.status_code == 401, (case, r.text)
    assert token not in r.text


def test_dashboard_login_with_a_jwt(served: ServeProcess, keys: Any) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{served.port}", follow_redirects=True) as c:
        page = c.post("/login", data={"token": _sign(keys[0], replicant_role="viewer", sub="carol")})
        assert page.status_code == 200 and "alice@example.test (viewer)" in page.text
        assert c.get("/api/v1/whoami").json()["role"] == "viewer"


def test_jwks_from_a_url(keys: Any) -> None:
    body = json.dumps(_jwks(keys[0], "k1")).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = OidcConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=f"http://127.0.0.1:{server.server_port}/jwks.json")
        verifier = OidcVerifier(config)
        principal = verifier.principal(_sign(keys[0], replicant_tenants="globex"))
        assert (principal.role, principal.tenants) == ("operator", ("globex",))
        with pytest.raises(AuthenticationError):
            verifier.principal(_sign(keys[1]))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_config_needs_one_jwks_and_refuses_none() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        OidcConfig(issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValueError, match="none"):
        OidcConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file="j.json", algorithms=["none"])

"""OIDC/JWT bearer tokens for SSO: a JWT signed by the identity provider, checked against its
JWKS (a file, or a URL fetched and cached by PyJWT), its issuer, audience and expiry; two
claims give the role and the tenants. Configured in ``replicant.yml``::

    oidc:
      issuer: https://login.example.com/
      audience: replicant
      jwks_url: https://login.example.com/.well-known/jwks.json   # or jwks_file: jwks.json
      role_claim: replicant_role          # viewer | operator | admin
      tenants_claim: replicant_tenants    # a list (or one string); absent: every tenant
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from replicant.access.tokens import ROLES, AuthenticationError, Principal

__all__ = ["OidcConfig", "OidcVerifier"]


class OidcConfig(BaseModel):
    """``oidc:`` of ``replicant.yml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(description="The `iss` every token must carry.")
    audience: str = Field(description="The `aud` every token must carry.")
    jwks_file: str | None = Field(None, description="The provider's JWKS as a file (relative to the served folder).")
    jwks_url: str | None = Field(None, description="The provider's JWKS URL (fetched and cached).")
    role_claim: str = Field("replicant_role", description="The claim holding viewer, operator or admin.")
    tenants_claim: str = Field("replicant_tenants", description="The claim holding the tenants (absent: every tenant).")
    algorithms: list[str] = Field(["RS256", "ES256"], description="Accepted signature algorithms (never `none`).")
    leeway: float = Field(30.0, ge=0, description="Seconds of clock skew allowed on exp/nbf/iat.")

    @model_validator(mode="after")
    def _one_jwks(self) -> OidcConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of jwks_file or jwks_url")
        if any(a.lower() == "none" for a in self.algorithms):
            raise ValueError("the `none` algorithm is never accepted")
        return self


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


class OidcVerifier:
    """Checks a JWT and maps its claims to a :class:`Principal` (``id``: ``oidc:SUB``)."""

    def __init__(self, config: OidcConfig, base_dir: Path = Path(".")) -> None:
        import jwt

        self.config = config
        self._client = jwt.PyJWKClient(config.jwks_url, cache_keys=True, lifespan=300) if config.jwks_url else None
        self._file = (base_dir / config.jwks_file) if config.jwks_file else None

    def _key(self, token: str) -> Any:
        import jwt

        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        assert self._file is not None
        keys = jwt.PyJWKSet.from_dict(json.loads(self._file.read_text(encoding="utf-8")))  # read each time: rotation
        kid = jwt.get_unverified_header(token).get("kid")
        found = [k for k in keys.keys if kid is None or k.key_id == kid]
        if not found:
            raise AuthenticationError("invalid token")
        return found[0].key

    def principal(self, token: str) -> Principal:
        """Raises AuthenticationError: a bad signature, issuer, audience, expiry, or role."""
        return self.verify(token)[0]

    def verify(self, token: str) -> tuple[Principal, float]:
        """The principal and the token's expiry (Unix time). Raises AuthenticationError."""
        import jwt

        c = self.config
        try:
            claims = jwt.decode(token, self._key(token), algorithms=c.algorithms, audience=c.audience, issuer=c.issuer,
                                leeway=c.leeway, options={"require": ["exp", "iss", "aud", "sub"]})
        except (jwt.PyJWTError, ValueError, OSError):
            raise AuthenticationError("invalid token") from None
        role = claims.get(c.role_claim)
        if role not in ROLES:
            raise AuthenticationError("invalid token")
        tenants = claims.get(c.tenants_claim) or []
        if isinstance(tenants, str):
            tenants = [tenants]
        if not isinstance(tenants, list) or not all(isinstance(t, str) and t for t in tenants):
            raise AuthenticationError("invalid token")
        sub = str(claims["sub"])
        name = str(claims.get("email") or claims.get("preferred_username") or sub)
        return Principal(f"oidc:{sub}", name, role, tuple(sorted(tenants))), float(claims["exp"])

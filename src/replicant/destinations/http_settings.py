"""The pipeline-file keys of a ``type: http`` destination (:class:`HttpSettings`), validated
at load time with key paths; the delivery that uses them is :mod:`replicant.destinations.http`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from replicant.destinations.base import positive_seconds
from replicant.secrets import Secret

__all__ = ["AuthSettings", "BasicAuth", "HttpSettings"]


class BasicAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str
    password: Secret


class AuthSettings(BaseModel):
    """Exactly one of ``bearer`` (a token) or ``basic`` (username and password)."""

    model_config = ConfigDict(extra="forbid")
    bearer: Secret | None = Field(None, description="Token sent as `Authorization: Bearer …`.")
    basic: BasicAuth | None = Field(None, description="HTTP basic authentication.")

    @model_validator(mode="after")
    def _one(self) -> AuthSettings:
        if (self.bearer is None) == (self.basic is None):
            raise ValueError("give exactly one of `bearer` or `basic`")
        return self


class HttpSettings(BaseModel):
    """The keys of a ``type: http`` destination besides ``url`` and ``batch_size``."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["POST", "PUT"] = Field("POST", description="HTTP method of each request.")
    headers: dict[str, Secret] = Field(default_factory=dict, description="Extra request headers (values are secret).")
    auth: AuthSettings | None = Field(None, description="`{bearer: TOKEN}` or `{basic: {username, password}}`.")
    batch_bytes: int | str = Field(5_000_000, description="Largest request body: bytes or '5MB'.")
    concurrency: int = Field(4, gt=0, le=256, description="Requests in flight at once.")
    timeout: float | str = Field(30.0, description="Seconds per request (connect, send, wait for the answer).")
    max_retries: int = Field(8, ge=0, description="Retries of one request before the write fails.")
    retry_max_seconds: float | str = Field(30.0, description="Longest wait between two attempts.")
    max_rejected: int = Field(
        100,
        ge=0,
        description="Records of one write the endpoint may reject alone (each dead-lettered) before the write fails "
        "instead: more look like a wrong endpoint or body format than bad records.",
    )

    @field_validator("headers", mode="before")
    @classmethod
    def _header_text(cls, v: Any) -> Any:
        # YAML reads `X-Version: 2` as a number; a header value is text
        return {k: x if isinstance(x, (str, SecretStr)) else str(x) for k, x in v.items()} if isinstance(v, dict) else v

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("batch_bytes")
    @classmethod
    def _size(cls, v: Any) -> int:
        from replicant.config import parse_size

        size = parse_size(v)
        if size < 256:
            raise ValueError("must be at least 256 bytes")
        return size

    @field_validator("timeout", "retry_max_seconds")
    @classmethod
    def _seconds(cls, v: Any) -> float:
        return positive_seconds(v)

"""The keys of a ``type: http`` source and of each of its streams (validated with key paths).

::

    source:
      type: http
      base_url: https://api.example.com/v1
      auth: {type: bearer, token: "${env:API_TOKEN}"}
      rate_limit: {requests: 10, per: 1s}
      streams:
        - name: issues
          path: /issues
          records: $.data[*]
          paginate: {type: cursor, cursor_path: $.next_cursor, param: cursor}
          incremental: {cursor_path: updated_at, param: since, initial: "2024-01-01T00:00:00Z"}
          primary_key: [id]
        - name: comments
          path: /issues/{issues.number}/comments      # one read per parent record

``paginate``, ``records``, ``params`` and ``headers`` may also be given once at the source level
as defaults for every stream (a stream's own ``params``/``headers`` are merged over them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from replicant.config_values import parse_duration
from replicant.secrets import Secret

__all__ = [
    "ApiKeyAuth",
    "Auth",
    "BasicAuth",
    "BearerAuth",
    "HttpSettings",
    "HttpStreamSettings",
    "Incremental",
    "OAuth2ClientCredentials",
    "Paginate",
    "RateLimit",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------- auth


class BearerAuth(_Strict):
    """``Authorization: Bearer <token>``."""

    type: Literal["bearer"]
    token: Secret = Field(description="The token; by reference (`${env:NAME}`).")


class ApiKeyAuth(_Strict):
    """A key sent as a header, a query parameter or a cookie."""

    type: Literal["api_key"]
    name: str = Field(description="The header, parameter or cookie name (`X-API-Key`, `api_key`).")
    value: Secret = Field(description="The key; by reference.")
    in_: Literal["header", "query", "cookie"] = Field("header", alias="in", description="Where the key goes.")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BasicAuth(_Strict):
    """HTTP basic authentication."""

    type: Literal["basic"]
    username: str
    password: Secret


class OAuth2ClientCredentials(_Strict):
    """OAuth 2 client credentials (RFC 6749 §4.4): a token from ``token_url``, cached until shortly
    before it expires (``expires_in``), and fetched again on a 401."""

    type: Literal["oauth2_client_credentials"]
    token_url: str = Field(description="The token endpoint (absolute, or relative to base_url).")
    client_id: str
    client_secret: Secret
    scope: str | None = None
    extra: dict[str, str] = Field(default_factory=dict, description="More form fields for the token request (`audience`).")
    refresh_before: float = Field(30.0, ge=0, description="Seconds before expiry when a token is fetched again.")


Auth = Annotated[BearerAuth | ApiKeyAuth | BasicAuth | OAuth2ClientCredentials, Field(discriminator="type")]

# ---------------------------------------------------------------------------- pagination


class Paginate(_Strict):
    """How to reach the next page, and when to stop.

    ``offset``: ``offset_param`` (``offset``) grows by the records returned, ``limit_param``
    (``limit``) = ``page_size``. ``page``: ``page_param`` (``page``) grows by one from
    ``start_page`` (1), ``size_param`` = ``page_size`` when set. ``cursor``: the value at
    ``cursor_path`` (a JSONPath into the body) goes in ``param``. ``link_header``: the URL of
    the RFC 8288 ``Link`` header with ``rel="next"``. ``json_link``: the URL at ``next_path``.

    Stops (any of): no next cursor or link; a page with fewer records than ``page_size``
    (offset, page) or no records at all; ``total_path`` reached (offset, page); ``stop_path``
    true in the body; ``max_pages`` read.
    """

    type: Literal["offset", "page", "cursor", "link_header", "json_link", "none"]
    page_size: int | None = Field(None, gt=0, description="Records per page asked for (offset, page).")
    limit_param: str = "limit"
    offset_param: str = "offset"
    page_param: str = "page"
    size_param: str | None = Field(None, description="`page`: the parameter taking page_size (none: not sent).")
    start_page: int = 1
    cursor_path: str | None = Field(None, description="`cursor`: JSONPath of the next cursor in the body.")
    param: str = Field("cursor", description="`cursor`: the query parameter taking the next cursor.")
    next_path: str | None = Field(None, description="`json_link`: JSONPath of the next page's URL in the body.")
    total_path: str | None = Field(None, description="offset/page: JSONPath of the total record count.")
    stop_path: str | None = Field(None, description="JSONPath of a boolean: true (or false for `has_more`-style "
                                  "fields: prefix with `!`) means this is the last page.")
    max_pages: int | None = Field(None, gt=0, description="Stop after this many pages.")

    @model_validator(mode="after")
    def _needs(self) -> Paginate:
        if self.type == "cursor" and not self.cursor_path:
            raise ValueError("type cursor needs `cursor_path:` (JSONPath of the next cursor in the body)")
        if self.type == "json_link" and not self.next_path:
            raise ValueError("type json_link needs `next_path:` (JSONPath of the next page's URL in the body)")
        return self


class Incremental(_Strict):
    """Read only records whose cursor field passed the last one seen."""

    cursor_path: str = Field(description="The record's cursor field (`updated_at`); the stream's cursor column.")
    param: str | None = Field(None, description="The request parameter the last cursor feeds (`since`); "
                              "none: the API is read in full and older records are dropped.")
    initial: Any = Field(None, description="The cursor of the very first run (none: no filter).")
    lookback: float | int | str | None = Field(None, description="Asks again for this much before the last cursor "
                                               "(seconds or '5m' for time cursors, a number for numeric ones).")


class RateLimit(_Strict):
    """At most ``requests`` requests per ``per`` (a sliding window)."""

    requests: int = Field(gt=0)
    per: float = Field(1.0, description="Seconds or a duration ('1s', '1m').")

    @field_validator("per", mode="before")
    @classmethod
    def _per(cls, v: Any) -> float:
        seconds = parse_duration(v)
        if seconds <= 0:
            raise ValueError("must be more than 0 seconds")
        return seconds


# ---------------------------------------------------------------------------- per stream


class HttpStreamSettings(_Strict):
    """The http-specific keys of one ``streams:`` entry (``name``, ``mode``, ``primary_key`` are
    common stream keys)."""

    path: str | None = Field(None, description="Path under base_url (default `/<name>`); `{parent.field}` "
                             "makes this a child stream of stream `parent`, read once per parent record.")
    params: dict[str, Any] = Field(default_factory=dict, description="Query parameters.")
    headers: dict[str, Secret] = Field(default_factory=dict, description="Request headers (values may be references).")
    records: str | None = Field(None, description="JSONPath of the records in the body (default: the body if it is "
                                "a list, else `$.data[*]`, `$.items[*]`, `$.results[*]` or `$.records[*]`).")
    paginate: Paginate | None = None
    incremental: Incremental | None = None
    schema_: dict[str, str] = Field(default_factory=dict, alias="schema",
                                    description="Column types: integer, number, decimal(p,s), string, boolean, "
                                    "date, timestamp, timestamptz, json.")
    timestamp_format: str | None = Field(None, description="strptime format of timestamp columns (default ISO 8601).")
    nested: Literal["struct", "json"] = Field("struct", description="Nested objects and arrays as Arrow structs and "
                                              "lists, or as JSON text.")
    on_new_columns: Literal["add", "rescue", "fail"] = Field("add", description="A field not in the schema: a new "
                                                             "column, kept in `_rescued` (JSON), or the stream fails.")
    on_bad_record: Literal["dead_letter", "fail"] = Field("dead_letter", description="A record with a value that "
                                                          "cannot be read as its column's type: to the dead-letter "
                                                          "store (with the page's URL), or the stream fails.")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HttpSettings(_Strict):
    """The keys of a ``type: http`` source."""

    base_url: str = Field(description="Every stream's path is relative to it.")
    auth: Auth | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="Query parameters of every stream.")
    headers: dict[str, Secret] = Field(default_factory=dict, description="Headers of every request.")
    records: str | None = Field(None, description="Default `records:` JSONPath of every stream.")
    paginate: Paginate | None = Field(None, description="Default pagination of every stream.")
    rate_limit: RateLimit | None = None
    timeout: float = Field(30.0, gt=0, description="Seconds per request.")
    max_retries: int = Field(6, ge=0, description="Attempts after the first for 5xx, 408, 429 and timeouts.")
    retry_max_seconds: float = Field(60.0, gt=0, description="Longest wait between attempts (back-off and Retry-After).")
    verify: bool = Field(True, description="Verify TLS certificates.")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

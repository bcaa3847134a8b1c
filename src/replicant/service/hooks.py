"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A request carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``: space-separated ``v1,BASE64`` signatures (several while keys rotate).
Each is HMAC-SHA256 over ``{id}.{timestamp}.{body}`` with the secret's key (the base64 part
after ``whsec_``). A request is accepted when its timestamp is within the tolerance (5 minutes
by default) and one signature matches one of the pipeline's secrets; its id is then remembered,
so a replay of the same request is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime

__all__ = ["HookRejected", "sign", "verify"]


class HookRejected(Exception):
    """The request is not a valid, fresh, signed webhook; ``code`` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _key(secret: str) -> bytes:
    text = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return text.encode()  # not base64: the text itself is the key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,…`` signature of a message (what a sender puts in ``webhook-signature``)."""
    digest = hmac.new(_key(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secrets: list[str], headers: dict[str, str], body: bytes, now: datetime, *, tolerance: float = 300.0) -> str:
    """Checks a request's signature and timestamp; returns its message id.

    Raises:
        HookRejected: a header is missing, the timestamp is outside ``tolerance`` seconds of
            ``now``, or no signature matches any secret.
    """
    message_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not message_id or not stamp or not signatures:
        raise HookRejected("missing_signature", "webhook-id, webhook-timestamp and webhook-signature are required")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise HookRejected("bad_timestamp", "webhook-timestamp must be Unix seconds") from None
    if abs(now.timestamp() - timestamp) > tolerance:
        raise HookRejected("stale_timestamp", f"webhook-timestamp is more than {tolerance:g} s away from now")
    offered = [s.partition(",")[2] for s in signatures.split() if s.startswith("v1,")]
    for secret in secrets:
        expected = sign(secret, message_id, timestamp, body).partition(",")[2]
        if any(hmac.compare_digest(expected, o) for o in offered):
            return message_id
    raise HookRejected("bad_signature", "no signature matches")

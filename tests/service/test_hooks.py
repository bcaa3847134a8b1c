"""Standard Webhooks signatures: valid, rotated keys, tampered, stale, missing."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from replicant.service.hooks import HookRejected, sign, verify

SECRET = "whsec_" + base64.b64encode(b"a key of thirty-two bytes, random").decode()
OLD = "whsec_" + base64.b64encode(b"the key before the rotation....").decode()
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
TS = int(NOW.timestamp())
BODY = b'{"file": "in/a.csv"}'


def headers(signature: str, ts: int = TS, msg: str = "msg_1") -> dict[str, str]:
    return {"webhook-id": msg, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_the_standard_webhooks_test_vector() -> None:
    # https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md (the spec's example)
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_valid_signature_and_one_of_several_for_rotation() -> None:
    assert verify([SECRET], headers(sign(SECRET, "msg_1", TS, BODY)), BODY, NOW) == "msg_1"
    rotating = f"{sign(OLD, 'msg_1', TS, BODY)} {sign(SECRET, 'msg_1', TS, BODY)}"
    assert verify([SECRET], headers(rotating), BODY, NOW) == "msg_1"
    assert verify([OLD, SECRET], headers(sign(OLD, "msg_1", TS, BODY)), BODY, NOW) == "msg_1"


@pytest.mark.parametrize(("hdrs", "body", "code"), [
    (headers(sign(SECRET, "msg_1", TS, BODY)), b'{"file": "in/b.csv"}', "bad_signature"),  # tampered body
    (headers(sign(OLD, "msg_1", TS, BODY)), BODY, "bad_signature"),  # a key we do not hold
    (headers(sign(SECRET, "msg_1", TS - 301, BODY), ts=TS - 301), BODY, "stale_timestamp"),  # 5 minutes tolerance
    (headers(sign(SECRET, "msg_1", TS + 301, BODY), ts=TS + 301), BODY, "stale_timestamp"),
    ({"webhook-id": "msg_1"}, BODY, "missing_signature"),
    (headers("v1,AAAA", ts=0) | {"webhook-timestamp": "soon"}, BODY, "bad_timestamp"),
])
def test_rejected(hdrs: dict[str, str], body: bytes, code: str) -> None:
    with pytest.raises(HookRejected) as e:
        verify([SECRET], hdrs, body, NOW)
    assert e.value.code == code


def test_within_the_tolerance() -> None:
    assert verify([SECRET], headers(sign(SECRET, "m", TS - 299, BODY), ts=TS - 299, msg="m"), BODY, NOW) == "m"

"""Signature verification: public Svix vectors and every way a request can be wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import pytest
import standardwebhooks.webhooks

from harness.factories import FIXTURES, SECOND_SECRET, SECRET, signed_headers
from relay.errors import BadRequest, Unauthorized
from relay.verify import Verifier, read_headers

VECTORS = json.loads((FIXTURES / "svix-vectors.json").read_text())

#: ``frozen_at``: freezes svix's clock at a Unix timestamp and returns it as ``now_s``.
Freeze = Callable[[int], float]


def _payload(vector: dict[str, Any]) -> str:
    if "payload" in vector:
        return str(vector["payload"])
    rep = vector["payload_repeat"]
    return str(rep["char"]) * int(rep["count"])


def _vector(vid: str) -> dict[str, Any]:
    return next(v for v in VECTORS["vectors"] if v["id"] == vid)


@pytest.fixture
def frozen_at(monkeypatch: pytest.MonkeyPatch) -> Freeze:
    """Freeze svix's clock (it has no ``now`` parameter) at a vector's timestamp."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Frozen:
            return holder["now"]

    holder: dict[str, Frozen] = {}

    def freeze(ts: int) -> float:
        holder["now"] = Frozen.fromtimestamp(ts, UTC)
        return float(ts)

    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", Frozen)
    return freeze


def _headers(msg_id: str, ts: int | str, sig: str) -> dict[str, str]:
    return {"svix-id": msg_id, "svix-timestamp": str(ts), "svix-signature": sig}


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["id"])
def test_public_vectors_verify(vector: dict[str, Any], frozen_at: Freeze) -> None:
    """Every public Svix vector verifies with its secret at its own timestamp."""
    now = frozen_at(int(vector["timestamp"]))
    headers = _headers(vector["msg_id"], vector["timestamp"], vector["expected_signature"])
    got = Verifier([vector["secret"]]).verify(_payload(vector).encode(), headers, now_s=now)
    assert got.id == vector["msg_id"]


@pytest.mark.parametrize("vector", VECTORS["negative_vectors"], ids=lambda v: v["id"])
def test_negative_vectors_are_unauthorized(vector: dict[str, Any], frozen_at: Freeze) -> None:
    """Signatures that do not match are 401, never 500."""
    base = _vector(vector["based_on"])
    now = frozen_at(int(base["timestamp"]))
    headers = _headers(base["msg_id"], base["timestamp"], vector["signature_header"])
    verifier = Verifier([base["secret"]])
    if not any(p.startswith("v1,") for p in vector["signature_header"].split()):
        with pytest.raises(BadRequest):
            verifier.verify(_payload(base).encode(), headers, now_s=now)
        return
    with pytest.raises(Unauthorized):
        verifier.verify(_payload(base).encode(), headers, now_s=now)


def test_multi_signature_header_with_one_valid_entry(frozen_at: Freeze) -> None:
    """A header listing several signatures verifies if any v1 entry matches."""
    vector = next(v for v in VECTORS["multi_signature_headers"] if v["id"] == "multi-sig-one-valid")
    base = _vector(vector["based_on"])
    now = frozen_at(int(base["timestamp"]))
    headers = _headers(base["msg_id"], base["timestamp"], vector["signature_header"])
    assert Verifier([base["secret"]]).verify(_payload(base).encode(), headers, now_s=now)


def test_rotation_header_verifies_with_either_secret(frozen_at: Freeze) -> None:
    """Clerk's rotation header is accepted by the old secret alone and by the new alone."""
    local = VECTORS["locally_generated_not_public"]["vectors"]
    rot = next(v for v in local if v["id"] == "local-clerk-rotation-two-secrets")
    single = next(v for v in local if v["id"] == "local-clerk-user-created")
    now = frozen_at(int(rot["timestamp"]))
    headers = _headers(rot["msg_id"], rot["timestamp"], rot["signature_header"])
    for secret in rot["secrets"].values():
        assert Verifier([secret]).verify(single["payload"].encode(), headers, now_s=now)


def test_second_configured_secret_is_accepted() -> None:
    """With several secrets configured, a delivery signed by any one of them verifies."""
    body = b'{"type":"user.created","data":{}}'
    headers = signed_headers(body, secret=SECOND_SECRET)
    got = Verifier([SECRET, SECOND_SECRET]).verify(
        body, headers, now_s=datetime.now(UTC).timestamp()
    )
    assert got.id == headers["svix-id"]


def test_wrong_secret_is_unauthorized_without_hint() -> None:
    """A signature by an unknown secret is 401 and the message names no secret."""
    body = b'{"type":"user.created"}'
    with pytest.raises(Unauthorized) as err:
        Verifier([SECRET]).verify(
            body, signed_headers(body, secret=SECOND_SECRET), now_s=datetime.now(UTC).timestamp()
        )
    assert "whsec" not in str(err.value) and err.value.status_code == 401


def test_tampered_body_is_unauthorized() -> None:
    """One changed byte after signing fails verification."""
    body = b'{"type":"user.created","data":{"id":"user_1"}}'
    headers = signed_headers(body)
    with pytest.raises(Unauthorized):
        Verifier([SECRET]).verify(
            body.replace(b"user_1", b"user_2"), headers, now_s=datetime.now(UTC).timestamp()
        )


@pytest.mark.parametrize(
    "skew", [timedelta(minutes=-6), timedelta(minutes=6)], ids=["stale", "future"]
)
def test_timestamp_outside_tolerance_is_unauthorized(skew: timedelta) -> None:
    """Timestamps more than five minutes off in either direction are refused."""
    body = b'{"type":"user.created"}'
    at = datetime.now(UTC) + skew
    with pytest.raises(Unauthorized) as err:
        Verifier([SECRET]).verify(
            body, signed_headers(body, at=at), now_s=datetime.now(UTC).timestamp()
        )
    assert err.value.code == "stale_timestamp"


def test_timestamp_within_tolerance_is_accepted() -> None:
    """Four minutes of clock skew is within Svix's tolerance."""
    body = b'{"type":"user.created"}'
    at = datetime.now(UTC) - timedelta(minutes=4)
    assert Verifier([SECRET]).verify(
        body, signed_headers(body, at=at), now_s=datetime.now(UTC).timestamp()
    )


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_headers"),
        ({"svix-id": "msg_1", "svix-timestamp": "1"}, "missing_headers"),
        ({"svix-id": "", "svix-timestamp": "1", "svix-signature": "v1,x"}, "missing_headers"),
        ({"svix-id": "msg_1", "svix-timestamp": "soon", "svix-signature": "v1,x"}, "bad_headers"),
        (
            {"svix-id": "msg_1", "svix-timestamp": "1700000000000", "svix-signature": "v1,x"},
            "bad_headers",
        ),
        ({"svix-id": "msg_1", "svix-timestamp": "1", "svix-signature": "garbage"}, "bad_headers"),
        ({"svix-id": "msg\x01", "svix-timestamp": "1", "svix-signature": "v1,x"}, "bad_headers"),
    ],
    ids=[
        "none",
        "no-signature",
        "empty-id",
        "word-timestamp",
        "ms-timestamp",
        "no-v1",
        "control-char-id",
    ],
)
def test_missing_or_malformed_headers_are_bad_request(headers: dict[str, str], code: str) -> None:
    """Header problems are 400 with a code saying which kind."""
    with pytest.raises(BadRequest) as err:
        read_headers(headers)
    assert err.value.code == code


@pytest.mark.parametrize(
    "signature",
    ["v1,abc", "v1,a,b", "v1,abc=  v1,x"],
    ids=["bad-padding", "extra-comma", "double-space"],
)
def test_garbage_signature_entries_are_400_not_500(signature: str) -> None:
    """svix raises plain ValueError/binascii.Error on these; they become 400."""
    body = b'{"type":"user.created"}'
    now = int(datetime.now(UTC).timestamp())
    headers = _headers("msg_1", now, signature)
    with pytest.raises((BadRequest, Unauthorized)) as err:
        Verifier([SECRET]).verify(body, headers, now_s=now)
    assert err.value.status_code in (400, 401)


def test_non_utf8_body_is_bad_request() -> None:
    """A body that is not UTF-8 is 400 (svix would raise UnicodeDecodeError)."""
    body = b'{"type":"\xff\xfe"}'
    now = datetime.now(UTC)
    headers = _headers(
        "msg_1", int(now.timestamp()), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    with pytest.raises(BadRequest) as err:
        Verifier([SECRET]).verify(body, headers, now_s=now.timestamp())
    assert err.value.code == "bad_body"


def test_webhook_prefixed_headers_are_accepted() -> None:
    """Standard Webhooks' ``webhook-*`` names work like ``svix-*`` (as in the svix package)."""
    body = b'{"type":"user.created"}'
    svix = signed_headers(body)
    headers = {k.replace("svix-", "webhook-"): v for k, v in svix.items()}
    got = Verifier([SECRET]).verify(body, headers, now_s=datetime.now(UTC).timestamp())
    assert got.id == svix["svix-id"]


def test_verifier_needs_a_secret() -> None:
    """An empty secret list is a programming error, caught at construction."""
    with pytest.raises(ValueError, match="secret"):
        Verifier([])


def test_the_verdict_depends_on_now_s_alone() -> None:
    """A public vector verifies at its own timestamp with svix's clock left alone (the
    svix library's verify() would re-read the wall clock and call it too old), and a
    fresh signature is stale at a ``now_s`` ten minutes on."""
    vector = _vector("svix-docs-canonical")
    headers = _headers(vector["msg_id"], vector["timestamp"], vector["expected_signature"])
    body = _payload(vector).encode()
    got = Verifier([vector["secret"]]).verify(body, headers, now_s=float(vector["timestamp"]))
    assert got.id == vector["msg_id"]
    fresh = b'{"type":"user.created"}'
    signed = signed_headers(fresh)
    later = float(signed["svix-timestamp"]) + 600
    with pytest.raises(Unauthorized) as err:
        Verifier([SECRET]).verify(fresh, signed, now_s=later)
    assert err.value.code == "stale_timestamp"

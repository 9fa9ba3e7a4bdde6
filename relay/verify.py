"""Svix signature verification of Clerk webhooks, on the raw body bytes.

Wraps the ``svix`` package's traps: it takes one secret per ``Webhook`` object,
reads the wall clock inside ``verify()``, and raises plain
``ValueError`` (or ``binascii.Error``/``UnicodeDecodeError``) for malformed
signatures and bodies. Everything a client can get wrong becomes a
:class:`~relay.errors.BadRequest` (400) or :class:`~relay.errors.Unauthorized` (401).

Header shape and the timestamp window are checked here, against the caller's ``now``,
so errors say exactly what is wrong and the answer depends on no other clock; the
expected signature itself is computed by ``svix`` (``Webhook.sign``) and compared in
constant time.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from svix.webhooks import Webhook

from relay.errors import BadRequest, Unauthorized

#: Svix's own tolerance, both directions; the library does not let it be changed.
TOLERANCE_S = 5 * 60


#: Every header :func:`read_headers` looks at, lower-case.
HEADER_NAMES = tuple(
    f"{prefix}-{name}"
    for prefix in ("svix", "webhook")
    for name in ("id", "timestamp", "signature")
)


@dataclass(frozen=True, slots=True)
class SvixHeaders:
    """The three headers of a Svix delivery (``webhook-*`` accepted as a fallback)."""

    id: str
    timestamp: int
    signature: str


def read_headers(headers: Mapping[str, str]) -> SvixHeaders:
    """Extract and sanity-check the headers; 400 if missing or malformed."""

    # HTTP header names are case-insensitive; a plain dict of Flask's headers is not.
    lowered = {k.lower(): v for k, v in headers.items()}

    def get(name: str) -> str:
        value = lowered.get(f"svix-{name}") or lowered.get(f"webhook-{name}") or ""
        return value.strip()

    msg_id, ts, sig = get("id"), get("timestamp"), get("signature")
    missing = [
        n
        for n, v in (("svix-id", msg_id), ("svix-timestamp", ts), ("svix-signature", sig))
        if not v
    ]
    if missing:
        raise BadRequest(f"missing header(s): {', '.join(missing)}", code="missing_headers")
    if len(msg_id) > 255 or not msg_id.isprintable():
        raise BadRequest(
            "svix-id is not a printable id of at most 255 characters", code="bad_headers"
        )
    if not ts.isdigit() or len(ts) > 11:
        raise BadRequest(
            "svix-timestamp must be integer seconds since the epoch", code="bad_headers"
        )
    if not any(part.startswith("v1,") for part in sig.split()):
        raise BadRequest("svix-signature has no v1 signature", code="bad_headers")
    return SvixHeaders(msg_id, int(ts), sig)


class Verifier:
    """Checks a delivery against every configured secret (rotation, several endpoints)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("at least one signing secret is required")
        self._webhooks = [Webhook(s) for s in secrets]

    def verify(self, body: bytes, headers: Mapping[str, str], *, now_s: float) -> SvixHeaders:
        """Return the headers if some secret signed ``body``; raise 400/401 otherwise."""
        svix = read_headers(headers)
        if abs(now_s - svix.timestamp) > TOLERANCE_S:
            raise Unauthorized(
                "svix-timestamp is outside the 5 minute tolerance", code="stale_timestamp"
            )
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("body is not UTF-8", code="bad_body") from None
        try:
            # What svix's own verify() compares: each v1 entry's bytes, decoded as it does
            # (stray characters dropped, bad padding an error), so a malformed entry is a
            # 400 and a garbled one a 401, as before.
            given = [
                base64.b64decode(value)
                for version, _, value in (part.partition(",") for part in svix.signature.split())
                if version == "v1"
            ]
        except ValueError:  # binascii.Error is a ValueError
            raise BadRequest("svix-signature is malformed", code="bad_headers") from None
        # svix computes the signature (Webhook.sign); the time check above is ours, so the
        # result depends on ``now_s`` alone. Webhook.verify() would read the clock again.
        at = datetime.fromtimestamp(svix.timestamp, UTC)
        text = body.decode("utf-8")
        for webhook in self._webhooks:
            expected = base64.b64decode(webhook.sign(svix.id, at, text).partition(",")[2])
            if any(hmac.compare_digest(expected, sig) for sig in given):
                return svix
        # Deliberately vague: never hint which secret was close.
        raise Unauthorized("signature does not match", code="bad_signature")

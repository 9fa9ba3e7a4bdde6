"""Svix signature verification of Clerk webhooks, on the raw body bytes.

Wraps the ``svix`` package's traps (see shared/reference/clerk-svix.md §5): it takes
one secret per ``Webhook`` object, returns None in 2.x, and raises plain
``ValueError`` (or ``binascii.Error``/``UnicodeDecodeError``) for malformed
signatures and bodies. Everything a client can get wrong becomes a
:class:`~relay.errors.BadRequest` (400) or :class:`~relay.errors.Unauthorized` (401).

Header shape and the timestamp window are checked here first, against ``now``, so
errors say exactly what is wrong; the signature itself is left to ``svix``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from svix.webhooks import Webhook, WebhookVerificationError

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
        plain = {
            "svix-id": svix.id,
            "svix-timestamp": str(svix.timestamp),
            "svix-signature": svix.signature,
        }
        for webhook in self._webhooks:
            try:
                webhook.verify(body, plain)
            except WebhookVerificationError:
                continue
            except ValueError:  # binascii.Error and malformed entries are ValueErrors
                raise BadRequest("svix-signature is malformed", code="bad_headers") from None
            return svix
        # Deliberately vague: never hint which secret was close.
        raise Unauthorized("signature does not match", code="bad_signature")

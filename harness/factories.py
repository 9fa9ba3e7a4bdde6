"""Factories for tests: events, envelopes and signed requests, with overrides."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from svix.webhooks import Webhook

from relay.models import NewEvent, Status

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECOND_SECRET = "whsec_plJ3nmyCDGBKInavdOK15jsl"
FORWARD_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"

# The repository carries its own test data (sources in tests/fixtures/SOURCES.md).
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
CLERK_FIXTURES = sorted((FIXTURES / "clerk").glob("*.json"))

_ids = itertools.count(1)


def fixture_paths() -> list[Path]:
    """Every Clerk example payload shipped in tests/fixtures/clerk."""
    if not CLERK_FIXTURES:
        raise RuntimeError(f"no Clerk fixtures under {FIXTURES}")
    return CLERK_FIXTURES


def make_envelope(
    event_type: str = "user.updated",
    *,
    entity_id: str = "user_1",
    obj: str | None = None,
    timestamp: int = 1_700_000_000_000,
    updated_at: int | None = None,
    **data: Any,
) -> dict[str, Any]:
    """A Clerk-shaped envelope; ``data`` keys are merged into ``data``."""
    return {
        "object": "event",
        "type": event_type,
        "timestamp": timestamp,
        "instance_id": "ins_test",
        "data": {
            "object": obj or event_type.split(".")[0],
            "id": entity_id,
            "updated_at": updated_at if updated_at is not None else timestamp,
            **data,
        },
    }


def make_event(
    event_type: str = "user.updated",
    *,
    event_id: str | None = None,
    received_at_ms: int = 1_700_000_000_000,
    status: Status = Status.PENDING,
    **envelope_kw: Any,
) -> NewEvent:
    """A :class:`NewEvent` built the way ingest builds it."""
    envelope = make_envelope(event_type, **envelope_kw)
    body = json.dumps(envelope).encode()
    return NewEvent.from_envelope(
        event_id or f"msg_test{next(_ids):06d}",
        body,
        envelope,
        received_at_ms=received_at_ms,
        status=status,
    )


def signed_headers(
    body: bytes | str,
    *,
    secret: str = SECRET,
    msg_id: str | None = None,
    at: datetime | None = None,
) -> dict[str, str]:
    """``svix-*`` headers for ``body`` as Clerk would send them."""
    msg_id = msg_id or f"msg_{next(_ids):08d}"
    at = at or datetime.now(UTC)
    text = body.decode() if isinstance(body, bytes) else body
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(at.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, at, text),
        "content-type": "application/json",
    }

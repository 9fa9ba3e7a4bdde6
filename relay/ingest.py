"""Receiving Clerk webhooks: verify, parse, commit durably, then answer.

``POST /webhooks/clerk`` and ``POST /clerk-users-webhook`` are one endpoint. The raw
body is verified before anything parses it (re-serialised JSON never verifies), and
the answer is sent only after the store committed: a 200 means the event will be
delivered or end visibly ``failed``; a 503 means nothing was kept and Clerk retries.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from flask import Blueprint, Response, g, request
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from relay import metrics
from relay.errors import BadRequest, HTTPError, PayloadTooLarge, StoreError, StoreUnavailable
from relay.models import NewEvent, Status, matches_any
from relay.settings import Settings
from relay.store import Store
from relay.verify import HEADER_NAMES, Verifier
from relay.web import runtime

log = structlog.get_logger("relay.ingest")
bp = Blueprint("ingest", __name__)

_verifiers: dict[tuple[str, ...], Verifier] = {}


def _verifier(settings: Settings) -> Verifier:
    # Built once per process: svix decodes each secret in its constructor.
    key = settings.webhook_secrets
    if key not in _verifiers:
        _verifiers[key] = Verifier(key)
    return _verifiers[key]


@bp.post("/webhooks/clerk")
@bp.post("/clerk-users-webhook")
def receive() -> Response:
    rt = runtime()
    settings = rt.settings
    event_type = "unknown"
    try:
        body = _read_body(settings.max_body_bytes)
        headers = request.headers  # case-insensitive; only the svix ones are copied out
        svix_headers = {name: value for name in HEADER_NAMES if (value := headers.get(name))}
        svix = _verifier(settings).verify(body, svix_headers, now_s=time.time())
        g.log_fields = fields = {"svix_id": svix.id}
        envelope = _parse(body)
        event_type = fields["event_type"] = envelope["type"]
        event = NewEvent.from_envelope(
            svix.id,
            body,
            envelope,
            received_at_ms=int(time.time() * 1000),
            status=_initial_status(settings, event_type),
        )
        new = _commit(rt.store, event)
    except HTTPError as exc:
        metrics.EVENTS_RECEIVED.labels(type=event_type, outcome=f"rejected_{exc.status_code}").inc()
        raise
    outcome = "accepted" if new else "duplicate"
    metrics.EVENTS_RECEIVED.labels(type=event_type, outcome=outcome).inc()
    fields["outcome"] = outcome
    if new and event.status == Status.PENDING:
        rt.store.notify()
    return _json({"status": outcome, "id": svix.id})


def _json(payload: dict[str, str]) -> Response:
    # Not jsonify(): its provider machinery costs more than the rest of the response.
    return Response(json.dumps(payload), status=200, mimetype="application/json")


def _read_body(limit: int) -> bytes:
    # Content-Length is checked by Flask (MAX_CONTENT_LENGTH); a chunked body is capped
    # while it streams, so a liar cannot make us buffer more than the limit.
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body is {request.content_length} bytes; the limit is {limit}")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"body is larger than the limit of {limit} bytes")
    return body


def _parse(body: bytes) -> dict[str, Any]:
    try:
        envelope = json.loads(body)
    except ValueError:
        raise BadRequest("body is not JSON", code="bad_body") from None
    if not isinstance(envelope, dict):
        raise BadRequest("body is not a JSON object", code="bad_body")
    if not isinstance(envelope.get("type"), str) or not envelope["type"]:
        raise BadRequest('body has no string field "type"', code="bad_body")
    return envelope


def _initial_status(settings: Settings, event_type: str) -> Status:
    """Skipped at once when no configuration would ever deliver this type."""
    if not matches_any(event_type, settings.events):
        return Status.SKIPPED
    if settings.target == "mutation" and settings.route_for(event_type) is None:
        return Status.SKIPPED
    return Status.PENDING


@retry(
    retry=retry_if_exception_type(StoreError),
    stop=stop_after_attempt(2),
    wait=wait_random_exponential(multiplier=0.05, max=0.5),
    reraise=True,
)
def _insert_again(store: Store, event: NewEvent) -> bool:
    # tenacity: a busy or briefly unreachable database gets two more quick tries
    # before Clerk is told 503 (Clerk's own retry would take minutes).
    return store.insert(event)


def _commit(store: Store, event: NewEvent) -> bool:
    try:
        try:
            # The first try is a plain call: tenacity's bookkeeping costs ~20 us a
            # request (measured), and almost every insert succeeds the first time.
            return store.insert(event)
        except StoreError:
            return _insert_again(store, event)
    except StoreError as exc:
        log.error("ingest_commit_failed", error=str(exc))
        raise StoreUnavailable("the event could not be stored; retry later") from exc

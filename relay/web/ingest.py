"""Receiving Clerk webhooks: verify, parse, commit durably, then answer.

``POST /webhooks/clerk`` and ``POST /clerk-users-webhook`` are one endpoint. The raw
body is verified before anything parses it (re-serialised JSON never verifies), and
the answer is sent only after the store committed: a 200 means the event will be
delivered or end visibly ``failed``; a 503 means nothing was kept and Clerk retries.

The endpoint is a plain WSGI app mounted in front of Flask by the factory, because it
is the relay's one hot path: every Clerk delivery, in bursts. Without Flask's request
context, hooks and response objects a delivery costs ~85 us of Python instead of
~190 us (measured in-process), which is +25 % ingest throughput on 2 cores under
gunicorn (2,170 -> 2,710-2,840 req/s, web-only, same run). It keeps the app's
contract: JSON errors, ``X-Request-Id``, the canonical log line, the metrics.
Every other path and method goes on to Flask, except other methods on these paths
(405, like Flask would answer).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential
from werkzeug.wsgi import get_content_length, get_input_stream

from relay import metrics
from relay.errors import (
    BadRequest,
    HTTPError,
    MethodNotAllowed,
    PayloadTooLarge,
    StoreError,
    StoreUnavailable,
)
from relay.models import NewEvent, Status, matches_any
from relay.settings import Settings
from relay.store import Store
from relay.verify import HEADER_NAMES, Verifier
from relay.web.context import UNEXPECTED, Runtime, begin_request, log_request

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = structlog.get_logger("relay.ingest")

#: The endpoint's paths: ours, and the one Convex's Clerk guide uses.
PATHS = frozenset({"/webhooks/clerk", "/clerk-users-webhook"})
#: The svix headers as WSGI environ keys.
_ENVIRON_HEADERS = {name: "HTTP_" + name.upper().replace("-", "_") for name in HEADER_NAMES}


class IngestEndpoint:
    """WSGI middleware: answers :data:`PATHS` itself, hands everything else to ``app``."""

    def __init__(self, app: WSGIApplication, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in PATHS:
            return self.app(environ, start_response)
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET")
        request_id = begin_request(environ.get("HTTP_X_REQUEST_ID"))
        fields: dict[str, Any] = {}
        headers = [("X-Request-Id", request_id)]
        try:
            if method != "POST":
                headers.append(("Allow", "POST"))
                raise MethodNotAllowed(f"{method} is not allowed on {path}")
            status, payload = 200, receive(self.runtime, environ, fields)
        except HTTPError as exc:
            fields["error"] = exc.code
            status, payload = exc.status_code, exc.to_dict()
        except Exception:
            log.exception("request_crashed")
            status, payload = 500, UNEXPECTED
        body = json.dumps(payload).encode()
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        log_request(method, path, status, started, fields)
        return [body]


def receive(runtime: Runtime, environ: WSGIEnvironment, fields: dict[str, Any]) -> dict[str, str]:
    """Verify, parse and commit one delivery; the 200 answer. ``fields`` collects what
    the request's log line says about it."""
    settings = runtime.settings
    event_type = "unknown"
    try:
        body = _read_body(environ, settings.max_body_bytes)
        headers = {name: environ[key] for name, key in _ENVIRON_HEADERS.items() if key in environ}
        svix = _verifier(settings).verify(body, headers, now_s=time.time())
        fields["svix_id"] = svix.id
        envelope = _parse(body)
        event_type = fields["event_type"] = envelope["type"]
        event = NewEvent.from_envelope(
            svix.id,
            body,
            envelope,
            received_at_ms=int(time.time() * 1000),
            status=_initial_status(settings, event_type),
        )
        new = _commit(runtime.store, event)
    except HTTPError as exc:
        _received(event_type, f"rejected_{exc.status_code}").inc()
        raise
    outcome = fields["outcome"] = "accepted" if new else "duplicate"
    _received(event_type, outcome).inc()
    if not new:
        _check_duplicate(runtime.store, event)
    return {"status": outcome, "id": svix.id}


def _check_duplicate(store: Store, event: NewEvent) -> None:
    """A redelivery should carry the stored bytes. If it does not, the first body stays
    (it may be delivered already), but the difference is logged, counted and kept on the
    event: a signed body that changed under one svix-id is worth a look."""
    try:
        stored = store.get(event.id)
        if stored is None or stored.body == event.body:
            return
        received = hashlib.sha256(event.body).hexdigest()
        log.warning(
            "duplicate_body_differs",
            svix_id=event.id,
            stored_sha256=hashlib.sha256(stored.body).hexdigest(),
            received_sha256=received,
        )
        metrics.BODY_CONFLICTS.inc()
        store.record_body_conflict(event.id, body_sha256=received, now_ms=event.received_at_ms)
    except StoreError as exc:  # the answer stands: the first body is stored either way
        log.error("duplicate_check_failed", svix_id=event.id, error=str(exc))


@functools.lru_cache(maxsize=4096)
def _received(event_type: str, outcome: str) -> Counter:
    # The labelled child, looked up once: labels() takes a lock and builds a key on
    # every call. Bounded like the metric's own series (only signed events get a type).
    return metrics.EVENTS_RECEIVED.labels(type=event_type, outcome=outcome)


_verifiers: dict[tuple[str, ...], Verifier] = {}


def _verifier(settings: Settings) -> Verifier:
    # Built once per process: svix decodes each secret in its constructor.
    key = settings.webhook_secrets
    if key not in _verifiers:
        _verifiers[key] = Verifier(key)
    return _verifiers[key]


def _read_body(environ: WSGIEnvironment, limit: int) -> bytes:
    # A declared length over the limit is refused unread; a chunked body is capped
    # while it streams, so a liar cannot make us buffer more than the limit.
    length = get_content_length(environ)
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body is {length} bytes; the limit is {limit}")
    body = get_input_stream(environ).read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"body is larger than the limit of {limit} bytes")
    return bytes(body)


#: Deepest nesting of objects and arrays a body may have. Clerk's own payloads are a
#: handful of levels deep and Convex refuses values past 64; 128 leaves room for any
#: metadata a Convex deployment could take, and keeps every stored event within what the
#: console, the admin API and normalization can walk.
MAX_NESTING = 128
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def _too_deep(body: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether ``body`` nests objects/arrays past ``limit``, found without parsing it
    (``json.loads`` recurses once per level and fails with RecursionError)."""
    if body.count(b"[") + body.count(b"{") <= limit:  # C-speed: the usual answer
        return False
    depth = 0
    for byte in _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", body)):
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return True
    return False


class _NotJSON(ValueError):
    """A value JSON (RFC 8259) has no place for, though Python's parser would take it."""


def _reject_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf
        raise _NotJSON(f"number {text[:40]} is out of range")
    return value


def _parse(body: bytes) -> dict[str, Any]:
    if _too_deep(body):
        raise BadRequest(f"body nests deeper than {MAX_NESTING} levels", code="bad_body")
    try:
        envelope = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except _NotJSON as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="bad_body") from None
    except (ValueError, RecursionError):
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


#: When this process last told readiness that ingest stores events again (monotonic s).
_cleared_at = -math.inf
#: A success re-clears readiness at most this often (a gauge write is a locked mmap write).
_CLEAR_EVERY_S = 1.0


def _commit(store: Store, event: NewEvent) -> bool:
    global _cleared_at  # process-wide: the rate limit of one gauge write
    try:
        try:
            # The first try is a plain call: tenacity's bookkeeping costs ~20 us a
            # request (measured), and almost every insert succeeds the first time.
            new = store.insert(event)
        except StoreError:
            new = _insert_again(store, event)
    except StoreError as exc:
        log.error("ingest_commit_failed", error=str(exc))
        metrics.INGEST_FAILED_AT.set(time.time())
        _cleared_at = -math.inf
        raise StoreUnavailable("the event could not be stored; retry later") from exc
    if (now := time.monotonic()) - _cleared_at >= _CLEAR_EVERY_S:
        metrics.INGEST_FAILED_AT.set(0)
        _cleared_at = now
    return new

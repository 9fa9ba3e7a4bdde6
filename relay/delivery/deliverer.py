"""HTTP egress to Convex: building, signing and sending one attempt.

Two targets (``RELAY_TARGET``):

* ``http-action``: ``POST {CONVEX_SITE_URL}{CONVEX_WEBHOOK_PATH}`` with Clerk's bytes
  (or the normalized event) and Svix headers signed afresh with
  ``RELAY_FORWARD_SECRET`` on every attempt, so Convex's ``svix`` check passes even
  when the event is days old. ``svix-id`` stays Clerk's id, so Convex can dedupe.
* ``mutation``: ``POST {CONVEX_URL}/api/mutation`` with ``Authorization: Convex <key>``;
  a 200 reply whose JSON says ``"status": "error"`` is a function error.

This module only talks HTTP and reports what happened; :mod:`relay.delivery.outcome` decides
what it means and :mod:`relay.delivery.worker` records it.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

import urllib3
from svix.webhooks import Webhook

from relay.convex_values import convex_safe
from relay.delivery.deadline import POOL_CLASSES, Watchdog, track_connections
from relay.models import Event
from relay.normalize import normalize_event
from relay.redact import redact_text
from relay.settings import Settings

#: Kept from a failing response for the attempts log: enough to diagnose, never a payload dump.
ERROR_EXCERPT_CHARS = 500
#: Most of a reply ever read: classification needs Convex's leading ``"status"`` and an
#: excerpt. The rest is never read; its connection is dropped instead of drained, so a
#: 100 MB reply costs 8 KiB of memory, not 200 MB.
REPLY_READ_BYTES = 8 * 1024
USER_AGENT = f"clerk-convex-relay/{version('clerk-convex-relay')}"


@dataclass(frozen=True, slots=True)
class Request:
    """One prepared attempt. ``headers`` may hold credentials: never log it."""

    url: str
    headers: dict[str, str]
    body: bytes
    function: str | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """What came back (or did not): the input of :func:`relay.delivery.outcome.classify`."""

    status_code: int | None
    duration_ms: float
    convex_status: str | None = None
    retry_after: str | None = None
    transport_error: str | None = None
    excerpt: str | None = None


class NoRoute(Exception):
    """The event type is not routed to any Convex function."""


class Deliverer:
    """Builds and sends attempts for one configured target; thread-safe."""

    def __init__(self, settings: Settings) -> None:
        settings.require_delivery()
        self.settings = settings
        self.target_url = settings.target_url
        self._signer = Webhook(settings.forward_secret) if settings.forward_secret else None
        self._http = _connection_pool(self.target_url, settings.concurrency)
        # RELAY_DELIVERY_TIMEOUT bounds the whole attempt (connect, send, every read):
        # the watchdog ends it at the deadline; urllib3's own timeouts are per step.
        self._timeout = urllib3.Timeout(
            connect=settings.delivery_timeout_s, read=settings.delivery_timeout_s
        )
        self._watchdog = Watchdog()
        # Upstream text is redacted where it enters the relay (here), so the attempts
        # log, lastError, the admin API and every log line only ever see the result.
        self._secrets = tuple(
            s
            for s in (
                settings.convex_deploy_key,
                settings.forward_secret,
                *settings.webhook_secrets,
            )
            if s
        )
        # A pool of our own is asked for the path; a proxy needs the whole URL.
        self._absolute = isinstance(self._http, urllib3.ProxyManager)

    def prepare(self, event: Event, *, now: datetime | None = None) -> Request:
        """The request for one attempt; raises NoRoute or UnsafeValueError."""
        if self.settings.target == "http-action":
            return self._http_action(event, now or datetime.now(UTC))
        return self._mutation(event)

    def _payload(self, event: Event) -> dict[str, Any]:
        return normalize_event(
            event.envelope(),
            event_id=event.id,
            include=self.settings.include,
            issuer=self.settings.issuer_url,
        )

    def _http_action(self, event: Event, now: datetime) -> Request:
        if self.settings.payload == "normalized":
            body = json.dumps(self._payload(event), separators=(",", ":")).encode()
        else:
            body = event.body  # Clerk's bytes, untouched
        assert self._signer is not None  # noqa: S101 - require_delivery checked it
        signature = self._signer.sign(event.id, now, body.decode("utf-8"))
        headers = {
            "content-type": "application/json",
            "svix-id": event.id,
            "svix-timestamp": str(int(now.timestamp())),
            "svix-signature": signature,
        }
        return Request(self.target_url, headers, body)

    def _mutation(self, event: Event) -> Request:
        function = self.settings.route_for(event.type)
        if function is None:
            raise NoRoute(event.type)
        if self.settings.payload == "normalized":
            args: dict[str, Any] = {"event": self._payload(event)}
        else:
            data = event.envelope().get("data")
            if event.type == "user.deleted" and isinstance(data, dict):
                args = {"clerkUserId": data.get("id")}  # the official template's delete
            else:
                args = {"data": convex_safe(data, path="data")}
        body = json.dumps(
            {"path": function, "args": args, "format": "json"}, separators=(",", ":")
        ).encode()
        headers = {
            "content-type": "application/json",
            "authorization": f"Convex {self.settings.convex_deploy_key}",
        }
        return Request(self.target_url, headers, body, function)

    def send(self, request: Request) -> Response:
        """Send one attempt, all of it within ``RELAY_DELIVERY_TIMEOUT``; never raises for
        HTTP trouble."""
        started = time.perf_counter()
        with self._watchdog.attempt(self.settings.delivery_timeout_s) as attempt:
            try:
                reply = self._http.urlopen(
                    "POST",
                    request.url if self._absolute else _request_target(request.url),
                    body=request.body,
                    headers={"user-agent": USER_AGENT, **request.headers},
                    timeout=self._timeout,
                    retries=False,  # the worker's schedule retries, with backoff, from the rows
                    redirect=False,  # a redirect is a misconfigured URL, not a success
                    preload_content=False,  # read below, at most REPLY_READ_BYTES
                )
                content, whole = _read_head(reply)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                reason = "timed out" if attempt.expired else _transport_reason(exc)
                return Response(None, _ms(started), transport_error=reason)
            if attempt.expired:  # the cut-off socket read as an early end of the body
                return Response(None, _ms(started), transport_error="timed out")
        duration = _ms(started)
        convex_status = None
        if request.function is not None and reply.status == 200:
            convex_status = _convex_status(content, whole=whole)
        ok = 200 <= reply.status < 300 and convex_status != "error"
        excerpt = None if ok else redact_text(_excerpt(content), self._secrets)
        retry_after = reply.headers.get("Retry-After")
        return Response(reply.status, duration, convex_status, retry_after, None, excerpt)


def _connection_pool(url: str, size: int) -> urllib3.HTTPConnectionPool | urllib3.ProxyManager:
    """Kept-alive connections to the one target, one per delivery slot.

    urllib3 directly rather than requests: the target never changes, and a requests
    Session re-reads proxy settings and ``~/.netrc`` on every call, which cost about
    twice the CPU of the attempt itself (measured on the 2-core VM: ~440 against
    ~160 us per delivery). Proxy variables (``HTTPS_PROXY``, ``NO_PROXY`` ...) are
    honoured as requests did, read once here.
    """
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        manager = urllib3.ProxyManager(proxy, num_pools=1, maxsize=size)
        track_connections(manager)
        return manager
    pool_class = POOL_CLASSES[parts.scheme]
    return pool_class(parts.hostname or "", parts.port, maxsize=size)


def _read_head(reply: urllib3.BaseHTTPResponse) -> tuple[bytes, bool]:
    """At most REPLY_READ_BYTES of the body, and whether that was all of it. A longer
    body's connection is closed rather than drained (or kept)."""
    content = reply.read(REPLY_READ_BYTES + 1, decode_content=True)
    if len(content) <= REPLY_READ_BYTES:
        reply.release_conn()
        return content, True
    reply.close()  # the unread rest goes with the connection...
    reply.release_conn()  # ...whose pool slot is free again (a closed one reconnects)
    return content[:REPLY_READ_BYTES], False


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


#: Convex's function API puts ``status`` first: ``{"status":"success","value":...}``.
_LEADING_STATUS = re.compile(rb'\A\s*\{\s*"status"\s*:\s*"(success|error)"')


def _convex_status(content: bytes, *, whole: bool = True) -> str | None:
    if not whole:  # a reply cut at REPLY_READ_BYTES: its leading status field decides
        match = _LEADING_STATUS.match(content)
        return match.group(1).decode() if match else "error"
    try:
        value = json.loads(content)
    except ValueError:
        return "error"  # a 200 that is not Convex's envelope is not a success either
    status = value.get("status") if isinstance(value, dict) else None
    return status if isinstance(status, str) else "error"


def _excerpt(content: bytes) -> str:
    text = content.decode("utf-8", "replace")
    try:
        value = json.loads(text)
    except ValueError:
        return text[:ERROR_EXCERPT_CHARS]
    if isinstance(value, dict):  # Convex puts the useful part in one of these fields
        for key in ("errorMessage", "message", "code", "error"):
            if isinstance(value.get(key), str):
                return str(value[key])[:ERROR_EXCERPT_CHARS]
    return text[:ERROR_EXCERPT_CHARS]


def _request_target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path or '/'}{'?' + parts.query if parts.query else ''}"


_CONNECTION_FAILED = (
    urllib3.exceptions.NewConnectionError,  # refused, unresolvable (a ConnectTimeoutError!)
    urllib3.exceptions.ProtocolError,  # reset or closed mid-request
    urllib3.exceptions.SSLError,
    urllib3.exceptions.ProxyError,
)


def _transport_reason(exc: Exception) -> str:
    if isinstance(exc, _CONNECTION_FAILED):
        return "connection failed"
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):  # raised by the socket itself while reading the body
        return "connection failed"
    return type(exc).__name__

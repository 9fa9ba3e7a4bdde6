"""HTTP egress to Convex: building, signing and sending one attempt.

Two targets (``RELAY_TARGET``):

* ``http-action``: ``POST {CONVEX_SITE_URL}{CONVEX_WEBHOOK_PATH}`` with Clerk's bytes
  (or the normalized event) and Svix headers signed afresh with
  ``RELAY_FORWARD_SECRET`` on every attempt, so Convex's ``svix`` check passes even
  when the event is days old. ``svix-id`` stays Clerk's id, so Convex can dedupe.
* ``mutation``: ``POST {CONVEX_URL}/api/mutation`` with ``Authorization: Convex <key>``;
  a 200 reply whose JSON says ``"status": "error"`` is a function error.

This module only talks HTTP and reports what happened; :mod:`relay.outcome` decides
what it means and :mod:`relay.worker` records it.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import urllib3
from svix.webhooks import Webhook

from relay import __version__
from relay.convex_values import convex_safe
from relay.models import Event
from relay.normalize import normalize_event
from relay.settings import Settings

#: Kept from a failing response for the attempts log: enough to diagnose, never a payload dump.
ERROR_EXCERPT_CHARS = 500
USER_AGENT = f"clerk-convex-relay/{__version__}"


@dataclass(frozen=True, slots=True)
class Request:
    """One prepared attempt. ``headers`` may hold credentials: never log it."""

    url: str
    headers: dict[str, str]
    body: bytes
    function: str | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """What came back (or did not): the input of :func:`relay.outcome.classify`."""

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
        self._timeout = urllib3.Timeout(
            connect=settings.delivery_timeout_s, read=settings.delivery_timeout_s
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
        """Send one attempt with the per-attempt timeout; never raises for HTTP trouble."""
        started = time.perf_counter()
        try:
            reply = self._http.urlopen(
                "POST",
                request.url if self._absolute else _request_target(request.url),
                body=request.body,
                headers={"user-agent": USER_AGENT, **request.headers},
                timeout=self._timeout,
                retries=False,  # the worker's schedule retries, with backoff, from the database
                redirect=False,  # a redirect is a misconfigured URL, not a success
            )
        except urllib3.exceptions.HTTPError as exc:
            return Response(None, _ms(started), transport_error=_transport_reason(exc))
        duration = _ms(started)
        convex_status = None
        if request.function is not None and reply.status == 200:
            convex_status = _convex_status(reply.data)
        ok = 200 <= reply.status < 300 and convex_status != "error"
        excerpt = None if ok else _excerpt(reply.data)
        return Response(
            reply.status,
            duration,
            convex_status,
            reply.headers.get("Retry-After"),
            None,
            excerpt,
        )


def _connection_pool(url: str, size: int) -> urllib3.HTTPConnectionPool | urllib3.ProxyManager:
    """Kept-alive connections to the one target, one per delivery slot.

    urllib3 directly rather than requests: the target never changes, and a requests
    Session re-reads proxy settings and ``~/.netrc`` on every call, which cost about
    twice the CPU of the attempt itself (measured on the 2-core VM: ~440 against
    ~160 us per delivery). Proxy variables (``HTTPS_PROXY``, ``NO_PROXY`` ...) are
    honoured as requests did, read once here.
    """
    scheme = urlsplit(url).scheme
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(urlsplit(url).hostname or ""):
        return urllib3.ProxyManager(proxy, num_pools=1, maxsize=size)
    return urllib3.connection_from_url(url, maxsize=size)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _convex_status(content: bytes) -> str | None:
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


def _transport_reason(exc: urllib3.exceptions.HTTPError) -> str:
    if isinstance(exc, _CONNECTION_FAILED):
        return "connection failed"
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return "timed out"
    return type(exc).__name__

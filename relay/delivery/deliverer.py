"""HTTP egress to Convex: building, signing and sending one attempt.

Two targets (``RELAY_TARGET``):

* ``http-action``: ``POST {CONVEX_SITE_URL}{CONVEX_WEBHOOK_PATH}`` with Clerk's bytes
  (or the normalized event) and Svix headers signed afresh with
  ``RELAY_FORWARD_SECRET`` on every attempt, so Convex's ``svix`` check passes even
  when the event is days old. ``svix-id`` stays Clerk's id, so Convex can dedupe.
* ``mutation``: ``POST {CONVEX_URL}/api/mutation`` with ``Authorization: Convex <key>``;
  a 200 reply whose JSON says ``"status": "error"`` is a function error.

This module builds requests and reads replies; :mod:`relay.delivery.transport` moves the
bytes (injected, so tests can stand in for the network), :mod:`relay.delivery.outcome`
decides what a reply means and :mod:`relay.delivery.recorder` writes it down.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from svix.webhooks import Webhook

from relay.convex_values import convex_safe
from relay.delivery.transport import REPLY_READ_BYTES as REPLY_READ_BYTES
from relay.delivery.transport import PooledTransport, Transport
from relay.delivery.transport import Request as Request
from relay.errors import NoRoute, TransportError
from relay.models import Event
from relay.normalize import normalize_event
from relay.redact import redact_text
from relay.settings import Settings

#: Kept from a failing response for the attempts log: enough to diagnose, never a payload dump.
ERROR_EXCERPT_CHARS = 500


@dataclass(frozen=True, slots=True)
class Response:
    """What came back (or did not): the input of :func:`relay.delivery.outcome.classify`."""

    status_code: int | None
    duration_ms: float
    convex_status: str | None = None
    retry_after: str | None = None
    transport_error: str | None = None
    excerpt: str | None = None


class Deliverer:
    """Builds and sends attempts for one configured target; thread-safe."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport | None = None,
        *,
        monotonic: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``transport`` is the network edge (default: pooled urllib3 connections under
        the ``RELAY_DELIVERY_TIMEOUT`` deadline); ``monotonic`` times each attempt."""
        settings.require_delivery()
        self.settings = settings
        self.target_url = settings.target_url
        self._signer = Webhook(settings.forward_secret) if settings.forward_secret else None
        if transport is None:
            transport = PooledTransport(
                self.target_url,
                pool_size=settings.concurrency,
                timeout_s=settings.delivery_timeout_s,
            )
        self._transport = transport
        self._monotonic = monotonic
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
        started = self._monotonic()
        try:
            reply = self._transport.send(request)
        except TransportError as exc:
            return Response(None, self._ms_since(started), transport_error=str(exc))
        duration = self._ms_since(started)
        convex_status = None
        if request.function is not None and reply.status == 200:
            convex_status = _convex_status(reply.body, whole=reply.whole)
        ok = 200 <= reply.status < 300 and convex_status != "error"
        excerpt = None if ok else redact_text(_excerpt(reply.body), self._secrets)
        retry_after = reply.headers.get("Retry-After")
        return Response(reply.status, duration, convex_status, retry_after, None, excerpt)

    def _ms_since(self, started: float) -> float:
        return (self._monotonic() - started) * 1000.0


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

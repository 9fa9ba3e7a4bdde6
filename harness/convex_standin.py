"""A real HTTP server on loopback standing in for a Convex deployment.

Serves both delivery targets with Convex's real response shapes
(docs/reference/convex.md): the HTTP action at ``/clerk-users-webhook`` (which
verifies the relay's forwarded Svix signature with the ``svix`` package, as Convex's
template does) and the function API at ``/api/mutation``. A test scripts failures:
"fail the next N requests with 503 and Retry-After", "hang", "reply status:error".
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from svix.webhooks import Webhook, WebhookVerificationError


class _QuietServer(ThreadingHTTPServer):
    """Says nothing when a client hangs up before its answer (a killed worker)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@dataclass
class Received:
    """One request the stand-in accepted or refused."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Script:
    """What the stand-in does next; each entry is used once, then it succeeds."""

    replies: list[dict[str, Any]] = field(default_factory=list)
    hang_s: float = 0.0


class ConvexStandIn:
    """Start with :meth:`running`; read :attr:`received` to see what the relay sent."""

    def __init__(self, secret: str, deploy_key: str = "prod:standin|key") -> None:
        self.webhook = Webhook(secret)
        self.deploy_key = deploy_key
        self.script = Script()
        self.received: list[Received] = []
        self.delivered: list[str] = []  # svix-id (or args event id) of successful deliveries
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        #: While set, every request gets this status (an outage), until :meth:`up`.
        self.outage_status: int | None = None
        #: Event ids (svix-id) refused every time with ``(status, body)``.
        self.refuse: dict[str, tuple[int, Any]] = {}

    def down(self, status: int = 503) -> None:
        """Every request from now on gets ``status``, until :meth:`up`."""
        with self.lock:
            self.outage_status = status

    def up(self) -> None:
        """End an outage started by :meth:`down`."""
        with self.lock:
            self.outage_status = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def fail_next(
        self,
        n: int,
        status: int = 503,
        *,
        retry_after: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """The next ``n`` requests get ``status`` (with optional Retry-After)."""
        with self.lock:
            for _ in range(n):
                self.script.replies.append(
                    {"status": status, "retry_after": retry_after, "body": body}
                )

    def function_error_next(self, n: int, message: str = "Uncaught Error: boom") -> None:
        """The next ``n`` mutations reply 200 ``{"status": "error"}`` (a function error)."""
        self.fail_next(n, 200, body={"status": "error", "errorMessage": message})

    @contextmanager
    def running(self) -> Iterator[Self]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                if len(body) < length:
                    # The client went away mid-request (a worker killed between its
                    # headers and its body): Convex would not run anything for it.
                    self.close_connection = True
                    return
                status, payload, extra = standin._handle(self.path, dict(self.headers), body)
                data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()

    def _handle(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {k.lower(): v for k, v in headers.items()}
        with self.lock:
            outage = self.outage_status
            scripted = self.script.replies.pop(0) if self.script.replies else None
            hang = self.script.hang_s
            refused = self.refuse.get(headers.get("svix-id") or _event_id(body))
        if outage is not None:
            refused = (outage, {"code": "[Request ID: standin] Server Error"})
        if refused is not None:
            status, payload = refused
            with self.lock:
                self.received.append(Received(path, headers, body, status, time.time()))
            return status, payload, {}
        if hang:
            time.sleep(hang)
        status, payload, extra = self._answer(path, headers, body, scripted)
        with self.lock:
            self.received.append(Received(path, headers, body, status, time.time()))
        return status, payload, extra

    def _answer(
        self, path: str, headers: dict[str, str], body: bytes, scripted: dict[str, Any] | None
    ) -> tuple[int, Any, dict[str, str]]:
        if path == "/api/mutation":
            if headers.get("authorization") != f"Convex {self.deploy_key}":
                return (
                    401,
                    {
                        "code": "BadAdminKey",
                        "message": "The provided admin key was invalid for this instance",
                    },
                    {},
                )
        elif path == "/clerk-users-webhook":
            try:  # exactly what Convex's template does with CLERK_WEBHOOK_SECRET
                self.webhook.verify(body, headers)
            except (WebhookVerificationError, ValueError):
                return 400, {"error": "Error occured"}, {}
        else:
            return 404, {"code": f"No HttpAction routed for {path}"}, {}
        if scripted is not None:
            extra = {"Retry-After": scripted["retry_after"]} if scripted["retry_after"] else {}
            if scripted["status"] != 200 or scripted["body"] is not None:
                return scripted["status"], scripted["body"] or {"code": "scripted failure"}, extra
        event_id = headers.get("svix-id") or _event_id(body)
        with self.lock:
            self.delivered.append(event_id)
        if path == "/api/mutation":
            return 200, {"status": "success", "value": None}, {}
        return 200, None, {}


def _event_id(body: bytes) -> str:
    args = json.loads(body).get("args", {})
    event = args.get("event")
    if isinstance(event, dict):
        return str(event.get("id"))
    data = args.get("data") or {}
    return str(data.get("id") or args.get("clerkUserId"))

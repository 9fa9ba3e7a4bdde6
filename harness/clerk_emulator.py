"""A Clerk Backend API on loopback, for ``relay reconcile``'s tests and benchmark.

A real HTTP server (``ThreadingHTTPServer`` in a thread) built from Clerk's published
API facts: bearer auth with the secret key (401 otherwise); ``GET /v1/users`` as a
JSON array, newest first, with ``limit`` 1-500 and ``offset`` or ``starting_after``
(both at once is 422); ``GET /v1/users/count``; ``GET /v1/users/{id}`` (404 when
absent); ``GET /v1/organizations`` (``order_by`` ``±created_at``), ``GET
/v1/organizations/{id}``, ``GET /v1/organizations/{id}/memberships`` and ``GET
/v1/organization_memberships`` as ``{data, total_count}``. Errors are Clerk's
``{"errors": [{message, long_message, code}]}``.

Test hooks: :meth:`ClerkEmulator.throttle` answers the next requests 429 with a
``Retry-After``; :meth:`ClerkEmulator.on_request` runs a callback once a request's
answer is made and before it is sent (to change Clerk while a reconcile runs);
every request is logged with its monotonic arrival time. Objects are kept as
encoded JSON, so 100,000 users cost ~150 MB here, not in the process under test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SECRET_KEY = "sk_test_" + "reconcile0emulator0key"
PAGE_MAX = 500


@dataclass(frozen=True, slots=True)
class Logged:
    """One request the emulator answered."""

    at_s: float  # time.monotonic() on arrival
    path: str
    query: dict[str, list[str]]
    status: int


class _Collection:
    """Objects of one kind: id -> (created_at, encoded JSON), with a cached sort."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[int, bytes]] = {}
        self._order: list[str] | None = None  # newest first
        self._position: dict[str, int] = {}

    def put(self, obj: dict[str, Any]) -> None:
        self.items[obj["id"]] = (int(obj["created_at"]), json.dumps(obj).encode())
        self._order = None

    def remove(self, oid: str) -> bool:
        self._order = None
        return self.items.pop(oid, None) is not None

    def newest_first(self) -> list[str]:
        if self._order is None:
            self._order = sorted(self.items, key=lambda i: (self.items[i][0], i), reverse=True)
            self._position = {oid: n for n, oid in enumerate(self._order)}
        return self._order

    def position(self, oid: str) -> int | None:
        self.newest_first()
        return self._position.get(oid)

    def get(self, oid: str) -> dict[str, Any] | None:
        item = self.items.get(oid)
        return None if item is None else json.loads(item[1])

    def encoded(self, ids: Iterable[str]) -> bytes:
        return b"[" + b",".join(self.items[i][1] for i in ids) + b"]"


class ClerkEmulator:
    """One Clerk instance; ``url`` is its ``CLERK_API_URL`` (``.../v1``)."""

    def __init__(self, secret_key: str = SECRET_KEY) -> None:
        self.secret_key = secret_key
        self.users = _Collection()
        self.organizations = _Collection()
        self.memberships = _Collection()
        self.requests: list[Logged] = []
        self._throttle: list[float] = []  # Retry-After of each 429 still to answer
        self._hooks: list[Callable[[Logged], None]] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> ClerkEmulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                emulator._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- Clerk's state ---------------------------------------------------------------

    def put_user(self, user: dict[str, Any]) -> None:
        with self._lock:
            self.users.put(user)

    def put_users(self, users: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            for user in users:
                self.users.put(user)

    def delete_user(self, user_id: str) -> None:
        """Delete a user and (as Clerk does) its memberships."""
        with self._lock:
            self.users.remove(user_id)
            for mid in [m for m in self.memberships.items if self._member(m) == user_id]:
                self.memberships.remove(mid)

    def put_organization(self, org: dict[str, Any]) -> None:
        with self._lock:
            self.organizations.put(org)

    def delete_organization(self, org_id: str) -> None:
        with self._lock:
            self.organizations.remove(org_id)
            for mid in [m for m in self.memberships.items if self._org(m) == org_id]:
                self.memberships.remove(mid)

    def put_membership(self, membership: dict[str, Any]) -> None:
        with self._lock:
            self.memberships.put(membership)

    def delete_membership(self, membership_id: str) -> None:
        with self._lock:
            self.memberships.remove(membership_id)

    def _member(self, mid: str) -> str:
        return str(json.loads(self.memberships.items[mid][1])["public_user_data"]["user_id"])

    def _org(self, mid: str) -> str:
        return str(json.loads(self.memberships.items[mid][1])["organization"]["id"])

    # -- test hooks ------------------------------------------------------------------

    def throttle(self, count: int = 1, retry_after_s: float = 1.0) -> None:
        """Answer the next ``count`` requests 429 with ``Retry-After: retry_after_s``."""
        with self._lock:
            self._throttle += [retry_after_s] * count

    def on_request(self, hook: Callable[[Logged], None]) -> None:
        """Call ``hook`` for each request once its answer is made, before it is sent."""
        self._hooks.append(hook)

    def listed(self, path: str) -> list[Logged]:
        """Requests to ``/v1{path}`` (e.g. ``/users``) that were answered 200."""
        return [r for r in self.requests if r.path == path and r.status == 200]

    # -- HTTP ------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        arrived = time.monotonic()
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query)
        with self._lock:
            status, body, headers = self._answer(handler, parts.path, query)
            logged = Logged(arrived, parts.path.removeprefix("/v1"), query, status)
            self.requests.append(logged)
        # Before the reply is sent: what a hook changes is there for the client's next request.
        for hook in list(self._hooks):
            hook(logged)
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _answer(
        self, handler: BaseHTTPRequestHandler, path: str, query: dict[str, list[str]]
    ) -> tuple[int, bytes, dict[str, str]]:
        if handler.headers.get("Authorization") != f"Bearer {self.secret_key}":
            return _error(401, "authentication_invalid", "Unauthorized request")
        if self._throttle:
            wait = self._throttle.pop(0)
            status, body, _ = _error(429, "too_many_requests", "Too many requests")
            return status, body, {"Retry-After": f"{wait:g}"}
        path = path.removeprefix("/v1")
        try:
            limit = int(query.get("limit", ["10"])[0])
            offset = int(query.get("offset", ["0"])[0])
        except ValueError:
            return _error(422, "form_param_format_invalid", "limit and offset are integers")
        if not 1 <= limit <= PAGE_MAX or offset < 0:
            return _error(422, "form_param_value_invalid", "limit must be 1 to 500")
        segments = path.strip("/").split("/")
        if path == "/users":
            return self._list_users(query, limit, offset)
        if path == "/users/count":
            return _json({"object": "total_count", "total_count": len(self.users.items)})
        if len(segments) == 2 and segments[0] == "users":
            return _found(self.users.get(segments[1]))
        if path == "/organizations":
            order = query.get("order_by", ["-created_at"])[0]
            return self._data(self.organizations, limit, offset, oldest_first=order[0] == "+")
        if len(segments) == 2 and segments[0] == "organizations":
            return _found(self.organizations.get(segments[1]))
        if len(segments) == 3 and segments[0] == "organizations" and segments[2] == "memberships":
            if segments[1] not in self.organizations.items:
                return _error(404, "resource_not_found", "Organization not found")
            return self._data(self.memberships, limit, offset, org=segments[1])
        if path == "/organization_memberships":
            return self._data(self.memberships, limit, offset)
        return _error(404, "resource_not_found", f"no route {path}")

    def _list_users(
        self, query: dict[str, list[str]], limit: int, offset: int
    ) -> tuple[int, bytes, dict[str, str]]:
        order = self.users.newest_first()
        after = query.get("starting_after", [None])[0]
        if after is not None:
            if offset:
                return _error(422, "form_param_value_invalid", "offset with starting_after")
            position = self.users.position(after)
            if position is None:
                return _error(422, "form_param_value_invalid", "starting_after: unknown user")
            offset = position + 1
        return 200, self.users.encoded(order[offset : offset + limit]), {}

    def _data(
        self,
        collection: _Collection,
        limit: int,
        offset: int,
        *,
        oldest_first: bool = False,
        org: str | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        order = collection.newest_first()
        if oldest_first:
            order = order[::-1]
        if org is not None:
            order = [m for m in order if self._org(m) == org]
        data = collection.encoded(order[offset : offset + limit])
        body = b'{"data":' + data + b',"total_count":' + str(len(order)).encode() + b"}"
        return 200, body, {}


def _json(value: Any) -> tuple[int, bytes, dict[str, str]]:
    return 200, json.dumps(value).encode(), {}


def _found(obj: dict[str, Any] | None) -> tuple[int, bytes, dict[str, str]]:
    if obj is None:
        return _error(404, "resource_not_found", "not found")
    return _json(obj)


def _error(status: int, code: str, message: str) -> tuple[int, bytes, dict[str, str]]:
    body = {"errors": [{"message": message, "long_message": message, "code": code}]}
    return status, json.dumps(body).encode(), {}

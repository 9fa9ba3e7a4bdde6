"""Who may use ``/admin``: the bearer token, the console's session and CSRF, and a
limit on wrong guesses. Shared by the API (``relay.web.admin``) and the console
(``relay.web.console``).

* The token is compared with :func:`hmac.compare_digest`, so timing says nothing
  about how much of a guess was right.
* The console's session cookie is signed with a key *derived* from the token
  (HMAC with a fixed label), so every gunicorn worker agrees on it without extra
  configuration, and rotating the token signs every console user out. The cookie
  names a session recorded in the store (by hash), so signing out ends it for every
  copy of the cookie, not only in the browser that signed out.
* Wrong guesses are counted per client IP in a sliding window **in this process
  only**: with N gunicorn workers an attacker gets at most N times the budget, which
  still makes guessing a 16+ character token hopeless. A limited client is refused
  even with the right token until the window passes, so the limit cannot be used as
  an oracle.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Flask, Request, Response, current_app, g, jsonify, session
from flask.sessions import SecureCookieSessionInterface

from relay.errors import BadRequest, LimitedError
from relay.store import Store

#: Wrong tokens allowed per client IP within :data:`FAILURE_WINDOW_S`.
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
#: Clients tracked at once; the least recently failing are forgotten first (bounded memory).
MAX_TRACKED_CLIENTS = 10_000
#: A console session ends this long after sign-in, whatever the browser does.
SESSION_MAX_AGE_S = 12 * 3600
CSRF_FIELD = "csrf_token"
_SESSION_KEY_LABEL = b"relay-console-session-v1"


def token_matches(expected: str | None, presented: str | None) -> bool:
    """Constant-time comparison; False when either side is missing."""
    if not expected or presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def session_key(admin_token: str) -> bytes:
    """The console's cookie-signing key: the same in every worker, changes with the token."""
    return hmac.new(admin_token.encode(), _SESSION_KEY_LABEL, hashlib.sha256).digest()


@dataclass
class FailureLimiter:
    """Sliding window of wrong-token failures per client IP (thread-safe, per process)."""

    max_failures: int = MAX_FAILURES
    window_s: float = FAILURE_WINDOW_S
    clock: Callable[[], float] = time.monotonic
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, client: str) -> None:
        """Raise :class:`~relay.errors.LimitedError` while ``client`` is limited."""
        with self._lock:
            window = self._window(client)
            if window is not None and len(window) >= self.max_failures:
                wait_s = max(1, int(window[0] + self.window_s - self.clock()) + 1)
                raise LimitedError(wait_s)

    def fail(self, client: str) -> None:
        """Count one wrong token from ``client``."""
        with self._lock:
            window = self._window(client) or deque()
            window.append(self.clock())
            self._failures[client] = window
            self._failures.move_to_end(client)
            while len(self._failures) > MAX_TRACKED_CLIENTS:
                self._failures.popitem(last=False)

    def _window(self, client: str) -> deque[float] | None:
        window = self._failures.get(client)
        if window is None:
            return None
        cutoff = self.clock() - self.window_s
        while window and window[0] <= cutoff:
            window.popleft()
        if not window:
            del self._failures[client]
            return None
        return window


def client_ip(request: Request) -> str:
    """The peer address. Behind a proxy, wrap the app in ProxyFix so this is the client's."""
    return request.remote_addr or "unknown"


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, scoped to ``/admin``, Strict, Secure on https."""

    salt = "relay-console"

    def get_cookie_name(self, app: Flask) -> str:
        return "relay_console"

    def get_cookie_path(self, app: Flask) -> str:
        return "/admin"

    def get_cookie_httponly(self, app: Flask) -> bool:
        return True

    def get_cookie_samesite(self, app: Flask) -> str:
        return "Strict"

    def get_cookie_secure(self, app: Flask) -> bool:
        from flask import request

        # The forwarded header only ever *adds* Secure, so trusting it cannot weaken anything.
        return request.is_secure or request.headers.get("X-Forwarded-Proto") == "https"


def _session_hash(session_id: str) -> str:
    # The store keeps only a hash: reading the database does not yield a usable cookie.
    return hashlib.sha256(session_id.encode()).hexdigest()


def sign_in(now_s: float, sessions: Store) -> None:
    """Start a fresh signed-in session with a new CSRF token (no fixation across sign-in),
    recorded in the store so that signing out ends it everywhere."""
    session.clear()
    session_id = secrets.token_urlsafe(32)
    now_ms = int(now_s * 1000)
    sessions.start_console_session(
        _session_hash(session_id), now_ms=now_ms, expires_ms=now_ms + SESSION_MAX_AGE_S * 1000
    )
    session["signed_in_at"] = int(now_s)
    session["sid"] = session_id
    session[CSRF_FIELD] = secrets.token_urlsafe(32)


def signed_in(now_s: float, sessions: Store) -> bool:
    """Whether the cookie's session is signed in, not older than :data:`SESSION_MAX_AGE_S`,
    and not ended by a sign-out (a copy of the cookie is worthless after it)."""
    if "relay_signed_in" in g:  # asked twice per page: the guard and the page context
        return bool(g.relay_signed_in)
    at, session_id = session.get("signed_in_at"), session.get("sid")
    ok = (
        isinstance(at, int)
        and 0 <= now_s - at <= SESSION_MAX_AGE_S
        and isinstance(session_id, str)
        and sessions.console_session_valid(_session_hash(session_id), now_ms=int(now_s * 1000))
    )
    g.relay_signed_in = ok
    return ok


def sign_out(sessions: Store) -> None:
    """End this session in the store (every copy of the cookie) and in the browser."""
    session_id = session.get("sid")
    if isinstance(session_id, str):
        sessions.end_console_session(_session_hash(session_id))
    session.clear()
    g.relay_signed_in = False


def csrf_token() -> str:
    """The session's CSRF token, created on first use (the sign-in form needs one too)."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def check_csrf(presented: str | None) -> None:
    """Raise :class:`BadRequest` unless ``presented`` is this session's CSRF token."""
    expected = session.get(CSRF_FIELD)
    if not isinstance(expected, str) or not token_matches(expected, presented):
        raise BadRequest(
            "missing or wrong CSRF token; reload the page and try again", code="csrf_failed"
        )


def install(app: Flask, admin_token: str) -> None:
    """What the API and the console share on ``app``: the session cookie's key and store,
    this process's wrong-token limiter, and the JSON 429 it raises."""
    app.secret_key = session_key(admin_token)
    app.session_interface = ConsoleSessionInterface()
    app.extensions["relay_admin_limiter"] = FailureLimiter()
    app.register_error_handler(LimitedError, render_limited)


def limiter() -> FailureLimiter:
    """This process's wrong-token counter."""
    lim: FailureLimiter = current_app.extensions["relay_admin_limiter"]
    return lim


def render_limited(exc: LimitedError) -> tuple[Response, int]:
    """429 with ``Retry-After``, never cached."""
    response = jsonify(exc.to_dict())
    response.headers["Retry-After"] = str(exc.retry_after_s)
    response.headers["Cache-Control"] = "no-store"
    return response, exc.status_code

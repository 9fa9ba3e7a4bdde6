"""The few Clerk Backend API calls ``relay reconcile`` needs, within Clerk's rate limits.

Hand-written on ``requests`` rather than Clerk's SDK (``clerk-backend-api``): the SDK
returns pydantic models that drop fields it does not know (the relay forwards Clerk's
exact JSON), has no cursor (``starting_after``) paging for users, retries only 5xx by
default and has no client-side rate limit; see the README's "Reconcile" section.

Every request waits for :class:`RateLimiter` first, so the configured rate
(``RELAY_CLERK_RATE``) is a ceiling whatever Clerk answers. A 429 pushes the next
request back by ``Retry-After`` (or an exponential backoff), as do 5xx replies and
connection errors; other errors raise :class:`~relay.errors.ClerkAPIError` at once.
Lists are generators of pages, so memory holds one page (at most 500 objects).
The secret key goes only into the ``Authorization`` header: never into an error,
a log line or a ``repr``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import requests

from relay.errors import ClerkAPIError

#: Clerk's largest page (``limit`` 1-500).
PAGE_LIMIT = 500
#: Attempts per request before giving up (429s, 5xx, connection errors).
MAX_ATTEMPTS = 8
#: Backoff without ``Retry-After``: 1 s, 2 s, 4 s ... capped, with up to 50 % jitter.
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
#: A ``Retry-After`` longer than this is an outage, not a rate limit: give up.
RETRY_AFTER_CAP_S = 300.0
REQUEST_TIMEOUT_S = 30.0

JSONObject = dict[str, Any]


class RateLimiter:
    """Spaces request starts at least ``1 / rate_per_s`` apart, and after a
    ``Retry-After`` no earlier than it says.

    Spacing (not a bucket with a burst) keeps every window of N seconds under
    ``rate_per_s * N + 1`` requests, which is what Clerk's "100 per 10 s" counts.
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.interval_s = 1.0 / rate_per_s
        self._clock = clock
        self._sleep = sleep
        self._next_s = float("-inf")
        self._lock = threading.Lock()
        #: Seconds spent waiting so far (reported by the bench).
        self.waited_s = 0.0

    def acquire(self) -> None:
        """Wait until a request may start, and book the slot."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next_s)
            self._next_s = start + self.interval_s
        if start > now:
            self.waited_s += start - now
            self._sleep(start - now)

    def hold(self, seconds: float) -> None:
        """No request starts within ``seconds`` from now (a 429's ``Retry-After``)."""
        with self._lock:
            self._next_s = max(self._next_s, self._clock() + seconds)


def retry_after_s(header: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds form; an HTTP date counts as absent)."""
    if header is None:
        return None
    try:
        value = float(header.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Delay before retry ``attempt`` (1-based) when the server gave no ``Retry-After``."""
    base: float = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (attempt - 1))
    return base * (1.0 + rng.random() / 2)


class ClerkAPI:
    """A client for ``CLERK_API_URL`` with the secret key; counts what it sends."""

    def __init__(
        self,
        base_url: str,
        secret_key: str,
        *,
        limiter: RateLimiter,
        timeout_s: float = REQUEST_TIMEOUT_S,
        max_attempts: int = MAX_ATTEMPTS,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._session = requests.Session()
        self._session.trust_env = False  # no ~/.netrc or proxy lookups per request
        self._session.headers.update(
            {"Authorization": f"Bearer {secret_key}", "Accept": "application/json"}
        )
        #: Requests sent (every attempt) and 429 replies received.
        self.requests = 0
        self.throttled = 0

    def __repr__(self) -> str:
        return f"ClerkAPI({self.base_url!r})"

    def close(self) -> None:
        self._session.close()

    # -- listing ---------------------------------------------------------------------

    def user_pages(self, limit: int = PAGE_LIMIT) -> Iterator[list[JSONObject]]:
        """Every user, a page at a time (``starting_after`` cursor: stable under deletions)."""
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if after is not None:
                params["starting_after"] = after
            page = self._get("/users", params)
            if not isinstance(page, list):
                raise ClerkAPIError("GET /users did not answer a JSON array")
            if page:
                yield page
            if len(page) < limit:
                return
            after = str(page[-1]["id"])

    def organization_pages(self, limit: int = PAGE_LIMIT) -> Iterator[list[JSONObject]]:
        """Every organization, oldest first (new ones land at the end, shifting nothing)."""
        yield from self._offset_pages("/organizations", limit, {"order_by": "+created_at"})

    def membership_pages(self, limit: int = PAGE_LIMIT) -> Iterator[list[JSONObject]]:
        """Every organization membership of the instance."""
        yield from self._offset_pages("/organization_memberships", limit, {})

    def _offset_pages(
        self, path: str, limit: int, extra: dict[str, Any]
    ) -> Iterator[list[JSONObject]]:
        offset = 0
        while True:
            body = self._get(path, {"limit": limit, "offset": offset, **extra})
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list):
                raise ClerkAPIError(f"GET {path} did not answer {{data, total_count}}")
            if data:
                yield data
            if len(data) < limit:
                return
            offset += len(data)

    def count(self, kind: str) -> int | None:
        """How many objects a listing will return (for a progress bar), if Clerk says."""
        if kind == "users":
            body = self._get("/users/count", {})
        else:
            path = "/organizations" if kind == "organizations" else "/organization_memberships"
            body = self._get(path, {"limit": 1})
        total = body.get("total_count") if isinstance(body, dict) else None
        return total if isinstance(total, int) else None

    # -- existence checks (before queueing a deletion) -------------------------------

    def user_exists(self, user_id: str) -> bool:
        """``GET /users/{id}``: False only on 404."""
        return self._get(f"/users/{_segment(user_id)}", {}, missing_ok=True) is not None

    def organization_exists(self, org_id: str) -> bool:
        """``GET /organizations/{id}``: False only on 404."""
        return self._get(f"/organizations/{_segment(org_id)}", {}, missing_ok=True) is not None

    def membership_exists(self, org_id: str | None, membership_id: str) -> bool:
        """Whether the organization (404: no) still lists the membership.

        Clerk has no ``GET`` for one membership; without the organization id the
        answer is "exists", so nothing is deleted on a guess.
        """
        if not org_id:
            return True
        path = f"/organizations/{_segment(org_id)}/memberships"
        offset = 0
        while True:
            body = self._get(path, {"limit": PAGE_LIMIT, "offset": offset}, missing_ok=True)
            if body is None:
                return False
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list):
                raise ClerkAPIError(f"GET {path} did not answer {{data, total_count}}")
            if any(m.get("id") == membership_id for m in data):
                return True
            if len(data) < PAGE_LIMIT:
                return False
            offset += len(data)

    # -- one request, with rate limit and retries ------------------------------------

    def _get(self, path: str, params: dict[str, Any], *, missing_ok: bool = False) -> Any:
        """The decoded JSON of ``GET path``; None for a 404 when ``missing_ok``."""
        problem = f"GET {path}"
        for attempt in range(1, self.max_attempts + 1):
            self.limiter.acquire()
            self.requests += 1
            try:
                reply = self._session.get(
                    self.base_url + path, params=params, timeout=self.timeout_s
                )
            except requests.RequestException as exc:
                problem = f"GET {path}: {type(exc).__name__}"
                self.limiter.hold(backoff_s(attempt, self._rng))
                continue
            status = reply.status_code
            if status == 200:
                try:
                    return reply.json()
                except ValueError:
                    raise ClerkAPIError(f"GET {path}: the reply is not JSON") from None
            if status == 404 and missing_ok:
                return None
            problem = f"GET {path}: HTTP {status} {_clerk_message(reply)}".rstrip()
            if status == 429 or status >= 500:
                if status == 429:
                    self.throttled += 1
                wait = retry_after_s(reply.headers.get("Retry-After"))
                if wait is not None and wait > RETRY_AFTER_CAP_S:
                    raise ClerkAPIError(f"{problem} (Retry-After {wait:.0f}s)", status_code=status)
                self.limiter.hold(wait if wait is not None else backoff_s(attempt, self._rng))
                continue
            if status in (401, 403):
                problem += " (is CLERK_SECRET_KEY the secret key of this Clerk instance?)"
            raise ClerkAPIError(problem, status_code=status)
        raise ClerkAPIError(f"{problem}; gave up after {self.max_attempts} attempts")


def _segment(value: str) -> str:
    """``value`` safe as one URL path segment (Clerk ids are ``[a-z_0-9A-Z]``)."""
    return quote(value, safe="")


def _clerk_message(reply: requests.Response) -> str:
    """Clerk's ``errors[0].message`` (never the request, so never the key)."""
    try:
        errors = reply.json().get("errors")
        return str(errors[0].get("long_message") or errors[0].get("message"))[:200]
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""

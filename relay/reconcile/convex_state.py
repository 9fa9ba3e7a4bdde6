"""Reading what Convex holds, a page at a time, for ``relay reconcile``.

Calls a state query of the Convex functions (examples/convex ships
``users:syncState``, ``orgs:organizationSyncState`` and ``orgs:membershipSyncState``)
on ``{CONVEX_URL}/api/query`` with the deploy key. Each returns Convex's usual
pagination result, ``{page: [{clerkId, updatedAt, deleted, orgId?}], isDone,
continueCursor}``, so memory holds one page whatever the table's size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

from relay.errors import ConvexQueryError

#: Rows per state page. Each row is ~100 bytes of a ~300-byte document, so a page reads
#: ~1.2 MB: far below Convex's per-query limits (16 MiB read, 32k documents scanned), and
#: few round trips (25 for 100,000 users).
STATE_PAGE_SIZE = 4000
MAX_ATTEMPTS = 5
REQUEST_TIMEOUT_S = 30.0
#: Convex's answer when the deployment has no such function (e.g. the official template).
_MISSING_FUNCTION = "Could not find"


@dataclass(frozen=True, slots=True)
class StateRow:
    """One synced object as Convex holds it."""

    clerk_id: str
    updated_at_ms: int
    deleted: bool = False
    org_id: str | None = None


class ConvexState:
    """Pages of a Convex state query (function API, admin auth)."""

    def __init__(
        self,
        convex_url: str,
        deploy_key: str,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.url = f"{convex_url.rstrip('/')}/api/query"
        self.timeout_s = timeout_s
        self._sleep = sleep
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.headers["Authorization"] = f"Convex {deploy_key}"
        #: Queries sent (every attempt).
        self.requests = 0

    def __repr__(self) -> str:
        return f"ConvexState({self.url!r})"

    def close(self) -> None:
        self._session.close()

    def pages(self, function: str, page_size: int = STATE_PAGE_SIZE) -> Iterator[list[StateRow]]:
        """Every row the query returns, a page at a time."""
        cursor: str | None = None
        while True:
            value = self._query(function, {"numItems": page_size, "cursor": cursor})
            try:
                rows = [_row(item) for item in value["page"]]
                done, cursor = bool(value["isDone"]), str(value["continueCursor"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ConvexQueryError(
                    f"{function} did not answer {{page, isDone, continueCursor}}: {exc}"
                ) from None
            if rows:
                yield rows
            if done:
                return

    def _query(self, function: str, pagination: dict[str, Any]) -> Any:
        body = {"path": function, "args": {"paginationOpts": pagination}, "format": "json"}
        problem = function
        for attempt in range(1, MAX_ATTEMPTS + 1):
            self.requests += 1
            try:
                reply = self._session.post(self.url, json=body, timeout=self.timeout_s)
            except requests.RequestException as exc:
                problem = f"{function}: {type(exc).__name__}"
                self._sleep(min(8.0, 0.5 * 2**attempt))
                continue
            if reply.status_code == 429 or reply.status_code >= 500:
                problem = f"{function}: HTTP {reply.status_code}"
                self._sleep(min(8.0, 0.5 * 2**attempt))
                continue
            if reply.status_code != 200:
                raise ConvexQueryError(
                    f"{function}: HTTP {reply.status_code} (is CONVEX_DEPLOY_KEY this "
                    "deployment's deploy key?)"
                )
            try:
                answer = reply.json()
            except ValueError:
                raise ConvexQueryError(f"{function}: the reply is not JSON") from None
            if answer.get("status") == "success":
                return answer.get("value")
            message = str(answer.get("errorMessage", ""))[:300]
            raise ConvexQueryError(
                f"{function} failed: {message}", missing_function=_MISSING_FUNCTION in message
            )
        raise ConvexQueryError(f"{problem}; gave up after {MAX_ATTEMPTS} attempts")


def _row(item: dict[str, Any]) -> StateRow:
    org_id = item.get("orgId")
    return StateRow(
        clerk_id=str(item["clerkId"]),
        updated_at_ms=int(item["updatedAt"]),
        deleted=bool(item.get("deleted", False)),
        org_id=org_id if isinstance(org_id, str) else None,
    )

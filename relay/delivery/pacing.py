"""Burst pacing: while ingest on this machine is in a burst, claim new work only now and then.

An ingest burst (``Store.ingest_burst_s``) gets the CPUs; the backlog it leaves is
delivered right after it. A burst that never ends cannot starve delivery: the worker
still claims once every :data:`BURST_CLAIM_EVERY_S`. The policy is a small object on
the worker's injected clock, so tests drive it without sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import structlog

log = structlog.get_logger("relay.worker")  # its lines have always been the worker's

#: While ingest is in a burst, the worker claims new events at most this often.
BURST_CLAIM_EVERY_S = 1.0


class BurstPacing:
    """Whether the worker may claim now, given how long the current ingest burst lasts."""

    def __init__(self, *, clock: Callable[[], float], every_s: float = BURST_CLAIM_EVERY_S) -> None:
        self.every_s = every_s
        self._clock = clock
        # -inf, not 0.0: the first claim of a burst is never held back (a monotonic
        # clock's zero is boot time, so "claimed at 0.0" looked recent on a fresh machine).
        self._last_claim = -math.inf
        self._deferred_since: float | None = None  # a burst is holding claims back
        self._defer_until = 0.0

    def claimed(self) -> None:
        """The worker claims now: the next claim during a burst is ``every_s`` later."""
        self._last_claim = self._clock()

    def holds_back(self, burst_s: float) -> bool:
        """Whether to leave the CPUs to an ingest burst of ``burst_s`` now instead of claiming.

        Logs ``deliveries_deferred`` when a burst starts holding claims back and
        ``deliveries_resumed`` once the burst is over.
        """
        now = self._clock()
        next_claim = self._last_claim + self.every_s
        if burst_s > 0 and now < next_claim:
            if self._deferred_since is None:
                self._deferred_since = now
                log.info("deliveries_deferred", reason="ingest burst")
            self._defer_until = min(now + burst_s, next_claim)
            return True
        if self._deferred_since is not None and burst_s == 0:
            log.info("deliveries_resumed", deferred_s=round(now - self._deferred_since, 2))
            self._deferred_since = None
        return False

    def wait_s(self) -> float | None:
        """While holding back: how soon to look again (the burst may be over, or the
        next paced claim due); otherwise None."""
        defer_s = self._defer_until - self._clock()
        if self._deferred_since is not None and defer_s > 0:
            return defer_s
        return None

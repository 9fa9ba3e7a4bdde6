"""One delivery attempt of a claimed event, and the event's next state after it.

:class:`Attempter` sends (or declines to send) one event and returns what the worker
writes down: the attempts-log row and the event's :class:`~relay.models.Outcome`. It
does not write anything itself (:mod:`relay.delivery.recorder` does), so the mapping
from an answer to an outcome can be tested with a fake transport and a settable clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from relay import metrics
from relay.delivery.deliverer import Deliverer
from relay.delivery.outcome import Verdict, classify
from relay.delivery.retry import next_delay_s, parse_retry_after
from relay.delivery.target import TargetHealthTracker
from relay.errors import NoRoute, UnsafeValueError
from relay.models import Attempt, Event, Outcome, Status, matches_any, storable_text
from relay.settings import Settings


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt leaves behind: its attempts-log row, the event's next state, and
    (for the log line) how soon the next attempt is due."""

    attempt: Attempt
    outcome: Outcome
    next_attempt_in_s: float | None = None


class Attempter:
    """Makes attempts of claimed events at one target; thread-safe (as its parts are)."""

    def __init__(
        self,
        settings: Settings,
        deliverer: Deliverer,
        health: TargetHealthTracker,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        """``clock`` (wall seconds) dates the attempt, signs it and schedules the retry;
        ``rng`` jitters the retry schedule."""
        self.settings = settings
        self.deliverer = deliverer
        self.health = health
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def attempt(self, event: Event) -> AttemptResult:
        """Send ``event`` once (unless it must not be sent) and decide what happens next."""
        now_ms = int(self._clock() * 1000)
        if not matches_any(event.type, self.settings.events):
            return self._unsent(now_ms, Status.SKIPPED, "not in RELAY_EVENTS")
        try:
            request = self.deliverer.prepare(event, now=datetime.fromtimestamp(now_ms / 1000, UTC))
        except NoRoute:
            return self._unsent(now_ms, Status.SKIPPED, "no RELAY_ROUTES entry for this type")
        except UnsafeValueError as exc:
            return self._unsent(now_ms, Status.FAILED, f"cannot be made a Convex value: {exc}")
        response = self.deliverer.send(request)
        verdict, why = classify(
            response.status_code,
            convex_status=response.convex_status,
            transport_error=response.transport_error,
            excerpt=response.excerpt,
        )
        metrics.ATTEMPT_SECONDS.observe(response.duration_ms / 1000)
        error = (
            None
            if verdict is Verdict.DELIVERED
            else _reason(response.status_code, why, response.excerpt)
        )
        outcome, next_in_s = self._outcome(
            event, verdict, error, response.retry_after, response.status_code
        )
        if verdict is Verdict.SUSPECT:  # the attempts log keeps the contract's verdicts
            verdict = Verdict.FAILED if outcome.status == Status.FAILED else Verdict.RETRY
        attempt = Attempt(
            now_ms,
            self.deliverer.target_url,
            response.status_code,
            response.duration_ms,
            str(verdict),
            error,
        )
        return AttemptResult(attempt, outcome, next_in_s)

    def _unsent(self, now_ms: int, status: Status, reason: str) -> AttemptResult:
        """An event decided without sending it: skipped, or failed before it left."""
        attempt = Attempt(now_ms, self.deliverer.target_url, None, 0.0, str(status), reason)
        return AttemptResult(attempt, Outcome(status, None, reason))

    def _outcome(
        self,
        event: Event,
        verdict: Verdict,
        error: str | None,
        retry_after: str | None,
        status_code: int | None = None,
    ) -> tuple[Outcome, float | None]:
        """The event's next state after one attempt (target health has its say first)."""
        now_ms = int(self._clock() * 1000)
        if verdict is Verdict.DELIVERED:
            self.health.delivered()
            return Outcome(Status.DELIVERED, charged=False), None
        if verdict is Verdict.FAILED:
            return Outcome(Status.FAILED, None, error), None
        too_old = now_ms - event.received_at_ms > self.settings.max_pending_age_s * 1000
        if too_old:
            age = f"undelivered after {self.settings.max_pending_age_s / 86400:g} days"
            return Outcome(Status.FAILED, None, f"{age}; last: {error}"), None
        if verdict is Verdict.SUSPECT:
            if not self.health.suspect_answer(event, status_code, error or ""):
                return Outcome(Status.FAILED, None, error), None
            delay_ms = self.health.hold_delay_ms()  # held: not the event's fault (yet)
            return Outcome(Status.PENDING, now_ms + delay_ms, error, charged=False), delay_ms / 1000
        if self.health.down_answer(event, error or ""):
            # The target is known down: the circuit gates this event now, not a backoff.
            return Outcome(Status.PENDING, now_ms, error, charged=False), 0.0
        delay = next_delay_s(
            event.retry_step,
            self.settings.retry_schedule_s,
            rng=self._rng,
            retry_after_s=parse_retry_after(retry_after, now_s=self._clock()),
        )
        if delay is None:
            return Outcome(Status.FAILED, None, f"retries exhausted; last: {error}"), None
        return Outcome(Status.PENDING, now_ms + int(delay * 1000), error), delay


def _reason(status_code: int | None, why: str, excerpt: str | None) -> str:
    head = f"HTTP {status_code} {why}" if status_code is not None else why
    return _storable(f"{head}: {excerpt}" if excerpt else head)


def _storable(error: str) -> str:
    """``error`` as every store's text columns can hold it. A reply's message may carry
    NUL or a lone surrogate (a Convex function throwing with a user's name in it): an
    outcome that cannot be written would be sent again each time its lease ran out."""
    return storable_text(error) or error

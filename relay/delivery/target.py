"""Target health: a circuit breaker per delivery target, shared through the store.

A Convex outage or a misconfigured target is one fact about the target, not a fact
about each event, so it is tracked once:

``up``
    Events are claimed and sent as usual. Answers that say "the target is down"
    (no connection, timeouts, 408, 429, 5xx) count in a streak;
    :data:`DOWN_AFTER` of them in a row, from at least two events, with no
    delivery between, move the target to ``down``. *Suspect* answers (401, 403, 404,
    the official template's signature 400: see :mod:`relay.delivery.outcome`) hold their event
    (pending, nothing charged); :data:`MISCONFIGURED_AFTER` distinct events in a row
    with the same status move the target to ``misconfigured``. An event held once
    that gets the same answer again *after the target delivered something else* was
    the problem itself: it fails, as any other 4xx would.

``down`` / ``misconfigured``
    Nothing is claimed except one probe at a time: the worker that wins
    :meth:`Store.take_probe` (exactly one, however many workers share the store)
    claims one event and sends it. Probes start :data:`PROBE_START_S` apart and the
    gap doubles up to ``RELAY_PROBE_INTERVAL_MAX``. A delivered probe moves the target
    back ``up`` and releases the whole backlog at once (:meth:`Store.release_held`):
    the first delivery after Convex returns is at most one probe gap late.

Attempts made while the target is known to be down are not charged to the event's
retry schedule; an event fails for its own reasons, or once it has been pending longer
than ``RELAY_MAX_PENDING_AGE`` (7 days by default, past Svix's own 5-day give-up).

The state lives in the store's ``targets`` row, so every worker, ``relay status``,
``/readyz``, the console and ``/metrics`` see the same one. Streaks are counted per
worker in memory: a restart only starts counting again. Each transition is logged
once (``target_state_changed``), by the worker whose write made it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum

import structlog

from relay import metrics
from relay.errors import StoreError
from relay.models import Event, TargetHealth, TargetState
from relay.store import Store

log = structlog.get_logger("relay.target")

#: Consecutive "down" answers (from two events or more) that open the circuit.
DOWN_AFTER = 5
#: Distinct events in a row with the same suspect status that mean "misconfigured".
MISCONFIGURED_AFTER = 3
#: The first gap between probes; it doubles up to ``RELAY_PROBE_INTERVAL_MAX``.
PROBE_START_S = 1.0
#: How long a worker trusts its last read of the shared state.
REFRESH_S = 0.5
#: A delivery refreshes the row's "last success" at most this often per worker.
SUCCESS_WRITE_EVERY_S = 5.0
#: Held events remembered per worker (to tell a bad payload from a bad target).
HELD_MEMORY = 10_000


class Gate(StrEnum):
    """What the worker loop may do now."""

    CLAIM = "claim"  # the target is up: claim as usual
    PROBE = "probe"  # the target is not up and this worker holds the probe: claim one
    WAIT = "wait"  # the target is not up; another probe is not due yet


class TargetHealthTracker:
    """One worker's view of its target's health, and its share in changing it."""

    def __init__(
        self,
        store: Store,
        target: str,
        *,
        probe_interval_max_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.target = target
        self.clock = clock
        self.probe_max_ms = max(1, int(probe_interval_max_s * 1000))
        self.probe_start_ms = min(int(PROBE_START_S * 1000), self.probe_max_ms)
        self._health = TargetHealth(target)
        self._read_at = float("-inf")
        self._down_streak: list[str] = []  # event ids, in order
        self._suspect_streak: tuple[int, set[str]] = (0, set())
        #: event id -> (status it was held for, deliveries seen when it was held)
        self._held: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._deliveries = 0  # deliveries this worker saw
        self._success_written = float("-inf")

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- reading -------------------------------------------------------------------------

    def current(self, *, fresh: bool = False) -> TargetHealth:
        """The shared state, read at most every :data:`REFRESH_S` unless ``fresh``."""
        now = self.clock()
        if fresh or now - self._read_at >= REFRESH_S:
            try:
                self._health = self.store.target_health(self.target) or TargetHealth(self.target)
                self._read_at = now
            except StoreError as exc:
                log.error("target_health_read_failed", error=str(exc))
        return self._health

    def gate(self, *, idle: bool = True) -> tuple[Gate, float]:
        """Whether to claim, probe or wait; with the seconds until a probe may be due.
        A worker with attempts still in flight (``idle=False``) never takes the probe."""
        health = self.current()
        if health.state == TargetState.UP:
            return Gate.CLAIM, 0.0
        now_ms = self.now_ms()
        due_ms = health.next_probe_ms or now_ms
        if due_ms > now_ms or not idle:
            return Gate.WAIT, max(0.05, (due_ms - now_ms) / 1000)
        try:
            won = self.store.take_probe(
                self.target, now_ms=now_ms, max_interval_ms=self.probe_max_ms
            )
        except StoreError as exc:
            log.error("target_probe_failed", error=str(exc))
            won = False
        self.current(fresh=True)
        if won:
            metrics.TARGET_PROBES.inc()
            log.info("target_probe", target=self.target, state=str(health.state))
            return Gate.PROBE, 0.0
        wait_ms = (self._health.next_probe_ms or now_ms + self.probe_start_ms) - now_ms
        return Gate.WAIT, max(0.05, wait_ms / 1000)

    # -- what attempts say ---------------------------------------------------------------

    def delivered(self) -> None:
        """An attempt was delivered: the target works."""
        self._down_streak.clear()
        self._suspect_streak = (0, set())
        self._deliveries += 1
        now = self.clock()
        if self._health.state != TargetState.UP:
            self._move(TargetState.UP, "a delivery succeeded")
            return
        if now - self._success_written >= SUCCESS_WRITE_EVERY_S:
            self._success_written = now
            try:
                if self.store.target_health(self.target) is None:
                    self.store.set_target_state(
                        self.target, TargetState.UP, now_ms=self.now_ms(), reason=None
                    )
                else:
                    self.store.target_succeeded(self.target, now_ms=self.now_ms())
            except StoreError as exc:
                log.warning("target_success_write_failed", error=str(exc))

    def down_answer(self, event: Event, why: str) -> bool:
        """An answer that says the target is down. True if the target is known down now
        (the attempt is then not the event's fault)."""
        if self.current().state != TargetState.UP:
            return True
        self._down_streak.append(event.id)
        streak = self._down_streak[-DOWN_AFTER:]
        if len(streak) >= DOWN_AFTER and len(set(streak)) >= 2:
            self._move(TargetState.DOWN, why)
            return True
        return False

    def suspect_answer(self, event: Event, status_code: int | None, why: str) -> bool:
        """A suspect answer (see :mod:`relay.delivery.outcome`). True to hold the event, False
        when it is the event's own fault (it failed this way before, and the target has
        delivered other events since)."""
        code = status_code or 0
        held_for, deliveries_then = self._held.get(event.id, (None, self._deliveries))
        if (
            held_for == code
            and self.current().state == TargetState.UP
            and self._deliveries > deliveries_then
        ):
            del self._held[event.id]
            return False
        self._held[event.id] = (code, self._deliveries)
        self._held.move_to_end(event.id)
        while len(self._held) > HELD_MEMORY:
            self._held.popitem(last=False)
        streak_code, ids = self._suspect_streak
        if streak_code != code:
            ids = set()
        ids.add(event.id)
        self._suspect_streak = (code, ids)
        if len(ids) >= MISCONFIGURED_AFTER and self.current().state == TargetState.UP:
            self._move(TargetState.MISCONFIGURED, why)
        return True

    def hold_delay_ms(self) -> int:
        """When a held event is tried again: at once if the circuit gates it, else after
        one probe gap (so another event's answer can tell whose fault it was)."""
        return 0 if self.current().state != TargetState.UP else self.probe_start_ms

    def _move(self, state: TargetState, reason: str) -> None:
        before = self._health.state
        now_ms = self.now_ms()
        try:
            changed = self.store.set_target_state(
                self.target,
                state,
                now_ms=now_ms,
                reason=None if state == TargetState.UP else reason,
                probe_interval_ms=self.probe_start_ms,
            )
        except StoreError as exc:
            log.error("target_state_write_failed", error=str(exc), state=str(state))
            return
        if changed:
            log.warning(
                "target_state_changed",
                target=self.target,
                state=str(state),
                previous=str(before),
                reason=reason,
            )
            metrics.TARGET_TRANSITIONS.labels(state=str(state)).inc()
        self._down_streak.clear()
        self._suspect_streak = (0, set())
        if state == TargetState.UP:
            self._held.clear()
            try:  # everything that waited on the target goes out now
                released = self.store.release_held(now_ms=now_ms)
            except StoreError as exc:
                log.error("target_release_failed", error=str(exc))
            else:
                if changed:
                    log.info("backlog_released", target=self.target, events=released)
        self.current(fresh=True)

"""The delivery worker: a plain loop of claim due -> deliver -> record -> wait.

Up to ``RELAY_CONCURRENCY`` attempts run at once on a thread pool; the store's claim
keeps events of one object out of flight together and in order. The loop waits on a
``threading.Event`` (woken by new events, finished attempts, or a stop request),
never ``time.sleep``. A first SIGTERM/SIGINT stops claiming and lets attempts in hand
finish; a second exits at once (their leases expire and another worker retries them).

This module is the loop and its lifecycle; its parts live beside it: one attempt in
:mod:`~relay.delivery.attempt`, writing outcomes in :mod:`~relay.delivery.recorder`,
burst pacing in :mod:`~relay.delivery.pacing`, target health in
:mod:`~relay.delivery.target`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import FrameType

import structlog

from relay import metrics
from relay.delivery.attempt import Attempter, AttemptResult
from relay.delivery.deliverer import Deliverer
from relay.delivery.pacing import BurstPacing
from relay.delivery.recorder import Recorder
from relay.delivery.target import Gate, TargetHealthTracker
from relay.errors import StoreError
from relay.models import Event
from relay.settings import Settings
from relay.store import Store

log = structlog.get_logger("relay.worker")

#: How often the loop looks for due work when nothing wakes it (retries come due silently).
POLL_INTERVAL_S = 1.0
#: Niceness of delivery threads under ``relay worker --low-priority`` (relay serve).
LOW_PRIORITY_NICE = 19
HEARTBEAT_INTERVAL_S = 5.0
#: A stop signal repeated within this many seconds of the first is the same stop.
REPEAT_SIGNAL_WINDOW_S = 1.0
#: While attempts finish after a stop, the loop thread wakes this often to run signal
#: handlers (well inside REPEAT_SIGNAL_WINDOW_S).
SIGNAL_CHECK_S = 0.1
#: "No retry of ours is due": later than any clock reading in milliseconds.
_NEVER_MS = 2**63


class Worker:
    """Delivers pending events from one store to one Convex target."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        deliverer: Deliverer | None = None,
        *,
        worker_id: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        low_priority: bool = False,
    ) -> None:
        """``clock`` is wall time in seconds (claims, leases, retries, signatures, pacing);
        ``monotonic`` times attempts and tells repeated signals apart; ``sleep`` is the
        backoff between outcome-write retries. Tests inject all three."""
        self.settings = settings
        self.store = store
        self.deliverer = deliverer or Deliverer(settings, monotonic=monotonic)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self._monotonic = monotonic
        self.poll_interval_s = poll_interval_s
        # A lease outlives the slowest attempt (at most the delivery timeout: the
        # Deliverer enforces it as a deadline) plus its outcome write (retried for at most
        # half a lease), so only a dead worker lets one expire.
        self.lease_ms = int((settings.delivery_timeout_s * 2 + 30) * 1000)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._in_flight: set[Future[None]] = set()
        #: Outcomes handed to the recorder and not yet written, at most RELAY_CONCURRENCY.
        self._unwritten = threading.BoundedSemaphore(settings.concurrency)
        self._lock = threading.Lock()
        self._next_due_ms = _NEVER_MS  # earliest retry this worker scheduled itself
        # Deliveries at the lowest CPU priority (relay serve) while claims and outcome
        # writes keep normal priority in their own threads: a thread that holds the
        # store's writer lock must not wait behind ingest for a CPU, or ingest waits too.
        self.low_priority = low_priority
        self.health = TargetHealthTracker(
            store,
            settings.target_url,
            probe_interval_max_s=settings.probe_interval_max_s,
            clock=clock,
        )
        self._gate_wait_s = 0.0  # the target is not up: look again after this
        self.pacing = BurstPacing(clock=clock)
        self.attempter = Attempter(settings, self.deliverer, self.health, clock=clock, rng=rng)
        self.recorder = Recorder(store, self.worker_id, clock=clock, sleep=sleep)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- lifecycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; attempts in hand finish (warm shutdown)."""
        self._stopping.set()
        self._wake.set()

    def install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT: warm shutdown. Another one more than
        :data:`REPEAT_SIGNAL_WINDOW_S` later: exit now (leases expire, events retried).

        A repeat inside the window is the same request arriving twice, not a user's
        second signal: a terminal's Ctrl-C and systemd's ``KillMode=control-group``
        signal every process of the unit, and ``relay serve`` forwards its own
        SIGTERM too (rq ignores repeats the same way).
        """
        first_at: list[float] = []

        def handle(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            now = self._monotonic()
            if first_at and now - first_at[0] < REPEAT_SIGNAL_WINDOW_S:
                log.info("worker_signal_repeated", signal=name)
                return
            if first_at:
                log.warning("worker_cold_shutdown", signal=name)
                os._exit(1)
            first_at.append(now)
            log.info("worker_stopping", signal=name, in_flight=len(self._in_flight))
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def run(self) -> None:
        """Run until :meth:`stop`; returns after in-flight attempts finish."""
        stop_listening = self.store.listen(self._wake.set)
        # Started here, by this normal-priority thread, before any delivery thread exists
        # (a thread inherits its creator's priority, and can never raise its own back).
        self.recorder.start()
        pool = ThreadPoolExecutor(
            self.settings.concurrency,
            thread_name_prefix="relay-deliver",
            initializer=lower_thread_priority if self.low_priority else None,
        )
        log.info(
            "worker_started",
            worker_id=self.worker_id,
            target=self.settings.target,
            concurrency=self.settings.concurrency,
        )
        next_beat = 0.0
        try:
            while not self._stopping.is_set():
                if self.clock() >= next_beat:
                    self._beat()
                    next_beat = self.clock() + HEARTBEAT_INTERVAL_S
                self._wake.clear()
                self._fill(pool)
                self._wake.wait(self._wait_s())
        finally:
            self._finish_in_flight(pool)
            self.recorder.stop()
            stop_listening()
            log.info("worker_stopped", worker_id=self.worker_id)

    def _finish_in_flight(self, pool: ThreadPoolExecutor) -> None:
        """Let the attempts in flight end, looking up every :data:`SIGNAL_CHECK_S`.

        A signal the kernel hands to another thread runs its Python handler only when
        this (main) thread runs again: behind an untimed join, a process-group Ctrl-C
        and serve's forwarded SIGTERM, sent together, were handled one attempt apart
        and taken for a second request (a cold exit, seen in CI).
        """
        while True:
            with self._lock:
                pending = set(self._in_flight)
            if not pending:
                break
            wait(pending, timeout=SIGNAL_CHECK_S)
        pool.shutdown(wait=True)

    def _wait_s(self) -> float:
        """Until the next poll, or sooner if a retry this worker scheduled comes due."""
        with self._lock:
            due_ms = self._next_due_ms
            if due_ms <= self.now_ms():
                self._next_due_ms = _NEVER_MS  # due now: this pass claims it
        wait_s = min(self.poll_interval_s, (due_ms - self.now_ms()) / 1000)
        paced_s = self.pacing.wait_s()
        if paced_s is not None:  # look again when the burst may be over
            wait_s = min(wait_s, paced_s)
        if self._gate_wait_s > 0:  # the target is not up: until the next probe may be due
            wait_s = min(wait_s, self._gate_wait_s)
        return max(0.0, wait_s)

    def _beat(self) -> None:
        try:
            self.store.heartbeat(self.worker_id, now_ms=self.now_ms())
        except StoreError as exc:
            log.error("worker_heartbeat_failed", error=str(exc))

    def _fill(self, pool: ThreadPoolExecutor) -> None:
        with self._lock:
            busy = len(self._in_flight)
        if not self._claims_now(busy):
            return
        if self.pacing.holds_back(self.store.ingest_burst_s()):
            return
        gate, self._gate_wait_s = self.health.gate(idle=not busy)
        if gate is Gate.WAIT:
            return
        self.pacing.claimed()
        free = self.settings.concurrency - busy
        try:
            events = self._claim(limit=1 if gate is Gate.PROBE else free)
        except StoreError as exc:
            log.error("worker_claim_failed", error=str(exc))
            return
        for event in events:
            future = pool.submit(self.process, event)
            with self._lock:
                self._in_flight.add(future)
            future.add_done_callback(self._done)

    def _claims_now(self, busy: int) -> bool:
        """Whether a pass with ``busy`` attempts in flight claims more.

        Under load, claim for half the pool at a time rather than after every finished
        delivery: half as many write transactions competing with ingest for the
        writer lock. With nothing in flight, claim at once.
        """
        free = self.settings.concurrency - busy
        return free > 0 and (not busy or free >= (self.settings.concurrency + 1) // 2)

    def _claim(self, limit: int) -> list[Event]:
        return self.store.claim(
            self.worker_id, now_ms=self.now_ms(), lease_ms=self.lease_ms, limit=limit
        )

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._in_flight.discard(future)
            busy = len(self._in_flight)
        # Wake the loop only when it would claim (see _claims_now): a wake-up that
        # claims nothing is a thread switch for nothing.
        if self._claims_now(busy):
            self._wake.set()

    def run_once(self) -> int:
        """Claim and deliver one batch synchronously (tests, ``relay worker --once``)."""
        events = self._claim(limit=self.settings.concurrency)
        for event in events:
            self.process(event)
        return len(events)

    # -- one event -----------------------------------------------------------------------

    def process(self, event: Event) -> None:
        """Attempt one claimed event and record the outcome. Never raises."""
        structlog.contextvars.bind_contextvars(event_id=event.id, event_type=event.type)
        try:
            self._deliver(event)
        except Exception:  # one bad event must never kill the loop
            log.exception("delivery_crashed")
            with contextlib.suppress(StoreError):  # else the lease expires: retried anyway
                self.recorder.release(event.id, self.now_ms())
        finally:
            structlog.contextvars.unbind_contextvars("event_id", "event_type")

    def _deliver(self, event: Event) -> None:
        result = self.attempter.attempt(event)
        attempt, outcome = result.attempt, result.outcome
        if outcome.next_attempt_at_ms is not None:
            with self._lock:  # wake for our own retry instead of waiting for the next poll
                self._next_due_ms = min(self._next_due_ms, outcome.next_attempt_at_ms)
        # The slot is free once the outcome is handed over: the next attempt need not
        # wait for this one's write (a round trip on PostgreSQL). At most
        # RELAY_CONCURRENCY outcomes wait unwritten; the event stays leased until its
        # outcome is committed, so its object's next event waits for the write.
        self._unwritten.acquire()
        # Retried for at most half a lease: the other half covers the attempt itself.
        deadline_ms = self.now_ms() + self.lease_ms // 2
        context = contextvars.copy_context()  # the log line keeps event_id and type
        written = self.recorder.complete_later(event.id, attempt, outcome, deadline_ms)
        written.add_done_callback(lambda done: context.run(self._written, event, result, done))

    def _written(self, event: Event, result: AttemptResult, written: Future[bool]) -> None:
        """An outcome's write finished (on the recorder's thread): count it and log it."""
        self._unwritten.release()
        attempt, outcome = result.attempt, result.outcome
        try:
            kept = written.result()
        except Exception:  # retried until half the lease was gone: the lease expires
            log.exception("delivery_crashed")
            return
        metrics.DELIVERIES.labels(outcome=attempt.outcome).inc()
        next_in_s = result.next_attempt_in_s
        log.info(
            "delivery_attempted",
            target=attempt.target,
            status=attempt.status_code,
            outcome=attempt.outcome,
            event_status=str(outcome.status),
            duration_ms=round(attempt.duration_ms, 1),
            attempt=event.attempt_count + 1,
            next_attempt_in_s=None if next_in_s is None else round(next_in_s, 1),
            error=attempt.error,
            lease_lost=not kept or None,
        )


def lower_thread_priority() -> None:
    """Put the calling thread at the lowest CPU priority (Linux priorities are per thread).

    nice 19, not SCHED_IDLE: an idle-class thread runs only on CPU time nobody else
    wants, and measured at 500 req/s that let deliveries stall behind the load itself
    (delivery p50 2.6-155 ms across runs, against 3.0-4.4 ms at nice 19).
    """
    with contextlib.suppress(OSError):
        os.nice(LOW_PRIORITY_NICE)

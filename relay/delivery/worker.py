"""The delivery worker: a plain loop of claim due -> deliver -> record -> wait.

Up to ``RELAY_CONCURRENCY`` attempts run at once on a thread pool; the store's claim
keeps events of one object out of flight together and in order. The loop waits on a
``threading.Event`` (woken by new events, finished attempts, or a stop request),
never ``time.sleep``. A first SIGTERM/SIGINT stops claiming and lets attempts in hand
finish; a second exits at once (their leases expire and another worker retries them).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import queue
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any, TypeVar

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from relay import metrics
from relay.delivery.deliverer import Deliverer, NoRoute
from relay.delivery.outcome import Verdict, classify
from relay.delivery.retry import next_delay_s, parse_retry_after
from relay.delivery.target import Gate, TargetHealthTracker
from relay.errors import StoreError, UnsafeValueError
from relay.models import Attempt, Event, Outcome, Status, matches_any
from relay.settings import Settings
from relay.store import Store

log = structlog.get_logger("relay.worker")

T = TypeVar("T")

#: How often the loop looks for due work when nothing wakes it (retries come due silently).
POLL_INTERVAL_S = 1.0
#: While ingest on this machine is in a burst (``Store.ingest_burst_s``), the worker
#: claims new events at most this often: the burst gets the CPUs, the backlog is
#: delivered right after it, and a burst that never ends cannot starve delivery.
BURST_CLAIM_EVERY_S = 1.0
#: Niceness of delivery threads under ``relay worker --low-priority`` (relay serve).
LOW_PRIORITY_NICE = 19
HEARTBEAT_INTERVAL_S = 5.0
#: A stop signal repeated within this many seconds of the first is the same stop.
REPEAT_SIGNAL_WINDOW_S = 1.0


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
        rng: random.Random | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        low_priority: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.deliverer = deliverer or Deliverer(settings)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.poll_interval_s = poll_interval_s
        # A lease outlives the slowest attempt (at most the delivery timeout: the
        # Deliverer enforces it as a deadline) plus its outcome write (retried for at most
        # half a lease), so only a dead worker lets one expire.
        self.lease_ms = int((settings.delivery_timeout_s * 2 + 30) * 1000)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._in_flight: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._next_due_ms = 2**63  # earliest retry this worker scheduled itself
        # Deliveries at the lowest CPU priority (relay serve) while claims and outcome
        # writes keep normal priority in their own threads: a thread that holds the
        # store's writer lock must not wait behind ingest for a CPU, or ingest waits too.
        self.low_priority = low_priority
        self._recorder: Recorder | None = None
        self.burst_claim_every_s = BURST_CLAIM_EVERY_S
        # Pacing reads the injected clock like everything else (a monotonic clock's zero
        # is boot time, so a first claim "at 0.0" looked recent on a fresh machine).
        self._last_claim = -math.inf  # self.clock() of the last claim
        self._deferred_since: float | None = None  # a burst is holding claims back
        self._defer_until = 0.0
        self.health = TargetHealthTracker(
            store,
            settings.target_url,
            probe_interval_max_s=settings.probe_interval_max_s,
            clock=clock,
        )
        self._gate_wait_s = 0.0  # the target is not up: look again after this

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
            now = time.monotonic()
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
        self._recorder = Recorder(self)
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
            pool.shutdown(wait=True)
            self._recorder.stop()
            self._recorder = None
            stop_listening()
            log.info("worker_stopped", worker_id=self.worker_id)

    def _wait_s(self) -> float:
        """Until the next poll, or sooner if a retry this worker scheduled comes due."""
        with self._lock:
            due_ms = self._next_due_ms
            if due_ms <= self.now_ms():
                self._next_due_ms = 2**63  # due now: this pass claims it
        wait_s = min(self.poll_interval_s, (due_ms - self.now_ms()) / 1000)
        defer_s = self._defer_until - self.clock()
        if self._deferred_since is not None and defer_s > 0:  # look again when it may be over
            wait_s = min(wait_s, defer_s)
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
        free = self.settings.concurrency - busy
        # Under load, claim for half the pool at a time rather than after every finished
        # delivery: half as many write transactions competing with ingest for the
        # writer lock. With nothing in flight, claim at once.
        if free <= 0 or (busy and free < (self.settings.concurrency + 1) // 2):
            return
        if self._deferring():
            return
        gate, self._gate_wait_s = self.health.gate(idle=not busy)
        if gate is Gate.WAIT:
            return
        limit = 1 if gate is Gate.PROBE else free
        self._last_claim = self.clock()
        try:
            events = self.store.claim(
                self.worker_id, now_ms=self.now_ms(), lease_ms=self.lease_ms, limit=limit
            )
        except StoreError as exc:
            log.error("worker_claim_failed", error=str(exc))
            return
        for event in events:
            future = pool.submit(self.process, event)
            with self._lock:
                self._in_flight.add(future)
            future.add_done_callback(self._done)

    def _deferring(self) -> bool:
        """Whether to leave the CPUs to an ingest burst now instead of claiming."""
        now = self.clock()
        burst_s = self.store.ingest_burst_s()
        next_claim = self._last_claim + self.burst_claim_every_s
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

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._in_flight.discard(future)
        self._wake.set()  # a slot is free, and the next event of that object may be due

    def run_once(self) -> int:
        """Claim and deliver one batch synchronously (tests, ``relay worker --once``)."""
        events = self.store.claim(
            self.worker_id,
            now_ms=self.now_ms(),
            lease_ms=self.lease_ms,
            limit=self.settings.concurrency,
        )
        for event in events:
            self.process(event)
        return len(events)

    # -- one event -----------------------------------------------------------------------

    def process(self, event: Event) -> None:
        """Attempt one claimed event and record the outcome. Never raises."""
        structlog.contextvars.bind_contextvars(event_id=event.id, event_type=event.type)
        try:
            self._attempt(event)
        except Exception:  # one bad event must never kill the loop
            log.exception("delivery_crashed")
            with contextlib.suppress(StoreError):  # else the lease expires: retried anyway
                self._write(self.store.release, event.id, self.worker_id, self.now_ms())
        finally:
            structlog.contextvars.unbind_contextvars("event_id", "event_type")

    def _attempt(self, event: Event) -> None:
        target = self.deliverer.target_url
        now_ms = self.now_ms()
        if not matches_any(event.type, self.settings.events):
            reason = "not in RELAY_EVENTS"
            self._finish(
                event,
                Attempt(now_ms, target, None, 0.0, "skipped", reason),
                Outcome(Status.SKIPPED, None, reason),
            )
            return
        try:
            request = self.deliverer.prepare(event, now=datetime.fromtimestamp(now_ms / 1000, UTC))
        except NoRoute:
            reason = "no RELAY_ROUTES entry for this type"
            self._finish(
                event,
                Attempt(now_ms, target, None, 0.0, "skipped", reason),
                Outcome(Status.SKIPPED, None, reason),
            )
            return
        except UnsafeValueError as exc:
            reason = f"cannot be made a Convex value: {exc}"
            self._finish(
                event,
                Attempt(now_ms, target, None, 0.0, "failed", reason),
                Outcome(Status.FAILED, None, reason),
            )
            return
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
            now_ms, target, response.status_code, response.duration_ms, str(verdict), error
        )
        self._finish(event, attempt, outcome, next_in_s=next_in_s)

    def _outcome(
        self,
        event: Event,
        verdict: Verdict,
        error: str | None,
        retry_after: str | None,
        status_code: int | None = None,
    ) -> tuple[Outcome, float | None]:
        """The event's next state after one attempt (target health has its say first)."""
        now_ms = self.now_ms()
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
            rng=self.rng,
            retry_after_s=parse_retry_after(retry_after, now_s=self.clock()),
        )
        if delay is None:
            return Outcome(Status.FAILED, None, f"retries exhausted; last: {error}"), None
        return Outcome(Status.PENDING, now_ms + int(delay * 1000), error), delay

    def _record(self, event: Event, attempt: Attempt, outcome: Outcome) -> bool:
        """Write the outcome, retrying while the lease lasts.

        Convex has already answered: giving up here (a full disk, a lost connection)
        would let the lease expire and send the event again. tenacity retries with
        backoff until the write succeeds or the lease is about to run out.
        """
        deadline_ms = self.now_ms() + self.lease_ms // 2
        if self._recorder is not None:
            return self._recorder.complete(event.id, attempt, outcome, deadline_ms)
        results = [(event.id, attempt, outcome)]
        return self.retrying(deadline_ms)(self.store.complete_many, self.worker_id, results)[0]

    def retrying(self, deadline_ms: int) -> Retrying:
        """tenacity for outcome writes: backoff until they succeed or ``deadline_ms``."""
        return Retrying(
            retry=retry_if_exception_type(StoreError),
            wait=wait_random_exponential(multiplier=0.1, max=5.0),
            stop=_stop_recording(self, deadline_ms),
            before_sleep=lambda state: log.warning(
                "outcome_write_retrying",
                attempt=state.attempt_number,
                error=str(state.outcome.exception()) if state.outcome else None,
            ),
            reraise=True,
        )

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store write on the recorder thread (normal priority), log context and all."""
        if self._recorder is None:  # run_once: everything runs in the caller's thread
            return fn(*args)
        result: T = self._recorder.call(contextvars.copy_context().run, fn, *args)
        return result

    def _finish(
        self, event: Event, attempt: Attempt, outcome: Outcome, next_in_s: float | None = None
    ) -> None:
        kept = self._record(event, attempt, outcome)
        if outcome.next_attempt_at_ms is not None:
            with self._lock:  # wake for our own retry instead of waiting for the next poll
                self._next_due_ms = min(self._next_due_ms, outcome.next_attempt_at_ms)
        metrics.DELIVERIES.labels(outcome=attempt.outcome).inc()
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


class Recorder:
    """The worker's one writer thread, at normal priority: outcomes and releases.

    Delivery threads hand it their outcome and wait. Whatever outcomes finished while
    it was writing go into its next transaction together (``Store.complete_many``), so
    under load the worker adds a fraction of a write per event to the file ingest
    commits to, not one each. Started by the worker's main thread before any delivery
    thread exists: a thread inherits its creator's priority and cannot raise its own.
    """

    #: Most outcomes written in one transaction.
    MAX_BATCH = 64

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="relay-record", daemon=True)
        self._thread.start()

    def complete(self, event_id: str, attempt: Attempt, outcome: Outcome, deadline_ms: int) -> bool:
        job = _Job(future=Future(), outcome=(event_id, attempt, outcome), deadline_ms=deadline_ms)
        self._jobs.put(job)
        kept: bool = job.future.result()
        return kept

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        job = _Job(future=Future(), call=functools.partial(fn, *args))
        self._jobs.put(job)
        result: T = job.future.result()
        return result

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            for job in batch:
                if job.call is not None:
                    _settle(job.future, job.call)
            outcomes = [job for job in batch if job.outcome is not None]
            if outcomes:
                self._complete(outcomes)

    def _complete(self, jobs: list[_Job]) -> None:
        worker = self.worker
        deadline_ms = min(job.deadline_ms for job in jobs)
        results = [job.outcome for job in jobs if job.outcome is not None]
        try:
            retrying = worker.retrying(deadline_ms)
            kept = retrying(worker.store.complete_many, worker.worker_id, results)
        except BaseException as exc:  # handed to every waiting delivery thread
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job, one in zip(jobs, kept, strict=True):
            job.future.set_result(one)


@dataclass
class _Job:
    future: Future[Any]
    outcome: tuple[str, Attempt, Outcome] | None = None
    deadline_ms: int = 0
    call: Callable[[], Any] | None = None


def _settle(future: Future[Any], fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:
        future.set_exception(exc)


def lower_thread_priority() -> None:
    """Put the calling thread at the lowest CPU priority (Linux priorities are per thread).

    nice 19, not SCHED_IDLE: an idle-class thread runs only on CPU time nobody else
    wants, and measured at 500 req/s that let deliveries stall behind the load itself
    (delivery p50 2.6-155 ms across runs, against 3.0-4.4 ms at nice 19).
    """
    with contextlib.suppress(OSError):
        os.nice(LOW_PRIORITY_NICE)


def _stop_recording(worker: Worker, deadline_ms: int) -> Callable[[RetryCallState], bool]:
    def stop(_state: RetryCallState) -> bool:
        return worker.now_ms() >= deadline_ms

    return stop


def _reason(status_code: int | None, why: str, excerpt: str | None) -> str:
    head = f"HTTP {status_code} {why}" if status_code is not None else why
    return f"{head}: {excerpt}" if excerpt else head

"""Writing attempt outcomes down: one writer thread, batched, retried until the lease ends.

Convex has already answered when an outcome is written: giving up on the write (a full
disk, a lost connection) would let the lease expire and send the event again, so
writes are retried with backoff (tenacity) until they succeed or half the lease is
gone. Under :meth:`Worker.run <relay.delivery.worker.Worker.run>` the writes happen on
one thread at normal priority; outcomes that finish while it writes go into its next
transaction together (``Store.complete_many``). Not started (``relay worker --once``,
tests), every write runs in the caller's thread.
"""

from __future__ import annotations

import contextvars
import functools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from relay.errors import StoreError
from relay.models import Attempt, Outcome
from relay.store import Store

log = structlog.get_logger("relay.worker")  # its lines have always been the worker's

T = TypeVar("T")

#: The first write retry waits up to this long; each doubles the bound ...
WRITE_RETRY_MULTIPLIER_S = 0.1
#: ... up to this many seconds.
WRITE_RETRY_MAX_WAIT_S = 5.0


class Recorder:
    """One worker's outcome and release writes, on its own thread once started.

    Delivery threads hand it their outcome and wait. Whatever outcomes finished while
    it was writing go into its next transaction together, so under load the worker adds
    a fraction of a write per event to the file ingest commits to, not one each.
    :meth:`start` is called by the worker's main thread before any delivery thread
    exists: a thread inherits its creator's priority and cannot raise its own.
    """

    #: Most outcomes written in one transaction.
    MAX_BATCH = 64

    def __init__(
        self,
        store: Store,
        worker_id: str,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``clock`` (seconds) decides when a write's deadline has passed; ``sleep`` is
        the backoff between write retries."""
        self.store = store
        self.worker_id = worker_id
        self._clock = clock
        self._sleep = sleep
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Write on a thread of its own from now on (see the class docstring)."""
        self._thread = threading.Thread(target=self._run, name="relay-record", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the writes handed over so far; later ones run in the caller's thread."""
        if self._thread is None:
            return
        self._jobs.put(None)
        self._thread.join()
        self._thread = None

    def complete(self, event_id: str, attempt: Attempt, outcome: Outcome, deadline_ms: int) -> bool:
        """Write one attempt's outcome, retrying until ``deadline_ms``; False if the
        lease was lost (another worker owns the event now)."""
        kept: bool = self.complete_later(event_id, attempt, outcome, deadline_ms).result()
        return kept

    def complete_later(
        self, event_id: str, attempt: Attempt, outcome: Outcome, deadline_ms: int
    ) -> Future[bool]:
        """:meth:`complete` without waiting: the future says whether the lease was kept
        (or holds the write's last error). Not started, it is written before returning."""
        job = _Job(future=Future(), outcome=(event_id, attempt, outcome), deadline_ms=deadline_ms)
        if self._thread is None:
            self._write_batch([job])
        else:
            self._jobs.put(job)
        return job.future

    def release(self, event_id: str, now_ms: int) -> None:
        """Give a claimed event back without an outcome (its attempt crashed)."""
        # The caller's context goes along, so the recorder's log lines carry event_id.
        context = contextvars.copy_context()
        self.call(context.run, self.store.release, event_id, self.worker_id, now_ms)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one store write on the writer thread (in the caller's, if not started)."""
        if self._thread is None:
            return fn(*args)
        result: T = self._submit(_Job(future=Future(), call=functools.partial(fn, *args)))
        return result

    def retrying(self, deadline_ms: int) -> Retrying:
        """tenacity for outcome writes: backoff until they succeed or ``deadline_ms``."""
        return Retrying(
            retry=retry_if_exception_type(StoreError),
            wait=wait_random_exponential(
                multiplier=WRITE_RETRY_MULTIPLIER_S, max=WRITE_RETRY_MAX_WAIT_S
            ),
            stop=self._stop_at(deadline_ms),
            sleep=self._sleep,
            before_sleep=lambda state: log.warning(
                "outcome_write_retrying",
                attempt=state.attempt_number,
                error=str(state.outcome.exception()) if state.outcome else None,
            ),
            reraise=True,
        )

    def _stop_at(self, deadline_ms: int) -> Callable[[RetryCallState], bool]:
        def stop(_state: RetryCallState) -> bool:
            return int(self._clock() * 1000) >= deadline_ms

        return stop

    def _complete_many(
        self, results: list[tuple[str, Attempt, Outcome]], deadline_ms: int
    ) -> list[bool]:
        return self.retrying(deadline_ms)(self.store.complete_many, self.worker_id, results)

    def _submit(self, job: _Job) -> Any:
        self._jobs.put(job)
        return job.future.result()

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
                self._write_batch(outcomes)

    def _write_batch(self, jobs: list[_Job]) -> None:
        deadline_ms = min(job.deadline_ms for job in jobs)
        results = [job.outcome for job in jobs if job.outcome is not None]
        try:
            kept = self._complete_many(results, deadline_ms)
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

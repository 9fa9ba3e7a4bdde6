"""A total deadline for one HTTP attempt, which urllib3's timeouts are not.

urllib3 (like every socket client) times each connect and each ``recv`` on its own: a
peer that sends one byte every couple of seconds never trips a 3 s read timeout and
held one delivery attempt for minutes, past its lease (so the event was claimed and
sent again while the first attempt still ran). Here one watchdog thread per
:class:`Deliverer <relay.delivery.deliverer.Deliverer>` shuts the attempt's socket down when its
deadline passes; the blocked ``recv`` returns at once and the attempt ends as a
timeout, whatever the peer does.

Connections register themselves with the attempt that uses them (a thread-local set
by :meth:`Watchdog.attempt`), so pooled keep-alive connections and new ones alike
are covered, through a proxy too (see :func:`track_connections`).
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()


class Attempt:
    """One attempt under a deadline: the connection it uses, and whether time ran out."""

    __slots__ = ("connection", "deadline", "expired")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # time.monotonic()
        self.connection: HTTPConnection | None = None
        self.expired = False

    def abort(self) -> None:
        """Deadline passed: end whatever the connection is blocked on."""
        self.expired = True
        sock = getattr(self.connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Watchdog:
    """One thread that aborts attempts whose deadline has passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: set[Attempt] = set()
        self._thread: threading.Thread | None = None
        #: When the thread looks next (monotonic): an attempt ending later needs no
        #: wake-up. Attempts share one timeout, so under load the thread wakes about
        #: once per timeout instead of once per attempt (a thread switch each).
        self._wakes_at = math.inf

    @contextlib.contextmanager
    def attempt(self, timeout_s: float) -> Iterator[Attempt]:
        """Run one attempt (in the calling thread) that ends ``timeout_s`` from now."""
        attempt = Attempt(time.monotonic() + timeout_s)
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="relay-deadline", daemon=True
                )
                self._thread.start()
            self._armed.add(attempt)
            if attempt.deadline < self._wakes_at:
                self._wakes_at = attempt.deadline
                self._cond.notify()
        _current.attempt = attempt
        try:
            yield attempt
        finally:
            _current.attempt = None
            with self._cond:
                self._armed.discard(attempt)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for attempt in [a for a in self._armed if a.deadline <= now]:
                    self._armed.discard(attempt)
                    attempt.abort()
                self._wakes_at = min((a.deadline for a in self._armed), default=now + 60.0)
                self._cond.wait(max(self._wakes_at - now, 0.0))


class _Tracked:
    """Mixed into urllib3's connections: join the calling thread's attempt."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        attempt: Attempt | None = getattr(_current, "attempt", None)
        if attempt is not None:
            attempt.connection = self  # type: ignore[assignment]
            if attempt.expired:  # the deadline passed while connecting or waiting for the pool
                raise urllib3.exceptions.TimeoutError("attempt deadline passed")
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Tracked, HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


#: Connection pools whose connections join the calling thread's attempt.
POOL_CLASSES: dict[str, type[HTTPConnectionPool]] = {"http": _HTTPPool, "https": _HTTPSPool}


def track_connections(manager: urllib3.PoolManager) -> urllib3.PoolManager:
    """Make a (proxy) pool manager build tracked pools."""
    manager.pool_classes_by_scheme = POOL_CLASSES
    return manager

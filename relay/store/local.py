"""Coordination between the processes of one machine sharing one SQLite file.

* :class:`WriterLock`: writers queue on an ``flock`` of ``<db>.lock``. SQLite's own
  busy handler sleeps 1, 2, 5, 10 ... 100 ms between retries when two processes
  (gunicorn workers, the delivery worker) want the write lock at once; the kernel
  wakes an ``flock`` waiter the moment the lock is free. A crashed holder's lock is
  released by the kernel.
* :class:`WakeSocket`: ingest sends a datagram to a Linux abstract-namespace socket
  named after the database file; the worker on this machine listens on it, so new
  events are delivered without waiting for a poll. Best effort both ways: a lost
  datagram only means the next poll finds the event.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from relay.errors import StoreError

#: How often a listener checks whether it was asked to stop, in seconds.
LISTEN_POLL_S = 0.5
#: A burst is over this long after the last wake-up that said it was one.
BURST_HOLD_S = 0.2
_WAKE, _BURST = b"!", b"B"


class WriterLock:
    """One writer at a time across every thread and process using the same file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int:
        # flock belongs to the open file description, which a forked child shares with
        # its parent: each process opens its own.
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            try:
                fd = self._file()
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise StoreError(f"cannot lock {self.path}: {exc}") from exc
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def abstract_name(db_path: Path, role: str = "") -> bytes:
    """A Linux abstract-namespace socket name for ``role`` on this database file."""
    digest = hashlib.sha256(str(db_path.resolve()).encode()).hexdigest()[:24]
    return f"\0clerk-convex-relay-{role + '-' if role else ''}{digest}".encode()


class WakeSocket:
    """Wake-ups for the worker that uses the same database file on this machine."""

    def __init__(self, db_path: Path) -> None:
        self.name = abstract_name(db_path)
        self._sender: socket.socket | None = None
        self._burst_until = 0.0  # monotonic; set by burst wake-ups (listener side)

    def send(self, *, burst: bool = False) -> None:
        """Best effort, never raises, never blocks. ``burst``: ingest is committing in a
        burst (see :meth:`burst_remaining_s`)."""
        try:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            self._sender.sendto(_BURST if burst else _WAKE, self.name)
        except OSError:
            pass  # nobody listening, or the queue is full: the worker polls anyway

    def burst_remaining_s(self) -> float:
        """How much longer the last burst wake-up holds (0.0: no burst), listener side.

        A burst lasts while burst wake-ups keep coming, plus :data:`BURST_HOLD_S`, or
        until a plain wake-up says it is over.
        """
        return max(0.0, self._burst_until - time.monotonic())

    def listen(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` on every datagram until the returned function is called.

        Only one listener can bind the name; a second worker on the same file gets a
        no-op and relies on polling.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self.name)
        except OSError:
            sock.close()
            return lambda: None
        sock.settimeout(LISTEN_POLL_S)
        stopped = threading.Event()

        def loop() -> None:
            while not stopped.is_set():
                try:
                    message = sock.recv(64)
                except TimeoutError:
                    continue
                except OSError:
                    return
                # A plain wake-up from the committer means the burst is over.
                self._burst_until = time.monotonic() + BURST_HOLD_S if message == _BURST else 0.0
                wake()

        thread = threading.Thread(target=loop, name="relay-wake", daemon=True)
        thread.start()

        def stop() -> None:
            stopped.set()
            thread.join(timeout=2)
            sock.close()

        return stop

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None

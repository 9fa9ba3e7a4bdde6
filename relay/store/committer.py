"""Group commit for the SQLite store: one committer writes for every ingest process.

With ``synchronous=FULL`` each commit waits for the disk, and commits on one file are
serial, so one commit per webhook caps ingest at one fsync per request however many
gunicorn workers run (measured on the 2-core VM: ~1,500 req/s on disk against ~2,700
on tmpfs with the same code). The committer is the classic fix (PostgreSQL and InnoDB
call it group commit): ingest processes hand verified events to one process over a
local socket; whatever arrives while a transaction is being committed goes into the
next one, so a burst shares one fsync and a lone request is committed at once. No
delay is ever added to wait for company.

The promise does not change: a process is told "stored" only after ``COMMIT``
returned, and it answers Clerk only then. Whenever the committer is absent, slow,
errs or dies, the ingest process commits the event itself through the
:class:`~relay.store.local.WriterLock` path; the unique svix-id makes a second try
of an event that did get committed a duplicate, never a second row.

The socket lives in Linux's abstract namespace, named after the database file like
:class:`~relay.store.local.WakeSocket`. File permissions do not guard such a name, so
both ends check the peer's uid (``SO_PEERCRED``): only processes of our own user may
hand us events, and we hand events only to a committer of our own user.

Wire format, one request per round trip on a kept-open connection::

    request  = u32 meta_len, u32 body_len, meta (JSON object of NewEvent fields), body
    reply    = one byte: N (stored), D (duplicate id), E (not stored; commit yourself)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import structlog

from relay.models import NewEvent, Status
from relay.store.local import abstract_name


class GroupCommitted(Protocol):
    """What the committer needs of the store it commits for (:class:`SQLiteStore`);
    a protocol, so that this module does not import the store that imports it."""

    path: Path
    url_for_display: str

    def insert_many(self, events: Sequence[NewEvent]) -> list[bool]: ...

    def notify(self, *, burst: bool = False) -> None: ...


log = structlog.get_logger("relay.committer")

_HEADER = struct.Struct("!II")
_PEERCRED = struct.Struct("3i")
#: Frames larger than this are a bug or an attack: the connection is dropped.
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: How long a client waits for its reply before committing by itself, in seconds.
REPLY_TIMEOUT_S = 5.0
#: Connections an ingest process keeps open to the committer when idle.
MAX_IDLE_CONNECTIONS = 32
#: After failing to reach the committer, commit directly this long before trying again.
RECONNECT_AFTER_S = 1.0
#: How long a transaction waits for more events when commits are coming back to back
#: (so others are likely mid-request) and other ingest processes are connected:
#: PostgreSQL's ``commit_delay``/``commit_siblings``. A lone request under light load
#: never waits. Measured on the 2-core VM with gevent workers (web-only, same runs):
#: 1 ms put 6.7-11 events in a commit and cost 285-304 us of CPU per request; 150 us
#: put 2.5-4.9 and cost 321-333 us; 2 ms was no better than 1 ms.
COMMIT_DELAY_S = 1e-3
#: Ingest is in a burst while its commits hold this many events on average (moving
#: average over about :data:`BURST_WINDOW` commits): requests are queueing for the disk,
#: not arriving one at a time. The committer says so in its wake-ups and the delivery
#: worker then leaves the CPUs to ingest (see :mod:`relay.delivery.worker`). At 500 req/s on the
#: 2-core VM commits hold 1-2 events; a saturating burst puts 6-11 in each.
BURST_EVENTS_PER_COMMIT = 3.0
BURST_WINDOW = 8
#: During a burst the worker waits anyway, so it is woken this often rather than after
#: every commit (it holds a burst for ``local.BURST_HOLD_S`` = 0.2 s after the last).
BURST_WAKE_EVERY_S = 0.05
#: Requests arriving this soon after the previous commit mean ingest is busy.
BUSY_GAP_S = 1e-3
#: How often the serving loop checks whether it was asked to stop, in seconds.
POLL_S = 0.5
STORED, DUPLICATE, ERROR = b"N", b"D", b"E"
_META_FIELDS = tuple(f.name for f in dataclasses.fields(NewEvent) if f.name != "body")


def socket_name(db_path: Path) -> bytes:
    return abstract_name(db_path, "commit")


def encode(event: NewEvent) -> bytes:
    meta = json.dumps({name: getattr(event, name) for name in _META_FIELDS}).encode()
    return _HEADER.pack(len(meta), len(event.body)) + meta + event.body


def decode(meta: bytes, body: bytes) -> NewEvent:
    fields: dict[str, Any] = json.loads(meta)
    fields["status"] = Status(fields["status"])
    return NewEvent(body=body, **fields)


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _pid, uid, _gid = _PEERCRED.unpack(creds)
    return int(uid)


class CommitClient:
    """An ingest process's side: ``insert`` through the committer, or say it cannot."""

    def __init__(self, db_path: Path, *, timeout_s: float = REPLY_TIMEOUT_S) -> None:
        self.name = socket_name(db_path)
        self.timeout_s = timeout_s
        # Idle connections, taken by one request at a time: a list used as a stack is
        # safe for threads (gthread) and greenlets (gevent) alike, and a request never
        # pays for a connect unless every kept connection is busy.
        self._idle: list[socket.socket] = []
        self._pid = os.getpid()
        self._retry_at = 0.0
        self._reached = False  # a committer answered this process at least once

    def insert(self, event: NewEvent) -> bool | None:
        """True if stored, False if the id was already stored, None if not committed here.

        None means the caller must commit the event itself: no committer runs, it
        refused, or the answer did not come (the event may or may not be stored;
        a direct insert settles which).
        """
        sock = self._socket()
        if sock is None:
            return None
        try:
            sock.sendall(encode(event))
            reply = sock.recv(1)
        except OSError:
            reply = b""
        if reply in (STORED, DUPLICATE, ERROR):
            self._release(sock)
        else:  # closed, timed out or garbled: this connection is done
            sock.close()
            self._retry_at = time.monotonic() + RECONNECT_AFTER_S
        if reply in (STORED, DUPLICATE):
            return reply == STORED
        return None

    def _socket(self) -> socket.socket | None:
        if self._pid != os.getpid():  # forked: the parent's connections are not ours
            self._idle, self._pid = [], os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            pass
        if time.monotonic() < self._retry_at:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout_s)
            sock.connect(self.name)
            if _peer_uid(sock) != os.getuid():
                raise PermissionError("the committer socket belongs to another user")
        except OSError:
            sock.close()
            self._retry_at = time.monotonic() + RECONNECT_AFTER_S
            return None
        self._reached = True
        return sock

    def lost(self) -> bool:
        """Whether a committer that served this process no longer answers (it died, or
        ``relay serve`` is restarting it): ingest still commits, slowly, by itself.
        False where none ever ran (a plain gunicorn), since then none is expected."""
        if not self._reached:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(self.timeout_s)
            try:
                probe.connect(self.name)
            except OSError:
                return True
        return False

    def _release(self, sock: socket.socket) -> None:
        if len(self._idle) < MAX_IDLE_CONNECTIONS and self._pid == os.getpid():
            self._idle.append(sock)
        else:
            sock.close()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        if self._pid == os.getpid():
            for sock in idle:
                sock.close()


class _Peer:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def frames(self) -> list[tuple[bytes, bytes]]:
        """Complete (meta, body) frames taken off the front of the buffer."""
        out = []
        while len(self.buffer) >= _HEADER.size:
            meta_len, body_len = _HEADER.unpack_from(self.buffer)
            end = _HEADER.size + meta_len + body_len
            if end > MAX_FRAME_BYTES:
                raise ValueError(f"frame of {end} bytes")
            if len(self.buffer) < end:
                break
            meta = bytes(self.buffer[_HEADER.size : _HEADER.size + meta_len])
            out.append((meta, bytes(self.buffer[_HEADER.size + meta_len : end])))
            del self.buffer[:end]
        return out


class Committer:
    """The committing side: one thread that owns the socket and batches inserts."""

    def __init__(self, store: GroupCommitted) -> None:
        self.store = store
        self.name = socket_name(store.path)
        self.batches = 0
        self.events = 0
        self.connections = 0
        self._last_batch = 0
        self._last_commit_end = 0.0
        self._mean_batch = 1.0  # moving average of events per commit
        self._last_wake = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> Callable[[], None] | None:
        """Listen and commit in a thread; returns its stop function, or None if another
        committer already serves this file (ingest then uses that one)."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.name)
            listener.listen(128)
        except OSError:
            listener.close()
            return None
        stopped = threading.Event()
        thread = threading.Thread(
            target=self._serve, args=(listener, stopped), name="relay-committer", daemon=True
        )
        self._thread = thread
        thread.start()
        log.info("committer_started", database=self.store.url_for_display)

        def stop() -> None:
            stopped.set()
            thread.join(timeout=POLL_S * 4)
            log.info(
                "committer_stopped",
                batches=self.batches,
                events=self.events,
                connections=self.connections,
            )

        return stop

    def alive(self) -> bool:
        """Whether the committing thread runs (``relay serve`` restarts it if not)."""
        return self._thread is not None and self._thread.is_alive()

    def _serve(self, listener: socket.socket, stopped: threading.Event) -> None:
        # Any number of connections (gevent workers keep one per request in flight), so
        # not select(2). epoll counts in whole milliseconds: the commit delay sleeps.
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        peers: dict[socket.socket, _Peer] = {}
        try:
            while not stopped.is_set():
                try:
                    self._once(listener, selector, peers)
                except Exception as exc:  # a bug here must not stop every later commit
                    log.error("committer_error", error=str(exc), error_type=type(exc).__name__)
                    for peer in list(peers.values()):  # their requests commit by themselves
                        self._forget(peer, selector, peers)
        finally:
            for peer in list(peers.values()):
                self._forget(peer, selector, peers)
            selector.close()
            listener.close()

    def _once(
        self,
        listener: socket.socket,
        selector: selectors.BaseSelector,
        peers: dict[socket.socket, _Peer],
    ) -> None:
        batch = self._gather(listener, selector, peers, POLL_S)
        if batch and len(peers) > len(batch) and self._busy():
            # Others are connected and may be mid-request: give them a moment to
            # join this transaction rather than pay for a commit of their own.
            time.sleep(COMMIT_DELAY_S)
            batch += self._gather(listener, selector, peers, 0)
        if batch:
            self._last_batch = len(batch)
            self._commit(batch, selector, peers)
            self._last_commit_end = time.monotonic()

    def observe(self, batch: int) -> None:
        """Count a commit of ``batch`` events into the burst detector."""
        self._mean_batch += (batch - self._mean_batch) / BURST_WINDOW

    @property
    def bursting(self) -> bool:
        """Whether commits have lately been shared by several events each."""
        return self._mean_batch >= BURST_EVENTS_PER_COMMIT

    def _busy(self) -> bool:
        """Whether commits are coming back to back: the last one was shared, or this
        batch arrived within BUSY_GAP_S of it. A lone request under light load is not."""
        return self._last_batch > 1 or time.monotonic() - self._last_commit_end < BUSY_GAP_S

    def _gather(
        self,
        listener: socket.socket,
        selector: selectors.BaseSelector,
        peers: dict[socket.socket, _Peer],
        timeout_s: float,
    ) -> list[tuple[_Peer, bytes, bytes]]:
        """Accept newcomers and read every complete request that arrives within ``timeout_s``."""
        batch: list[tuple[_Peer, bytes, bytes]] = []
        for key, _mask in selector.select(timeout_s):
            sock = cast(socket.socket, key.fileobj)
            if sock is listener:
                self._accept(listener, selector, peers)
            else:
                batch.extend(self._read(peers[sock], selector, peers))
        return batch

    def _accept(
        self,
        listener: socket.socket,
        selector: selectors.BaseSelector,
        peers: dict[socket.socket, _Peer],
    ) -> None:
        with contextlib.suppress(OSError):
            sock, _ = listener.accept()
            if _peer_uid(sock) != os.getuid():
                log.warning("committer_refused_peer", reason="another user")
                sock.close()
                return
            sock.setblocking(False)
            self.connections += 1
            peers[sock] = _Peer(sock)
            selector.register(sock, selectors.EVENT_READ)

    def _read(
        self, peer: _Peer, selector: selectors.BaseSelector, peers: dict[socket.socket, _Peer]
    ) -> list[tuple[_Peer, bytes, bytes]]:
        try:
            chunk = peer.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("peer closed")
            peer.buffer += chunk
            return [(peer, meta, body) for meta, body in peer.frames()]
        except (OSError, ValueError):
            self._forget(peer, selector, peers)
            return []

    def _commit(
        self,
        batch: Sequence[tuple[_Peer, bytes, bytes]],
        selector: selectors.BaseSelector,
        peers: dict[socket.socket, _Peer],
    ) -> None:
        senders: list[_Peer] = []
        events: list[NewEvent] = []
        for peer, meta, body in batch:
            try:
                event = decode(meta, body)
            except (ValueError, TypeError, KeyError):
                log.error("committer_bad_frame")  # a client bug: it will commit by itself
                self._forget(peer, selector, peers)
                continue
            senders.append(peer)
            events.append(event)
        if not events:
            return
        due = False
        try:
            stored = self.store.insert_many(events)
            replies = [STORED if new else DUPLICATE for new in stored]
            self.observe(len(events))
            due = any(
                new and e.status == Status.PENDING for new, e in zip(stored, events, strict=True)
            )
        except Exception as exc:
            # The whole transaction rolled back: every sender commits its own event,
            # so one bad event (or a full disk) is isolated to the requests it concerns.
            # Any exception, not only StoreError: one event the database cannot take
            # (an integer past 64 bits was one) must not end the thread for everyone.
            log.error(
                "committer_commit_failed",
                error=str(exc),
                error_type=type(exc).__name__,
                events=len(events),
            )
            replies = [ERROR] * len(events)
        self.batches += 1
        self.events += len(events)
        for peer, reply in zip(senders, replies, strict=True):
            if peer.sock.fileno() < 0:
                continue  # forgotten meanwhile
            try:
                peer.sock.sendall(reply)  # one byte into an idle socket: never blocks
            except OSError:
                self._forget(peer, selector, peers)
        if due:  # after the replies: waking the worker may hand it this CPU
            self._wake()

    def _wake(self) -> None:
        """One wake-up per commit with new work; one per BURST_WAKE_EVERY_S in a burst."""
        now = time.monotonic()
        if self.bursting and now - self._last_wake < BURST_WAKE_EVERY_S:
            return
        self._last_wake = now
        self.store.notify(burst=self.bursting)

    @staticmethod
    def _forget(
        peer: _Peer, selector: selectors.BaseSelector, peers: dict[socket.socket, _Peer]
    ) -> None:
        if peers.pop(peer.sock, None) is not None:
            selector.unregister(peer.sock)
        peer.sock.close()

"""HTTP egress against real loopback servers that misbehave: slow, huge or echoing secrets.

The peers are plain sockets on loopback (the stand-in Convex cannot misbehave at the
byte level); the Deliverer and the worker are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from harness.convex_standin import ConvexStandIn
from harness.factories import make_event
from relay.delivery.deliverer import REPLY_READ_BYTES, Deliverer, Request
from relay.delivery.worker import Worker
from relay.models import Status
from relay.redact import REDACTED
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore

DEPLOY_KEY = "prod:happy-otter-123|eyJ2MiI6ImFiY2RlZmdoaWprbG1ub3AifQ=="


@dataclass
class Peer:
    """A loopback HTTP peer: ``answer(conn)`` runs once per request, in its own thread."""

    answer: Callable[[socket.socket], None]
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        listener = socket.create_server(("127.0.0.1", 0))
        stop = threading.Event()

        def serve(conn: socket.socket) -> None:
            with conn:
                _read_request(conn)
                with self.lock:
                    self.requests += 1
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    self.answer(conn)
                except OSError as exc:  # the client hung up on us
                    self.errors.append(type(exc).__name__)
                finally:
                    with self.lock:
                        self.in_flight -= 1

        def accept() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            stop.set()
            thread.join(5)
            listener.close()


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += conn.recv(65536)


def trickle(
    head: bytes, body_every_s: float, total_s: float = 20.0
) -> Callable[[socket.socket], None]:
    """Send ``head`` a byte at a time, then body bytes, one per ``body_every_s``, for at
    most ``total_s`` (so a relay without a deadline still finishes, failing its test)."""

    def answer(conn: socket.socket) -> None:
        ends = time.monotonic() + total_s
        for byte in head:
            conn.sendall(bytes([byte]))
            _pause(conn, body_every_s / 4)
        while time.monotonic() < ends:
            conn.sendall(b" ")
            _pause(conn, body_every_s)

    return answer


def _pause(conn: socket.socket, seconds: float) -> None:
    """Wait, but notice at once when the client hangs up (so in_flight is exact)."""
    conn.settimeout(seconds)
    try:
        if conn.recv(1) == b"":
            raise ConnectionResetError("client hung up")
    except TimeoutError:
        pass


def deliverer(settings: Settings, url: str, **overrides: object) -> Deliverer:
    return Deliverer(settings.with_overrides(convex_site_url=url, **overrides))


def _request(url: str) -> Request:
    return Request(f"{url}/clerk-users-webhook", {"content-type": "application/json"}, b"{}")


# -- item 8: the timeout is a deadline for the whole attempt ---------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",  # then the body, a byte at a time
        b"HTTP/1.1 200 OK\r\nx-slow: " + b"a" * 400,  # headers that never end
    ],
    ids=["slow-body", "slow-headers"],
)
def test_a_peer_that_trickles_cannot_hold_an_attempt_past_its_deadline(
    settings: Settings, head: bytes
) -> None:
    """Each byte arrives well within the per-read timeout, yet the attempt ends as a
    timeout at RELAY_DELIVERY_TIMEOUT (it used to run as long as the peer liked)."""
    peer = Peer(trickle(head, body_every_s=0.2))
    with peer.running() as url:
        response = deliverer(settings, url, delivery_timeout_s=1.0).send(_request(url))
    assert response.status_code is None
    assert response.transport_error == "timed out"


def test_a_timed_out_attempt_frees_its_connection_for_the_next(settings: Settings) -> None:
    """After a deadline, the next attempt through the same Deliverer works normally."""
    first = [True]

    def answer(conn: socket.socket) -> None:
        if first.pop() if first else False:
            trickle(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", 0.2, 5.0)(conn)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    peer = Peer(answer)
    with peer.running() as url:
        d = deliverer(settings, url, delivery_timeout_s=1.0)
        assert d.send(_request(url)).transport_error == "timed out"
        assert d.send(_request(url)).status_code == 200


def test_the_lease_outlasts_an_attempt_and_its_outcome_write(
    settings: Settings, tmp_path: Path
) -> None:
    """Lease > deadline + the outcome write's retry budget (half a lease), so a live
    worker's lease never expires while its attempt runs."""
    store = SQLiteStore(tmp_path / "relay.db")
    for timeout_s in (0.5, 3.0, 10.0, 60.0):
        worker = Worker(settings.with_overrides(delivery_timeout_s=timeout_s), store)
        assert worker.lease_ms > timeout_s * 1000 + worker.lease_ms // 2
    store.close()


def test_a_trickling_convex_never_sees_one_event_twice_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    """The reported failure: a Convex sending a byte every 2 s (here 0.2 s against a 0.5 s
    timeout) saw one event in flight four times. With the deadline, the worker's
    attempts of one event follow each other, and each ends as a timeout."""
    peer = Peer(trickle(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n", 0.2, 10.0))
    store = SQLiteStore(tmp_path / "relay.db")
    store.migrate()
    store.insert(make_event(event_id="msg_slow"))
    with peer.running() as url:
        s = settings.with_overrides(
            convex_site_url=url, delivery_timeout_s=0.5, retry_schedule_s=(0.0, 0.0, 0.0)
        )
        worker = Worker(s, store, poll_interval_s=0.05)
        runner = threading.Thread(target=worker.run, daemon=True)
        runner.start()
        try:
            deadline = time.monotonic() + 30
            while (event := store.get("msg_slow")) is not None and event.status == Status.PENDING:
                assert time.monotonic() < deadline, "the attempts never ended"
                time.sleep(0.05)
        finally:
            worker.stop()
            runner.join(10)
    event = store.get("msg_slow")
    store.close()
    assert event is not None and event.status == Status.FAILED
    assert [a.error for a in event.attempts] == ["timed out"] * 4
    assert peer.max_in_flight == 1


# -- item 9: replies are read up to a cap ------------------------------------------------------


def huge(status: bytes, prefix: bytes, size: int) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(prefix) + size).encode() + b"\r\n\r\n" + prefix
        )
        chunk = b"x" * 65536
        for start in range(0, size, len(chunk)):
            conn.sendall(chunk[: size - start])

    return answer


def test_a_100_mb_reply_is_not_read(settings: Settings) -> None:
    """A success with a 100 MB body is delivered after reading a few KiB; the relay hangs
    up instead of reading (or buffering) the rest."""
    peer = Peer(huge(b"200 OK", b"", 100 * 1024 * 1024))
    with peer.running() as url:
        response = deliverer(settings, url).send(_request(url))
        time.sleep(0.2)  # let the peer notice the hang-up (not a timing assertion)
    assert response.status_code == 200 and response.transport_error is None
    assert peer.errors, "the peer could send all 100 MB: the relay read the whole reply"


def test_a_huge_error_reply_keeps_only_an_excerpt(settings: Settings) -> None:
    """A 400 with a megabyte of text keeps at most ERROR_EXCERPT_CHARS of it."""
    peer = Peer(huge(b"400 Bad Request", b"", 1024 * 1024))
    with peer.running() as url:
        response = deliverer(settings, url).send(_request(url))
    assert response.status_code == 400
    assert response.excerpt is not None and 0 < len(response.excerpt) <= 500


def test_a_huge_function_reply_is_classified_by_its_leading_status(settings: Settings) -> None:
    """Convex's function API puts "status" first, so a success whose value is larger than
    what is read is still a success, and an error still an error."""
    s = settings.with_overrides(
        target="mutation", convex_url="http://placeholder", convex_deploy_key=DEPLOY_KEY
    )
    for status in (b"success", b"error"):
        prefix = b'{"status":"' + status + b'","value":"'
        peer = Peer(huge(b"200 OK", prefix, 4 * REPLY_READ_BYTES))
        with peer.running() as url:
            d = Deliverer(s.with_overrides(convex_url=url))
            request = Request(f"{url}/api/mutation", {}, b"{}", function="users:upsert")
            assert d.send(request).convex_status == status.decode()


# -- item 10: upstream text is redacted where it enters ---------------------------------------


def test_secrets_echoed_by_convex_never_reach_the_store_api_or_log(
    settings: Settings, tmp_path: Path
) -> None:
    """A 400 echoing the request's Authorization header (deploy key, JWT-shaped) is kept
    redacted: in the attempt's error, lastError and the delivery log line."""
    with ConvexStandIn("whsec_unused", deploy_key=DEPLOY_KEY).running() as convex:
        convex.fail_next(
            1, 400, body={"message": f"bad request: got authorization: Convex {DEPLOY_KEY}"}
        )
        s = settings.with_overrides(
            target="mutation", convex_url=convex.url, convex_deploy_key=DEPLOY_KEY
        )
        store = SQLiteStore(tmp_path / "relay.db")
        store.migrate()
        store.insert(make_event("user.updated", event_id="msg_echo"))
        with capture_logs() as logs:
            assert Worker(s, store).run_once() == 1
    event = store.get("msg_echo")
    store.close()
    assert event is not None and event.status == Status.FAILED
    shown = json.dumps(event.to_dict(with_attempts=True)) + json.dumps(logs)
    assert REDACTED in (event.last_error or "")
    for part in (DEPLOY_KEY, DEPLOY_KEY.split("|")[1], "eyJ2MiI6"):
        assert part not in shown

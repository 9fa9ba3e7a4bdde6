"""HTTP egress: what is sent (bytes, signatures, routes), and real loopback servers
that misbehave: slow, huge, hanging up or echoing secrets.

The misbehaving peers are plain sockets on loopback (the stand-in Convex cannot
misbehave at the byte level); the Deliverer and the worker are the real ones. How a
reply is read is pinned with a fake transport at the network edge.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from svix.webhooks import Webhook

from harness.convex_standin import ConvexStandIn
from harness.factories import FORWARD_SECRET, make_event
from relay.delivery.deadline import Watchdog
from relay.delivery.deliverer import REPLY_READ_BYTES, Deliverer, Request
from relay.delivery.transport import ConnectionFailed, TimedOut, TransportError
from relay.delivery.worker import Worker
from relay.models import Status
from relay.redact import REDACTED
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore
from tests.support.fake_transport import failing, replying
from tests.support.workers import KEY, Clock, make_worker, mutation_worker

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


# -- what is sent, and how transport failures end (moved from test_worker.py) ---------------


def test_http_action_gets_original_bytes_id_and_fresh_signature(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """The HTTP action receives Clerk's body unchanged, Clerk's svix-id, and a new signature."""
    event = make_event("user.created", event_id="msg_orig")
    store.insert(event)
    assert make_worker(settings, store, convex).run_once() == 1
    [got] = convex.received
    assert got.status == 200 and got.body == event.body
    assert got.headers["svix-id"] == "msg_orig"
    # The signature is by the forward secret, made now, not Clerk's original.
    Webhook(FORWARD_SECRET).verify(got.body, got.headers)
    assert abs(int(got.headers["svix-timestamp"]) - datetime.now(UTC).timestamp()) < 60
    stored = store.get("msg_orig")
    assert stored is not None and stored.status == Status.DELIVERED


def test_event_days_old_is_accepted_by_convex(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """An event received three days ago still passes Convex's 5-minute svix check."""
    three_days_ms = 3 * 86400 * 1000
    old = make_event(
        "user.created",
        event_id="msg_old",
        received_at_ms=int(datetime.now(UTC).timestamp() * 1000) - three_days_ms,
    )
    store.insert(old)
    make_worker(settings, store, convex).run_once()
    assert convex.received[0].status == 200
    assert convex.delivered == ["msg_old"]


def test_every_attempt_is_signed_at_its_own_time(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """A retry carries the worker's clock at send time and a signature over it."""
    clock = Clock()
    event = make_event("user.created", event_id="msg_late")
    store.insert(event)
    convex.fail_next(1, 503)
    worker = make_worker(settings, store, convex, clock=clock)
    worker.run_once()
    clock.now += 86400
    worker.run_once()
    first, second = convex.received
    assert int(second.headers["svix-timestamp"]) == int(clock.now)
    expected = Webhook(FORWARD_SECRET).sign(
        "msg_late", datetime.fromtimestamp(int(clock.now), UTC), event.body.decode()
    )
    assert second.headers["svix-signature"] == expected != first.headers["svix-signature"]


def test_mutation_target_uses_template_routes_and_deploy_key(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """user.created -> users:upsertFromClerk {data}; user.deleted -> deleteFromClerk."""
    store.insert(make_event("user.created", event_id="msg_c", entity_id="user_9", timestamp=1))
    store.insert(make_event("user.deleted", event_id="msg_d", entity_id="user_9", timestamp=2))
    worker = mutation_worker(settings, store, convex)
    worker.run_once()
    worker.run_once()
    create, delete = (r.json() for r in convex.received)
    assert create["path"] == "users:upsertFromClerk" and create["format"] == "json"
    assert create["args"]["data"]["id"] == "user_9"
    assert delete == {
        "path": "users:deleteFromClerk",
        "args": {"clerkUserId": "user_9"},
        "format": "json",
    }
    assert convex.received[0].headers["authorization"] == f"Convex {KEY}"


def test_normalized_mutation_sends_event_args(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """RELAY_PAYLOAD=normalized sends {event: <normalized>} with camelCase data."""
    store.insert(
        make_event(
            "user.updated", event_id="msg_n", entity_id="user_5", first_name="Ada", last_name=None
        )
    )
    mutation_worker(settings, store, convex, payload="normalized").run_once()
    args = convex.received[0].json()["args"]
    assert set(args) == {"event"}
    ev = args["event"]
    assert (ev["id"], ev["type"], ev["entityId"], ev["object"]) == (
        "msg_n",
        "user.updated",
        "user_5",
        "user",
    )
    assert ev["data"]["firstName"] == "Ada" and ev["data"]["name"] == "Ada"


def test_raw_mutation_escapes_unsafe_metadata_keys(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """Raw mode on the function API escapes keys Convex rejects instead of failing inside it."""
    store.insert(
        make_event("user.updated", event_id="msg_k", public_metadata={"$plan": "pro", "naïve": 1})
    )
    mutation_worker(settings, store, convex).run_once()
    meta = convex.received[0].json()["args"]["data"]["public_metadata"]
    assert "$plan" not in meta and all(k.isascii() for k in meta)
    assert sorted(map(str, meta.values())) == ["1", "pro"]


def test_timeout_is_retried(settings: Settings, store: SQLiteStore, convex: ConvexStandIn) -> None:
    """A Convex that does not answer within the attempt timeout is retried."""
    store.insert(make_event(event_id="msg_1"))
    convex.script.hang_s = 1.5
    make_worker(settings, store, convex, delivery_timeout_s=0.3).run_once()
    convex.script.hang_s = 0
    event = store.get("msg_1")
    assert event is not None and event.status == Status.PENDING
    assert event.attempts[0].error == "timed out"


def test_connection_refused_is_retried(settings: Settings, store: SQLiteStore) -> None:
    """Convex down (nothing listening) is a retry, not a failure."""
    store.insert(make_event(event_id="msg_1"))
    s = settings.with_overrides(convex_site_url="http://127.0.0.1:9", retry_schedule_s=(5.0,))
    Worker(s, store, rng=random.Random(1)).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status == Status.PENDING
    assert event.last_error == "connection failed"


def test_redirect_is_not_followed(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    """A 3xx means a misconfigured URL: recorded as the answer, never followed."""
    store.insert(make_event(event_id="msg_1"))
    convex.fail_next(1, 307)
    make_worker(settings, store, convex).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status != Status.DELIVERED
    assert event.attempts[0].status_code == 307
    assert len(convex.received) == 1


def test_attempt_names_the_relay_in_its_user_agent(
    settings: Settings, store: SQLiteStore, convex: ConvexStandIn
) -> None:
    store.insert(make_event(event_id="msg_1"))
    make_worker(settings, store, convex).run_once()
    assert convex.received[0].headers["user-agent"].startswith("clerk-convex-relay/")


@contextmanager
def raw_server(handle: Callable[[socket.socket], None]) -> Iterator[str]:
    """A loopback TCP server that hands each connection to ``handle``; yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    handle(conn)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_connection_closed_without_answer_is_retried(
    settings: Settings, store: SQLiteStore
) -> None:
    """A peer that reads the request and hangs up is a transport failure, retried."""
    store.insert(make_event(event_id="msg_1"))

    def hang_up(conn: socket.socket) -> None:
        conn.recv(65536)

    with raw_server(hang_up) as url:
        s = settings.with_overrides(convex_site_url=url, retry_schedule_s=(5.0,))
        Worker(s, store, rng=random.Random(1)).run_once()
    event = store.get("msg_1")
    assert event is not None and event.status == Status.PENDING
    assert event.last_error == "connection failed"


def test_proxy_from_the_environment_is_used_unless_no_proxy(
    settings: Settings, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY carries deliveries (absolute-form request line); NO_PROXY bypasses it."""
    lines: list[bytes] = []

    def proxy(conn: socket.socket) -> None:
        lines.append(conn.recv(65536).split(b"\r\n", 1)[0])
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    store.insert(make_event(event_id="msg_1"))
    s = settings.with_overrides(convex_site_url="http://convex.invalid", retry_schedule_s=(5.0,))
    with raw_server(proxy) as url:
        for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", url)
        Worker(s, store, rng=random.Random(1)).run_once()
        assert lines == [b"POST http://convex.invalid/clerk-users-webhook HTTP/1.1"]
        store.insert(make_event(event_id="msg_2", entity_id="user_2"))
        monkeypatch.setenv("no_proxy", "convex.invalid")
        Worker(s, store, rng=random.Random(1)).run_once()
    assert len(lines) == 1
    assert store.get("msg_1").status == Status.DELIVERED  # type: ignore[union-attr]
    second = store.get("msg_2")
    assert second is not None and second.last_error == "connection failed"


# -- reading replies, with a fake transport at the network edge -------------------------------


class Ticks:
    """A monotonic clock that moves 12.5 ms each time it is read."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.0125
        return self.now


def test_a_reply_is_read_into_a_response(settings: Settings) -> None:
    """Status, Retry-After (any header case), a redacted excerpt, and the attempt's
    duration on the injected monotonic clock."""
    body = b'{"message": "overloaded, key Convex ' + DEPLOY_KEY.encode() + b'"}'
    transport = replying(503, body, {"RETRY-AFTER": "7"})
    s = settings.with_overrides(
        target="mutation", convex_url="http://convex.invalid", convex_deploy_key=DEPLOY_KEY
    )
    response = Deliverer(s, transport, monotonic=Ticks()).send(_request("http://convex.invalid"))
    assert response.status_code == 503 and response.retry_after == "7"
    assert response.excerpt == f"overloaded, key Convex {REDACTED}"
    assert response.duration_ms == pytest.approx(12.5)
    assert response.transport_error is None and len(transport.requests) == 1


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ConnectionFailed(), "connection failed"),
        (TimedOut(), "timed out"),
        (TransportError("SomethingOdd"), "SomethingOdd"),
    ],
    ids=["connection-failed", "timed-out", "other"],
)
def test_a_failure_on_the_way_is_a_response_without_status(
    settings: Settings, error: TransportError, reason: str
) -> None:
    """The Deliverer never raises for HTTP trouble: the transport's error is the reason."""
    d = Deliverer(settings, failing(error))
    got = d.send(_request("http://convex.invalid"))
    assert (got.status_code, got.transport_error, got.excerpt) == (None, reason, None)


@pytest.mark.parametrize(
    ("body", "whole", "convex_status"),
    [
        (b'{"status":"success","value":null}', True, "success"),
        (b'{"status":"error","errorMessage":"boom"}', True, "error"),
        (b"<html>not convex</html>", True, "error"),
        (b'{"status":"success","value":"' + b"x" * 100, False, "success"),
        (b'{"value":"' + b"x" * 100, False, "error"),
    ],
    ids=["success", "error", "not-json", "cut-success", "cut-without-status"],
)
def test_a_function_reply_is_judged_by_its_status(
    settings: Settings, body: bytes, whole: bool, convex_status: str
) -> None:
    """A function-API 200 carries Convex's status; a reply cut at the read cap is judged
    by its leading status field, anything else is an error."""
    s = settings.with_overrides(
        target="mutation", convex_url="http://convex.invalid", convex_deploy_key=DEPLOY_KEY
    )
    d = Deliverer(s, replying(200, body, whole=whole))
    request = Request("http://convex.invalid/api/mutation", {}, b"{}", function="users:upsert")
    response = d.send(request)
    assert response.convex_status == convex_status
    assert (response.excerpt is None) is (convex_status == "success")


def test_the_prepared_request_is_what_the_transport_gets(
    settings: Settings, store: SQLiteStore
) -> None:
    """The transport is handed the signed request as prepared, nothing added or lost."""
    transport = replying(200)
    d = Deliverer(settings, transport)
    store.insert(make_event("user.created", event_id="msg_seen"))
    event = store.get("msg_seen")
    assert event is not None
    request = d.prepare(event)
    assert d.send(request).status_code == 200
    assert transport.requests == [request]
    assert request.headers["svix-id"] == "msg_seen"


class _CountingCondition(threading.Condition):
    """A Condition that counts its notify() calls (each one a watchdog wake-up)."""

    def __init__(self) -> None:
        super().__init__()
        self.notified = 0

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        super().notify(n)


def test_the_deadline_watchdog_is_woken_only_for_a_deadline_earlier_than_it_waits_for() -> None:
    """Attempts share one timeout, so each new one ends after those already armed: the
    watchdog thread is not woken for it (it was, once per attempt: a thread switch
    each). An attempt ending sooner than anything armed still wakes it, and is ended
    on time."""
    watchdog = Watchdog()
    cond = _CountingCondition()
    watchdog._cond = cond
    with watchdog.attempt(30.0):
        time.sleep(0.05)  # the thread is waiting for that deadline now
        woken = cond.notified
        for _ in range(50):
            with watchdog.attempt(30.0):
                pass
        assert cond.notified == woken
        started = time.monotonic()
        with watchdog.attempt(0.3) as soon:
            while not soon.expired and time.monotonic() - started < 5.0:
                time.sleep(0.01)
        assert soon.expired
        assert cond.notified == woken + 1

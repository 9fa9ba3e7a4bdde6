"""Group commit: ingest processes hand events to one committer over a local socket.

Real SQLite files and real sockets throughout; the misbehaving committers are real
servers bound to the committer's socket name that answer wrongly on purpose.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from harness.factories import make_envelope, make_event, signed_headers
from harness.relay_process import RelayProcess, relay_env
from relay import create_app
from relay.models import Status
from relay.settings import Settings
from relay.store.committer import (
    BURST_WINDOW,
    ERROR,
    CommitClient,
    Committer,
    decode,
    encode,
    socket_name,
)
from relay.store.sqlite import SQLiteStore


@pytest.fixture
def committer(store: SQLiteStore) -> Iterator[Committer]:
    own = SQLiteStore(store.path)
    c = Committer(own)
    stop = c.start()
    assert stop is not None
    yield c
    stop()
    own.close()


def stored_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM events ORDER BY seq")]
    finally:
        conn.close()


def test_frames_round_trip_every_field() -> None:
    """What the committer decodes is the event ingest built, body bytes untouched."""
    event = make_event("organization.updated", event_id="msg_rt", entity_id="org_1")
    odd = replace(event, body=b"\xff\x00 not utf-8", status=Status.SKIPPED)
    for original in (event, odd):
        frame = encode(original)
        meta_len, body_len = int.from_bytes(frame[:4]), int.from_bytes(frame[4:8])
        assert decode(frame[8 : 8 + meta_len], frame[8 + meta_len :]) == original
        assert body_len == len(original.body)


def test_concurrent_inserts_share_transactions(store: SQLiteStore, committer: Committer) -> None:
    """Eight threads, 40 events each: all stored once, in fewer commits than events."""
    errors: list[BaseException] = []

    def send(t: int) -> None:
        try:
            for i in range(40):
                assert store.insert(make_event(event_id=f"msg_{t}_{i}", entity_id=f"user_{t}"))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(t,), daemon=True) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(stored_ids(store.path))) == 320
    assert committer.events == 320
    assert committer.batches < committer.events


def test_duplicates_are_reported_through_the_committer(
    store: SQLiteStore, committer: Committer
) -> None:
    event = make_event(event_id="msg_dup")
    assert store.insert(event) is True
    assert store.insert(event) is False
    assert committer.events == 2
    assert stored_ids(store.path) == ["msg_dup"]


def test_the_committer_wakes_workers_once_a_commit_holds_a_due_event(
    store: SQLiteStore, committer: Committer
) -> None:
    woke = threading.Event()
    stop = store.listen(woke.set)
    try:
        assert store.insert(make_event(event_id="msg_due")) is True
        assert committer.events == 1
        assert woke.wait(5)
    finally:
        stop()


def test_an_ingest_process_keeps_one_connection_between_requests(
    store: SQLiteStore, committer: Committer
) -> None:
    """Sequential requests reuse the kept connection instead of connecting again."""
    for i in range(5):
        assert store.insert(make_event(event_id=f"msg_seq_{i}", entity_id=f"user_{i}"))
    assert committer.events == 5
    assert committer.connections == 1


def test_commits_shared_by_several_events_in_a_row_are_a_burst(store: SQLiteStore) -> None:
    """Lone events never make a burst; a run of shared commits does; it passes again."""
    c = Committer(store)
    for _ in range(50):
        c.observe(1)
        c.observe(2)  # 500 req/s now and then puts two in one commit
    assert not bursting(c)
    for _ in range(BURST_WINDOW):
        c.observe(8)
    assert bursting(c)
    for _ in range(2 * BURST_WINDOW):
        c.observe(1)
    assert not bursting(c)


def bursting(c: Committer) -> bool:
    """``c.bursting`` read afresh (mypy keeps a property narrowed across ``observe``)."""
    return c.bursting


def test_a_burst_wakes_the_worker_now_and_then_not_after_every_commit(
    store: SQLiteStore,
) -> None:
    bursts: list[bool] = []

    class Counting(SQLiteStore):
        def notify(self, *, burst: bool = False) -> None:
            bursts.append(burst)

    c = Committer(Counting(store.path))
    for _ in range(BURST_WINDOW):
        c.observe(8)
    for _ in range(20):
        c._wake()  # twenty commits inside BURST_WAKE_EVERY_S
    assert bursts == [True]
    for _ in range(2 * BURST_WINDOW):
        c.observe(1)
    c._wake()
    assert bursts == [True, False]  # the end of the burst is said at once


def test_without_a_committer_ingest_commits_by_itself(store: SQLiteStore) -> None:
    assert CommitClient(store.path).insert(make_event()) is None
    assert store.insert(make_event(event_id="msg_alone")) is True
    assert stored_ids(store.path) == ["msg_alone"]


def test_a_second_committer_for_the_same_file_stands_aside(
    store: SQLiteStore, committer: Committer
) -> None:
    assert Committer(store).start() is None


def test_stopping_the_committer_sends_ingest_back_to_direct_commits(store: SQLiteStore) -> None:
    c = Committer(SQLiteStore(store.path))
    stop = c.start()
    assert stop is not None
    assert store.insert(make_event(event_id="msg_before")) is True
    stop()
    assert store.insert(make_event(event_id="msg_after")) is True
    assert stored_ids(store.path) == ["msg_before", "msg_after"]
    assert c.events == 1


def fake_committer(path: Path, answer: Callable[[socket.socket], object]) -> Callable[[], None]:
    """A server on the committer's name that reads one request and calls ``answer``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_name(path))
    listener.listen()

    def run() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                answer(conn)
                conn.recv(1)  # until the client hangs up

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return lambda: thread.join(timeout=5)


def test_a_committer_that_hangs_up_leaves_the_event_to_ingest(store: SQLiteStore) -> None:
    """No reply (the committer died mid-request): the event is committed directly."""
    done = fake_committer(store.path, lambda conn: conn.shutdown(socket.SHUT_WR))
    assert store.insert(make_event(event_id="msg_orphan")) is True
    store.close()
    done()
    assert stored_ids(store.path) == ["msg_orphan"]


def test_an_error_reply_leaves_the_event_to_ingest(store: SQLiteStore) -> None:
    """'E' (its transaction failed): the sender commits its own event and keeps the line."""
    done = fake_committer(store.path, lambda conn: conn.sendall(ERROR))
    assert store.insert(make_event(event_id="msg_retry")) is True
    store.close()
    done()
    assert stored_ids(store.path) == ["msg_retry"]


def test_a_slow_committer_is_given_up_on(store: SQLiteStore) -> None:
    """A reply that does not come within the timeout: commit directly, drop the line."""
    client = CommitClient(store.path, timeout_s=0.2)
    release = threading.Event()
    done = fake_committer(store.path, lambda _conn: release.wait(5))
    assert client.insert(make_event(event_id="msg_slow")) is None
    release.set()
    client.close()
    done()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
def test_peers_of_another_user_are_refused(store: SQLiteStore, committer: Committer) -> None:
    """The abstract socket has no file permissions; the committer checks the peer's uid."""
    pid = os.fork()
    if pid == 0:  # child: become nobody and try to store an event
        code = 1
        try:
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(socket_name(store.path))
                try:
                    sock.sendall(encode(make_event(event_id="msg_intruder")))
                    code = 0 if sock.recv(1) == b"" else 1
                except (ConnectionResetError, BrokenPipeError):
                    code = 0  # hung up on: refused
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert stored_ids(store.path) == []


def test_relay_serve_commits_ingest_through_its_committer(tmp_path: Path) -> None:
    """Under relay serve, concurrent webhooks are committed by the supervisor's committer
    (and answered 200 only after), every one exactly once."""
    env = relay_env(tmp_path)
    bodies = {f"msg_serve_{i:03d}": make_envelope(entity_id=f"user_{i}") for i in range(40)}
    with RelayProcess(tmp_path, env, ("serve", "--web-only")) as relay:

        def send(msg_id: str) -> int:
            body = json.dumps(bodies[msg_id]).encode()
            headers = signed_headers(body, msg_id=msg_id)
            return requests.post(f"{relay.url}/webhooks/clerk", data=body, headers=headers,
                                 timeout=10).status_code  # fmt: skip

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(send, bodies)) == {200}
        assert relay.stop() == 0
        log = relay.log()
    assert sorted(stored_ids(tmp_path / "relay.db")) == sorted(bodies)
    stopped = [json.loads(line) for line in log.splitlines() if "committer_stopped" in line]
    assert [line["events"] for line in stopped] == [40]


def test_an_event_the_database_cannot_take_does_not_stop_the_committer(
    store: SQLiteStore, committer: Committer
) -> None:
    """An insert failing with something other than StoreError (an integer past SQLite's
    64 bits raises OverflowError) is refused for that request alone; the committer lives
    on and commits the next event itself."""
    client = CommitClient(store.path)
    overflowing = replace(make_event(event_id="msg_big"), updated_at_ms=10**20)
    assert client.insert(overflowing) is None  # the sender commits (or fails) by itself
    assert committer.alive()
    assert client.insert(make_event(event_id="msg_next")) is True
    assert committer.events == 2
    client.close()
    assert stored_ids(store.path) == ["msg_next"]


def test_readiness_names_a_committer_that_stopped_answering(
    settings: Settings, store: SQLiteStore
) -> None:
    """Once the committer served this process, /readyz fails while it does not answer
    and recovers when relay serve has started it again."""
    client = create_app(settings).test_client()
    store.heartbeat("w1", now_ms=int(time.time() * 1000))
    own = SQLiteStore(store.path)
    c = Committer(own)
    stop = c.start()
    assert stop is not None
    body = json.dumps(make_envelope()).encode()
    assert (
        client.post("/webhooks/clerk", data=body, headers=signed_headers(body)).status_code == 200
    )
    assert c.events == 1  # through the committer
    assert "committer" not in client.get("/readyz").get_json()["checks"]
    stop()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["failing"] == ["committer"]
    stop = c.start()
    assert stop is not None
    assert client.get("/readyz").status_code == 200
    stop()
    own.close()

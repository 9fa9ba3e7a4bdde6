"""Durability: what the relay acknowledged survives kill -9, dead workers and full disks.

These are the promises behind "answer 200 only after a durable commit": an event Clerk
was told about is delivered after any crash, and when the store cannot commit, Clerk
is told 503 so that it keeps the event and retries.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.factories import FORWARD_SECRET, make_envelope, make_event
from harness.relay_process import RelayProcess, TrackingStandIn, free_port, relay_env, wait_until
from relay.models import Status
from relay.store.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e

#: Long enough that nothing runs out of retries while Convex is down in these tests.
PATIENT_SCHEDULE = ",".join(["500ms"] * 60)


@pytest.fixture
def standin() -> Iterator[TrackingStandIn]:
    with TrackingStandIn(FORWARD_SECRET).running() as cx:
        yield cx


def delivered_all(store: SQLiteStore, ids: list[str]) -> bool:
    return all((e := store.get(i)) is not None and e.status == Status.DELIVERED for i in ids)


@pytest.mark.parametrize("outage", ["convex answers 503", "nothing listens"])
def test_acknowledged_events_survive_kill_9_and_are_delivered_once(
    tmp_path: Path, standin: TrackingStandIn, outage: str
) -> None:
    """Events answered 200 while Convex is down survive SIGKILL of the whole process group
    and are each delivered exactly once after a restart on the same database file."""
    if outage == "convex answers 503":
        standin.down()
        first_target = standin.url
    else:
        first_target = f"http://127.0.0.1:{free_port()}"
    base = {"RELAY_FORWARD_SECRET": FORWARD_SECRET, "RELAY_RETRY_SCHEDULE": PATIENT_SCHEDULE}
    acked = []
    with RelayProcess(tmp_path, relay_env(tmp_path, CONVEX_SITE_URL=first_target, **base)) as a:
        for n in range(24):
            msg_id = f"msg_dur_{uuid.uuid4().hex[:12]}"
            envelope = make_envelope(
                "user.updated", entity_id=f"user_dur{n % 6}", timestamp=1_700_000_000_000 + n
            )
            response = a.post_event(envelope, msg_id)
            assert response.json() == {"status": "accepted", "id": msg_id}
            acked.append(msg_id)
        a.kill9_group()
        assert a.proc is not None and a.proc.returncode == -9
    assert standin.delivered == []

    standin.up()
    env = relay_env(tmp_path, CONVEX_SITE_URL=standin.url, **base)
    with RelayProcess(tmp_path, env) as b:
        store = b.open_store()
        wait_until(lambda: delivered_all(store, acked), 60, "every acknowledged event")
        store.close()
        assert b.stop() == 0
    for msg_id in acked:
        assert standin.delivery_count(msg_id) == 1, msg_id


def test_claim_of_a_killed_worker_is_a_lease_and_is_taken_over(
    tmp_path: Path, standin: TrackingStandIn
) -> None:
    """A worker killed mid-attempt leaves its event pending under a lease, not lost; once
    the lease expires another worker delivers it (the dead attempt leaves no record)."""
    db = tmp_path / "relay.db"
    store = SQLiteStore(db)
    store.migrate()
    event = make_event(
        "user.created",
        event_id="msg_orphan",
        entity_id="user_orphan",
        received_at_ms=int(time.time() * 1000),
    )
    assert store.insert(event)

    standin.script.hang_s = 5.0
    env = relay_env(tmp_path, CONVEX_SITE_URL=standin.url, RELAY_FORWARD_SECRET=FORWARD_SECRET)
    with RelayProcess(tmp_path, env, command=("worker",)) as doomed:
        wait_until(lambda: "msg_orphan" in standin.entered, 20, "the worker's attempt")
        doomed.kill9_group()

    owner, expires = store._query(
        "SELECT lease_owner, lease_expires_at FROM events WHERE id = 'msg_orphan'"
    )[0]
    orphan = store.get("msg_orphan")
    assert orphan is not None and orphan.status == Status.PENDING
    assert orphan.attempt_count == 0
    assert owner is not None and expires > time.time() * 1000
    # The lease is delivery_timeout*2 + 30 s; let that time "pass" instead of waiting it out
    # (a lease's end is also when its event comes due again).
    with store._tx() as conn:
        conn.execute(
            "UPDATE events SET lease_expires_at = ?, next_attempt_at = ? WHERE id = 'msg_orphan'",
            (int(time.time() * 1000) - 1,) * 2,
        )

    standin.up()
    with RelayProcess(tmp_path, env, command=("worker",)) as heir:
        wait_until(lambda: delivered_all(store, ["msg_orphan"]), 20, "the takeover")
        assert heir.stop() == 0
    done = store.get("msg_orphan")
    store.close()
    assert done is not None
    assert [a.status_code for a in done.attempts] == [200]


@contextlib.contextmanager
def tiny_disk(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``mountpoint`` (root only); skips the test where mounting fails."""
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(disk: Path) -> Path:
    """Write zeros until the filesystem is full; the filler file (delete it to free space)."""
    filler = disk / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(chunk)
    return filler


def test_full_disk_answers_503_acknowledges_nothing_and_recovers(
    tmp_path: Path, standin: TrackingStandIn
) -> None:
    """With the database's disk full, ingest answers 503 JSON (not 500), keeps nothing it
    did not acknowledge, and accepts the same event again once space is back."""
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        env = relay_env(
            tmp_path,
            CONVEX_SITE_URL=standin.url,
            RELAY_FORWARD_SECRET=FORWARD_SECRET,
            RELAY_DATABASE_URL=f"sqlite:///{disk / 'relay.db'}",
        )
        with RelayProcess(tmp_path, env) as relay:
            padding = "x" * 8000  # every event grows the WAL, so the full disk shows soon
            acked: list[str] = []
            assert relay.post_event(make_envelope("user.created"), "msg_before").status_code == 200
            acked.append("msg_before")
            store = relay.open_store()
            # Delivered before the disk fills: a completion that cannot be written keeps
            # its lease (~34 s here) and is delivered again later, which would slow this down.
            wait_until(lambda: delivered_all(store, ["msg_before"]), 20, "the first delivery")
            filler = fill(disk)

            refused = None
            for n in range(400):
                msg_id = f"msg_full_{n}"
                envelope = make_envelope("user.updated", entity_id=f"user_full{n}", pad=padding)
                response = relay.post_event(envelope, msg_id)
                if response.status_code != 200:
                    refused = (msg_id, envelope, response)
                    break
                acked.append(msg_id)
            assert refused is not None, "the disk never filled up"
            msg_id, envelope, response = refused
            assert response.status_code == 503, response.text
            assert response.json()["error"]
            assert set(response.json()) == {"error", "detail"}
            assert "Traceback" not in response.text
            # Readiness says so, whichever gunicorn worker answers it.
            ready = relay.get("/readyz")
            assert ready.status_code == 503 and "ingest" in ready.json()["failing"], ready.text

            filler.unlink()
            assert store.get(msg_id) is None  # nothing kept for the 503
            again = relay.post_event(envelope, msg_id)  # Clerk's retry
            assert again.json() == {"status": "accepted", "id": msg_id}
            wait_until(
                lambda: relay.get("/readyz").json()["checks"]["ingest"] == "ok", 10, "readiness"
            )
            wait_until(
                lambda: delivered_all(store, [*acked, msg_id]), 60, "delivery after recovery"
            )
            store.close()
            assert relay.stop() == 0
    assert set(acked) | {msg_id} <= set(standin.delivered)


def test_kill9_mid_drain_loses_nothing_and_keeps_order(
    tmp_path: Path, standin: TrackingStandIn
) -> None:
    """A backlog drains after an outage; the worker is killed (-9) halfway. The next
    worker delivers the rest: every event at least once, one object never in flight
    twice, and per object nothing older arrives after something newer."""
    db = tmp_path / "relay.db"
    store = SQLiteStore(db)
    store.migrate()
    now_ms = int(time.time() * 1000)
    events = [
        (f"msg_d{u:02d}_{i:02d}", f"user_d{u:02d}", now_ms + i)
        for u in range(20)
        for i in range(10)
    ]
    for event_id, user, at in sorted(events, key=lambda e: (e[2], -int(e[1][-2:]))):
        store.insert(
            make_event(event_id=event_id, entity_id=user, timestamp=at, received_at_ms=now_ms)
        )
    standin.script.hang_s = 0.03  # a drain that takes a few seconds
    env = relay_env(
        tmp_path,
        CONVEX_SITE_URL=standin.url,
        RELAY_FORWARD_SECRET=FORWARD_SECRET,
        RELAY_CONCURRENCY="8",
    )
    ids = [e[0] for e in events]
    with RelayProcess(tmp_path, env, command=("worker",)) as doomed:
        wait_until(lambda: len(standin.successes()) >= len(ids) // 2, 30, "half the drain")
        doomed.kill9_group()
    assert store.counts()["pending"] > 0
    with store._tx() as conn:  # the dead worker's leases run out ("time passes")
        conn.execute(
            "UPDATE events SET lease_expires_at = ?, next_attempt_at = ?"
            " WHERE lease_owner IS NOT NULL AND status = 'pending'",
            (now_ms - 1, now_ms - 1),
        )
    standin.script.hang_s = 0.0
    with RelayProcess(tmp_path, env, command=("worker",)) as heir:
        wait_until(lambda: delivered_all(store, ids), 60, "the rest of the drain")
        assert heir.stop() == 0
    assert max(standin.max_in_flight.values()) == 1
    delivered = [r.headers["svix-id"] for r in standin.successes()]
    assert set(delivered) == set(ids)
    for u in range(20):
        mine = [i for i in delivered if i.startswith(f"msg_d{u:02d}_")]
        collapsed = [i for n, i in enumerate(mine) if n == 0 or mine[n - 1] != i]
        # a redelivery (the attempt in flight at the kill) may repeat, never reorder
        assert collapsed == sorted(set(mine)), mine
    store.close()


def test_a_request_cut_short_by_a_killed_worker_reaches_no_function(
    standin: TrackingStandIn,
) -> None:
    """urllib3 sends a request's headers and its body in separate writes, so a worker
    killed between them leaves Convex half a request. Convex runs nothing for it; the
    stand-in must not either, or the kill -9 test above would see a phantom object in
    flight."""
    assert standin.server is not None
    host, port = standin.server.server_address[:2]
    with socket.create_connection((str(host), int(port))) as sock:
        sock.sendall(
            b"POST /clerk-users-webhook HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{"data"'
        )
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""  # closed without an answer
    assert standin.entered == [] and standin.received == []
    assert not standin.max_in_flight

"""The same end-to-end promises on both stores: SQLite and PostgreSQL behave alike.

A compact matrix through a real ``relay serve`` on each backend (``tests/test_e2e.py``
covers SQLite in depth): fixtures forwarded byte for byte, retries, per-object order
after an outage with shuffled arrival, ``kill -9`` of the whole process group with
events pending, and ``relay replay`` of a failed event from the CLI.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from svix.webhooks import Webhook

from harness.factories import FORWARD_SECRET, fixture_paths, make_envelope
from harness.postgres_server import fresh_schema
from harness.relay_process import RelayProcess, TrackingStandIn, relay_env, wait_until
from relay.models import NewEvent, Status
from relay.store import Store, open_store
from tests.support.e2e import new_id, settled

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("standin_up")]

BACKENDS = [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]
#: Patient enough that nothing runs out of retries during the outages below.
PATIENT_SCHEDULE = ",".join(["300ms"] * 40)


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    """A fresh, empty database of ``backend``: its ``RELAY_DATABASE_URL``."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'relay.db'}"
        return
    with fresh_schema() as url:
        yield url


def env_for(workdir: Path, db_url: str, convex_url: str) -> dict[str, str]:
    return relay_env(
        workdir,
        RELAY_DATABASE_URL=db_url,
        CONVEX_SITE_URL=convex_url,
        RELAY_FORWARD_SECRET=FORWARD_SECRET,
        RELAY_DELIVERY_TIMEOUT="1s",
        RELAY_RETRY_SCHEDULE=PATIENT_SCHEDULE,
    )


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def relay(
    backend: str, tmp_path_factory: pytest.TempPathFactory, standin: TrackingStandIn
) -> Iterator[RelayProcess]:
    """One ``relay serve`` on a fresh database of the backend, for the module."""
    workdir = tmp_path_factory.mktemp(f"relay-{backend}")
    with (
        database(backend, workdir) as url,
        RelayProcess(workdir, env_for(workdir, url, standin.url)) as relay,
    ):
        yield relay


@pytest.fixture(scope="module")
def store(relay: RelayProcess) -> Iterator[Store]:
    s = open_store(relay.env["RELAY_DATABASE_URL"])
    yield s
    s.close()


# -- tests ---------------------------------------------------------------------------------------


def _order_key(path: Path) -> tuple[int, int, str]:
    """The relay's own order for the fixture (deletes after same-instant upserts), then name."""
    body = path.read_bytes()
    event = NewEvent.from_envelope("msg_order", body, json.loads(body), received_at_ms=0)
    return (*event.order, path.name)


def test_every_clerk_fixture_is_delivered_byte_for_byte(
    relay: RelayProcess, store: Store, standin: TrackingStandIn, backend: str
) -> None:
    """Every Clerk payload reaches Convex with its exact bytes and svix-id, re-signed."""
    sent: dict[str, bytes] = {}
    for path in sorted(fixture_paths(), key=_order_key):  # each object's own order
        body = path.read_bytes()
        msg_id = new_id(f"{backend}_{path.stem.replace('.', '_')}")
        response = relay.post_event(body, msg_id)
        assert response.json() == {"status": "accepted", "id": msg_id}
        sent[msg_id] = body
    assert len(sent) >= 46

    events = [settled(store, i) for i in sent]
    assert [(e.id, e.status, e.last_error) for e in events if e.status != Status.DELIVERED] == []
    forwarded = {r.headers["svix-id"]: r for r in standin.successes() if "svix-id" in r.headers}
    for msg_id, body in sent.items():
        assert forwarded[msg_id].body == body
        Webhook(FORWARD_SECRET).verify(forwarded[msg_id].body, forwarded[msg_id].headers)
        assert standin.delivery_count(msg_id) == 1


def test_two_503s_then_ok_is_delivered_on_the_third_attempt(
    relay: RelayProcess, store: Store, standin: TrackingStandIn
) -> None:
    """503, 503, 200: delivered once, three attempts recorded in order."""
    standin.fail_next(2, 503)
    msg_id = new_id("bk")
    relay.post_event(
        make_envelope("user.created", entity_id=f"user_{uuid.uuid4().hex[:8]}"), msg_id
    )
    event = settled(store, msg_id)
    assert event.status == Status.DELIVERED
    assert [(a.status_code, a.outcome) for a in event.attempts] == [
        (503, "retry"),
        (503, "retry"),
        (200, "delivered"),
    ]
    assert standin.delivery_count(msg_id) == 1


def test_shuffled_arrival_during_an_outage_is_delivered_in_order(
    relay: RelayProcess, store: Store, standin: TrackingStandIn
) -> None:
    """Events of three users posted shuffled while Convex answers 503 are delivered, once
    it is back, in timestamp order per user and never two at once for one user."""
    standin.down()
    expected: dict[str, list[str]] = {}
    posts = []
    for n in range(3):
        uid = f"user_ord{n}_{uuid.uuid4().hex[:6]}"
        expected[uid] = []
        for k, event_type in enumerate(["user.created", *["user.updated"] * 5, "user.deleted"]):
            at = 1_700_000_000_000 + k * 1000
            msg_id = new_id("ord")
            expected[uid].append(msg_id)
            posts.append((make_envelope(event_type, entity_id=uid, timestamp=at), msg_id))
    random.Random(6).shuffle(posts)
    seen_before = len(standin.received)
    for envelope, msg_id in posts:
        assert relay.post_event(envelope, msg_id).json() == {"status": "accepted", "id": msg_id}
    wait_until(lambda: len(standin.received) >= seen_before + 3, 20, "attempts while down")
    standin.up()

    ids = [i for per_user in expected.values() for i in per_user]
    assert {settled(store, i, timeout=60).status for i in ids} == {Status.DELIVERED}
    order = [r.headers["svix-id"] for r in standin.successes()]
    for uid, wanted in expected.items():
        assert [i for i in order if i in wanted] == wanted
        assert standin.max_in_flight[uid] == 1


def test_kill_9_of_the_process_group_loses_no_pending_event(backend: str, tmp_path: Path) -> None:
    """Events acknowledged while Convex is down survive SIGKILL of serve, gunicorn and the
    worker; a restart on the same database delivers each exactly once."""
    with TrackingStandIn(FORWARD_SECRET).running() as cx, database(backend, tmp_path) as url:
        cx.down()
        env = env_for(tmp_path, url, cx.url)
        acked = []
        with RelayProcess(tmp_path, env) as first:
            for n in range(12):
                msg_id = new_id("kill")
                envelope = make_envelope(
                    "user.updated", entity_id=f"user_k{n % 4}", timestamp=1_700_000_000_000 + n
                )
                assert first.post_event(envelope, msg_id).json()["status"] == "accepted"
                acked.append(msg_id)
            wait_until(lambda: cx.received, 20, "an attempt while Convex is down")
            first.kill9_group()
            assert first.proc is not None and first.proc.returncode == -9
        assert cx.delivered == []

        cx.up()
        with RelayProcess(tmp_path, env) as second:
            store = open_store(url)
            try:
                statuses = {settled(store, i, timeout=60).status for i in acked}
            finally:
                store.close()
            assert second.stop() == 0
        assert statuses == {Status.DELIVERED}
        assert sorted(cx.delivered) == sorted(acked)


def test_cli_replay_redelivers_a_failed_event(
    relay: RelayProcess, store: Store, standin: TrackingStandIn
) -> None:
    """A 400 fails the event; `relay events` lists it and `relay replay <id>`, run against
    the same database, gets it delivered."""
    standin.fail_next(1, 400, body={"code": "BadJsonBody", "message": "no good"})
    msg_id = new_id("replay")
    relay.post_event(
        make_envelope("user.created", entity_id=f"user_{uuid.uuid4().hex[:8]}"), msg_id
    )
    assert settled(store, msg_id).status == Status.FAILED

    listed = relay.cli("events", "--status", "failed", "--json")
    assert listed.returncode == 0, listed.stderr
    assert msg_id in {e["id"] for e in json.loads(listed.stdout)}
    replayed = relay.cli("replay", msg_id)
    assert replayed.returncode == 0, replayed.stderr
    assert "queued 1 event(s)" in replayed.stdout

    event = settled(store, msg_id)
    assert event.status == Status.DELIVERED
    assert [a.status_code for a in event.attempts] == [400, 200]
    assert standin.delivery_count(msg_id) == 1
    assert event.delivered_at_ms is not None


def test_a_refusal_no_column_can_hold_still_fails_the_event(
    relay: RelayProcess, store: Store, standin: TrackingStandIn
) -> None:
    """Convex's message can carry what a text column cannot: NUL (PostgreSQL refuses it)
    and a lone surrogate (SQLite's driver cannot encode it), for example a function that
    throws with a Clerk user's name in its message. The event still fails, once, with the
    message kept as its JSON escapes; the outcome is written, so it is not sent again
    each time its lease runs out."""
    standin.fail_next(1, 400, body={"code": "BadName", "message": "name a\x00b \ud800 rejected"})
    msg_id = new_id("strange")
    relay.post_event(
        make_envelope("user.created", entity_id=f"user_{uuid.uuid4().hex[:8]}"), msg_id
    )
    event = settled(store, msg_id)
    assert event.status == Status.FAILED
    assert event.last_error == "HTTP 400 rejected: name a\\u0000b \\ud800 rejected"
    assert [(a.status_code, a.error) for a in event.attempts] == [(400, event.last_error)]
    assert standin.entered.count(msg_id) == 1  # sent once, not again at each lease's end

"""Reconcile: ids, envelopes and order keys (pure), then whole runs against the emulators.

The runs use the Clerk emulator, the Convex emulator serving examples/convex (its
state queries on /api/query with the deploy key) and a real SQLite store; delivery
is covered end to end in ``test_e2e_reconcile.py``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.clerk_emulator import SECRET_KEY, ClerkEmulator, Logged
from harness.clerk_histories import user_row
from harness.clerk_objects import T0, clerk_user, envelope
from harness.convex_emulator import ADMIN_KEY, ConvexEmulator
from harness.convex_emulator import convex_emulator_fixture as convex_emulator_fixture
from harness.convex_emulator import (
    official_convex_emulator_fixture as official_convex_emulator_fixture,
)
from harness.postgres_server import fresh_schema
from relay.errors import ConfigError
from relay.models import DELETE_ORDER, EventFilter, NewEvent
from relay.reconcile.clerk_api import ClerkAPI, RateLimiter
from relay.reconcile.convex_state import ConvexState
from relay.reconcile.reconciler import (
    KINDS,
    Counts,
    Reconciler,
    classify,
    deleted_event,
    kinds_for,
    reconcile_id,
    upsert_event,
)
from relay.settings import Settings
from relay.store import Store
from relay.store.sqlite import SQLiteStore

USERS = KINDS["users"]
NOW = T0 + 10_000_000


# -- pure ---------------------------------------------------------------------------------


def test_reconcile_ids_are_deterministic_per_object_version() -> None:
    """Same object and version: same id; another version or object: another id."""
    a = reconcile_id(USERS, "user_1", "100")
    assert a == reconcile_id(USERS, "user_1", "100")
    assert a.startswith("reconcile_") and len(a) == len("reconcile_") + 24
    assert a != reconcile_id(USERS, "user_1", "101")
    assert a != reconcile_id(USERS, "user_2", "100")
    assert a != reconcile_id(KINDS["organizations"], "user_1", "100")


@pytest.mark.parametrize(
    ("clerk", "convex", "what"),
    [(200, None, "missing"), (200, 100, "stale"), (200, 200, None), (200, 300, None)],
)
def test_classify(clerk: int, convex: int | None, what: str | None) -> None:
    """Absent is missing, older is stale, the same or newer is in sync."""
    assert classify(clerk, convex) == what


def test_an_upsert_is_clerks_envelope_ordered_at_updated_at() -> None:
    """user.updated with the API's object as data; its order key is the object's version."""
    user = clerk_user("user_1", updated_at=T0 + 500, created_at=T0)
    event = upsert_event(USERS, user, now_ms=NOW)
    body = json.loads(event.body)
    assert body == {"data": user, "object": "event", "timestamp": T0 + 500, "type": "user.updated"}
    assert event.id == reconcile_id(USERS, "user_1", str(T0 + 500))
    assert (event.object_key, event.entity_id, event.received_at_ms) == (
        "user:user_1",
        "user_1",
        NOW,
    )
    assert event.order == (T0 + 500, T0 + 500)


def test_a_newer_webhook_orders_after_and_an_older_one_before() -> None:
    """Webhooks about later versions come after the reconcile upsert, earlier ones before."""
    reconciled = upsert_event(USERS, clerk_user("user_1", updated_at=T0 + 500), now_ms=NOW)

    def webhook(version: int) -> NewEvent:
        # Clerk stamps the event a few ms after the change it reports, and before the
        # next change's updated_at (the order key compares envelope timestamps first).
        data = clerk_user("user_1", updated_at=version)
        env = envelope("user.updated", data, at=version + 3)
        return NewEvent.from_envelope("msg_x", b"{}", env, received_at_ms=NOW + 1)

    assert webhook(T0 + 501).order > reconciled.order
    assert webhook(T0 + 400).order < reconciled.order
    # Same version: the webhook's envelope is a few ms later; either order holds this data.
    assert webhook(T0 + 500).order > reconciled.order


def test_a_deletion_is_clerks_deleted_shape_ordered_after_every_earlier_event() -> None:
    """user.deleted {id, object, deleted}, at the run's time: after any webhook before it."""
    event = deleted_event(USERS, "user_9", now_ms=NOW)
    body = json.loads(event.body)
    assert body["type"] == "user.deleted"
    assert body["data"] == {"deleted": True, "id": "user_9", "object": "user"}
    assert event.id == reconcile_id(USERS, "user_9", "deleted")
    assert event.order == (NOW, DELETE_ORDER)
    late = NewEvent.from_envelope(
        "msg_y",
        b"{}",
        envelope("user.updated", clerk_user("user_9", updated_at=NOW - 1), at=NOW - 1),
        received_at_ms=NOW + 5,
    )
    assert late.order < event.order


def test_kinds_follow_what_the_configuration_delivers() -> None:
    """Default: every delivered kind; a named kind that would be skipped is a config error."""
    http = Settings(convex_site_url="https://x.convex.site", webhook_secrets=("whsec_abcdefgh",))
    assert [k.name for k in kinds_for(http, None)] == ["users", "organizations", "memberships"]
    assert [k.name for k in kinds_for(http, "memberships,users")] == ["users", "memberships"]
    mutation = Settings(convex_url="https://x.convex.cloud", convex_deploy_key="k")
    assert [k.name for k in kinds_for(mutation, None)] == ["users"]
    with pytest.raises(ConfigError, match=r"organization\.updated"):
        kinds_for(mutation, "organizations")
    with pytest.raises(ConfigError, match="unknown kind"):
        kinds_for(http, "sessions")


# -- runs -----------------------------------------------------------------------------------


@pytest.fixture
def clerk() -> Iterator[ClerkEmulator]:
    with ClerkEmulator() as emulator:
        yield emulator


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A real SQLite file, and a real PostgreSQL schema (under scripts/with-postgres.sh)."""
    if request.param == "sqlite":
        s: Store = SQLiteStore.from_url(f"sqlite:///{tmp_path / 'relay.db'}")
        s.migrate()
        yield s
        s.close()
        return
    from relay.store.postgres import PostgresStore

    with fresh_schema() as url:
        s = PostgresStore(url)
        s.migrate()
        yield s
        s.close()


def reconciler(
    store: Store,
    clerk: ClerkEmulator,
    convex: ConvexEmulator | None,
    *,
    dry_run: bool = False,
    diffs: list[tuple[str, str, str]] | None = None,
) -> Reconciler:
    api = ClerkAPI(clerk.url, SECRET_KEY, limiter=RateLimiter(1000.0), rng=random.Random(1))
    state = None if convex is None else ConvexState(convex.url, ADMIN_KEY)
    return Reconciler(
        store,
        api,
        state,
        now_ms=lambda: NOW,
        dry_run=dry_run,
        on_diff=None if diffs is None else (lambda k, w, i: diffs.append((k, w, i))),
    )


def seed(clerk: ClerkEmulator, convex: ConvexEmulator, n: int = 40) -> dict[str, set[str]]:
    """Clerk has n users; Convex lacks 30 %, holds 10 % stale, plus 5 % Clerk deleted."""
    expect: dict[str, set[str]] = {"missing": set(), "stale": set(), "gone": set()}
    rows = []
    for i in range(n):
        user = clerk_user(f"user_{i:03d}", updated_at=T0 + 1000 + i, created_at=T0 + i)
        clerk.put_user(user)
        if i < n * 3 // 10:
            expect["missing"].add(user["id"])
        elif i < n * 4 // 10:
            expect["stale"].add(user["id"])
            rows.append(user_row({**user, "updated_at": T0 + i, "first_name": "Old"}))
        else:
            rows.append(user_row(user))
    for i in range(n // 20):
        gone = clerk_user(f"user_gone{i}", updated_at=T0 + i)
        expect["gone"].add(gone["id"])
        rows.append(user_row(gone))
    convex.insert("users", rows)
    return expect


def test_a_run_finds_and_queues_exactly_the_differences(
    clerk: ClerkEmulator, convex_emulator: ConvexEmulator, store: Store
) -> None:
    """Missing and stale users become user.updated, gone ones user.deleted; counts exact."""
    expect = seed(clerk, convex_emulator)
    diffs: list[tuple[str, str, str]] = []
    result = reconciler(store, clerk, convex_emulator, diffs=diffs).run([USERS])
    assert result == {"users": Counts(clerk=40, convex=30, missing=12, stale=4, gone=2, queued=18)}
    assert {(w, i) for _, w, i in diffs} == {(w, i) for w, ids in expect.items() for i in ids}
    stored = store.list_events(EventFilter(), limit=100).events
    assert {e.entity_id for e in stored if e.type == "user.updated"} == (
        expect["missing"] | expect["stale"]
    )
    assert {e.entity_id for e in stored if e.type == "user.deleted"} == expect["gone"]
    assert all(
        e.id.startswith("reconcile_") and e.to_dict()["source"] == "reconcile" for e in stored
    )
    # The gone users were confirmed one by one, the present ones never asked about.
    asked = {r.path for r in clerk.requests if r.path.startswith("/users/")}
    assert asked == {f"/users/{i}" for i in expect["gone"]}


def test_a_second_run_queues_nothing_new(
    clerk: ClerkEmulator, convex_emulator: ConvexEmulator, store: Store
) -> None:
    """Re-running before delivery finds the same differences and queues none of them again."""
    seed(clerk, convex_emulator)
    first = reconciler(store, clerk, convex_emulator).run([USERS])["users"]
    second = reconciler(store, clerk, convex_emulator).run([USERS])["users"]
    assert first.queued == 18
    assert (second.missing, second.stale, second.gone, second.queued) == (12, 4, 2, 0)
    assert len(store.list_events(EventFilter(), limit=100).events) == 18


def test_a_dry_run_reports_and_queues_nothing(
    clerk: ClerkEmulator, convex_emulator: ConvexEmulator, store: Store
) -> None:
    """--dry-run: the same counts, nothing in the outbox."""
    seed(clerk, convex_emulator)
    result = reconciler(store, clerk, convex_emulator, dry_run=True).run([USERS])["users"]
    assert (result.missing, result.stale, result.gone, result.queued) == (12, 4, 2, 0)
    assert store.list_events(EventFilter(), limit=10).events == []


def test_a_user_created_after_its_list_page_is_never_deleted(
    clerk: ClerkEmulator, convex_emulator: ConvexEmulator, store: Store
) -> None:
    """In Convex but not in the listing: GET /users/{id} answers 200, so no deletion."""
    clerk.put_user(clerk_user("user_old", updated_at=T0))
    newcomer = clerk_user("user_new", updated_at=T0 + 5, created_at=T0 + 5)
    convex_emulator.insert("users", [user_row(clerk_user("user_old", updated_at=T0))])
    convex_emulator.insert("users", [user_row(newcomer)])  # its webhook was faster

    def create_after_listing(request: Logged) -> None:
        if request.path == "/users" and not clerk.users.get("user_new"):
            clerk.put_user(newcomer)

    clerk.on_request(create_after_listing)
    result = reconciler(store, clerk, convex_emulator).run([USERS])["users"]
    assert (result.clerk, result.convex, result.gone, result.queued) == (1, 2, 0, 0)
    assert any(r.path == "/users/user_new" and r.status == 200 for r in clerk.requests)


def test_without_convex_state_every_clerk_object_is_upserted(
    clerk: ClerkEmulator, store: Store
) -> None:
    """No deploy key: Convex's side is unknown (null), everything is queued once."""
    clerk.put_users(clerk_user(f"user_{i}", updated_at=T0 + i) for i in range(7))
    result = reconciler(store, clerk, None).run([USERS])["users"]
    assert result.to_dict() == {
        "clerk": 7,
        "convex": None,
        "missing": 7,
        "stale": 0,
        "gone": None,
        "queued": 7,
    }
    assert reconciler(store, clerk, None).run([USERS])["users"].queued == 0


def test_a_deployment_without_the_state_query_falls_back_to_upserts(
    clerk: ClerkEmulator, official_convex_emulator: ConvexEmulator, store: Store
) -> None:
    """The official template has no users:syncState: upsert everything, say so."""
    clerk.put_users(clerk_user(f"user_{i}", updated_at=T0 + i) for i in range(3))
    run = reconciler(store, clerk, official_convex_emulator)
    result = run.run([USERS])["users"]
    assert (result.convex, result.gone, result.queued) == (None, None, 3)
    assert any("users:syncState" in note for note in run.notes)

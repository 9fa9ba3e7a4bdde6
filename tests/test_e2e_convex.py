"""End to end: signed Clerk webhooks -> real ``relay serve`` -> the real examples/convex functions.

Each relay is a real process group on a real SQLite file; Convex is the emulator
(convex-test) running examples/convex. Every test runs against all four ways to
wire them: HTTP action or function API, each with raw or normalized payloads.
The assertions are the final Convex tables, row for row.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.clerk_histories import (
    ISSUER,
    TABLES,
    ClerkEvent,
    Rows,
    expected_rows,
    membership,
    org_upsert,
    stored_rows,
    user_deleted,
    user_histories,
    user_upsert,
)
from harness.convex_emulator import ADMIN_KEY, EXAMPLE_FUNCTIONS, ConvexEmulator, require_emulator
from harness.factories import FORWARD_SECRET, fixture_paths
from harness.relay_process import RelayProcess, relay_env, wait_until
from relay.models import Event, Status, order_key, to_ms
from relay.store.sqlite import SQLiteStore
from tests.support.e2e import TERMINAL

pytestmark = pytest.mark.e2e

#: examples/convex/README.md, "B. Function API": users, organizations and memberships.
ORG_ROUTES = (
    "user.created,user.updated=users:upsertFromClerk;user.deleted=users:deleteFromClerk;"
    "organization.created,organization.updated=orgs:upsertOrganization;"
    "organization.deleted=orgs:deleteOrganization;"
    "organizationMembership.created,organizationMembership.updated=orgs:upsertMembership;"
    "organizationMembership.deleted=orgs:deleteMembership"
)
SYNCED_PREFIXES = ("user.", "organization.", "organizationMembership.")
T0 = 1_760_000_000_000  # ms


@dataclass
class Wiring:
    """One relay process wired to the emulator in one of the four ways."""

    relay: RelayProcess
    store: SQLiteStore
    target: str
    payload: str

    @property
    def token(self) -> bool:
        """Whether stored users carry ``tokenIdentifier`` (normalized data with an issuer)."""
        return self.payload == "normalized"

    @property
    def records_event_ids(self) -> bool:
        """Raw function-API args (the template's ``{data}``) carry no svix-id to dedupe on."""
        return not (self.target == "mutation" and self.payload == "raw")

    def send(self, event: ClerkEvent) -> dict[str, Any]:
        """POST as Clerk would (fresh signature); the relay's JSON reply."""
        reply = self.relay.post_event(event.body, event.id)
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body

    def settle(self, ids: Iterable[str], timeout: float = 20.0) -> dict[str, Event]:
        """Wait until every event is in a terminal status; each event by id."""
        wanted = list(dict.fromkeys(ids))

        def done() -> dict[str, Event]:
            found = {i: self.store.get(i) for i in wanted}
            settled = {i: e for i, e in found.items() if e is not None and e.status in TERMINAL}
            return settled if len(settled) == len(wanted) else {}

        return wait_until(done, timeout, f"{len(wanted)} events to settle")

    def cli_ok(self, *args: str) -> str:
        result = self.relay.cli(*args)
        assert result.returncode == 0, result.stderr + result.stdout
        return result.stdout


COMBOS = [
    pytest.param(("http-action", "raw"), id="http-action-raw"),
    pytest.param(("http-action", "normalized"), id="http-action-normalized"),
    pytest.param(("mutation", "raw"), id="mutation-raw"),
    pytest.param(("mutation", "normalized"), id="mutation-normalized"),
]


@pytest.fixture(scope="module")
def emulator() -> Iterator[ConvexEmulator]:
    """examples/convex, verifying with the relay's forward secret (not Clerk's)."""
    require_emulator()
    with ConvexEmulator(EXAMPLE_FUNCTIONS, env={"CLERK_WEBHOOK_SECRET": FORWARD_SECRET}) as em:
        yield em


@pytest.fixture(autouse=True)
def _empty_convex(emulator: ConvexEmulator) -> None:
    emulator.reset()


@pytest.fixture(scope="module", params=COMBOS)
def wiring(
    request: pytest.FixtureRequest,
    emulator: ConvexEmulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Wiring]:
    """One ``relay serve`` per combination, shared by the module's tests (ids never repeat)."""
    target, payload = request.param
    workdir: Path = tmp_path_factory.mktemp(f"{target}-{payload}")
    if target == "http-action":
        where = {"CONVEX_SITE_URL": emulator.url, "RELAY_FORWARD_SECRET": FORWARD_SECRET}
    else:  # the whole dashboard string, `prod:<name>|` prefix included
        where = {
            "CONVEX_URL": emulator.url,
            "CONVEX_DEPLOY_KEY": f"prod:happy-otter-123|{ADMIN_KEY}",
            "RELAY_ROUTES": ORG_ROUTES,
        }
    env = relay_env(
        workdir,
        RELAY_PAYLOAD=payload,
        RELAY_RETRY_SCHEDULE="200ms,200ms",
        CLERK_ISSUER_URL=ISSUER,
        **where,
    )
    with RelayProcess(workdir, env) as relay:
        store = relay.open_store()
        yield Wiring(relay, store, target, payload)
        store.close()


def tables(emulator: ConvexEmulator) -> Rows:
    return {name: stored_rows(emulator.tables(name)) for name in TABLES}


def tag() -> str:
    return uuid.uuid4().hex[:8]


# -- tests ----------------------------------------------------------------------------


def _clerk_order(body: bytes) -> tuple[int, int]:
    envelope = json.loads(body)
    data = envelope.get("data") or {}
    return order_key(
        envelope["type"], to_ms(envelope.get("timestamp")), 0, to_ms(data.get("updated_at"))
    )


def test_every_clerk_fixture_syncs(wiring: Wiring, emulator: ConvexEmulator) -> None:
    """All 46 Clerk fixtures (bytes as shipped) plus a live org end in the exact rows."""
    t = tag()
    # Sent in Clerk's order (the relay's order key: timestamp, updated_at, deletes last).
    fixtures = sorted((path.read_bytes() for path in fixture_paths()), key=_clerk_order)
    sent = [ClerkEvent(f"msg_fx{n}_{t}", json.loads(body), body) for n, body in enumerate(fixtures)]
    ada = "user_29w83sxmDNGwOuEthce5gg56FcC"  # user.created-2: never deleted
    org, mem = f"org_live{t}", f"orgmem_live{t}"
    extra = [
        org_upsert("organization.created", org, at=T0, name="Initech", slug="initech"),
        membership(
            "organizationMembership.created",
            mem,
            at=T0 + 1,
            org_id=org,
            user_id=ada,
            role="org:member",
        ),
        org_upsert("organization.updated", org, at=T0 + 2, name="Initech Ltd", slug="initech"),
        membership(
            "organizationMembership.updated",
            mem,
            at=T0 + 3,
            org_id=org,
            user_id=ada,
            role="org:admin",
        ),
    ]
    sent += [ClerkEvent.of(f"msg_extra{n}_{t}", env) for n, env in enumerate(extra)]
    for event in sent:
        assert wiring.send(event) == {"status": "accepted", "id": event.id}

    settled = wiring.settle(e.id for e in sent)
    for event in sent:
        status = settled[event.id].status
        if event.type.startswith(SYNCED_PREFIXES):  # arrival order = Clerk order: none is stale
            assert status == Status.DELIVERED, (event.type, settled[event.id].last_error)
        elif wiring.target == "mutation":  # no RELAY_ROUTES entry
            assert status == Status.SKIPPED, event.type
        else:  # http.ts acknowledges other types; same-id fixtures may supersede each other
            assert status in {Status.DELIVERED, Status.SUPERSEDED}, event.type
    synced_events = [e for e in sent if e.type.startswith(SYNCED_PREFIXES)]
    expected = expected_rows(synced_events, token=wiring.token)
    assert [u["externalId"] for u in expected["users"]] == [ada]
    assert expected["organizations"][0]["name"] == "Initech Ltd"
    assert tables(emulator) == expected


def test_user_histories_in_shuffled_order(wiring: Wiring, emulator: ConvexEmulator) -> None:
    """Create/update/delete/re-create histories of six users, sent shuffled, end exactly right."""
    rng = random.Random(20260)
    events = user_histories(rng, 6, t0_ms=T0, tag=tag())
    arrivals = events[:]
    rng.shuffle(arrivals)
    for event in arrivals:
        wiring.send(event)
    settled = wiring.settle(e.id for e in events)

    statuses = {e.id: settled[e.id].status for e in events}
    assert all(s in {Status.DELIVERED, Status.SUPERSEDED} for s in statuses.values())
    deletes = [e.id for e in events if e.type == "user.deleted"]
    assert deletes and all(statuses[i] == Status.DELIVERED for i in deletes)
    expected = expected_rows(events, token=wiring.token)
    assert len(expected["users"]) >= 6  # every user has a live generation
    assert tables(emulator) == expected


def test_update_after_delete_does_not_resurrect(wiring: Wiring, emulator: ConvexEmulator) -> None:
    """A late user.updated is superseded by the relay, and forced through, Convex ignores it."""
    t = tag()
    user = f"user_late{t}"
    created = ClerkEvent.of(
        f"msg_c{t}",
        user_upsert(
            "user.created", user, at=T0, first="Ada", last="Lovelace", email="ada@example.com"
        ),
    )
    late = ClerkEvent.of(
        f"msg_u{t}", user_upsert("user.updated", user, at=T0 + 1000, first="Ada", last="King")
    )
    deleted = ClerkEvent.of(f"msg_d{t}", user_deleted(user, at=T0 + 2000))
    for event in (created, deleted):
        wiring.send(event)
    wiring.settle([created.id, deleted.id])
    wiring.send(late)  # Svix's retry of the update, arriving after the delete
    [superseded] = wiring.settle([late.id]).values()
    assert superseded.status == Status.SUPERSEDED
    assert deleted.id in (superseded.last_error or "")
    upserts_before = emulator.calls().get("users:upsertFromClerk", 0)

    wiring.cli_ok("replay", late.id, "--force")
    [forced] = wiring.settle([late.id]).values()
    assert (forced.status, forced.attempt_count) == (Status.DELIVERED, 1)
    assert emulator.calls()["users:upsertFromClerk"] == upserts_before + 1  # it reached Convex
    assert tables(emulator) == {"users": [], "organizations": [], "memberships": []}
    [tombstone] = emulator.tables("tombstones")
    assert (tombstone["kind"], tombstone["externalId"]) == ("user", user)


def test_duplicates_and_forced_replays_apply_once(wiring: Wiring, emulator: ConvexEmulator) -> None:
    """A repeated svix-id is answered duplicate; `replay --force` reaches Convex as a no-op."""
    t = tag()
    user = f"user_dup{t}"
    v1 = ClerkEvent.of(
        f"msg_v1{t}",
        user_upsert(
            "user.created", user, at=T0, first="Grace", last="Brewster", email="grace@example.com"
        ),
    )
    v2 = ClerkEvent.of(
        f"msg_v2{t}",
        user_upsert(
            "user.updated",
            user,
            at=T0 + 1000,
            first="Grace",
            last="Hopper",
            email="grace@navy.example",
        ),
    )
    assert wiring.send(v1)["status"] == "accepted"
    assert wiring.send(v1) == {"status": "duplicate", "id": v1.id}
    wiring.send(v2)
    wiring.settle([v1.id, v2.id])
    assert wiring.send(v2) == {"status": "duplicate", "id": v2.id}
    assert emulator.calls()["users:upsertFromClerk"] == 2

    for event in (v1, v2):  # the older one first: it must not roll the row back
        wiring.cli_ok("replay", event.id, "--force")
        [again] = wiring.settle([event.id]).values()
        assert (again.status, again.attempt_count) == (Status.DELIVERED, 2)
    assert emulator.calls()["users:upsertFromClerk"] == 4
    assert tables(emulator) == expected_rows([v1, v2], token=wiring.token)
    recorded = sorted(e["eventId"] for e in emulator.tables("processedEvents"))
    assert recorded == (sorted([v1.id, v2.id]) if wiring.records_event_ids else [])


def test_function_error_fails_then_replay_delivers(
    wiring: Wiring, emulator: ConvexEmulator
) -> None:
    """A throwing mutation fails the event (at once or after retried 500s); heal + replay fix it."""
    t = tag()
    user, org = f"user_fault{t}", f"org_fault{t}"
    broken = ClerkEvent.of(
        f"msg_f{t}",
        user_upsert(
            "user.created", user, at=T0, first="Edsger", last="Dijkstra", email="ewd@example.com"
        ),
    )
    unaffected = ClerkEvent.of(
        f"msg_o{t}",
        org_upsert("organization.created", org, at=T0, name="Mathematical Centre", slug="mc"),
    )
    emulator.fail("users:upsertFromClerk", "boom: users table locked")
    wiring.send(broken)
    wiring.send(unaffected)
    settled = wiring.settle([broken.id, unaffected.id])
    assert settled[unaffected.id].status == Status.DELIVERED

    shown = json.loads(wiring.cli_ok("show", broken.id, "--json"))
    assert shown["status"] == "failed"
    codes = [a["statusCode"] for a in shown["attempts"]]
    if wiring.target == "mutation":  # a function error cannot succeed by retrying
        assert codes == [200]
        assert "boom: users table locked" in shown["lastError"]
    else:  # the HTTP action's 500 is retried per RELAY_RETRY_SCHEDULE (two gaps)
        assert codes == [500, 500, 500]
        assert "retries exhausted" in shown["lastError"]
    assert emulator.calls()["users:upsertFromClerk"] == len(codes)
    assert tables(emulator)["users"] == []

    emulator.heal()
    wiring.cli_ok("replay", broken.id)
    [healed] = wiring.settle([broken.id]).values()
    assert healed.status == Status.DELIVERED
    assert tables(emulator) == expected_rows([broken, unaffected], token=wiring.token)

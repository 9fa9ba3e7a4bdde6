"""The Convex emulator's semantics, and examples/convex versus Convex's official template.

Real svix-signed requests go to the emulated HTTP action and real /api/mutation
calls to the emulated function API, each answered by the real TypeScript code.
"""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from harness.convex_emulator import (
    ADMIN_KEY,
    FORWARD_SECRET,
    ConvexEmulator,
    convex_emulator_fixture,  # noqa: F401 - provides the `convex_emulator` fixture
    official_convex_emulator_fixture,  # noqa: F401 - provides `official_convex_emulator`
)
from harness.factories import FIXTURES, make_envelope, signed_headers
from relay.normalize import normalize_event

pytestmark = pytest.mark.e2e

USER = "user_2abc"
T0 = 1_700_000_000_000  # ms


def clerk_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "clerk" / f"{name}.json").read_text())  # type: ignore[no-any-return]


def user_event(event_type: str, *, at: int = T0, **data: Any) -> dict[str, Any]:
    """A Clerk user envelope whose updated_at and timestamp are ``at``."""
    fields = {"first_name": "Ada", "last_name": "Lovelace"} if event_type != "user.deleted" else {}
    return make_envelope(
        event_type, entity_id=USER, timestamp=at, updated_at=at, **{**fields, **data}
    )


def deliver(
    emulator: ConvexEmulator,
    payload: dict[str, Any],
    *,
    msg_id: str | None = None,
    secret: str = FORWARD_SECRET,
) -> requests.Response:
    """POST ``payload`` to the HTTP action, signed as the relay signs forwards."""
    body = json.dumps(payload)
    headers = signed_headers(body, secret=secret, msg_id=msg_id)
    return requests.post(
        f"{emulator.url}/clerk-users-webhook", data=body.encode(), headers=headers, timeout=10
    )


def normalized(event_type: str, msg_id: str, *, at: int = T0, **data: Any) -> dict[str, Any]:
    """A relay-normalized user event (camelCase data with the relay's extra fields)."""
    return {
        "id": msg_id,
        "type": event_type,
        "occurredAt": at,
        "instanceId": "ins_test",
        "object": "user",
        "entityId": USER,
        "data": {"id": USER, "object": "user", "updatedAt": at, **data},
    }


def names(emulator: ConvexEmulator) -> list[str]:
    return [user["name"] for user in emulator.tables("users")]


# -- HTTP action (examples/convex) ----------------------------------------------


def test_signed_user_created_stores_user(convex_emulator: ConvexEmulator) -> None:
    """A signed raw user.created makes one users row with the chosen fields."""
    event = user_event(
        "user.created",
        primary_email_address_id="idn_1",
        email_addresses=[
            {"id": "idn_0", "email_address": "old@example.com"},
            {"id": "idn_1", "email_address": "ada@example.com"},
        ],
    )
    reply = deliver(convex_emulator, event)
    assert reply.status_code == 200
    [user] = convex_emulator.tables("users")
    assert (user["externalId"], user["name"], user["email"]) == (
        USER,
        "Ada Lovelace",
        "ada@example.com",
    )
    assert user["updatedAt"] == T0


def test_bad_signature_is_rejected(convex_emulator: ConvexEmulator) -> None:
    """A request signed with another secret gets 400 and changes nothing."""
    reply = deliver(
        convex_emulator, user_event("user.created"), secret="whsec_plJ3nmyCDGBKInavdOK15jsl"
    )
    assert reply.status_code == 400
    assert convex_emulator.tables("users") == []


def test_duplicate_event_id_has_no_second_effect(convex_emulator: ConvexEmulator) -> None:
    """A second delivery with the same svix-id is acknowledged but not applied."""
    assert deliver(convex_emulator, user_event("user.created"), msg_id="msg_dup").status_code == 200
    again = user_event("user.updated", at=T0 + 1, first_name="Changed")
    assert deliver(convex_emulator, again, msg_id="msg_dup").status_code == 200
    assert names(convex_emulator) == ["Ada Lovelace"]
    assert [e["eventId"] for e in convex_emulator.tables("processedEvents")] == ["msg_dup"]


def test_older_update_does_not_overwrite_newer(convex_emulator: ConvexEmulator) -> None:
    """An update whose updated_at is older than the stored one is ignored."""
    deliver(convex_emulator, user_event("user.updated", at=T0 + 2000, first_name="Newer"))
    reply = deliver(convex_emulator, user_event("user.updated", at=T0 + 1000, first_name="Older"))
    assert reply.status_code == 200
    assert names(convex_emulator) == ["Newer Lovelace"]


def test_update_after_delete_does_not_resurrect(convex_emulator: ConvexEmulator) -> None:
    """A late user.updated after user.deleted leaves the user deleted (tombstone)."""
    deliver(convex_emulator, user_event("user.created"))
    deliver(convex_emulator, user_event("user.deleted", at=T0 + 2000, deleted=True))
    late = deliver(convex_emulator, user_event("user.updated", at=T0 + 1000))
    assert late.status_code == 200
    assert convex_emulator.tables("users") == []
    [tombstone] = convex_emulator.tables("tombstones")
    assert (tombstone["kind"], tombstone["externalId"]) == ("user", USER)


def test_normalized_event_is_accepted(convex_emulator: ConvexEmulator) -> None:
    """A relay-normalized event (RELAY_PAYLOAD=normalized) is applied like a raw one."""
    event = normalized(
        "user.created",
        "msg_norm",
        firstName="Grace",
        lastName="Hopper",
        name="Grace Hopper",
        email="grace@example.com",
        phone=None,
    )
    assert deliver(convex_emulator, event, msg_id="msg_norm").status_code == 200
    [user] = convex_emulator.tables("users")
    assert (user["name"], user["email"]) == ("Grace Hopper", "grace@example.com")


def test_dollar_metadata_key_is_tolerated(convex_emulator: ConvexEmulator) -> None:
    """Raw metadata with a `$` key (which Convex rejects as a field name) still syncs."""
    reply = deliver(convex_emulator, user_event("user.created", public_metadata={"$plan": 1}))
    assert reply.status_code == 200
    assert names(convex_emulator) == ["Ada Lovelace"]


def test_other_event_types_are_acknowledged(convex_emulator: ConvexEmulator) -> None:
    """An unhandled type (session.created) gets 200 so nobody retries it."""
    reply = deliver(convex_emulator, clerk_fixture("session.created"))
    assert reply.status_code == 200
    assert convex_emulator.calls() == {}


def test_organization_and_membership_sync(convex_emulator: ConvexEmulator) -> None:
    """Org and membership events fill their tables; organization.deleted clears both."""
    for name in ("organization.created", "organizationMembership.created"):
        assert deliver(convex_emulator, clerk_fixture(name)).status_code == 200
    [membership] = convex_emulator.tables("memberships")
    assert (membership["orgId"], membership["userId"], membership["role"]) == (
        "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
        "user_2h8op3Isl1QR7tKu5FGNfaLKEoU",
        "org:member",
    )
    assert [o["name"] for o in convex_emulator.tables("organizations")] == ["Acme Corp"]

    assert deliver(convex_emulator, clerk_fixture("organization.deleted")).status_code == 200
    late = deliver(convex_emulator, clerk_fixture("organizationMembership.updated"))
    assert late.status_code == 200
    assert convex_emulator.tables("organizations") == []
    assert convex_emulator.tables("memberships") == []


def test_parallel_deliveries_all_land(convex_emulator: ConvexEmulator) -> None:
    """Concurrent deliveries for different users (as the relay's workers send) all apply."""
    events = [
        make_envelope("user.created", entity_id=f"user_{n}", first_name=f"U{n}") for n in range(12)
    ]
    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(lambda event: deliver(convex_emulator, event), events))
    assert [r.status_code for r in replies] == [200] * 12
    assert sorted(u["externalId"] for u in convex_emulator.tables("users")) == sorted(
        f"user_{n}" for n in range(12)
    )


# -- function API (examples/convex) ---------------------------------------------


def test_template_args_over_mutation_api(convex_emulator: ConvexEmulator) -> None:
    """The official template's `{data}` / `{clerkUserId}` args work with a deploy key."""
    data = user_event("user.created")["data"]
    assert convex_emulator.mutation("users:upsertFromClerk", {"data": data}) == {
        "status": "success",
        "value": "inserted",
    }
    reply = convex_emulator.mutation("users:deleteFromClerk", {"clerkUserId": USER})
    assert reply == {"status": "success", "value": "deleted"}
    assert (
        convex_emulator.mutation("users:upsertFromClerk", {"data": data})["value"] == "tombstoned"
    )


def test_normalized_args_dedupe_over_mutation_api(convex_emulator: ConvexEmulator) -> None:
    """`{event}` args are de-duplicated on the event id."""
    args = {"event": normalized("user.created", "msg_api", name="Ada")}
    assert convex_emulator.mutation("users:upsertFromClerk", args)["value"] == "inserted"
    assert convex_emulator.mutation("users:upsertFromClerk", args)["value"] == "duplicate"
    assert names(convex_emulator) == ["Ada"]


def test_internal_function_needs_admin_key(convex_emulator: ConvexEmulator) -> None:
    """Without a key an internal mutation is invisible; a wrong key is a 401."""
    reply = convex_emulator.mutation("users:upsertFromClerk", {"data": {}}, admin=False)
    assert reply["status"] == "error"
    assert "Could not find public function for 'users:upsertFromClerk'" in reply["errorMessage"]
    wrong = requests.post(
        f"{convex_emulator.url}/api/mutation",
        timeout=10,
        json={"path": "users:upsertFromClerk", "args": {}},
        headers={"Authorization": "Convex not-the-key"},
    )
    assert (wrong.status_code, wrong.json()["code"]) == (401, "BadAdminKey")


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        (
            "query",
            {"path": "users:upsertFromClerk", "args": {}},
            "as Query, but it is defined as Mutation",
        ),
        (
            "mutation",
            {"path": "users:upsertFromClerk", "args": {"data": {"$bad": 1}}},
            "starts with a '$'",
        ),
        (
            "mutation",
            {"path": "users:upsertFromClerk", "args": {"nope": 1}},
            "ArgumentValidationError",
        ),
        ("mutation", {"path": "users:missing", "args": {}}, "Could not find function"),
    ],
)
def test_function_errors_are_200_status_error(
    convex_emulator: ConvexEmulator, endpoint: str, body: dict[str, Any], expected: str
) -> None:
    """Wrong type, `$` keys, bad args and unknown functions are 200 with status:error."""
    reply = requests.post(
        f"{convex_emulator.url}/api/{endpoint}",
        json=body,
        timeout=10,
        headers={"Authorization": f"Convex {ADMIN_KEY}"},
    )
    assert reply.status_code == 200
    assert reply.json()["status"] == "error"
    assert expected in reply.json()["errorMessage"]


def test_malformed_body_and_unknown_route(convex_emulator: ConvexEmulator) -> None:
    """Non-JSON to /api/mutation is 400 BadJsonBody; an unrouted path is 404."""
    bad = requests.post(
        f"{convex_emulator.url}/api/mutation",
        data=b"{not json",
        timeout=10,
        headers={"content-type": "application/json"},
    )
    assert (bad.status_code, bad.json()["code"]) == (400, "BadJsonBody")
    assert requests.get(f"{convex_emulator.url}/nowhere", timeout=10).status_code == 404


def test_fault_switch_and_heal(convex_emulator: ConvexEmulator) -> None:
    """A fault fails the HTTP action (500) and /api/mutation (status:error) until healed."""
    convex_emulator.fail("users:upsertFromClerk", "boom")
    broken = deliver(convex_emulator, user_event("user.created"), msg_id="msg_fault")
    assert broken.status_code == 500
    assert "Server Error: boom" in broken.json()["code"]
    reply = convex_emulator.mutation(
        "users:upsertFromClerk", {"data": user_event("user.created")["data"]}
    )
    assert reply["status"] == "error"
    assert "boom" in reply["errorMessage"]
    assert convex_emulator.tables("processedEvents") == []  # the failed transaction rolled back

    convex_emulator.heal()
    assert (
        deliver(convex_emulator, user_event("user.created"), msg_id="msg_fault").status_code == 200
    )
    assert names(convex_emulator) == ["Ada Lovelace"]
    assert convex_emulator.calls()["users:upsertFromClerk"] == 3


def test_missing_secret_is_a_server_error(convex_emulator: ConvexEmulator) -> None:
    """Without CLERK_WEBHOOK_SECRET the action answers 500, so the sender retries."""
    convex_emulator.set_env(CLERK_WEBHOOK_SECRET=None)
    reply = deliver(convex_emulator, user_event("user.created"))
    assert reply.status_code == 500
    assert "CLERK_WEBHOOK_SECRET" in reply.json()["code"]


# -- the official template, for contrast -----------------------------------------


def test_official_template_resurrects_after_delete(
    official_convex_emulator: ConvexEmulator,
) -> None:
    """Convex's official template lets a late user.updated re-create a deleted user."""
    emulator = official_convex_emulator
    deliver(emulator, user_event("user.created"))
    deliver(emulator, user_event("user.deleted", at=T0 + 2000, deleted=True))
    assert emulator.tables("users") == []
    assert deliver(emulator, user_event("user.updated", at=T0 + 1000)).status_code == 200
    assert names(emulator) == ["Ada Lovelace"]


def test_official_template_older_update_wins_and_names_null(
    official_convex_emulator: ConvexEmulator,
) -> None:
    """The official template applies stale updates and stores "null null" names."""
    emulator = official_convex_emulator
    deliver(emulator, user_event("user.updated", at=T0 + 2000, first_name="Newer"))
    deliver(emulator, user_event("user.updated", at=T0 + 1000, first_name=None, last_name=None))
    assert names(emulator) == ["null null"]


def test_official_template_fails_on_dollar_metadata(
    official_convex_emulator: ConvexEmulator,
) -> None:
    """The official template passes raw data on, so a `$` metadata key is a 500."""
    event = user_event("user.created", public_metadata={"$plan": 1})
    assert deliver(official_convex_emulator, copy.deepcopy(event)).status_code == 500
    assert official_convex_emulator.tables("users") == []


# -- the relay's real normalized events -------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "function", "table"),
    [
        ("user.created", "users:upsertFromClerk", "users"),
        ("organization.created", "orgs:upsertOrganization", "organizations"),
        ("organizationMembership.created", "orgs:upsertMembership", "memberships"),
    ],
)
def test_relay_normalized_events_are_accepted(
    convex_emulator: ConvexEmulator, fixture: str, function: str, table: str
) -> None:
    """relay.normalize's output passes the mutations' validator and stores a row."""
    event = normalize_event(clerk_fixture(fixture), event_id=f"msg_{fixture}")
    assert convex_emulator.mutation(function, {"event": event}) == {
        "status": "success",
        "value": "inserted",
    }
    [row] = convex_emulator.tables(table)
    assert row["externalId"] == event["entityId"]


def test_housekeeping_prunes_only_old_processed_events(convex_emulator: ConvexEmulator) -> None:
    """pruneProcessedEvents keeps recent event ids and deletes those past the cutoff."""
    for i in range(3):
        args = {"event": normalized("user.created", f"msg_prune{i}", name=f"U{i}")}
        args["event"]["entityId"] = f"user_prune{i}"
        args["event"]["data"]["id"] = f"user_prune{i}"
        assert convex_emulator.mutation("users:upsertFromClerk", args)["status"] == "success"
    assert len(convex_emulator.tables("processedEvents")) == 3
    kept = convex_emulator.mutation("housekeeping:pruneProcessedEvents", {})
    assert kept == {"status": "success", "value": 0}  # all younger than 30 days
    pruned = convex_emulator.mutation("housekeeping:pruneProcessedEvents", {"olderThanDays": -1})
    assert pruned == {"status": "success", "value": 3}
    assert convex_emulator.tables("processedEvents") == []
    assert len(convex_emulator.tables("users")) == 3  # only the ids go, never the data

"""Real-looking Clerk event histories, and the Convex rows they must end in.

Shared by ``test_e2e_convex.py``, ``test_convergence.py`` and ``bench/convergence.py``.
Every event is a copy of a shipped Clerk fixture (``tests/fixtures/clerk``) with new
ids, names and times, so payloads keep Clerk's full shape (metadata, event attributes,
email address objects). The expected rows are the *true* final state: what Clerk
holds after the last event, mapped to rows by examples/convex's documented rules,
whatever order or how often the events were delivered in.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from .factories import FIXTURES

#: The Clerk issuer the test relays are configured with (CLERK_ISSUER_URL).
ISSUER = "https://verb-noun-00.clerk.accounts.dev"
#: Synced tables of examples/convex, and the row fields the tests compare.
TABLES = ("users", "organizations", "memberships")
Rows = dict[str, list[dict[str, Any]]]


@cache
def _fixture_text(name: str) -> str:
    return (FIXTURES / "clerk" / f"{name}.json").read_text()


def fixture(name: str) -> dict[str, Any]:
    """A fresh, mutable copy of one Clerk fixture envelope."""
    value: dict[str, Any] = json.loads(_fixture_text(name))
    return copy.deepcopy(value)


@dataclass(frozen=True, slots=True)
class ClerkEvent:
    """One webhook as Clerk sends it: the svix-id and the exact body bytes."""

    id: str
    envelope: dict[str, Any]
    body: bytes

    @classmethod
    def of(cls, event_id: str, envelope: dict[str, Any]) -> ClerkEvent:
        return cls(event_id, envelope, json.dumps(envelope).encode())

    @property
    def type(self) -> str:
        return str(self.envelope["type"])

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.envelope["data"]
        return data


def svix_id(rng: random.Random) -> str:
    """An id shaped like Svix's (``msg_`` + 27 base62 characters)."""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "msg_" + "".join(rng.choice(alphabet) for _ in range(27))


# -- builders -----------------------------------------------------------------------


def user_upsert(
    event_type: str,
    user_id: str,
    *,
    at: int,
    first: str | None,
    last: str | None,
    email: str | None = None,
    username: str | None = None,
    created_at: int | None = None,
) -> dict[str, Any]:
    """A ``user.created``/``user.updated`` envelope (from the user.created fixture)."""
    envelope = fixture("user.created")
    envelope.update(type=event_type, timestamp=at)
    data = envelope["data"]
    suffix = user_id.removeprefix("user_")
    addresses = []
    if email is not None:
        addresses.append(
            {
                "id": f"idn_{suffix}",
                "object": "email_address",
                "email_address": email,
                "reserved": False,
                "verification": {
                    "status": "verified",
                    "strategy": "email_code",
                    "attempts": 1,
                    "expire_at": None,
                },
                "linked_to": [],
                "matches_sso_connection": False,
                "created_at": created_at or at,
                "updated_at": at,
            }
        )
    data.update(
        id=user_id,
        first_name=first,
        last_name=last,
        username=username,
        email_addresses=addresses,
        primary_email_address_id=f"idn_{suffix}" if email is not None else None,
        image_url=f"https://img.clerk.com/{suffix}",
        profile_image_url=f"https://img.clerk.com/{suffix}",
        created_at=created_at or at,
        updated_at=at,
        last_active_at=at,
    )
    return envelope


def user_deleted(user_id: str, *, at: int) -> dict[str, Any]:
    """A ``user.deleted`` envelope: Clerk's minimal deleted-object data."""
    envelope = fixture("user.deleted")
    envelope["timestamp"] = at
    envelope["data"].update(id=user_id, external_id=None)
    return envelope


def org_upsert(event_type: str, org_id: str, *, at: int, name: str, slug: str) -> dict[str, Any]:
    """An ``organization.created``/``.updated`` envelope."""
    envelope = fixture("organization.created")
    envelope.update(type=event_type, timestamp=at)
    envelope["data"].update(
        id=org_id, name=name, slug=slug, updated_at=at, image_url=f"https://img.clerk.com/{org_id}"
    )
    return envelope


def org_deleted(org_id: str, *, at: int, slug: str) -> dict[str, Any]:
    """An ``organization.deleted`` envelope."""
    envelope = fixture("organization.deleted")
    envelope["timestamp"] = at
    envelope["data"].update(id=org_id, slug=slug)
    return envelope


def membership(
    event_type: str, membership_id: str, *, at: int, org_id: str, user_id: str, role: str
) -> dict[str, Any]:
    """An ``organizationMembership.*`` envelope (deleted ones carry the full object too)."""
    envelope = fixture("organizationMembership.created")
    envelope.update(type=event_type, timestamp=at)
    data = envelope["data"]
    data.update(id=membership_id, role=role, updated_at=at)
    data["organization"]["id"] = org_id
    data["public_user_data"]["user_id"] = user_id
    return envelope


def user_histories(rng: random.Random, users: int, *, t0_ms: int, tag: str) -> list[ClerkEvent]:
    """Event histories of ``users`` users, in true (Clerk) order.

    Each user is created, updated one to three times, and with probability 0.6
    deleted and then re-created under another id (Clerk never reuses ids), which is
    updated zero to two times more. Every event has a distinct, increasing time.
    """
    events: list[ClerkEvent] = []
    for n in range(users):
        generation = 0
        clock = t0_ms + rng.randint(0, 30_000)  # users' histories overlap in time
        while True:
            user_id = f"user_{tag}{n}g{generation}"
            created = clock = clock + rng.randint(1_000, 60_000)
            updates = rng.randint(1, 3) if generation == 0 else rng.randint(0, 2)
            for version in range(updates + 1):
                kind = "user.created" if version == 0 else "user.updated"
                if version:
                    clock += rng.randint(1_000, 60_000)
                first = rng.choice(["Ada", "Grace", "Alan", "Edsger", None])
                envelope = user_upsert(
                    kind,
                    user_id,
                    at=clock,
                    created_at=created,
                    first=first,
                    last=f"V{version}" if rng.random() < 0.9 else None,
                    email=f"{user_id}.v{version}@example.com",
                )
                events.append(ClerkEvent.of(svix_id(rng), envelope))
            if generation == 1 or rng.random() >= 0.6:
                break
            clock += rng.randint(1_000, 60_000)
            events.append(ClerkEvent.of(svix_id(rng), user_deleted(user_id, at=clock)))
            generation += 1
    events.sort(key=lambda e: e.envelope["timestamp"])  # users interleave in time
    return events


# -- the true final state -----------------------------------------------------------


def _primary(data: Mapping[str, Any], items: str, primary: str, value: str) -> str | None:
    wanted = data.get(primary)
    for item in data.get(items) or []:
        if wanted is not None and item.get("id") == wanted:
            return item.get(value)  # type: ignore[no-any-return]
    return None


def user_row(data: Mapping[str, Any], *, token: bool = False) -> dict[str, Any]:
    """The examples/convex ``users`` row for Clerk user data (``token``: normalized + issuer)."""
    email = _primary(data, "email_addresses", "primary_email_address_id", "email_address")
    phone = _primary(data, "phone_numbers", "primary_phone_number_id", "phone_number")
    full = " ".join(p for p in (data.get("first_name"), data.get("last_name")) if p) or None
    row = {
        "externalId": data["id"],
        "name": full or data.get("username") or email or "",
        "email": email,
        "phone": phone,
        "username": data.get("username"),
        "imageUrl": data.get("image_url"),
        "updatedAt": data["updated_at"],
    }
    if token:
        row["tokenIdentifier"] = f"{ISSUER}|{data['id']}"
    return row


def official_user_row(data: Mapping[str, Any]) -> dict[str, Any]:
    """The row Convex's official template means to keep (its own name format, "null" included)."""
    return {
        "externalId": data["id"],
        "name": f"{_js(data.get('first_name'))} {_js(data.get('last_name'))}",
    }


def _js(value: Any) -> str:
    return "null" if value is None else str(value)


def org_row(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "externalId": data["id"],
        "name": data.get("name") or "",
        "slug": data.get("slug"),
        "imageUrl": data.get("image_url"),
        "updatedAt": data["updated_at"],
    }


def membership_row(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "externalId": data["id"],
        "orgId": data["organization"]["id"],
        "userId": data["public_user_data"]["user_id"],
        "role": data.get("role") or "",
        "updatedAt": data["updated_at"],
    }


def expected_rows(
    events: Iterable[ClerkEvent], *, token: bool = False, official: bool = False
) -> Rows:
    """The synced tables once every event is applied, in whatever order they came.

    Per object the newest upsert (by ``updated_at``) wins, a deleted id stays
    deleted, and a membership goes with its user or organization. ``official``:
    the users table as Convex's official template would ideally hold it.
    """
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    deleted: set[tuple[str, str]] = set()
    for event in events:
        obj, oid = event.data["object"], event.data["id"]
        if event.type.endswith(".deleted"):
            deleted.add((obj, oid))
        elif event.type.endswith((".created", ".updated")):
            held = latest.get((obj, oid))
            if held is None or held["updated_at"] <= event.data["updated_at"]:
                latest[(obj, oid)] = event.data
    rows: Rows = {table: [] for table in TABLES}
    for (obj, oid), data in latest.items():
        if (obj, oid) in deleted:
            continue
        if obj == "user":
            rows["users"].append(
                official_user_row(data) if official else user_row(data, token=token)
            )
        elif obj == "organization":
            rows["organizations"].append(org_row(data))
        elif obj == "organization_membership":
            row = membership_row(data)
            if {("organization", row["orgId"]), ("user", row["userId"])} & deleted:
                continue
            rows["memberships"].append(row)
    return {table: sorted(found, key=lambda r: r["externalId"]) for table, found in rows.items()}


def stored_rows(documents: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Convex documents without system fields, sorted by Clerk id (comparable to expected)."""
    rows = [{k: v for k, v in doc.items() if not k.startswith("_")} for doc in documents]
    return sorted(rows, key=lambda r: r["externalId"])

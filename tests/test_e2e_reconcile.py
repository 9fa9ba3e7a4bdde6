"""End to end: ``relay reconcile`` brings the real examples/convex tables to Clerk's state.

Real parts only: the Clerk emulator (HTTP on loopback), a real ``relay serve`` on a
real SQLite file delivering to the Convex emulator running examples/convex (or the
official template), and ``relay reconcile`` as a subprocess. Convex starts with 30 %
of Clerk's objects missing, 10 % stale and 5 % deleted in Clerk; afterwards its
tables equal Clerk's, row for row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.clerk_emulator import SECRET_KEY, ClerkEmulator, Logged
from harness.clerk_histories import (
    TABLES,
    membership_row,
    official_user_row,
    org_row,
    stored_rows,
    user_row,
)
from harness.clerk_objects import T0, clerk_membership, clerk_organization, clerk_user, envelope
from harness.convex_emulator import (
    ADMIN_KEY,
    EXAMPLE_FUNCTIONS,
    FORWARD_SECRET,
    ConvexEmulator,
    require_emulator,
)
from harness.convex_emulator import (
    official_convex_emulator_fixture as official_convex_emulator_fixture,
)
from harness.relay_process import RelayProcess, relay_env, wait_until
from relay.models import EventFilter, Status
from relay.store.sqlite import SQLiteStore

from .test_e2e_convex import ORG_ROUTES

pytestmark = pytest.mark.e2e

Rows = dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def emulator() -> Iterator[ConvexEmulator]:
    """examples/convex, verifying HTTP-action requests with the relay's forward secret."""
    require_emulator()
    with ConvexEmulator(EXAMPLE_FUNCTIONS, env={"CLERK_WEBHOOK_SECRET": FORWARD_SECRET}) as em:
        yield em


@pytest.fixture
def clerk() -> Iterator[ClerkEmulator]:
    with ClerkEmulator() as emulator:
        yield emulator


@dataclass
class Relay:
    """A running relay and its store; ``reconcile`` runs the CLI with the same config."""

    process: RelayProcess
    store: SQLiteStore

    def reconcile(self, *args: str) -> dict[str, Any]:
        result = self.process.cli("reconcile", "--json", *args)
        assert result.returncode == 0, result.stderr + result.stdout
        summary: dict[str, Any] = json.loads(result.stdout)
        return summary

    def settle(self) -> None:
        """Wait until nothing is pending (delivered, superseded or failed)."""
        wait_until(lambda: self.store.counts()["pending"] == 0, 60, "the outbox to drain")
        failed = self.store.list_events(EventFilter(statuses=(Status.FAILED,)), limit=5).events
        assert not failed, [(e.id, e.last_error) for e in failed]


WIRINGS = [
    pytest.param("mutation", id="mutation-deploy-key"),
    pytest.param("http-action", id="http-action-with-deploy-key"),
]


@pytest.fixture(params=WIRINGS)
def relay(
    request: pytest.FixtureRequest, tmp_path: Path, emulator: ConvexEmulator, clerk: ClerkEmulator
) -> Iterator[Relay]:
    """relay serve delivering to examples/convex; Convex's state readable with the deploy key."""
    emulator.reset()
    where = {"CONVEX_URL": emulator.url, "CONVEX_DEPLOY_KEY": f"prod:happy-otter-123|{ADMIN_KEY}"}
    if request.param == "mutation":
        where["RELAY_ROUTES"] = ORG_ROUTES
    else:
        where |= {"CONVEX_SITE_URL": emulator.url, "RELAY_FORWARD_SECRET": FORWARD_SECRET}
    with running_relay(tmp_path, clerk, **where) as relay:
        yield relay


def reconcile_env(tmp_path: Path, clerk: ClerkEmulator, **where: str) -> dict[str, str]:
    """A relay's environment reading the Clerk emulator, plus where it delivers."""
    return relay_env(
        tmp_path,
        CLERK_SECRET_KEY=SECRET_KEY,
        CLERK_API_URL=clerk.url,
        RELAY_CLERK_RATE="1000",
        **where,
    )


@contextmanager
def running_relay(tmp_path: Path, clerk: ClerkEmulator, **where: str) -> Iterator[Relay]:
    """relay serve reading the Clerk emulator and delivering ``where`` says, with its store."""
    with RelayProcess(tmp_path, reconcile_env(tmp_path, clerk, **where)) as process:
        store = process.open_store()
        yield Relay(process, store)
        store.close()


def official_relay(
    tmp_path: Path, clerk: ClerkEmulator, official: ConvexEmulator
) -> AbstractContextManager[Relay]:
    """HTTP action to the official template, no deploy key (upsert-only)."""
    return running_relay(
        tmp_path, clerk, CONVEX_SITE_URL=official.url, RELAY_FORWARD_SECRET=FORWARD_SECRET
    )


def clerk_state(clerk: ClerkEmulator) -> Rows:
    """Clerk's objects as examples/convex rows."""

    def decode(items: Mapping[str, tuple[int, bytes]]) -> list[dict[str, Any]]:
        return [json.loads(raw) for _, raw in items.values()]

    rows: Rows = {
        "users": [user_row(u) for u in decode(clerk.users.items)],
        "organizations": [org_row(o) for o in decode(clerk.organizations.items)],
        "memberships": [membership_row(m) for m in decode(clerk.memberships.items)],
    }
    return {table: sorted(found, key=lambda r: r["externalId"]) for table, found in rows.items()}


def convex_state(emulator: ConvexEmulator) -> Rows:
    return {table: stored_rows(emulator.tables(table)) for table in TABLES}


def populate(clerk: ClerkEmulator, emulator: ConvexEmulator, users: int = 100) -> None:
    """Clerk: users, 10 organizations, memberships. Convex: 30 % missing, 10 % stale,
    and 5 % more that Clerk deleted (each kind)."""
    orgs = [clerk_organization(f"org_{i:02d}", updated_at=T0 + i) for i in range(10)]
    people = [
        clerk_user(f"user_{i:03d}", updated_at=T0 + 5000 + i, created_at=T0 + i, first=f"U{i}")
        for i in range(users)
    ]
    members = [
        clerk_membership(
            f"orgmem_{i:03d}", org=orgs[i % 10], user_id=people[i]["id"], updated_at=T0 + 7000 + i
        )
        for i in range(0, users, 2)
    ]
    clerk.put_users(people)
    for org in orgs:
        clerk.put_organization(org)
    for m in members:
        clerk.put_membership(m)

    def convex_side(objs: list[dict[str, Any]], row: Any, gone: list[dict[str, Any]]) -> list[Any]:
        n = len(objs)
        rows = []
        for i, obj in enumerate(objs):
            if i < n * 3 // 10:
                continue  # missing
            if i < n * 4 // 10:
                rows.append(row({**obj, "updated_at": obj["updated_at"] - 1000, "name": "Old"}))
            else:
                rows.append(row(obj))
        return rows + [row(g) for g in gone]

    gone_users = [clerk_user(f"user_gone{i}", updated_at=T0) for i in range(users // 20)]
    gone_org = clerk_organization("org_gone", updated_at=T0)
    gone_members = [
        clerk_membership(f"orgmem_gone{i}", org=orgs[i], user_id=people[-1]["id"], updated_at=T0)
        for i in range(3)
    ]
    emulator.insert("users", convex_side(people, user_row, gone_users))
    emulator.insert("organizations", convex_side(orgs, org_row, [gone_org]))
    emulator.insert("memberships", convex_side(members, membership_row, gone_members))


def test_reconcile_makes_convex_equal_clerk_and_a_second_run_queues_nothing(
    relay: Relay, clerk: ClerkEmulator, emulator: ConvexEmulator
) -> None:
    """30 % missing, 10 % stale, 5 % deleted in Clerk: after one run the tables match."""
    populate(clerk, emulator)
    assert convex_state(emulator) != clerk_state(clerk)
    summary = relay.reconcile()
    assert summary == {
        "users": {"clerk": 100, "convex": 75, "missing": 30, "stale": 10, "gone": 5, "queued": 45},
        "organizations": {
            "clerk": 10,
            "convex": 8,
            "missing": 3,
            "stale": 1,
            "gone": 1,
            "queued": 5,
        },
        "memberships": {
            "clerk": 50,
            "convex": 38,
            "missing": 15,
            "stale": 5,
            "gone": 3,
            "queued": 23,
        },
    }
    relay.settle()
    assert convex_state(emulator) == clerk_state(clerk)
    again = relay.reconcile()
    assert {kind: counts["queued"] for kind, counts in again.items()} == {
        "users": 0,
        "organizations": 0,
        "memberships": 0,
    }
    assert all(c["missing"] == c["stale"] == c["gone"] == 0 for c in again.values())


def test_webhooks_during_a_run_are_never_overwritten(
    relay: Relay, clerk: ClerkEmulator, emulator: ConvexEmulator
) -> None:
    """A newer update and a deletion arriving mid-run win; an older webhook arriving
    after the reconcile is superseded."""
    a = clerk_user("user_a", updated_at=T0 + 2000, first="A2")  # Convex holds A1: stale
    b = clerk_user("user_b", updated_at=T0 + 2000, first="B")  # in sync
    c = clerk_user("user_c", updated_at=T0 + 5000, first="C5")  # missing in Convex
    clerk.put_users([a, b, c])
    emulator.insert("users", [user_row({**a, "updated_at": T0 + 1000, "first_name": "A1"})])
    emulator.insert("users", [user_row(b)])
    a3 = clerk_user("user_a", updated_at=T0 + 3000, first="A3")
    sent = threading.Event()

    def webhooks_mid_run(request: Logged) -> None:
        # Once Clerk's list (A2, B, C5) is answered: A changes again, B is deleted.
        if request.path != "/users" or sent.is_set():
            return
        sent.set()
        clerk.put_user(a3)
        clerk.delete_user("user_b")
        for msg_id, env in [
            ("msg_a3", envelope("user.updated", a3, at=T0 + 3002)),
            (
                "msg_b_deleted",
                envelope(
                    "user.deleted",
                    {"id": "user_b", "object": "user", "deleted": True},
                    at=T0 + 4000,
                ),
            ),
        ]:
            assert relay.process.post_event(env, msg_id).status_code == 200

    clerk.on_request(webhooks_mid_run)
    summary = relay.reconcile("--objects", "users")
    assert sent.is_set()
    assert (summary["users"]["stale"], summary["users"]["missing"]) == (1, 1)
    relay.settle()
    rows = {r["externalId"]: r for r in convex_state(emulator)["users"]}
    assert set(rows) == {"user_a", "user_c"}
    assert rows["user_a"]["name"] == "A3 Lovelace" and rows["user_a"]["updatedAt"] == T0 + 3000
    # An old webhook about C (version 4000) arrives after the reconcile delivered 5000.
    late = envelope(
        "user.updated", clerk_user("user_c", updated_at=T0 + 4000, first="C4"), at=T0 + 4002
    )
    assert relay.process.post_event(late, "msg_c4_late").status_code == 200
    relay.settle()
    late_event = relay.store.get("msg_c4_late")
    assert late_event is not None and late_event.status is Status.SUPERSEDED
    rows = {r["externalId"]: r for r in convex_state(emulator)["users"]}
    assert rows["user_c"]["name"] == "C5 Lovelace"


def test_a_run_killed_midway_and_run_again_ends_correct(
    relay: Relay, clerk: ClerkEmulator, emulator: ConvexEmulator
) -> None:
    """kill -9 while Clerk answers the second page; the re-run queues only the rest."""
    clerk.put_users(clerk_user(f"user_{i:04d}", updated_at=T0 + i) for i in range(1100))
    victim: list[subprocess.Popen[str]] = []
    killed = threading.Event()

    def kill_on_second_page(request: Logged) -> None:
        if request.path == "/users" and "starting_after" in request.query and not killed.is_set():
            os.killpg(victim[0].pid, signal.SIGKILL)
            killed.set()

    clerk.on_request(kill_on_second_page)
    victim.append(
        subprocess.Popen(
            [sys.executable, "-m", "relay", "reconcile", "--objects", "users"],
            cwd=relay.process.workdir,
            env=relay.process.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
    )
    assert victim[0].wait(60) == -signal.SIGKILL
    assert killed.is_set()
    before = len(relay.store.list_events(EventFilter(), limit=2000).events)
    assert before == 500  # the first page was queued, nothing after it
    summary = relay.reconcile("--objects", "users")
    assert summary["users"]["clerk"] == 1100
    # The first page's 500 are delivered by now or still pending under the same ids:
    # either way only the other 600 are queued.
    assert summary["users"]["queued"] == 600
    relay.settle()
    assert len(relay.store.list_events(EventFilter(), limit=2000).events) == 1100
    assert convex_state(emulator)["users"] == clerk_state(clerk)["users"]


def test_the_official_template_gets_every_clerk_user(
    tmp_path: Path, clerk: ClerkEmulator, official_convex_emulator: ConvexEmulator
) -> None:
    """HTTP action, no deploy key (upsert-only): every Clerk user ends in the template's table."""
    people = [clerk_user(f"user_{i:02d}", updated_at=T0 + i, first=f"P{i}") for i in range(20)]
    clerk.put_users(people)
    # Half of them were synced by webhooks before; the other half predate the webhook.
    official_convex_emulator.insert("users", [official_user_row(p) for p in people[::2]])
    with official_relay(tmp_path, clerk, official_convex_emulator) as relay:
        result = relay.process.cli("reconcile", "--json", "--objects", "users")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["users"]["queued"] == 20
        assert "deletions cannot be detected" in result.stderr
        relay.settle()
    table = sorted(
        (
            {"externalId": d["externalId"], "name": d["name"]}
            for d in official_convex_emulator.tables("users")
        ),
        key=lambda r: r["externalId"],
    )
    assert table == [official_user_row(p) for p in people]


def test_webhooks_during_a_run_win_on_the_official_template_too(
    tmp_path: Path, clerk: ClerkEmulator, official_convex_emulator: ConvexEmulator
) -> None:
    """Without Convex-side version checks only the relay's ordering protects newer data:
    the reconcile's older upserts go before (or are superseded by) the webhooks."""
    a2 = clerk_user("user_a", updated_at=T0 + 2000, first="A2")
    b = clerk_user("user_b", updated_at=T0 + 2000, first="B")
    clerk.put_users([a2, b])
    a3 = clerk_user("user_a", updated_at=T0 + 3000, first="A3")
    with official_relay(tmp_path, clerk, official_convex_emulator) as relay:
        sent = threading.Event()

        def webhooks_mid_run(request: Logged) -> None:
            if request.path != "/users" or sent.is_set():
                return
            sent.set()
            deleted = {"id": "user_b", "object": "user", "deleted": True}
            for msg_id, env in [
                ("msg_a3", envelope("user.updated", a3, at=T0 + 3002)),
                ("msg_b_deleted", envelope("user.deleted", deleted, at=T0 + 4000)),
            ]:
                assert relay.process.post_event(env, msg_id).status_code == 200

        clerk.on_request(webhooks_mid_run)
        assert relay.reconcile("--objects", "users")["users"]["queued"] == 2
        relay.settle()
    assert sent.is_set()
    table = [(d["externalId"], d["name"]) for d in official_convex_emulator.tables("users")]
    assert table == [("user_a", "A3 Lovelace")]


def test_a_schedule_with_several_workers_reconciles_exactly_once(
    tmp_path: Path, clerk: ClerkEmulator, emulator: ConvexEmulator
) -> None:
    """RELAY_RECONCILE_EVERY=24h, relay serve plus another relay worker: one run, by lease,
    Convex ends with Clerk's users without anyone running the command, and the secret
    key appears in no log."""
    emulator.reset()
    people = [clerk_user(f"user_{i:02d}", updated_at=T0 + i) for i in range(30)]
    clerk.put_users(people)
    env = reconcile_env(
        tmp_path,
        clerk,
        CONVEX_URL=emulator.url,
        CONVEX_DEPLOY_KEY=ADMIN_KEY,
        RELAY_RECONCILE_EVERY="24h",
        LOG_LEVEL="debug",
    )
    with RelayProcess(tmp_path, env) as serve, RelayProcess(tmp_path, env, ("worker",)) as worker:
        store = serve.open_store()
        try:
            wait_until(
                lambda: [str(r.status) for r in store.reconcile_runs(limit=5)] == ["done"],
                60,
                "the scheduled run",
            )
            # Both workers have made their first check (one ran it, one found it held or done).
            wait_until(
                lambda: "reconcile_checked" in serve.log() and "reconcile_checked" in worker.log(),
                60,
                "both workers to check",
            )
            relay = Relay(serve, store)
            relay.settle()
            [run] = store.reconcile_runs(limit=5)
            assert run.trigger == "schedule" and run.summary is not None
            assert run.summary["users"]["queued"] == 30
            # The key is a secret: no log line of either process carries it.
            assert SECRET_KEY not in serve.log() + worker.log()
            assert "reconcile_finished" in serve.log() + worker.log()
        finally:
            store.close()
    assert len(clerk.listed("/users")) == 1
    assert convex_state(emulator)["users"] == [user_row(p) for p in people]

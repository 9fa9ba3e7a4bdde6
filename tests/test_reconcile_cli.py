"""``relay reconcile`` as an operator runs it: exit codes, --json, --dry-run, no secret shown.

In-process through click's ``CliRunner`` on a real SQLite file, against the Clerk
emulator and (for Convex's state) the Convex emulator serving examples/convex.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from harness.clerk_emulator import SECRET_KEY, ClerkEmulator
from harness.clerk_histories import user_row
from harness.clerk_objects import T0, clerk_user
from harness.convex_emulator import ADMIN_KEY, ConvexEmulator
from harness.convex_emulator import convex_emulator_fixture as convex_emulator_fixture
from harness.factories import SECRET, make_event
from relay.cli import main

from .test_cli import CONFIG_VARS

RECONCILE_VARS = ("CLERK_SECRET_KEY", "CLERK_API_URL", "RELAY_CLERK_RATE")


@pytest.fixture
def clerk() -> Iterator[ClerkEmulator]:
    with ClerkEmulator() as emulator:
        emulator.put_users(clerk_user(f"user_{i}", updated_at=T0 + i) for i in range(5))
        yield emulator


@pytest.fixture
def env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clerk: ClerkEmulator
) -> dict[str, str | None]:
    """An operator's shell: HTTP-action target (no deploy key), Clerk's key and API URL."""
    monkeypatch.chdir(tmp_path)
    values: dict[str, str | None] = dict.fromkeys((*CONFIG_VARS, *RECONCILE_VARS))
    values.update(
        CLERK_WEBHOOK_SECRET=SECRET,
        CONVEX_SITE_URL="http://127.0.0.1:9",
        RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'relay.db'}",
        CLERK_SECRET_KEY=SECRET_KEY,
        CLERK_API_URL=clerk.url,
        RELAY_CLERK_RATE="1000",
    )
    return values


def run(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def test_without_a_secret_key_it_is_a_configuration_error(env: dict[str, str | None]) -> None:
    """No CLERK_SECRET_KEY: exit 2 with the variable named and where to find it."""
    result = run({**env, "CLERK_SECRET_KEY": None}, "reconcile")
    assert result.exit_code == 2
    assert "CLERK_SECRET_KEY" in result.output and "API Keys" in result.output


def test_a_key_clerk_refuses_is_a_configuration_error_and_is_not_shown(
    env: dict[str, str | None],
) -> None:
    """Clerk answers 401: exit 2, the key never printed."""
    wrong = "sk_live_" + "Wr0ng" * 6
    result = run({**env, "CLERK_SECRET_KEY": wrong}, "reconcile", "--json")
    assert result.exit_code == 2
    assert "401" in result.output and wrong not in result.output


def test_unknown_kind_is_a_usage_error(env: dict[str, str | None]) -> None:
    """--objects with a kind that does not exist: exit 2."""
    result = run(env, "reconcile", "--objects", "users,sessions")
    assert result.exit_code == 2 and "sessions" in result.output


def test_json_summary_without_convex_state(env: dict[str, str | None]) -> None:
    """HTTP action only: one object per kind, null where Convex cannot be read, and a note."""
    result = run(env, "reconcile", "--json", "--objects", "users")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == {
        "users": {"clerk": 5, "convex": None, "missing": 5, "stale": 0, "gone": None, "queued": 5}
    }
    assert "deletions cannot be detected" in result.stderr
    assert "CONVEX_DEPLOY_KEY" in result.stderr
    again = json.loads(run(env, "reconcile", "--json", "--objects", "users").stdout)
    assert again["users"]["queued"] == 0
    from relay.store.sqlite import SQLiteStore

    store = SQLiteStore.from_url(str(env["RELAY_DATABASE_URL"]))
    history = store.reconcile_runs(limit=5)
    store.close()
    assert [(r.trigger, str(r.status)) for r in history] == [("cli", "done"), ("cli", "done")]
    assert history[1].summary == summary


def test_queued_events_are_listed_with_their_source(env: dict[str, str | None]) -> None:
    """relay events --json and relay show: "source" is reconcile for them, webhook otherwise."""
    assert run(env, "reconcile", "--objects", "users").exit_code == 0
    from relay.store.sqlite import SQLiteStore

    store = SQLiteStore.from_url(str(env["RELAY_DATABASE_URL"]))
    store.insert(make_event("user.created", event_id="msg_webhook", entity_id="user_w"))
    store.close()
    listed = json.loads(run(env, "events", "--json", "--limit", "100").stdout)
    sources = {e["id"]: e["source"] for e in listed}
    assert sources.pop("msg_webhook") == "webhook"
    assert len(sources) == 5 and set(sources.values()) == {"reconcile"}
    one = next(iter(sources))
    assert json.loads(run(env, "show", one, "--json").stdout)["source"] == "reconcile"


def test_dry_run_prints_the_diff_and_queues_nothing(
    env: dict[str, str | None], convex_emulator: ConvexEmulator
) -> None:
    """With Convex's state: one line per difference, a summary, an empty outbox."""
    convex_emulator.insert(
        "users", [user_row(clerk_user(f"user_{i}", updated_at=T0 + i)) for i in range(3)]
    )
    convex_emulator.insert("users", [user_row(clerk_user("user_gone", updated_at=T0))])
    env = {**env, "CONVEX_URL": convex_emulator.url, "CONVEX_DEPLOY_KEY": ADMIN_KEY}
    result = run(env, "reconcile", "--dry-run", "--objects", "users")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert sorted(line.split() for line in lines[:-1]) == [
        ["gone", "users", "user_gone"],
        ["missing", "users", "user_3"],
        ["missing", "users", "user_4"],
    ]
    assert lines[-1] == ("users: Clerk 5, Convex 4; missing 2, stale 0, gone 1; would queue 3")
    assert json.loads(run(env, "events", "--json").stdout) == []


def test_a_convex_key_refused_fails_the_run(
    env: dict[str, str | None], convex_emulator: ConvexEmulator
) -> None:
    """Convex refuses the deploy key: exit 1 (a re-run with the right key resumes)."""
    env = {**env, "CONVEX_URL": convex_emulator.url, "CONVEX_DEPLOY_KEY": "wrong-key"}
    result = run(env, "reconcile")
    assert result.exit_code == 1
    assert "users:syncState" in result.output and "wrong-key" not in result.output

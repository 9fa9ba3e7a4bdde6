"""The ``relay`` command on a real SQLite file: listing, showing, replaying, purging, checks.

Most commands run in-process through click's ``CliRunner`` with the environment set
the way an operator's shell would; ``serve`` and ``send-test`` talk to real processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from harness.convex_emulator import ADMIN_KEY, ConvexEmulator
from harness.convex_emulator import convex_emulator_fixture as convex_emulator_fixture
from harness.convex_standin import ConvexStandIn
from harness.factories import FORWARD_SECRET, SECRET, make_event
from harness.relay_process import RelayProcess, free_port, relay_env
from relay.cli import main
from relay.models import Attempt, Outcome, Status
from relay.store.sqlite import SQLiteStore

NOW_MS = int(time.time() * 1000)
DAY_MS = 86_400_000
STABLE_KEYS = {
    "id", "type", "status", "object", "entityId", "occurredAt", "receivedAt",
    "attemptCount", "nextAttemptAt", "lastError",
}  # fmt: skip
#: Every variable the relay reads, unset unless a test sets it (the outer shell may have some).
CONFIG_VARS = (
    "CLERK_WEBHOOK_SECRET", "CONVEX_SITE_URL", "CONVEX_WEBHOOK_PATH", "CONVEX_URL",
    "CONVEX_DEPLOY_KEY", "RELAY_TARGET", "RELAY_FORWARD_SECRET", "RELAY_PAYLOAD", "RELAY_ROUTES",
    "RELAY_EVENTS", "RELAY_DATABASE_URL", "RELAY_DELIVERY_TIMEOUT", "RELAY_RETRY_SCHEDULE",
    "RELAY_CONCURRENCY", "RELAY_ADMIN_TOKEN", "CLERK_ISSUER_URL",
    "NEXT_PUBLIC_CLERK_FRONTEND_API_URL", "RELAY_INCLUDE", "RELAY_MAX_BODY", "PORT",
    "LOG_LEVEL", "LOG_FORMAT", "RELAY_BACKLOG_WARN",
)  # fmt: skip


def attempt(code: int | None, outcome: str, error: str | None = None) -> Attempt:
    return Attempt(NOW_MS, "http://convex.test/clerk-users-webhook", code, 12.5, outcome, error)


def finish(store: SQLiteStore, event_id: str, outcome: Outcome, code: int, verdict: str) -> None:
    """Claim ``event_id`` (alone) and record one attempt with ``outcome``."""
    claimed = store.claim("cli-test", now_ms=NOW_MS, lease_ms=60_000, limit=100)
    assert event_id in [e.id for e in claimed]
    for event in claimed:
        if event.id != event_id:
            store.release(event.id, "cli-test", NOW_MS)
    store.complete(event_id, "cli-test", attempt(code, verdict, outcome.error), outcome)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A store holding one event in every state, some recent and some 40 days old."""
    store = SQLiteStore(tmp_path / "relay.db")
    store.migrate()
    old = NOW_MS - 40 * DAY_MS

    def add(
        event_id: str,
        event_type: str,
        entity: str,
        *,
        received: int = NOW_MS,
        status: Status = Status.PENDING,
        at: int = 1_700_000_000_000,
    ) -> None:
        store.insert(
            make_event(
                event_type,
                event_id=event_id,
                entity_id=entity,
                received_at_ms=received,
                status=status,
                timestamp=at,
            )
        )

    delivered = Outcome(Status.DELIVERED)
    failed = Outcome(Status.FAILED, None, "HTTP 400 rejected: bad args")
    add("msg_delivered", "user.created", "user_d")
    finish(store, "msg_delivered", delivered, 200, "delivered")
    add("msg_failed_user", "user.updated", "user_f")
    finish(store, "msg_failed_user", failed, 400, "failed")
    add("msg_failed_org", "organization.updated", "org_f")
    finish(store, "msg_failed_org", failed, 400, "failed")
    add("msg_skipped", "session.created", "sess_s", status=Status.SKIPPED)
    # A newer state of user_s is delivered first, so the older upsert is superseded.
    add("msg_newer", "user.updated", "user_s", at=1_700_000_002_000)
    finish(store, "msg_newer", delivered, 200, "delivered")
    add("msg_superseded", "user.updated", "user_s", at=1_700_000_001_000)
    assert store.claim("cli-test", now_ms=NOW_MS, lease_ms=60_000, limit=100) == []
    add("msg_old_delivered", "user.created", "user_od", received=old)
    finish(store, "msg_old_delivered", delivered, 200, "delivered")
    add("msg_old_skipped", "session.ended", "sess_os", received=old, status=Status.SKIPPED)
    add("msg_old_failed", "user.updated", "user_of", received=old)
    finish(store, "msg_old_failed", failed, 400, "failed")
    add("msg_pending", "user.updated", "user_p", received=NOW_MS + 3_600_000)  # due later
    yield store
    store.close()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """The operator's shell: the relay's secret and database; no `.env` in the directory."""
    monkeypatch.chdir(tmp_path)
    values: dict[str, str | None] = dict.fromkeys(CONFIG_VARS)
    values.update(
        CLERK_WEBHOOK_SECRET=SECRET,
        CONVEX_SITE_URL="http://127.0.0.1:9",
        RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'relay.db'}",
    )
    return values


def relay(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def statuses(store: SQLiteStore) -> dict[str, str]:
    return dict(store._query("SELECT id, status FROM events"))


# -- events / show ---------------------------------------------------------------------------


def test_events_prints_a_table_of_every_event(db: SQLiteStore, env: dict[str, Any]) -> None:
    """`relay events` lists events newest first as a table with a header row."""
    result = relay(env, "events")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "TYPE", "STATUS"]
    listed = [line.split()[0] for line in lines[1:]]
    assert set(listed) == set(statuses(db))
    assert listed[0] == "msg_pending"  # inserted last: newest first
    assert "HTTP 400 rejected" in result.stdout


def test_events_json_has_the_stable_keys(db: SQLiteStore, env: dict[str, Any]) -> None:
    """`relay events --json` is a JSON array whose items carry every documented key."""
    result = relay(env, "events", "--json")
    assert result.exit_code == 0
    events = json.loads(result.stdout)
    assert isinstance(events, list)
    assert {e["id"] for e in events} == set(statuses(db))
    for item in events:
        assert set(item) >= STABLE_KEYS
    failed = next(e for e in events if e["id"] == "msg_failed_user")
    assert failed == {
        **failed,
        "type": "user.updated",
        "status": "failed",
        "object": "user",
        "entityId": "user_f",
        "occurredAt": 1_700_000_000_000,
        "attemptCount": 1,
        "nextAttemptAt": None,
        "lastError": "HTTP 400 rejected: bad args",
    }
    assert isinstance(failed["receivedAt"], int)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--status", "failed"], {"msg_failed_user", "msg_failed_org", "msg_old_failed"}),
        (["--status", "superseded"], {"msg_superseded"}),
        (
            ["--status", "skipped", "--status", "pending"],
            {"msg_skipped", "msg_old_skipped", "msg_pending"},
        ),
        (["--type", "organization.*"], {"msg_failed_org"}),
        (["--type", "session.*", "--since", "1d"], {"msg_skipped"}),
        (["--status", "failed", "--type", "user.*", "--since", "7d"], {"msg_failed_user"}),
        (["--entity", "user_s"], {"msg_newer", "msg_superseded"}),
        (["--type", "nothing.matches"], set()),
    ],
)
def test_events_filters(
    db: SQLiteStore, env: dict[str, Any], args: list[str], expected: set[str]
) -> None:
    """--status (repeatable), --type globs, --since and --entity narrow the list."""
    result = relay(env, "events", "--json", *args)
    assert result.exit_code == 0, result.output
    assert {e["id"] for e in json.loads(result.stdout)} == expected


def test_events_since_accepts_a_date(db: SQLiteStore, env: dict[str, Any]) -> None:
    """--since takes an ISO date as well as a duration."""
    cutoff = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(NOW_MS / 1000 - 86_400))
    result = relay(env, "events", "--json", "--since", cutoff, "--status", "delivered")
    assert {e["id"] for e in json.loads(result.stdout)} == {"msg_delivered", "msg_newer"}


def test_show_prints_the_event_and_its_attempts(db: SQLiteStore, env: dict[str, Any]) -> None:
    """`relay show <id>` prints the event's fields and one line per attempt."""
    result = relay(env, "show", "msg_failed_user")
    assert result.exit_code == 0
    assert "msg_failed_user" in result.stdout
    assert "attempts (1):" in result.stdout
    assert "HTTP 400 rejected: bad args" in result.stdout
    assert '"first_name"' not in result.stdout  # the body only with --body


def test_show_of_an_unknown_event_says_so_as_the_api_does(
    db: SQLiteStore, env: dict[str, Any]
) -> None:
    """`relay show <unknown id>` exits 1 with the admin API's wording, not a trace."""
    result = relay(env, "show", "msg_nope")
    assert result.exit_code == 1
    assert result.stderr.strip() == "no event 'msg_nope'"
    assert result.stdout == ""


def test_show_json_includes_attempts(db: SQLiteStore, env: dict[str, Any]) -> None:
    """`relay show <id> --json` is the stable event object plus its attempts."""
    result = relay(env, "show", "msg_failed_user", "--json")
    shown = json.loads(result.stdout)
    assert set(shown) >= STABLE_KEYS
    assert shown["id"] == "msg_failed_user"
    assert shown["attempts"] == [{
        "at": NOW_MS, "target": "http://convex.test/clerk-users-webhook", "statusCode": 400,
        "durationMs": 12.5, "outcome": "failed", "error": "HTTP 400 rejected: bad args",
    }]  # fmt: skip


def test_show_unknown_id_exits_1(db: SQLiteStore, env: dict[str, Any]) -> None:
    """An id that is not stored is a failure (exit 1) with a message naming it."""
    result = relay(env, "show", "msg_nope")
    assert result.exit_code == 1
    assert "msg_nope" in result.stderr
    assert result.stdout == ""


# -- replay ----------------------------------------------------------------------------------


def test_replay_by_id_makes_the_event_pending(db: SQLiteStore, env: dict[str, Any]) -> None:
    """`relay replay <id>` queues a failed event again, keeping its attempt history."""
    result = relay(env, "replay", "msg_failed_user")
    assert result.exit_code == 0, result.output
    assert "queued 1 event(s)" in result.stdout
    event = db.get("msg_failed_user")
    assert event is not None
    assert event.status == Status.PENDING
    assert event.attempt_count == 1
    assert statuses(db)["msg_failed_org"] == "failed"


def test_replay_filter_dry_run_changes_nothing_then_replays(
    db: SQLiteStore, env: dict[str, Any]
) -> None:
    """`--status failed --type 'user.*' --dry-run` reports the match and changes nothing;
    the same command without --dry-run replays exactly those events."""
    before = statuses(db)
    dry = relay(env, "replay", "--status", "failed", "--type", "user.*", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["wouldReplay"] == 2
    assert set(report["ids"]) == {"msg_failed_user", "msg_old_failed"}
    assert statuses(db) == before

    real = relay(env, "replay", "--status", "failed", "--type", "user.*", "--json")
    assert real.exit_code == 0
    assert set(json.loads(real.stdout)["ids"]) == {"msg_failed_user", "msg_old_failed"}
    after = statuses(db)
    assert after["msg_failed_user"] == after["msg_old_failed"] == "pending"
    assert after["msg_failed_org"] == "failed"
    assert {k: v for k, v in after.items() if k not in report["ids"]} == {
        k: v for k, v in before.items() if k not in report["ids"]
    }


def test_replay_of_superseded_needs_force(db: SQLiteStore, env: dict[str, Any]) -> None:
    """A superseded event is not replayed by id without --force (exit 1, named); with it, it is."""
    refused = relay(env, "replay", "msg_superseded")
    assert refused.exit_code == 1
    assert "msg_superseded" in refused.stderr
    assert statuses(db)["msg_superseded"] == "superseded"

    forced = relay(env, "replay", "msg_superseded", "--force")
    assert forced.exit_code == 0, forced.output
    event = db.get("msg_superseded")
    assert event is not None and event.status == Status.PENDING and event.force


# -- purge -----------------------------------------------------------------------------------


def test_purge_deletes_only_old_finished_events(db: SQLiteStore, env: dict[str, Any]) -> None:
    """`purge --older-than 30d` deletes old delivered/skipped/superseded events only."""
    result = relay(env, "purge", "--older-than", "30d", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"purged": 2}
    left = statuses(db)
    assert "msg_old_delivered" not in left
    assert "msg_old_skipped" not in left
    assert left["msg_old_failed"] == "failed"  # a failure still needs someone's attention
    assert {"msg_delivered", "msg_skipped", "msg_superseded", "msg_pending"} <= set(left)
    assert db._query("SELECT count(*) FROM attempts WHERE event_id = 'msg_old_delivered'") == [(0,)]


# -- usage and configuration errors ----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["events", "--status", "bogus"],
        ["events", "--limit", "0"],
        ["events", "--since", "last tuesday"],
        ["replay", "msg_failed_user", "--status", "failed"],
        ["purge"],
        ["purge", "--older-than", "soon"],
        ["show"],
        ["no-such-command"],
    ],
)
def test_bad_usage_exits_2(db: SQLiteStore, env: dict[str, Any], args: list[str]) -> None:
    """Wrong flags, values or arguments exit 2 with a usage message, never a traceback."""
    before = statuses(db)
    result = relay(env, *args)
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.stderr or "Error" in result.stderr
    assert "Traceback" not in result.output
    assert statuses(db) == before


def test_serve_without_configuration_exits_2_with_an_example(tmp_path: Path) -> None:
    """`relay serve` with nothing configured names CLERK_WEBHOOK_SECRET and shows an example."""
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "CLERK_WEBHOOK_SECRET" in result.stderr
    assert "whsec_" in result.stderr  # an example value
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_configuration_value_exits_2_naming_it(env: dict[str, Any]) -> None:
    """A malformed variable stops the CLI with exit 2, its name and a good example."""
    result = relay({**env, "RELAY_DELIVERY_TIMEOUT": "soonish"}, "events")
    assert result.exit_code == 2
    assert "RELAY_DELIVERY_TIMEOUT" in result.stderr
    assert "10s" in result.stderr


# -- check and send-test ---------------------------------------------------------------------


def test_check_passes_against_a_reachable_convex(env: dict[str, Any]) -> None:
    """`relay check` exits 0 when config, store and the HTTP action all answer."""
    with ConvexStandIn(FORWARD_SECRET).running() as cx:
        result = relay({**env, "CONVEX_SITE_URL": cx.url}, "check")
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.stdout
    assert "convex" in result.stdout and "store" in result.stdout


@pytest.mark.parametrize(
    ("key", "code", "expected"),
    [(f"prod:emulated|{ADMIN_KEY}", 0, "ok    convex"), ("prod:emulated|wrong", 1, "refused")],
    ids=["right-key", "wrong-key"],
)
def test_check_probes_the_function_api_with_the_deploy_key(
    env: dict[str, Any], convex_emulator: ConvexEmulator, key: str, code: int, expected: str
) -> None:
    """On the mutation target `relay check` proves URL and deploy key against real Convex code."""
    target = {
        "RELAY_TARGET": "mutation",
        "CONVEX_URL": convex_emulator.url,
        "CONVEX_DEPLOY_KEY": key,
    }
    result = relay({**env, **target}, "check")
    assert result.exit_code == code, result.output
    assert expected in result.stdout


def test_check_fails_against_a_dead_url(env: dict[str, Any]) -> None:
    """`relay check` exits 1 and says Convex is unreachable when nothing listens."""
    dead = f"http://127.0.0.1:{free_port()}"
    result = relay({**env, "CONVEX_SITE_URL": dead}, "check")
    assert result.exit_code == 1
    assert "FAIL  convex" in result.stdout


def test_send_test_reaches_a_running_relay_and_is_stored(tmp_path: Path) -> None:
    """`relay send-test --url` signs a sample event that a live relay accepts and stores."""
    workdir = tmp_path / "relay"
    workdir.mkdir()
    env = relay_env(workdir, CONVEX_SITE_URL="http://127.0.0.1:9")
    with RelayProcess(workdir, env, command=("serve", "--web-only")) as live:
        result = live.cli("send-test", "--url", live.url, "--type", "user.updated")
        assert result.returncode == 0, result.stdout + result.stderr
        reply = json.loads(result.stdout.removeprefix("HTTP 200 "))
        assert reply["status"] == "accepted"
        # The URL an operator just pasted into Clerk's dashboard works too.
        pasted = live.cli("send-test", "--url", f"{live.url}/webhooks/clerk")
        assert pasted.returncode == 0, pasted.stdout + pasted.stderr
        store = live.open_store()
        event = store.get(reply["id"])
        pasted_event = store.get(json.loads(pasted.stdout.removeprefix("HTTP 200 "))["id"])
        store.close()
    assert event is not None
    assert event.type == "user.updated"
    assert event.status == Status.PENDING
    assert pasted_event is not None and pasted_event.type == "user.created"


@pytest.mark.parametrize(
    ("typed", "endpoint"),
    [
        ("https://relay.example.com", "https://relay.example.com/webhooks/clerk"),
        ("https://relay.example.com/", "https://relay.example.com/webhooks/clerk"),
        ("https://relay.example.com/webhooks/clerk", "https://relay.example.com/webhooks/clerk"),
        ("https://relay.example.com/webhooks/clerk/", "https://relay.example.com/webhooks/clerk"),
        ("https://x.example/clerk-users-webhook", "https://x.example/clerk-users-webhook"),
        ("https://x.example/relay/", "https://x.example/relay/webhooks/clerk"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/webhooks/clerk"),
    ],
)
def test_send_test_takes_a_base_or_an_endpoint_url(typed: str, endpoint: str) -> None:
    """send-test posts to the endpoint whether given the base URL or the endpoint itself."""
    from relay.check import endpoint_url

    assert endpoint_url(typed) == endpoint

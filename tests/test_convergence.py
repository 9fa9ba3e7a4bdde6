"""Convergence: whatever the order, duplicates and outages, Convex ends in Clerk's final state.

Hundreds of seeded runs (engine: ``harness/convergence.py``) deliver users' create/
update/delete/re-create histories through the relay to the real examples/convex
functions under the emulator; every run must end exactly right. The same histories
sent straight to Convex's official template show what the relay protects against;
``bench/convergence.py`` runs more seeds and writes the numbers down.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import convergence as conv
from harness.clerk_histories import stored_rows
from harness.convex_emulator import (
    EXAMPLE_FUNCTIONS,
    OFFICIAL_FUNCTIONS,
    ConvexEmulator,
    require_emulator,
)
from harness.factories import FIXTURES, FORWARD_SECRET
from harness.relay_process import RelayProcess, relay_env
from relay.delivery.worker import Worker
from relay.models import NewEvent, Status
from relay.store.sqlite import SQLiteStore

pytestmark = pytest.mark.e2e

#: Runs per (disorder, payload) through the in-process worker; x4 per target.
RUNS = 40
SERVED_RUNS = 4  # per disorder, through a real `relay serve`
COMPARISON_RUNS = 20  # per disorder, official template with and without the relay


@pytest.fixture(scope="module")
def examples() -> Iterator[ConvexEmulator]:
    require_emulator()
    with ConvexEmulator(EXAMPLE_FUNCTIONS, env={"CLERK_WEBHOOK_SECRET": FORWARD_SECRET}) as em:
        yield em


@pytest.fixture(scope="module")
def official() -> Iterator[ConvexEmulator]:
    require_emulator()
    with ConvexEmulator(OFFICIAL_FUNCTIONS, env={"CLERK_WEBHOOK_SECRET": FORWARD_SECRET}) as em:
        yield em


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the per-run SQLite files go: tmpfs when there is one (hundreds of fsyncs)."""
    shm = Path("/dev/shm")  # noqa: S108 - only as the parent of a private mkdtemp
    if shm.is_dir():
        path = Path(tempfile.mkdtemp(prefix="relay-convergence-", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("convergence")


def assert_all_converged(results: list[conv.RunResult]) -> Counter[str]:
    """Every run ended exactly right, and no event gave up; the relay statuses, summed."""
    wrong = {f"{r.disorder}:{r.seed}": dict(r.wrong) for r in results if not r.ok}
    assert wrong == {}, f"{len(wrong)} of {len(results)} runs ended wrong: {wrong}"
    statuses: Counter[str] = Counter()
    for r in results:
        statuses.update(r.statuses)
    assert set(statuses) <= {Status.DELIVERED, Status.SUPERSEDED}, statuses
    return statuses


def out_of_order(sc: conv.Scenario) -> bool:
    """Whether the events first arrive in another order than Clerk's."""
    return list(dict.fromkeys(step.event.id for step in sc.steps)) != [e.id for e in sc.events]


# -- the harness itself -------------------------------------------------------------------


def test_scenarios_are_seeded_and_disordered() -> None:
    """Same seed, same scenario; arrivals come out of order, duplicated, with outages."""
    assert conv.scenario(7) == conv.scenario(7)
    assert conv.scenario(7) != conv.scenario(8)
    for disorder in conv.DISORDERS:
        runs = [conv.scenario(seed, disorder=disorder) for seed in range(40)]
        for sc in runs:
            first_arrivals = list(dict.fromkeys(step.event.id for step in sc.steps))
            assert sorted(first_arrivals) == sorted(e.id for e in sc.events)  # none lost
        assert any(len(sc.steps) > len(sc.events) for sc in runs)  # duplicates
        assert sum(map(out_of_order, runs)) > 30
        assert any(step.faults for sc in runs for step in sc.steps)
        recreated = [e for sc in runs for e in sc.events if e.data["id"].endswith("g1")]
        assert recreated, "some deleted users come back under another id"
    calm = conv.scenario(3, disorder="jitter", outages=False)
    assert not any(step.faults for step in calm.steps)


def test_wrongness_names_each_kind() -> None:
    """Resurrected, stale, missing and duplicated users are each told apart."""
    sc = conv.scenario(1)
    deleted = next(e.data["id"] for e in sc.events if e.type == "user.deleted")
    expected = [
        {"externalId": "user_a", "name": "New"},
        {"externalId": "user_b", "name": "B"},
        {"externalId": "user_c", "name": "C"},
    ]
    actual = [
        {"externalId": "user_a", "name": "Old"},
        {"externalId": deleted, "name": "X"},
        {"externalId": "user_c", "name": "C"},
        {"externalId": "user_c", "name": "C"},
    ]
    assert conv.wrongness(expected, actual, sc.events) == Counter(
        {
            "stale (older state won)": 1,
            "resurrected after delete": 1,
            "missing": 1,
            "duplicate row": 1,
        }
    )
    assert conv.wrongness(expected, expected, sc.events) == Counter()


# -- relay -> examples/convex: must be 100 % --------------------------------------------


def relay_runs(
    disorder: str, examples: ConvexEmulator, scratch: Path, target: str = "http-action"
) -> list[conv.RunResult]:
    """2 x RUNS seeded scenarios through the relay, raw and normalized payloads in turn."""
    return [
        conv.run_relay(
            conv.scenario(seed, disorder=disorder),
            examples,
            scratch,
            target=target,
            payload=("raw", "normalized")[seed % 2],
        )
        for seed in range(2 * RUNS)
    ]


@pytest.mark.parametrize("disorder", conv.DISORDERS)
def test_relay_to_http_action_always_converges(
    disorder: str, examples: ConvexEmulator, scratch: Path
) -> None:
    """HTTP-action target, raw and normalized, Convex functions throwing (500) at random."""
    results = relay_runs(disorder, examples, scratch)
    statuses = assert_all_converged(results)
    assert statuses[Status.SUPERSEDED] > 0  # stale arrivals happened and were held back
    assert sum(r.failed_attempts for r in results) > 0  # outages happened and were retried


@pytest.mark.parametrize("disorder", conv.DISORDERS)
def test_relay_to_function_api_always_converges(
    disorder: str, examples: ConvexEmulator, scratch: Path
) -> None:
    """Function-API target, raw and normalized, Convex answering 503 at random."""
    results = relay_runs(disorder, examples, scratch, target="mutation")
    statuses = assert_all_converged(results)
    assert statuses[Status.SUPERSEDED] > 0
    assert sum(r.failed_attempts for r in results) > 0


def test_relay_serve_over_real_http_converges(
    examples: ConvexEmulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Signed HTTP ingest into a real `relay serve` (its own worker, wall-clock retries)."""
    workdir = tmp_path_factory.mktemp("served")
    env = relay_env(
        workdir,
        CONVEX_SITE_URL=examples.url,
        RELAY_FORWARD_SECRET=FORWARD_SECRET,
        RELAY_RETRY_SCHEDULE=",".join(["100ms"] * 40),
    )
    with RelayProcess(workdir, env) as relay:
        results = [
            conv.run_served(conv.scenario(1000 + seed, disorder=disorder), examples, relay)
            for disorder in conv.DISORDERS
            for seed in range(SERVED_RUNS)
        ]
    assert_all_converged(results)
    assert stored_rows(examples.tables("users"))  # the last run left its users behind


# -- the official template, for comparison -----------------------------------------------


def test_official_template_goes_wrong_without_the_relay(
    official: ConvexEmulator, scratch: Path
) -> None:
    """Straight from Svix the official template ends wrong; the relay in front fixes it."""
    direct, relayed = [], []
    for disorder in conv.DISORDERS:
        for seed in range(COMPARISON_RUNS):
            sc = conv.scenario(seed, disorder=disorder)
            direct.append(conv.run_direct(sc, official))
            relayed.append(
                conv.run_relay(sc, official, scratch, official=True, setup="relay-official")
            )
    alone, fronted = conv.summarize(direct), conv.summarize(relayed)
    print(
        f"\nofficial template, {alone['runs']} runs: {alone['wrong']} wrong {dict(alone['kinds'])}"
        f"\nrelay -> official template: {fronted['wrong']} wrong {dict(fronted['kinds'])}"
    )
    assert alone["wrong"] > 0  # the harness sees what goes wrong...
    assert {"resurrected after delete", "stale (older state won)"} <= set(alone["kinds"])
    assert fronted["wrong"] < alone["wrong"]  # ...and the relay's ordering prevents it


def test_delete_with_same_timestamp_is_delivered_last(
    official: ConvexEmulator, scratch: Path
) -> None:
    """Clerk's fixtures created -> updated -> deleted (one timestamp) leave no user behind."""
    official.reset()
    db_path = scratch / "tie.db"
    settings = conv.relay_settings(official, db_path, target="http-action", payload="raw")
    store = SQLiteStore(db_path)
    store.migrate()
    clock = conv.ManualClock()
    worker = Worker(settings, store, clock=clock, rng=random.Random(0))
    try:
        for n, name in enumerate(("user.created", "user.updated", "user.deleted")):
            body = (FIXTURES / "clerk" / f"{name}.json").read_bytes()
            event = NewEvent.from_envelope(
                f"msg_tie{n}", body, json.loads(body), received_at_ms=int(clock() * 1000)
            )
            assert store.insert(event)
        while worker.run_once():
            clock.tick()
    finally:
        store.close()
    assert official.tables("users") == []

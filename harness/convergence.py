"""Convergence under disorder: the same Clerk histories delivered through three setups.

A *scenario* is seeded: several users' histories (create, updates, delete, re-create
under another id), an arrival order that is a random shuffle with random duplicates
(same svix-id), and a fault plan (which Convex functions are down while each arrival
is handled). It is delivered:

* through the relay (``run_relay``): arrival order is insertion order into a fresh
  relay store, and an in-process :class:`~relay.delivery.worker.Worker` makes a random number
  of passes between arrivals; its clock is advanced on every pass, so retries come
  due without sleeping. Target: examples/convex, or the official template;
* through a real ``relay serve`` (``run_served``): real signed HTTP ingest, the
  relay's own worker, wall-clock retries;
* straight to Convex's official template (``run_direct``), as Svix would: a failed
  attempt is retried at a random later point of the stream (Svix gives no order).

The final ``users`` table is compared with the true final state
(:func:`harness.clerk_histories.expected_rows`). ``test_convergence.py`` asserts on it;
``bench/convergence.py`` runs more seeds and writes the numbers down.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from relay.delivery.deliverer import Deliverer, Request, Response
from relay.delivery.worker import Worker
from relay.models import Event, NewEvent, Status
from relay.settings import Settings, parse_routes
from relay.store.sqlite import SQLiteStore

from .clerk_histories import ISSUER, ClerkEvent, expected_rows, stored_rows, user_histories
from .convex_emulator import ADMIN_KEY, ConvexEmulator
from .factories import FORWARD_SECRET, SECRET, signed_headers
from .relay_process import RelayProcess, wait_until

T0 = 1_760_000_000_000  # ms; Clerk event times (the relay's clock is separate)
USERS_PER_RUN = 3
DUPLICATE_P = 0.3  # per event: Svix sends it once more (same svix-id)
LATE_P = 1 / 7  # jitter disorder: an arrival lands anywhere later in the stream
DISORDERS = ("shuffle", "jitter")
FAULT_TOGGLE_P = 0.25  # per arrival: an outage starts or ends
PASSES = (0, 0, 1, 1, 2, 3)  # worker passes after an arrival: how far delivery lags ingest
UPSERT, DELETE = "users:upsertFromClerk", "users:deleteFromClerk"
FAULT_SETS = (frozenset({UPSERT}), frozenset({DELETE}), frozenset({UPSERT, DELETE}))
#: The relay's gaps between attempts: long enough that no outage exhausts it.
RETRY_SCHEDULE_S = (0.5,) * 80
#: Fake time per worker pass: more than the longest gap with its 20 % jitter.
PASS_S = 0.61
MAX_DRAIN_PASSES = 2_000

Rows = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Step:
    """One arrival: the event, the functions down meanwhile, worker passes afterwards."""

    event: ClerkEvent
    faults: frozenset[str]
    passes: int


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: int
    disorder: str
    events: tuple[ClerkEvent, ...]  # the truth, in Clerk's order
    steps: tuple[Step, ...]  # what arrives, in arrival order


def scenario(
    seed: int, *, disorder: str = "shuffle", outages: bool = True, users: int = USERS_PER_RUN
) -> Scenario:
    """The seeded scenario number ``seed`` (same arguments, same everything).

    ``disorder``: ``shuffle`` (every arrival order equally likely) or ``jitter``
    (mostly in order, like Svix on a good day: each arrival lags by an exponential
    number of places, and one in seven comes very late, like a retry).
    ``outages``: whether Convex functions go down now and then.
    """
    rng = random.Random(f"{disorder}:{seed}")
    events = user_histories(rng, users, t0_ms=T0, tag=f"{disorder[0]}{seed}x")
    keyed = []
    for place, event in enumerate(events):
        for _ in range(2 if rng.random() < DUPLICATE_P else 1):
            if disorder == "shuffle":
                key = rng.random()
            elif rng.random() < LATE_P:
                key = place + rng.uniform(0, len(events))
            else:
                key = place + rng.expovariate(1.0)
            keyed.append((key, event))
    keyed.sort(key=lambda pair: pair[0])
    arrivals = [event for _, event in keyed]
    faults: frozenset[str] = frozenset()
    steps = []
    for event in arrivals:
        if outages and rng.random() < FAULT_TOGGLE_P:
            faults = frozenset() if faults else rng.choice(FAULT_SETS)
        steps.append(Step(event, faults, rng.choice(PASSES)))
    return Scenario(seed, disorder, tuple(events), tuple(steps))


@dataclass
class RunResult:
    """How one run ended."""

    setup: str
    seed: int
    disorder: str
    wrong: Counter[str]  # kind of wrongness -> number of users affected
    statuses: Counter[str] = field(default_factory=Counter)  # relay event statuses
    failed_attempts: int = 0  # attempts that hit an outage (and were retried)

    @property
    def ok(self) -> bool:
        return not self.wrong


def wrongness(expected: Rows, actual: Rows, events: Iterable[ClerkEvent]) -> Counter[str]:
    """Per kind, how many users ended wrong: resurrected, stale, missing, duplicated."""
    deleted = {e.data["id"] for e in events if e.type == "user.deleted"}
    want = {r["externalId"]: r for r in expected}
    have: dict[str, Rows] = {}
    for row in actual:
        have.setdefault(row["externalId"], []).append(row)
    kinds: Counter[str] = Counter()
    for user_id, rows in have.items():
        if len(rows) > 1:
            kinds["duplicate row"] += 1
        if user_id not in want:
            kinds["resurrected after delete" if user_id in deleted else "unknown user"] += 1
        elif rows[0] != want[user_id]:
            kinds["stale (older state won)"] += 1
    kinds["missing"] += sum(1 for user_id in want if user_id not in have)
    return +kinds  # drop zeros


# -- faults -----------------------------------------------------------------------------


class EmulatorFaults:
    """Outages as the emulator's fault switch: the functions throw, the HTTP action says 500."""

    def __init__(self, emulator: ConvexEmulator) -> None:
        self.emulator = emulator
        self.down: frozenset[str] = frozenset()

    def apply(self, down: frozenset[str]) -> None:
        if down == self.down:
            return
        self.emulator.heal()
        for function in sorted(down):
            self.emulator.fail(function, "injected outage")
        self.down = down


class FlakyDeliverer(Deliverer):
    """Function-API target with a stand-in 503 (a function error there is final, not transient)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.down: frozenset[str] = frozenset()

    def apply(self, down: frozenset[str]) -> None:
        self.down = down

    def send(self, request: Request) -> Response:
        if request.function in self.down:
            return Response(503, 0.1, excerpt="stand-in: Convex overloaded")
        return super().send(request)


# -- the three setups -------------------------------------------------------------------


class ManualClock:
    """The worker's clock: starts at the real time (signatures must verify), moved by hand."""

    def __init__(self) -> None:
        self.now_s = time.time()

    def __call__(self) -> float:
        return self.now_s

    def tick(self, seconds: float = PASS_S) -> None:
        self.now_s += seconds


def relay_settings(
    emulator: ConvexEmulator, db_path: Path, *, target: str, payload: str
) -> Settings:
    """Settings for an in-process worker delivering to ``emulator``."""
    where: dict[str, Any]
    if target == "http-action":
        where = {"convex_site_url": emulator.url, "forward_secret": FORWARD_SECRET}
    else:
        where = {"convex_url": emulator.url, "convex_deploy_key": ADMIN_KEY}
    return Settings(
        webhook_secrets=(SECRET,),
        database_url=f"sqlite:///{db_path}",
        payload=payload,  # type: ignore[arg-type]
        routes=parse_routes(f"user.created,user.updated={UPSERT};user.deleted={DELETE}"),
        retry_schedule_s=RETRY_SCHEDULE_S,
        delivery_timeout_s=10.0,
        concurrency=1,  # one event per pass: a pass is the unit of delivery progress
        issuer_url=ISSUER,
        **where,
    )


def run_relay(
    sc: Scenario,
    emulator: ConvexEmulator,
    workdir: Path,
    *,
    target: str = "http-action",
    payload: str = "raw",
    official: bool = False,
    setup: str = "relay",
) -> RunResult:
    """Deliver ``sc`` through a fresh relay store (a SQLite file in ``workdir``) and an
    in-process worker to ``emulator``; the file is removed afterwards."""
    emulator.reset()
    db_path = workdir / f"relay-{sc.disorder}-{sc.seed}.db"
    _remove_db(db_path)  # every run starts from an empty relay
    settings = relay_settings(emulator, db_path, target=target, payload=payload)
    store = SQLiteStore(db_path)
    store.migrate()
    deliverer = FlakyDeliverer(settings)
    faults = deliverer if target == "mutation" else EmulatorFaults(emulator)
    clock = ManualClock()
    worker = Worker(
        settings, store, deliverer, worker_id="convergence", clock=clock, rng=random.Random(sc.seed)
    )
    try:
        for step in sc.steps:
            faults.apply(step.faults)
            envelope = step.event.envelope
            store.insert(
                NewEvent.from_envelope(
                    step.event.id, step.event.body, envelope, received_at_ms=int(clock() * 1000)
                )
            )
            for _ in range(step.passes):
                worker.run_once()
                clock.tick()
        faults.apply(frozenset())
        for _ in range(MAX_DRAIN_PASSES):
            if store.counts()[Status.PENDING] == 0:
                break
            worker.run_once()
            clock.tick()
        statuses = Counter({k: v for k, v in store.counts().items() if v})
        stored = [store.get(e.id) for e in sc.events]
        failed_attempts = sum(
            1 for e in stored if e is not None for a in e.attempts if a.outcome != "delivered"
        )
    finally:
        faults.apply(frozenset())
        store.close()
        _remove_db(db_path)
    result = _judge(setup, sc, emulator, official=official, token=payload == "normalized")
    result.statuses, result.failed_attempts = statuses, failed_attempts
    return result


def _remove_db(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)


def run_direct(sc: Scenario, emulator: ConvexEmulator, *, setup: str = "official") -> RunResult:
    """POST ``sc`` straight to the emulated HTTP action, Svix-style, with no relay."""
    emulator.reset()
    rng = random.Random(sc.seed ^ 0x5F3759DF)
    faults = EmulatorFaults(emulator)
    end = len(sc.steps)
    retries: dict[int, list[ClerkEvent]] = {}
    failed = 0
    session = requests.Session()

    def attempt(event: ClerkEvent, now: int) -> None:
        nonlocal failed
        reply = post_signed(session, emulator, event)
        if reply.status_code >= 300:  # Svix retries any non-2xx, later, in no order
            failed += 1
            retries.setdefault(rng.randint(now + 1, end), []).append(event)

    try:
        for index, step in enumerate(sc.steps):
            faults.apply(step.faults)
            batch = [step.event, *retries.pop(index, [])]
            rng.shuffle(batch)
            for event in batch:
                attempt(event, index)
        faults.apply(frozenset())
        leftovers = [e for due in sorted(retries) for e in retries[due]]
        rng.shuffle(leftovers)
        retries.clear()
        for event in leftovers:
            attempt(event, end)
        assert not retries, "an attempt failed with every fault cleared"
    finally:
        faults.apply(frozenset())
        session.close()
    result = _judge(setup, sc, emulator, official=True, token=False)
    result.failed_attempts = failed
    return result


def run_served(
    sc: Scenario, emulator: ConvexEmulator, relay: RelayProcess, *, setup: str = "relay serve"
) -> RunResult:
    """Deliver ``sc`` through a running ``relay serve`` (real HTTP ingest, its own worker)."""
    emulator.reset()
    faults = EmulatorFaults(emulator)
    try:
        for step in sc.steps:
            faults.apply(step.faults)
            reply = relay.post_event(step.event.body, step.event.id)
            assert reply.status_code == 200, reply.text
        faults.apply(frozenset())
        store = relay.open_store()
        try:
            terminal = {Status.DELIVERED, Status.SUPERSEDED, Status.FAILED, Status.SKIPPED}

            def settled() -> list[Event]:
                found = [store.get(e.id) for e in sc.events]
                done = [e for e in found if e is not None and e.status in terminal]
                return done if len(done) == len(found) else []

            events = wait_until(settled, 30.0, f"scenario {sc.seed} to settle")
        finally:
            store.close()
    finally:
        faults.apply(frozenset())
    result = _judge(setup, sc, emulator, official=False, token=False)
    result.statuses = Counter(str(e.status) for e in events)
    result.failed_attempts = sum(1 for e in events for a in e.attempts if a.outcome != "delivered")
    return result


def post_signed(
    session: requests.Session, emulator: ConvexEmulator, event: ClerkEvent
) -> requests.Response:
    """The webhook as Clerk sends it, signed with the secret the emulated Convex holds."""
    headers = signed_headers(event.body, secret=FORWARD_SECRET, msg_id=event.id)
    return session.post(
        f"{emulator.url}/clerk-users-webhook", data=event.body, headers=headers, timeout=10
    )


def _judge(
    setup: str, sc: Scenario, emulator: ConvexEmulator, *, official: bool, token: bool
) -> RunResult:
    expected = expected_rows(sc.events, token=token, official=official)["users"]
    actual = stored_rows(emulator.tables("users"))
    return RunResult(setup, sc.seed, sc.disorder, wrongness(expected, actual, sc.events))


def summarize(results: Iterable[RunResult]) -> Mapping[str, Any]:
    """Runs, wrong runs and wrongness kinds (users affected) of one setup's results."""
    results = list(results)
    kinds: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for r in results:
        kinds.update(r.wrong)
        statuses.update(r.statuses)
    return {
        "runs": len(results),
        "wrong": sum(1 for r in results if not r.ok),
        "kinds": kinds,
        "statuses": statuses,
        "failed_attempts": sum(r.failed_attempts for r in results),
        "wrong_runs": [f"{r.disorder}:{r.seed}" for r in results if not r.ok],
    }

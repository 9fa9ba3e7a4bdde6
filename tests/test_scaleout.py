"""Scaled out: several relays on one PostgreSQL database, one Convex (issue 6).

Two ``relay serve`` process groups (gunicorn + one worker each) and three extra
``relay worker`` processes share one database and deliver to one loopback Convex
stand-in that answers after a random 0-5 ms, so the work of five workers interleaves.
2,000 signed events (100 users x 20 updates) are posted to both web instances from
four client threads. The promises checked: every event ends delivered (or, for a
stale upsert that arrived after a newer one was delivered, superseded), nothing is
delivered twice, each user's deliveries are in timestamp order and never two in
flight at once; and after ``kill -9`` of one worker mid-run, only what that worker
held is delivered again, and only after its lease expired.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from harness.factories import FORWARD_SECRET, make_envelope, signed_headers
from harness.postgres_server import fresh_schema
from harness.relay_process import RelayProcess, TrackingStandIn, relay_env, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

USERS = 100
EVENTS_PER_USER = 20
CLIENT_THREADS = 4
SERVE_INSTANCES = 2
EXTRA_WORKERS = 3
#: Deliveries in flight per worker (the relay's default), the most a killed one can hold.
CONCURRENCY = 4
#: RELAY_DELIVERY_TIMEOUT=1s gives leases of 1 * 2 + 30 = 32 s (see relay.delivery.worker).
LEASE_S = 32
#: Generous: the 2-core machines also run other suites; a normal run settles in ~20 s.
SETTLE_TIMEOUT_S = 90.0
BASE_TS_MS = 1_700_000_000_000


@dataclass(frozen=True)
class Span:
    """One request at the stand-in: which event, which user, when it began and ended."""

    svix_id: str
    user: str
    start: float
    end: float
    status: int


class JitteryStandIn(TrackingStandIn):
    """The Convex stand-in, answering after 0-5 ms and recording each request's span."""

    def __init__(self, secret: str, seed: int) -> None:
        super().__init__(secret)
        self._rng = random.Random(seed)
        self.spans: list[Span] = []

    def _handle(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        start = time.time()
        with self.lock:
            delay_s = self._rng.uniform(0.0, 0.005)
        time.sleep(delay_s)
        answer = super()._handle(path, headers, body)
        svix_id = {k.lower(): v for k, v in headers.items()}.get("svix-id", "?")
        span = Span(svix_id, _user_of(svix_id), start, time.time(), answer[0])
        with self.lock:
            self.spans.append(span)
        return answer


def _user_of(svix_id: str) -> str:
    """``msg_<run>_<user>_<k>`` -> ``<run>_<user>``."""
    return svix_id.rsplit("_", 1)[0].removeprefix("msg_")


@dataclass(frozen=True)
class Planned:
    """One event to post: its id, user, position in the user's history, and envelope."""

    svix_id: str
    user: str
    k: int
    envelope: dict[str, Any]


def plan(run: str) -> dict[str, list[Planned]]:
    """USERS users, each with one user.created then user.updated events, 1 s apart."""
    histories: dict[str, list[Planned]] = {}
    for u in range(USERS):
        user = f"{run}_{u:03d}"
        histories[user] = []
        for k in range(EVENTS_PER_USER):
            at = BASE_TS_MS + k * 1000
            event_type = "user.created" if k == 0 else "user.updated"
            envelope = make_envelope(
                event_type,
                entity_id=f"user_{user}",
                timestamp=at,
                updated_at=at,
                first_name=f"v{k}",
            )
            histories[user].append(Planned(f"msg_{user}_{k:02d}", user, k, envelope))
    return histories


def in_order_batches(histories: dict[str, list[Planned]]) -> list[list[Planned]]:
    """Each thread owns some users and posts their k-th events before anyone's (k+1)-th:
    a user's events arrive in timestamp order, users interleave."""
    users = sorted(histories)
    return [
        [histories[u][k] for k in range(EVENTS_PER_USER) for u in users[t::CLIENT_THREADS]]
        for t in range(CLIENT_THREADS)
    ]


def shuffled_batches(histories: dict[str, list[Planned]], seed: int) -> list[list[Planned]]:
    """Every event in a random order, dealt to the threads: arrival order is arbitrary."""
    everything = [p for events in histories.values() for p in events]
    random.Random(seed).shuffle(everything)
    return [everything[t::CLIENT_THREADS] for t in range(CLIENT_THREADS)]


def post_all(relays: list[RelayProcess], batches: list[list[Planned]]) -> list[str]:
    """Post each batch from its own thread, alternating between web instances; the
    problems seen (an empty list when every post was answered 200 accepted)."""
    problems: list[str] = []

    def client(t: int, batch: list[Planned]) -> None:
        with requests.Session() as session:
            for n, item in enumerate(batch):
                relay = relays[(n + t) % len(relays)]
                body = _json_bytes(item.envelope)
                headers = signed_headers(body, msg_id=item.svix_id)
                try:
                    r = session.post(
                        f"{relay.url}/webhooks/clerk", data=body, headers=headers, timeout=10
                    )
                    ok = r.status_code == 200 and r.json() == {
                        "status": "accepted",
                        "id": item.svix_id,
                    }
                    if not ok:
                        problems.append(f"{item.svix_id}: {r.status_code} {r.text[:200]}")
                except requests.RequestException as exc:
                    problems.append(f"{item.svix_id}: {exc}")

    with ThreadPoolExecutor(len(batches)) as pool:
        list(pool.map(client, range(len(batches)), batches))
    return problems


def _json_bytes(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def statuses(url: str) -> dict[str, str]:
    """Every event's status, read straight from the shared database."""
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT id, status FROM events").fetchall())


def settled_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE status IN ('delivered', 'superseded')"
        ).fetchone()
        return int(row[0]) if row else 0


class Cluster:
    """2 x ``relay serve`` + 3 x ``relay worker`` on one database, started in parallel."""

    def __init__(self, workdir: Path, db_url: str, standin: JitteryStandIn) -> None:
        env = relay_env(
            workdir,
            RELAY_DATABASE_URL=db_url,
            CONVEX_SITE_URL=standin.url,
            RELAY_FORWARD_SECRET=FORWARD_SECRET,
            RELAY_DELIVERY_TIMEOUT="1s",
            RELAY_CONCURRENCY=str(CONCURRENCY),
            RELAY_RETRY_SCHEDULE="200ms,200ms,200ms",
        )
        self.web = [RelayProcess(workdir, env) for _ in range(SERVE_INSTANCES)]
        self.workers = [
            RelayProcess(workdir, env, command=("worker",)) for _ in range(EXTRA_WORKERS)
        ]

    @property
    def processes(self) -> list[RelayProcess]:
        return [*self.web, *self.workers]

    def __enter__(self) -> Cluster:
        # The first start migrates; the others wait on the migration's advisory lock.
        with ThreadPoolExecutor(len(self.processes)) as pool:
            futures = [pool.submit(p.start) for p in self.processes]
            errors = [f.exception() for f in futures]
        if any(errors):
            self.__exit__(None, None, None)
            raise next(e for e in errors if e is not None)
        return self

    def __exit__(self, *_exc: object) -> None:
        for p in self.processes:
            p.__exit__(None, None, None)


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@pytest.fixture
def standin() -> Iterator[JitteryStandIn]:
    with JitteryStandIn(FORWARD_SECRET, seed=6).running() as cx:
        yield cx


def run(
    tmp_path: Path, pg_url: str, standin: JitteryStandIn, batches: list[list[Planned]]
) -> float:
    """Post every batch to a fresh cluster and wait until all settle; events per second."""
    total = sum(map(len, batches))
    with Cluster(tmp_path, pg_url, standin) as cluster:
        started = time.monotonic()
        problems = post_all(cluster.web, batches)
        posted = time.monotonic() - started
        assert problems == []
        wait_until(lambda: settled_count(pg_url) == total, SETTLE_TIMEOUT_S, "all to settle")
        elapsed = time.monotonic() - started
        for p in cluster.processes:
            assert p.proc is not None and p.proc.poll() is None, p.log()[-2000:]
    rate = total / elapsed
    print(
        f"\nscale-out: {total} events end to end in {elapsed:.1f} s = {rate:.0f} events/s"
        f" (all posted after {posted:.1f} s; load average {os.getloadavg()[0]:.1f})"
    )
    return rate


# -- what every run must show ------------------------------------------------------------------


def delivered_sequence(standin: JitteryStandIn) -> dict[str, list[str]]:
    """Per user, the svix-ids answered 2xx in the order answered, repeats dropped."""
    seen: set[str] = set()
    per_user: dict[str, list[str]] = defaultdict(list)
    for span in sorted(standin.spans, key=lambda s: s.end):
        if 200 <= span.status < 300 and span.svix_id not in seen:
            seen.add(span.svix_id)
            per_user[span.user].append(span.svix_id)
    return per_user


def assert_in_order(histories: dict[str, list[Planned]], standin: JitteryStandIn) -> None:
    """Each user's deliveries follow timestamp order, and the newest always arrives."""
    sequences = delivered_sequence(standin)
    for user, events in histories.items():
        got = sequences[user]
        rank = {p.svix_id: p.k for p in events}
        assert [rank[i] for i in got] == sorted(rank[i] for i in got), user
        assert got[-1] == events[-1].svix_id, user


def assert_one_at_a_time(standin: JitteryStandIn) -> None:
    """No two requests about one user overlapped at the stand-in."""
    per_user: dict[str, list[Span]] = defaultdict(list)
    for span in standin.spans:
        per_user[span.user].append(span)
    for user, spans in per_user.items():
        spans.sort(key=lambda s: s.start)
        for before, after in itertools.pairwise(spans):
            assert after.start >= before.end, (user, before, after)
        assert standin.max_in_flight[f"user_{user}"] == 1, user


def assert_every_event_settled(
    histories: dict[str, list[Planned]], pg_url: str, standin: JitteryStandIn
) -> dict[str, str]:
    """Delivered + superseded = everything posted; delivered in the DB = seen at Convex."""
    status = statuses(pg_url)
    planned = {p.svix_id for events in histories.values() for p in events}
    assert set(status) == planned
    assert set(status.values()) <= {"delivered", "superseded"}
    delivered = {i for i, s in status.items() if s == "delivered"}
    assert delivered == set(standin.delivered)
    return status


# -- tests ---------------------------------------------------------------------------------------


def test_in_order_per_user_posts_are_each_delivered_once_in_order(
    tmp_path: Path, pg_url: str, standin: JitteryStandIn
) -> None:
    """2,000 events, each user's posted in order across both web instances, are all
    delivered exactly once by five workers, in order, one at a time per user."""
    histories = plan("ord")
    run(tmp_path, pg_url, standin, in_order_batches(histories))

    status = assert_every_event_settled(histories, pg_url, standin)
    assert Counter(status.values()) == {"delivered": USERS * EVENTS_PER_USER}
    assert max(Counter(standin.delivered).values()) == 1
    sequences = delivered_sequence(standin)
    for user, events in histories.items():
        assert sequences[user] == [p.svix_id for p in events], user
    assert_one_at_a_time(standin)


def test_shuffled_posts_deliver_in_order_and_supersede_only_stale_upserts(
    tmp_path: Path, pg_url: str, standin: JitteryStandIn
) -> None:
    """2,000 events posted in random order: what is delivered is in timestamp order per
    user and delivered once, everything else is superseded, nothing is lost."""
    histories = plan("shuf")
    run(tmp_path, pg_url, standin, shuffled_batches(histories, seed=61))

    status = assert_every_event_settled(histories, pg_url, standin)
    assert max(Counter(standin.delivered).values()) == 1
    assert_in_order(histories, standin)
    assert_one_at_a_time(standin)
    # Superseded events are exactly those older than something delivered for the user.
    sequences = delivered_sequence(standin)
    for user, events in histories.items():
        newest_delivered_k = max(int(i.rsplit("_", 1)[1]) for i in sequences[user])
        for p in events:
            if status[p.svix_id] == "superseded":
                assert p.k < newest_delivered_k, p.svix_id


def held_by(pg_url: str, pid: int) -> dict[str, int]:
    """Pending events leased by the worker with this pid (worker ids are host:pid:nonce)."""
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT id, lease_expires_at FROM events"
            " WHERE status = 'pending' AND lease_owner LIKE %s",
            (f"%:{pid}:%",),
        ).fetchall()
    return dict(rows)


#: How late after the freeze a request the victim had already sent may reach the stand-in.
IN_FLIGHT_AT_KILL_S = 1.0


def kill_holding_leases(victim: RelayProcess, pg_url: str) -> tuple[float, dict[str, int]]:
    """SIGSTOP the worker until it is caught holding leases, then SIGKILL it; the kill
    time and the leases it left behind (id -> lease expiry in epoch ms)."""
    assert victim.proc is not None
    pid = victim.proc.pid
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        os.killpg(pid, signal.SIGSTOP)  # frozen: its leases cannot change under us
        if held_by(pg_url, pid):
            killed_at = time.time()
            victim.kill9_group()
            # Read again once dead: a complete() it had not committed is rolled back.
            return killed_at, held_by(pg_url, pid)
        os.killpg(pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError("the victim never held a lease")


def test_killed_worker_loses_nothing_and_only_its_leases_are_redelivered(
    tmp_path: Path, pg_url: str, standin: JitteryStandIn
) -> None:
    """kill -9 of one worker mid-run: every event still settles; duplicates at Convex are
    only events that worker held (at most its concurrency), re-sent after the lease ended."""
    histories = plan("kill")
    total = USERS * EVENTS_PER_USER
    batches = in_order_batches(histories)
    with Cluster(tmp_path, pg_url, standin) as cluster:
        started = time.monotonic()
        problems: list[str] = []
        poster = threading.Thread(
            target=lambda: problems.extend(post_all(cluster.web, batches)), daemon=True
        )
        poster.start()
        wait_until(lambda: settled_count(pg_url) >= total // 4, 60, "a quarter delivered")
        killed_at, orphans = kill_holding_leases(cluster.workers[0], pg_url)
        poster.join(60)
        assert not poster.is_alive()
        assert problems == []
        wait_until(
            lambda: settled_count(pg_url) == total, SETTLE_TIMEOUT_S + LEASE_S, "all to settle"
        )
        elapsed = time.monotonic() - started
        survivors = [p for p in cluster.processes if p is not cluster.workers[0]]
        for p in survivors:
            assert p.proc is not None and p.proc.poll() is None, p.log()[-2000:]
    print(
        f"\nscale-out with kill -9: {total} events in {elapsed:.1f} s (incl. a {LEASE_S} s lease)"
    )

    assert 1 <= len(orphans) <= CONCURRENCY
    status = assert_every_event_settled(histories, pg_url, standin)
    assert Counter(status.values()) == {"delivered": total}
    duplicates = {i for i, n in Counter(standin.delivered).items() if n > 1}
    print(f"killed worker held {len(orphans)} lease(s); {len(duplicates)} re-sent to Convex")
    assert duplicates <= set(orphans)
    assert max(Counter(standin.delivered).values()) <= 2
    # Each orphan's user was left alone until the dead worker's lease ran out. The dead
    # worker's own last request for the orphan may reach the stand-in's handler just
    # after the freeze (its bytes were already on the socket): that one is not another
    # worker's early delivery.
    for svix_id, expires_ms in orphans.items():
        user = _user_of(svix_id)
        early = [
            s
            for s in standin.spans
            if s.user == user
            and killed_at < s.start < expires_ms / 1000 - 0.05
            and not (s.svix_id == svix_id and s.start < killed_at + IN_FLIGHT_AT_KILL_S)
        ]
        assert early == [], svix_id
    sequences = delivered_sequence(standin)
    for user, events in histories.items():
        assert sequences[user] == [p.svix_id for p in events], user
    assert_one_at_a_time(standin)

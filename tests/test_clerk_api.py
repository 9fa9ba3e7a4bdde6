"""The Clerk Backend API client: paging, 404s, 429/Retry-After, errors, the rate ceiling.

Against the Clerk emulator (a real HTTP server on loopback); the rate limiter's
arithmetic with a fake clock.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import pytest

from harness.clerk_emulator import SECRET_KEY, ClerkEmulator
from harness.clerk_objects import T0, clerk_membership, clerk_organization, clerk_user
from relay.errors import ClerkAPIError
from relay.reconcile.clerk_api import ClerkAPI, RateLimiter, backoff_s, retry_after_s


@pytest.fixture
def clerk() -> Iterator[ClerkEmulator]:
    with ClerkEmulator() as emulator:
        yield emulator


def client(emulator: ClerkEmulator, *, key: str = SECRET_KEY, rate: float = 1000.0) -> ClerkAPI:
    return ClerkAPI(emulator.url, key, limiter=RateLimiter(rate), rng=random.Random(1))


class FakeClock:
    """Time that moves only when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_rate_limiter_spaces_requests_so_no_window_exceeds_the_rate() -> None:
    """At 10/s, 25 back-to-back requests start 0.1 s apart: never more than 11 in any 1 s."""
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(25):
        limiter.acquire()
        starts.append(clock.now)
    assert starts[0] == 100.0
    assert all(b - a == pytest.approx(0.1) for a, b in itertools.pairwise(starts))
    assert max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts) <= 11


def test_rate_limiter_hold_pushes_the_next_start_back() -> None:
    """After hold(2.5) (a 429's Retry-After) nothing starts for 2.5 s."""
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    limiter.hold(2.5)
    limiter.acquire()
    assert clock.now == pytest.approx(102.5)
    assert limiter.waited_s == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("header", "seconds"), [("3", 3.0), ("0.5", 0.5), (None, None), ("soon", None), ("-1", None)]
)
def test_retry_after_reads_delta_seconds(header: str | None, seconds: float | None) -> None:
    """Retry-After in seconds; anything unreadable counts as absent (backoff instead)."""
    assert retry_after_s(header) == seconds


def test_backoff_grows_and_is_capped() -> None:
    """Backoff doubles from 1 s with up to 50 % jitter and never passes 45 s."""
    rng = random.Random(7)
    delays = [backoff_s(n, rng) for n in range(1, 10)]
    assert 1.0 <= delays[0] <= 1.5 and 2.0 <= delays[1] <= 3.0
    assert max(delays) <= 45.0


def test_users_are_read_page_by_page_with_the_cursor(clerk: ClerkEmulator) -> None:
    """1,201 users come in pages of 500, 500, 201 (starting_after), each once, newest first."""
    clerk.put_users(clerk_user(f"user_{n:05d}", updated_at=T0 + n) for n in range(1201))
    api = client(clerk)
    pages = list(api.user_pages())
    assert [len(p) for p in pages] == [500, 500, 201]
    ids = [u["id"] for p in pages for u in p]
    assert ids == [f"user_{n:05d}" for n in reversed(range(1201))]
    listed = clerk.listed("/users")
    assert [r.query.get("starting_after") for r in listed] == [
        None,
        ["user_00701"],
        ["user_00201"],
    ]
    assert all(r.query["limit"] == ["500"] for r in listed)
    assert api.requests == 3


def test_an_exact_multiple_of_the_page_ends_on_an_empty_page(clerk: ClerkEmulator) -> None:
    """500 users: one full page, then an empty one that ends the listing."""
    clerk.put_users(clerk_user(f"user_{n}", updated_at=T0 + n) for n in range(500))
    api = client(clerk)
    assert [len(p) for p in api.user_pages()] == [500]
    assert api.requests == 2


def test_organizations_and_memberships_page_by_offset(clerk: ClerkEmulator) -> None:
    """{data, total_count} listings are read with offset until a short page."""
    orgs = [clerk_organization(f"org_{n:04d}", updated_at=T0 + n) for n in range(7)]
    for org in orgs:
        clerk.put_organization(org)
    for n in range(12):
        clerk.put_membership(
            clerk_membership(f"orgmem_{n}", org=orgs[n % 7], user_id=f"user_{n}", updated_at=T0)
        )
    api = client(clerk)
    org_pages = list(api.organization_pages(limit=3))
    assert [o["id"] for p in org_pages for o in p] == [o["id"] for o in orgs]  # oldest first
    assert [r.query["offset"] for r in clerk.listed("/organizations")] == [
        ["0"],
        ["3"],
        ["6"],
    ]
    members = [m["id"] for p in api.membership_pages(limit=5) for m in p]
    assert sorted(members) == sorted(f"orgmem_{n}" for n in range(12))
    assert api.count("organizations") == 7
    assert api.count("memberships") == 12


def test_existence_checks_distinguish_404_from_present(clerk: ClerkEmulator) -> None:
    """GET /users/{id} and /organizations/{id}: 404 means gone; memberships via the org."""
    org = clerk_organization("org_1", updated_at=T0)
    clerk.put_organization(org)
    clerk.put_user(clerk_user("user_here", updated_at=T0))
    clerk.put_membership(clerk_membership("orgmem_1", org=org, user_id="user_here", updated_at=T0))
    api = client(clerk)
    assert api.user_exists("user_here") and not api.user_exists("user_gone")
    assert api.organization_exists("org_1") and not api.organization_exists("org_gone")
    assert api.membership_exists("org_1", "orgmem_1")
    assert not api.membership_exists("org_1", "orgmem_other")
    assert not api.membership_exists("org_gone", "orgmem_1")
    assert api.membership_exists(None, "orgmem_1")  # no org known: never a guess
    assert api.count("users") == 1


def test_429_waits_for_retry_after_then_succeeds(clerk: ClerkEmulator) -> None:
    """Two 429s with Retry-After: 1 are retried no sooner than a second apart each."""
    clerk.put_users(clerk_user(f"user_{n}", updated_at=T0 + n) for n in range(3))
    clerk.throttle(2, retry_after_s=1)
    api = client(clerk)
    assert sum(len(p) for p in api.user_pages()) == 3
    arrivals = [r.at_s for r in clerk.requests]
    assert [r.status for r in clerk.requests] == [429, 429, 200]
    assert arrivals[1] - arrivals[0] >= 1.0 and arrivals[2] - arrivals[1] >= 1.0
    assert api.throttled == 2 and api.requests == 3


def test_a_retry_after_beyond_the_cap_gives_up(clerk: ClerkEmulator) -> None:
    """A Retry-After of an hour is an outage: the run fails instead of sleeping."""
    clerk.throttle(1, retry_after_s=3600)
    with pytest.raises(ClerkAPIError, match="429"):
        list(client(clerk).user_pages())


def test_a_wrong_key_is_401_and_never_echoed(clerk: ClerkEmulator) -> None:
    """401: an error naming CLERK_SECRET_KEY, without the key, and no retries."""
    wrong = "sk_test_wrongwrongwrongwrong"
    with pytest.raises(ClerkAPIError) as err:
        list(client(clerk, key=wrong).user_pages())
    assert err.value.status_code == 401
    assert "CLERK_SECRET_KEY" in str(err.value) and wrong not in str(err.value)
    assert len(clerk.requests) == 1
    assert wrong not in repr(client(clerk, key=wrong))


def test_unreachable_clerk_fails_after_bounded_attempts() -> None:
    """Connection refused is retried a bounded number of times, then a ClerkAPIError."""
    clock = FakeClock()
    api = ClerkAPI(
        "http://127.0.0.1:9/v1",
        SECRET_KEY,
        limiter=RateLimiter(1000.0, clock=clock, sleep=clock.sleep),
        max_attempts=3,
        rng=random.Random(1),
    )
    with pytest.raises(ClerkAPIError, match="gave up after 3 attempts"):
        api.user_exists("user_x")
    assert api.requests == 3
    assert sum(clock.sleeps) >= 1.0 + 2.0  # backed off between attempts

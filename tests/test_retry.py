"""The retry schedule: pure, seeded, never shorter than documented, Retry-After as a floor."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from relay.delivery.retry import JITTER_FRACTION, MAX_RETRY_AFTER_S, next_delay_s, parse_retry_after
from relay.settings import DEFAULT_RETRY_SCHEDULE_S


def test_default_schedule_spans_at_least_three_days() -> None:
    """Even with zero jitter the default schedule outlasts a three-day outage."""
    assert sum(DEFAULT_RETRY_SCHEDULE_S) >= 3 * 86400


def test_jitter_only_adds_and_is_bounded() -> None:
    """Every delay lies in [gap, gap * (1 + JITTER_FRACTION)]."""
    rng = random.Random(7)
    for step, gap in enumerate(DEFAULT_RETRY_SCHEDULE_S):
        for _ in range(50):
            delay = next_delay_s(step, DEFAULT_RETRY_SCHEDULE_S, rng=rng)
            assert delay is not None
            assert gap <= delay <= gap * (1 + JITTER_FRACTION)


def test_same_seed_same_delays() -> None:
    """The schedule is a pure function of step and RNG state."""
    a = [next_delay_s(i, [10, 20, 30], rng=random.Random(3)) for i in range(3)]
    b = [next_delay_s(i, [10, 20, 30], rng=random.Random(3)) for i in range(3)]
    assert a == b


def test_gives_up_after_the_last_gap() -> None:
    """After the last gap is used there is no next attempt."""
    assert next_delay_s(2, [1, 2], rng=random.Random(1)) is None


def test_retry_after_is_a_floor() -> None:
    """A longer Retry-After wins; a shorter one does not pull the retry forward."""
    rng = random.Random(1)
    assert next_delay_s(0, [5], rng=rng, retry_after_s=120) == 120
    delay = next_delay_s(0, [60], rng=random.Random(1), retry_after_s=1)
    assert delay is not None and delay >= 60


def test_absurd_retry_after_is_capped() -> None:
    """A Retry-After of a year is treated as a day."""
    assert next_delay_s(0, [5], rng=random.Random(1), retry_after_s=3e7) == MAX_RETRY_AFTER_S


@pytest.mark.parametrize(
    ("value", "expected"), [("30", 30.0), (" 7 ", 7.0), (None, None), ("", None), ("soon", None)]
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    """Delta-seconds parse; junk is ignored rather than trusted."""
    assert parse_retry_after(value, now_s=0) == expected


def test_parse_retry_after_http_date() -> None:
    """An HTTP date is converted to seconds from now."""
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now_s=now.timestamp()) == 90.0

"""When to try again: the retry schedule as data plus one pure function.

The schedule lists the gaps between attempts (``RELAY_RETRY_SCHEDULE``); after the
last gap is used, the event is ``failed``. Jitter is only ever added (0-20 %), so a
schedule documented to span three days never spans less; it spreads the retries of
many events that failed together (a Convex outage) so they do not return as one wave.
A ``Retry-After`` from Convex is a floor: we never come back sooner than asked.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

#: Upper bound of the upward jitter, as a fraction of the scheduled gap.
JITTER_FRACTION = 0.2
#: A Retry-After longer than this is treated as this (a misbehaving proxy can say a year).
MAX_RETRY_AFTER_S = 24 * 3600.0


def next_delay_s(
    step: int,
    schedule_s: Sequence[float],
    *,
    rng: random.Random,
    retry_after_s: float | None = None,
) -> float | None:
    """Seconds to wait after failed attempt number ``step`` (0-based), or None to give up."""
    if step >= len(schedule_s):
        return None
    delay = schedule_s[step] * (1.0 + rng.uniform(0.0, JITTER_FRACTION))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay


def parse_retry_after(value: str | None, *, now_s: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_s)

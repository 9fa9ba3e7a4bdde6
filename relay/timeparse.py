"""Durations and moments as people type them (``10s``, ``2h``, ``2026-11-01T12:00``), and
epoch milliseconds as people read them.

The one reading of a duration's units and of a date that names no zone (UTC), for the
settings, the CLI and the admin API and console. Each surface spells its input a little
differently, because each has its own contract; a :class:`Spelling` says how, and the
readings themselves are here once. Refusals are :class:`ValueError`: the caller names the
setting or parameter in its own words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

#: Seconds in one of each duration unit.
UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: Milliseconds in one of each duration unit (whole numbers, so whole counts stay exact).
UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@dataclass(frozen=True, slots=True)
class Spelling:
    """How one surface writes durations and dates.

    ``duration`` matches the whole text with two groups, the number and the unit (a
    missing unit means seconds). ``date`` is the form a date must have, or None for
    anything :meth:`datetime.fromisoformat` reads.
    """

    duration: re.Pattern[str]
    date: re.Pattern[str] | None = None


#: Settings and ``relay purge --older-than``: ``1.5h``, ``250 ms``, bare seconds (``7``).
SETTING = Spelling(re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*"))
#: ``relay events/replay --since``: the unit is required, so ``20261101`` stays a date.
CLI = Spelling(re.compile(r"\s*(\d+(?:\.\d+)?)(ms|s|m|h|d)\s*"))
#: The admin API and console; openapi.json has the same patterns, so the description
#: and the code agree exactly.
API = Spelling(
    re.compile(r"([0-9]{1,9})(ms|s|m|h|d)"),
    re.compile(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
        r"([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?([Zz]|[+-][0-9]{2}:[0-9]{2})?)?"
    ),
)


def duration_s(text: str, spelling: Spelling = SETTING) -> float:
    """The duration ``text`` as seconds; ValueError when it is not one in ``spelling``."""
    m = spelling.duration.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration")
    return float(m.group(1)) * UNIT_S[m.group(2) or "s"]


def moment_ms(text: str, spelling: Spelling, *, now_ms: float) -> int | None:
    """A duration ago (``2h``) or an ISO 8601 date or date-time (UTC when it names no
    zone), as epoch ms.

    None when ``text`` is neither; ValueError when it has the form of a date in
    ``spelling`` but is no real one (``2024-13-45``).
    """
    if m := spelling.duration.fullmatch(text):
        if m.group(2) and "." not in m.group(1):
            return int(now_ms) - int(m.group(1)) * UNIT_MS[m.group(2)]  # exact in whole ms
        return int(now_ms - duration_s(text, spelling) * 1000)
    if spelling.date is None:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        if not spelling.date.fullmatch(text):
            return None
        when = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def utc_text(ms: int | None) -> str:
    """Epoch ms as ``2026-11-01 12:00:00`` (UTC), or ``-`` for none."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")

"""relay.timeparse: one reading of durations and moments, spelled per surface."""

from __future__ import annotations

import pytest

from relay import timeparse
from relay.timeparse import API, CLI, SETTING, duration_s, moment_ms, utc_text

NOW_MS = 1_700_000_000_000


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("1.5h", 5400), (" 2 m ", 120), ("7", 7), ("3d", 259200)],
)
def test_setting_durations(text: str, seconds: float) -> None:
    """Settings read fractions, spaces and bare seconds."""
    assert duration_s(text, SETTING) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1s", "2w", "1e3s"])
def test_not_durations(text: str) -> None:
    """Anything else is a ValueError."""
    with pytest.raises(ValueError, match="is not a duration"):
        duration_s(text)


@pytest.mark.parametrize(
    ("spelling", "text", "expected"),
    [
        (CLI, "2h", NOW_MS - 7_200_000),
        (CLI, " 1.5s ", NOW_MS - 1500),
        (CLI, "7", None),  # a unit is required: bare digits are tried as a date
        (CLI, "2 h", None),
        (CLI, "20231122", 1_700_611_200_000),  # fromisoformat's compact date
        (CLI, "2023-11-22T00:00:00z", None),  # fromisoformat knows only upper-case Z
        (API, "2h", NOW_MS - 7_200_000),
        (API, "1.5s", None),
        (API, " 2h", None),
        (API, "1234567890d", None),  # at most nine digits
        (API, "20231122", None),
        (API, "2023-11-22t00:00:00z", 1_700_611_200_000),
        (API, "2023-11-22", 1_700_611_200_000),  # no zone: UTC
        (API, "2023-11-22T01:00+01:00", 1_700_611_200_000),
    ],
)
def test_moments(spelling: timeparse.Spelling, text: str, expected: int | None) -> None:
    """A duration ago or a date, as each surface spells them; None when neither."""
    assert moment_ms(text, spelling, now_ms=NOW_MS) == expected


def test_whole_durations_ago_are_exact() -> None:
    """Whole counts are subtracted in whole ms, with no float rounding at the extreme."""
    now_ms = NOW_MS + 1  # odd, so float arithmetic at this size would round it away
    assert moment_ms("999999999d", API, now_ms=now_ms) == now_ms - 999_999_999 * 86_400_000


def test_an_api_date_that_is_no_date_is_a_value_error() -> None:
    """A date in the API's form that does not exist is refused, not passed over."""
    with pytest.raises(ValueError):
        moment_ms("2024-13-45", API, now_ms=NOW_MS)


def test_utc_text() -> None:
    """Epoch ms read as a UTC date-time; none as a dash."""
    assert utc_text(1_700_611_200_500) == "2023-11-22 00:00:00"
    assert utc_text(None) == "-"

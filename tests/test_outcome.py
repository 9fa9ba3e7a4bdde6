"""The outcome table: what each reply from Convex means for the event."""

from __future__ import annotations

import pytest

from relay.delivery.outcome import Verdict, classify


@pytest.mark.parametrize(
    ("status", "convex_status", "verdict"),
    [
        (200, None, Verdict.DELIVERED),
        (204, None, Verdict.DELIVERED),
        (200, "success", Verdict.DELIVERED),
        (200, "error", Verdict.FAILED),
        (560, None, Verdict.FAILED),
        (408, None, Verdict.RETRY),
        (429, None, Verdict.RETRY),
        (500, None, Verdict.RETRY),
        (502, None, Verdict.RETRY),
        (503, None, Verdict.RETRY),
        (400, None, Verdict.FAILED),
        (401, None, Verdict.SUSPECT),
        (403, None, Verdict.SUSPECT),
        (404, None, Verdict.SUSPECT),
        (405, None, Verdict.FAILED),
        (301, None, Verdict.FAILED),
        (308, None, Verdict.FAILED),
        (600, None, Verdict.FAILED),
    ],
)
def test_status_codes(status: int, convex_status: str | None, verdict: Verdict) -> None:
    """Each status class maps to the contract's outcome."""
    assert classify(status, convex_status=convex_status)[0] is verdict


@pytest.mark.parametrize("error", ["timed out", "connection failed"])
def test_transport_errors_are_retried(error: str) -> None:
    """No response at all is always worth another try, and the reason is kept."""
    assert classify(None, transport_error=error) == (Verdict.RETRY, error)


def test_function_error_reason_is_named() -> None:
    """A 200 with status:error says it was a Convex function error."""
    assert classify(200, convex_status="error") == (Verdict.FAILED, "Convex function error")


def test_the_templates_signature_error_is_suspect_and_other_400s_fail() -> None:
    """The official template's verification failure (400 "Error occured") points at the
    forwarding secret; a 400 with any other text is about the one payload."""
    assert classify(400, excerpt="Error occured")[0] is Verdict.SUSPECT
    assert classify(400, excerpt="Unrecognised event payload")[0] is Verdict.FAILED
    assert classify(400)[0] is Verdict.FAILED

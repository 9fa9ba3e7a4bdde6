"""Classifying a delivery attempt: one table, read top to bottom, first match wins.

The contract's "Outcome classes": 2xx (and Convex ``{"status": "success"}``) is
delivered; 408, 429, 5xx, timeouts and connection errors are retried; other 4xx and
Convex function errors fail at once, because sending the same request again cannot
succeed until someone changes the Convex code or the relay's configuration. The
answers that usually mean the *target's* configuration is wrong (401, 403, 404, the
template's signature 400) are ``suspect``: :mod:`relay.delivery.target` holds the event and
decides from what other events get whether the target or the event is at fault.
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """What an attempt's result means for the event."""

    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    #: An answer that usually means the *target* is misconfigured, not this event:
    #: the worker holds the event and lets target health decide (see relay.delivery.target).
    SUSPECT = "suspect"


#: (status codes, verdict, why). 560 is the function-error code Convex's JS client knows.
STATUS_TABLE: tuple[tuple[range, Verdict, str], ...] = (
    (range(200, 300), Verdict.DELIVERED, "accepted"),
    (range(408, 409), Verdict.RETRY, "request timeout"),
    (range(429, 430), Verdict.RETRY, "rate limited"),
    (range(560, 561), Verdict.FAILED, "Convex function error"),
    (range(500, 600), Verdict.RETRY, "server error"),
    (range(300, 400), Verdict.FAILED, "redirect: check the Convex URL"),
    (range(401, 402), Verdict.SUSPECT, "unauthorized: check CONVEX_DEPLOY_KEY"),
    (range(403, 404), Verdict.SUSPECT, "forbidden: check CONVEX_DEPLOY_KEY"),
    (range(404, 405), Verdict.SUSPECT, "not found: is the HTTP action or function deployed?"),
    (range(400, 500), Verdict.FAILED, "rejected"),
)

#: What Convex's official Clerk template (and examples/convex) answers with status 400
#: when ``svix`` cannot verify the request: the relay's forwarding secret is not the
#: CLERK_WEBHOOK_SECRET set in Convex. A target problem, not this event's.
TEMPLATE_SIGNATURE_ERROR = "Error occured"


def classify(
    status_code: int | None,
    *,
    convex_status: str | None = None,
    transport_error: str | None = None,
    excerpt: str | None = None,
) -> tuple[Verdict, str]:
    """The verdict for one attempt and a short reason.

    ``convex_status`` is the ``status`` field of a function-API reply, when there is one:
    a 200 carrying ``{"status": "error"}`` is a function error, not a success.
    ``excerpt`` is the start of the reply's body (it tells the template's signature
    error from a 400 about one payload).
    """
    if transport_error is not None or status_code is None:
        return Verdict.RETRY, transport_error or "no response"
    if status_code == 400 and excerpt is not None and TEMPLATE_SIGNATURE_ERROR in excerpt:
        return Verdict.SUSPECT, "signature rejected: check CLERK_WEBHOOK_SECRET in Convex"
    for codes, verdict, why in STATUS_TABLE:
        if status_code in codes:
            if verdict is Verdict.DELIVERED and convex_status == "error":
                return Verdict.FAILED, "Convex function error"
            return verdict, why
    return Verdict.FAILED, "unexpected status"

"""A transport that never touches the network: the seam at the Deliverer's edge.

Like httpx's ``MockTransport``: ``answer(request)`` returns the reply (or raises a
:class:`~relay.delivery.transport.TransportError`), and every request is kept so a
test can see what would have been sent.
"""

from __future__ import annotations

from collections.abc import Callable

import urllib3

from relay.delivery.transport import Reply, Request, TransportError


class FakeTransport:
    """Answers each request with ``answer(request)``; remembers the requests."""

    def __init__(self, answer: Callable[[Request], Reply]) -> None:
        self.answer = answer
        self.requests: list[Request] = []

    def send(self, request: Request) -> Reply:
        self.requests.append(request)
        return self.answer(request)


def replying(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, whole: bool = True
) -> FakeTransport:
    """A transport that gives every request the same reply (its headers looked up by
    case-insensitive name, as a real reply's are)."""
    reply = Reply(status, urllib3.HTTPHeaderDict(headers or {}), body, whole)
    return FakeTransport(lambda _request: reply)


def failing(error: TransportError) -> FakeTransport:
    """A transport whose every request fails on the way with ``error``."""

    def answer(_request: Request) -> Reply:
        raise error

    return FakeTransport(answer)

"""The network edge of a delivery: send one prepared request, get the reply's head back.

:class:`~relay.delivery.deliverer.Deliverer` builds and signs requests and reads
meaning into replies; a :class:`Transport` only moves bytes. It is a seam (httpx's
``MockTransport`` is the model): tests hand the Deliverer a fake transport to pin how
each reply or failure is mapped, and keep real loopback servers for the end-to-end
behaviour of :class:`PooledTransport`, the one the relay runs.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Protocol
from urllib.parse import urlsplit

import urllib3

from relay.delivery.deadline import POOL_CLASSES, Watchdog, track_connections
from relay.errors import ConnectionFailed, TimedOut, TransportError

# The transport's errors live in the relay's one error tree; named here too, since a
# fake transport raises them.
__all__ = [
    "ConnectionFailed",
    "PooledTransport",
    "Reply",
    "Request",
    "TimedOut",
    "Transport",
    "TransportError",
]

#: Most of a reply ever read: classification needs Convex's leading ``"status"`` and an
#: excerpt. The rest is never read; its connection is dropped instead of drained, so a
#: 100 MB reply costs 8 KiB of memory, not 200 MB.
REPLY_READ_BYTES = 8 * 1024
USER_AGENT = f"clerk-convex-relay/{version('clerk-convex-relay')}"


@dataclass(frozen=True, slots=True)
class Request:
    """One prepared attempt. ``headers`` may hold credentials: never log it."""

    url: str
    headers: dict[str, str]
    body: bytes
    function: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """What the target answered: status, headers, and at most REPLY_READ_BYTES of body.

    ``whole`` says whether ``body`` is all of it: a cut reply is judged by its head.
    """

    status: int
    #: Looked up by case-insensitive name (urllib3's ``HTTPHeaderDict``, as a real reply has).
    headers: Mapping[str, str] = field(default_factory=urllib3.HTTPHeaderDict)
    body: bytes = b""
    whole: bool = True


class Transport(Protocol):
    """Sends one request; returns the reply or raises :class:`TransportError`."""

    def send(self, request: Request) -> Reply: ...


class PooledTransport:
    """Kept-alive urllib3 connections to the one target, each attempt under a deadline.

    ``timeout_s`` bounds the whole attempt (connect, send, every read): the deadline
    watchdog (:mod:`relay.delivery.deadline`) ends it; urllib3's own timeouts are per
    step. Thread-safe, one connection per delivery slot (``pool_size``).
    """

    def __init__(self, url: str, *, pool_size: int, timeout_s: float) -> None:
        self._http = _connection_pool(url, pool_size)
        self._timeout_s = timeout_s
        self._timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._watchdog = Watchdog()
        # A pool of our own is asked for the path; a proxy needs the whole URL.
        self._absolute = isinstance(self._http, urllib3.ProxyManager)

    def send(self, request: Request) -> Reply:
        with self._watchdog.attempt(self._timeout_s) as attempt:
            try:
                reply = self._http.urlopen(
                    "POST",
                    request.url if self._absolute else _request_target(request.url),
                    body=request.body,
                    headers={"user-agent": USER_AGENT, **request.headers},
                    timeout=self._timeout,
                    retries=False,  # the worker's schedule retries, with backoff, from the rows
                    redirect=False,  # a redirect is a misconfigured URL, not a success
                    preload_content=False,  # read below, at most REPLY_READ_BYTES
                )
                content, whole = _read_head(reply)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if attempt.expired:
                    raise TimedOut() from exc
                raise _transport_error(exc) from exc
            if attempt.expired:  # the cut-off socket read as an early end of the body
                raise TimedOut()
        return Reply(reply.status, reply.headers, content, whole)


def _connection_pool(url: str, size: int) -> urllib3.HTTPConnectionPool | urllib3.ProxyManager:
    """Kept-alive connections to the one target, one per delivery slot.

    urllib3 directly rather than requests: the target never changes, and a requests
    Session re-reads proxy settings and ``~/.netrc`` on every call, which cost about
    twice the CPU of the attempt itself (measured on the 2-core VM: ~440 against
    ~160 us per delivery). Proxy variables (``HTTPS_PROXY``, ``NO_PROXY`` ...) are
    honoured as requests did, read once here.
    """
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        manager = urllib3.ProxyManager(proxy, num_pools=1, maxsize=size)
        track_connections(manager)
        return manager
    pool_class = POOL_CLASSES[parts.scheme]
    return pool_class(parts.hostname or "", parts.port, maxsize=size)


def _read_head(reply: urllib3.BaseHTTPResponse) -> tuple[bytes, bool]:
    """At most REPLY_READ_BYTES of the body, and whether that was all of it. A longer
    body's connection is closed rather than drained (or kept)."""
    content = reply.read(REPLY_READ_BYTES + 1, decode_content=True)
    if len(content) <= REPLY_READ_BYTES:
        reply.release_conn()
        return content, True
    reply.close()  # the unread rest goes with the connection...
    reply.release_conn()  # ...whose pool slot is free again (a closed one reconnects)
    return content[:REPLY_READ_BYTES], False


def _request_target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path or '/'}{'?' + parts.query if parts.query else ''}"


_CONNECTION_FAILED = (
    urllib3.exceptions.NewConnectionError,  # refused, unresolvable (a ConnectTimeoutError!)
    urllib3.exceptions.ProtocolError,  # reset or closed mid-request
    urllib3.exceptions.SSLError,
    urllib3.exceptions.ProxyError,
)


def _transport_error(exc: Exception) -> TransportError:
    if isinstance(exc, _CONNECTION_FAILED):
        return ConnectionFailed()
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return TimedOut()
    if isinstance(exc, OSError):  # raised by the socket itself while reading the body
        return ConnectionFailed()
    return TransportError(type(exc).__name__)

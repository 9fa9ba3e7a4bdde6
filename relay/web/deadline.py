"""A deadline on reading a request body, so slow clients cannot hold ingest's slots.

gunicorn's gevent workers wait for a body as long as the client likes: full headers
then a trickle (or a lying ``Content-Length``) held a connection for over five minutes,
and a few hundred such sockets used up every connection slot, so Clerk's webhooks
timed out. Clerk sends its small bodies at once; any body still incomplete
:data:`BODY_DEADLINE_S` after the request reached the app is answered 408 and its
connection closed.

Under gevent (the default worker) the deadline is exact: a ``gevent.Timeout`` covers
every read. Under threaded or sync workers a real socket cannot be interrupted, so each
read gets the time left as its socket timeout; a client then gets at most a few
deadlines (gunicorn's ``timeout`` still ends a stuck sync worker).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from relay.errors import RequestTimeout

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Seconds a request has to deliver its whole body, counted from when its headers were
#: read. Clerk's bodies (a few KiB, at most RELAY_MAX_BODY) arrive in milliseconds.
BODY_DEADLINE_S = 10.0


class BodyDeadline:
    """WSGI middleware: ``wsgi.input`` reads end with 408 at the deadline."""

    def __init__(self, app: WSGIApplication, deadline_s: float = BODY_DEADLINE_S) -> None:
        self.app = app
        self.deadline_s = deadline_s

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ.get("wsgi.input")
        if stream is not None:
            environ["wsgi.input"] = _DeadlineInput(
                stream, self.deadline_s, environ.get("gunicorn.socket")
            )
        return self.app(environ, start_response)


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("socket"))


class _DeadlineInput:
    """A ``wsgi.input`` whose reads raise :class:`RequestTimeout` past the deadline."""

    def __init__(self, stream: Any, deadline_s: float, sock: socket.socket | None) -> None:
        self._stream = stream
        self._deadline_s = deadline_s
        self._deadline = time.monotonic() + deadline_s
        self._sock = sock
        self._gevent = _gevent_patched()

    def _call(self, method: str, *args: Any) -> Any:
        left = self._deadline - time.monotonic()
        if left <= 0:
            self._give_up()
        if self._gevent:
            import gevent

            try:
                with gevent.Timeout(left):
                    return getattr(self._stream, method)(*args)
            except gevent.Timeout:
                self._give_up()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.settimeout(left)
        try:
            return getattr(self._stream, method)(*args)
        except TimeoutError:
            self._give_up()

    def _give_up(self) -> None:
        # The server would otherwise read the rest of the body before its next request on
        # this connection (waiting on the same slow client): end the reading side so it
        # sees the end at once and closes after sending our answer.
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)
        raise RequestTimeout(f"the request body did not arrive within {self._deadline_s:g}s")

    def read(self, size: int | None = -1) -> bytes:
        return bytes(self._call("read", size))

    def readline(self, size: int | None = -1) -> bytes:
        return bytes(self._call("readline", size))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return list(self._call("readlines", hint))

    def __iter__(self) -> _DeadlineInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

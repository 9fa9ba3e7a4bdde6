"""What every part of the web app shares: the per-process :class:`Runtime`, the
request id and the canonical per-request log line, the wall clock in milliseconds.

The app factory (:mod:`relay.web.app`) builds the app from the blueprints; the blueprints
and the WSGI ingest endpoint import only this module, never the factory.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Mapping

import structlog
from flask import current_app

from relay.settings import Settings
from relay.store import Store, open_store

log = structlog.get_logger("relay.web")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Runtime:
    """Per-process state shared by the blueprints: settings and the lazily opened store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    store = open_store(self.settings.database_url)
                    store.migrate()
                    self._store = store
        return self._store

    def close(self) -> None:
        """Close the store if it was opened (a gunicorn worker on its way out)."""
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()


def runtime() -> Runtime:
    """The :class:`Runtime` of the current app."""
    rt: Runtime = current_app.extensions["relay"]
    return rt


def begin_request(request_id: str | None) -> str:
    """The request's id (the caller's ``X-Request-Id`` if sane, else a new one), bound
    into the logging context of everything this request logs."""
    # 32 random hex digits, like uuid4().hex without building a UUID (~1.2 us a request).
    rid = request_id if request_id and _REQUEST_ID.match(request_id) else secrets.token_hex(16)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    return rid


def log_request(
    method: str, path: str, status: int, started: float, fields: Mapping[str, object]
) -> None:
    """The one canonical line per request (``started`` from ``time.perf_counter()``)."""
    duration_ms = (time.perf_counter() - started) * 1000
    log.info(
        "request_handled",
        method=method,
        path=path,
        status=status,
        duration_ms=round(duration_ms, 2),
        **fields,
    )


#: What a client sees of a bug: never the trace, which goes to the log.
UNEXPECTED = {"error": "internal_error", "detail": "unexpected error; see the relay log"}


def now_ms() -> int:
    """The wall clock in epoch milliseconds (request handlers' "now")."""
    return int(time.time() * 1000)

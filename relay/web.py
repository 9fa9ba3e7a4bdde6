"""The Flask application: blueprints, one JSON error handler, per-request log line.

Built by :func:`relay.create_app`. Nothing here opens a connection: the store is
opened (and migrated) lazily by the first request in each process, because gunicorn
forks workers after loading the app.

The webhook endpoint itself is a plain WSGI app in front of Flask
(:class:`relay.ingest.IngestEndpoint`); it shares the request id and the canonical
log line with Flask's routes through :func:`begin_request` and :func:`log_request`.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Mapping

import structlog
from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from relay.errors import HTTPError
from relay.logs import configure_logging
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


def build_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    settings.require_ingest()
    configure_logging(settings.log_level, settings.log_format)

    app = Flask("relay")
    if settings.trusted_proxies:
        # Behind Fly's proxy every request comes from the proxy's address; trust exactly
        # as many X-Forwarded-* hops as configured, never more (they are spoofable).
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["relay"] = Runtime(settings)

    from relay.health import bp as health_bp
    from relay.ingest import IngestEndpoint
    from relay.request_deadline import BodyDeadline

    app.register_blueprint(health_bp)
    if settings.admin_token:
        from relay.admin import register_admin

        register_admin(app, settings)

    app.register_error_handler(HTTPError, _render_error)
    app.register_error_handler(HTTPException, _render_http_exception)
    app.register_error_handler(Exception, _render_unexpected)
    app.before_request(_start_request)
    app.after_request(_log_request)
    # Outermost, so Clerk's deliveries skip the rest of the stack (see relay.ingest).
    app.wsgi_app = IngestEndpoint(app.wsgi_app, app.extensions["relay"])  # type: ignore[method-assign]
    # Around everything: no request may wait for its body forever (relay.request_deadline).
    app.wsgi_app = BodyDeadline(app.wsgi_app)  # type: ignore[method-assign]
    return app


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


def _start_request() -> None:
    g.started = time.perf_counter()
    g.request_id = begin_request(request.headers.get("X-Request-Id"))


def _log_request(response: Response) -> Response:
    if request.path in ("/healthz", "/metrics"):
        return response  # probes every few seconds would drown the useful lines
    response.headers["X-Request-Id"] = g.get("request_id", "")
    started = g.get("started", time.perf_counter())
    log_request(
        request.method, request.path, response.status_code, started, g.get("log_fields", {})
    )
    return response


def _render_error(exc: HTTPError) -> tuple[Response, int]:
    g.log_fields = {**g.get("log_fields", {}), "error": exc.code}
    return jsonify(exc.to_dict()), exc.status_code


def _render_http_exception(exc: HTTPException) -> tuple[Response, int]:
    code = exc.code or 500
    name = (exc.name or "error").lower().replace(" ", "_")
    detail = {
        404: f"no route for {request.method} {request.path}",
        405: f"{request.method} is not allowed on {request.path}",
        413: "request body is larger than RELAY_MAX_BODY",
    }.get(code, exc.description or name)
    response = jsonify({"error": name, "detail": detail})
    if code == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response, code


#: What a client sees of a bug: never the trace, which goes to the log.
UNEXPECTED = {"error": "internal_error", "detail": "unexpected error; see the relay log"}


def _render_unexpected(exc: Exception) -> tuple[Response, int]:
    log.exception("request_crashed")
    return jsonify(UNEXPECTED), 500

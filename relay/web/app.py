"""The Flask application: blueprints, one JSON error handler, per-request log line.

Built by :func:`relay.create_app`. Nothing here opens a connection: the store is
opened (and migrated) lazily by the first request in each process, because gunicorn
forks workers after loading the app.

The webhook endpoint itself is a plain WSGI app in front of Flask
(:class:`relay.web.ingest.IngestEndpoint`); it shares the request id and the canonical
log line with Flask's routes through :mod:`relay.web.context`, which every blueprint
imports instead of this factory (so nothing imports back into it).
"""

from __future__ import annotations

import time

import structlog
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from relay.errors import HTTPError
from relay.logs import configure_logging
from relay.settings import Settings
from relay.web import auth
from relay.web.admin import bp as admin_bp
from relay.web.console import bp as console_bp
from relay.web.context import UNEXPECTED, Runtime, begin_request, log_request
from relay.web.deadline import BodyDeadline
from relay.web.health import bp as health_bp
from relay.web.ingest import IngestEndpoint

log = structlog.get_logger("relay.web")


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

    app.register_blueprint(health_bp)
    if settings.admin_token:
        auth.install(app, settings.admin_token)
        app.register_blueprint(admin_bp)
        app.register_blueprint(console_bp)

    app.register_error_handler(HTTPError, _render_error)
    app.register_error_handler(HTTPException, _render_http_exception)
    app.register_error_handler(Exception, _render_unexpected)
    app.before_request(_start_request)
    app.after_request(_log_request)
    # Outermost, so Clerk's deliveries skip the rest of the stack (see relay.web.ingest).
    app.wsgi_app = IngestEndpoint(app.wsgi_app, app.extensions["relay"])  # type: ignore[method-assign]
    # Around everything: no request may wait for its body forever (relay.web.deadline).
    app.wsgi_app = BodyDeadline(app.wsgi_app)  # type: ignore[method-assign]
    return app


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


def _render_unexpected(exc: Exception) -> tuple[Response, int]:
    log.exception("request_crashed")
    return jsonify(UNEXPECTED), 500

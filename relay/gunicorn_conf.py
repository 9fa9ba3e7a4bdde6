"""Gunicorn settings for the relay's ingest web server.

``relay serve`` loads this module with ``-c python:relay.gunicorn_conf``; the top-level
``gunicorn.conf.py`` re-exports it for a plain ``gunicorn app:app``. Every value comes
from ``relay/settings.py``: the relay's own settings (``PORT``, ``LOG_LEVEL``,
``LOG_FORMAT``) from ``Settings.from_env()``, so gunicorn parses and validates them
exactly as the app does, ``.env`` included; the process-manager knobs that are not relay
configuration (``WEB_CONCURRENCY``, ``GUNICORN_THREADS``, ``GUNICORN_ACCESS_LOG``) from
``ServerSettings.from_env()``, the process environment only. ``GUNICORN_CMD_ARGS``
overrides any of this without a rebuild. The log set-up is ``relay/logs.py``'s.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import structlog
from gunicorn import glogging
from gunicorn import util as gunicorn_util

from relay.logs import gunicorn_logconfig
from relay.settings import ServerSettings, Settings

# Read when gunicorn loads this file: gunicorn takes its configuration from the module's
# globals below (bind, workers, logconfig_dict, ...), so they must exist at import time.
_settings = Settings.from_env()
_server = ServerSettings.from_env()

# --- sockets and workers ---------------------------------------------------------------
# All interfaces: in a container or a Fly Machine the proxy connects from outside.
bind = f"0.0.0.0:{_settings.port}"
# gevent workers: a request spends much of its life waiting for the group commit, and
# a gevent worker serves other requests meanwhile, so one commit takes in more events
# (measured on the 2-core VM with bench/ingest.py: `relay serve` 2,590-2,985 req/s with
# gevent against 1,725-1,927 with sync workers; hello-world Flask gains less, 6,150-6,300
# against 5,100-5,200). Sync workers had to be added to get more requests in flight, and
# every one of them wakes for every connection: 8 put delivery p50 at 38-84 ms at 500
# req/s. One gevent worker per CPU (at least two, so one blocked worker never stops
# ingest): 3 interleaved rounds on 2 CPUs gave `relay serve` 5,138-5,706 req/s with 2
# workers against 4,497-5,344 with 4 (hello-world 9,947-10,414 against 9,544-9,926).
# GUNICORN_CMD_ARGS="-k sync" (or GUNICORN_THREADS=N for gthread) still works; the store
# is used the same way by all three (SQLite calls block, but only for one commit).
workers = (
    max(2, len(os.sched_getaffinity(0)))
    if _server.web_concurrency is None
    else _server.web_concurrency
)
threads = _server.gunicorn_threads
worker_class = "gthread" if threads > 1 else "gevent"
# Requests one gevent worker serves at once; more wait in the listen backlog. Clerk
# sends a few at a time, but slow or stalled clients hold slots until the body deadline
# (relay.web.deadline, 10 s): 1,000 per worker (gunicorn's default; a waiting
# greenlet costs a few KiB) keeps several hundred of them from starving ingest.
worker_connections = 1000
# Ingest is a signature check plus one commit: a request still running after 30 s is stuck.
timeout = 30
# Above the 10 s delivery timeout, so a SIGTERM never cuts a request that is committing
# an event; fly.toml's kill_timeout (30 s) leaves the whole process group that long.
graceful_timeout = 25
# Fly's proxy reuses upstream connections; keep them a little longer than the default 2 s.
keepalive = 5
# Recycle workers now and then so a slow leak cannot grow forever; jitter keeps the
# workers from restarting together. Rarely: a gevent worker notices it is due only on
# its once-a-second tick and the master replaces it only after it exited, so every
# recycle takes a worker away for about a second (at 2,048 requests, `relay serve` fell
# from 4,000-4,200 to 2,940-2,990 req/s on the 2-core VM). 50,000 is days of Clerk
# traffic and a few seconds of a burst.
max_requests = 50_000
max_requests_jitter = 5_000
# Sync and gthread workers are forks of an app built once in the master, so a recycled
# worker starts in milliseconds instead of re-importing Flask, svix and friends
# (measured with sync workers recycled every 2,048 requests: ~10 % of ingest throughput
# and 400 ms stalls in its p99). Safe for them: the app factory opens no connection
# and starts no thread, and prometheus-client's multiprocess values notice the fork by
# pid. Not for gevent: a gevent worker patches the standard library after the fork,
# and a lock the app made before that is a real lock that blocks every greenlet of the
# worker (gunicorn's documentation discourages the pair; measured here: the first
# requests of a PostgreSQL-backed relay deadlocked on the store's lock). gevent workers
# load the app themselves, once per worker, which max_requests above keeps rare.
preload_app = worker_class != "gevent"
# The heartbeat file on a container's overlay filesystem can stall a worker; tmpfs cannot.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - tmpfs by design
# No gunicornc control socket (gunicorn >= 25): nothing uses it, and the app user has no
# home directory to put it in. Older gunicorns ignore the name.
control_socket_disable = True
# forwarded_allow_ips keeps gunicorn's default (127.0.0.1,::1): X-Forwarded-* from anyone
# else is ignored here. The app wraps itself in ProxyFix for Fly's single proxy hop; do not
# set "*" unless the port is reachable only through that proxy.

# --- logging: JSON lines through structlog -----------------------------------------------
loglevel = _settings.log_level
errorlog = "-"
# The app writes one canonical `request_handled` line per request (with its request_id);
# gunicorn's access line would repeat it. GUNICORN_ACCESS_LOG=1 adds it back, with the
# remote address and user agent, when debugging the path through the proxy. Its atoms are
# turned into fields by relay.logs.access_fields; this format is only the fallback text.
accesslog = "-" if _server.gunicorn_access_log else None
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


class Logger(glogging.Logger):  # type: ignore[misc] # gunicorn ships no types
    """gunicorn's logger, minus building the access line's atoms when nobody logs it.

    With a ``logconfig_dict`` gunicorn builds them for every request even though the
    ``gunicorn.access`` logger then drops the record (measured ~4 % of an ingest
    worker's time).
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


logger_class = Logger
logconfig_dict = gunicorn_logconfig(
    _settings.log_level, _settings.log_format, access_log=_server.gunicorn_access_log
)


# --- gunicorn's own error pages: JSON like every other error ----------------------------------
def json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error``, in the relay's error shape instead of HTML.

    gunicorn answers requests it cannot parse (a bad ``Content-Length`` is 400, an
    over-long request line 414, too many or too large headers 431) before the app sees
    them; the contract says every error is ``{"error", "detail"}`` JSON.
    """
    code = re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "bad_request"
    body = json.dumps({"error": code, "detail": str(mesg)[:300]}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn_util.write_nonblock(sock, head.encode("latin1") + body)


# Replaced where gunicorn's workers look it up (``util.write_error``): this module is
# loaded by the master before it forks them.
gunicorn_util.write_error = json_error


# --- hooks ---------------------------------------------------------------------------------
def post_worker_init(worker: Any) -> None:
    """Say when a worker has loaded the app and starts accepting connections.

    gunicorn's "Booting worker" line comes before the worker imports the app (a second
    or so for a gevent worker); until this line, the other workers take every
    connection, and a keep-alive client stays on the worker it reached first.
    """
    structlog.get_logger("gunicorn.error").info("worker_ready", pid=os.getpid())


def worker_exit(server: object, worker: Any) -> None:
    """Close the worker's store while gevent still runs: a PostgreSQL pool left to the
    interpreter's exit is collected after the hub is gone and prints a traceback (not
    JSON) to the log."""
    app = getattr(worker, "wsgi", None)
    runtime = getattr(app, "extensions", {}).get("relay")
    if runtime is not None:
        runtime.close()


def child_exit(server: object, worker: Any) -> None:
    """Forget a dead worker's metric files so /metrics stops summing its gauges."""
    # Not configuration: `relay serve` sets it for its children, and prometheus-client
    # reads it there too (relay/metrics.py).
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

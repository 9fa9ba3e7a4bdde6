"""``relay serve``: ingest (gunicorn) and delivery (one worker) as one container command.

A small supervisor, like a process manager in miniature: it migrates the store once,
starts gunicorn and ``relay worker`` as children, forwards SIGTERM/SIGINT to both and
waits for them to finish in-flight work. If either child dies on its own, the other
is stopped and ``serve`` exits non-zero so the platform restarts the whole unit
(a web server without a worker would accept events nobody delivers).

The worker delivers at the lowest CPU priority (``relay worker --low-priority``: its
delivery threads at nice 19, while its claims and outcome writes, which hold the
store's writer lock, keep normal priority). In a burst, answering Clerk comes first and
delivery catches up after; with spare CPU the priority changes nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from types import FrameType

import structlog

from relay import metrics
from relay.delivery.worker import REPEAT_SIGNAL_WINDOW_S
from relay.settings import Settings
from relay.store import open_store

log = structlog.get_logger("relay.serve")

#: gunicorn loads this module as its configuration (``-c python:...``).
GUNICORN_CONFIG = "python:relay.gunicorn_conf"


def serve(settings: Settings, *, web_only: bool = False) -> int:
    """Run until signalled; returns the process exit code."""
    settings.require_ingest()
    if not web_only:
        settings.require_delivery()
    store = open_store(settings.database_url)
    store.migrate()
    # SQLite: this process commits for the web workers (group commit, see committer.py).
    committer = store.group_committer()
    stop_committer = committer.start() if committer is not None else None

    env = dict(os.environ)
    owned_metrics_dir = None
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        # Counters from every child land here and /metrics sums them.
        owned_metrics_dir = tempfile.mkdtemp(prefix="relay-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = owned_metrics_dir
    env["PORT"] = str(settings.port)
    # RELAY_METRICS_PORT: this process serves every child's metrics there (the web app
    # still reads the variable, to stop serving /metrics on PORT; the worker must not
    # try to open the port itself).
    stop_metrics = None
    if settings.metrics_port:
        stop_metrics = metrics.serve_port(
            settings.metrics_port,
            store,
            env["PROMETHEUS_MULTIPROC_DIR"],
            backlog_warn_s=settings.backlog_warn_s,
        )
    worker_env = {k: v for k, v in env.items() if k != "RELAY_METRICS_PORT"}

    children = {
        "web": subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, "relay:create_app()"],
            env=env,
        ),
    }
    if not web_only:
        children["worker"] = subprocess.Popen(
            [sys.executable, "-m", "relay", "worker", "--low-priority"], env=worker_env
        )
    log.info(
        "serve_started",
        port=settings.port,
        metrics_port=settings.metrics_port,
        database=_display(settings),
        target=settings.target,
        **{f"{k}_pid": p.pid for k, p in children.items()},
    )

    stopping = threading.Event()
    first_signal_at: list[float] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            # A repeat within the window is the same stop (a process-group signal, or
            # systemd signalling the whole unit); a later one means "do not wait".
            if first_signal_at and time.monotonic() - first_signal_at[0] < REPEAT_SIGNAL_WINDOW_S:
                return
            for proc in children.values():
                proc.kill()
            return
        stopping.set()
        first_signal_at.append(time.monotonic())
        log.info("serve_stopping", signal=signal.Signals(signum).name)
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    def tend() -> None:
        """Restart the committer if its thread died (it must not; if it did, ingest
        commits directly meanwhile and /readyz says so)."""
        nonlocal stop_committer
        if committer is None or stop_committer is None or committer.alive():
            return
        log.error("committer_died")
        stop_committer = committer.start() or stop_committer

    code = _wait_any(children, stopping, tend)
    if not stopping.is_set():
        log.error("serve_child_exited", child=code[0], returncode=code[1])
        forward(signal.SIGTERM, None)
    results = {name: proc.wait() for name, proc in children.items()}
    if stop_committer is not None:
        stop_committer()
    if stop_metrics is not None:
        stop_metrics()
    store.close()
    if owned_metrics_dir:
        shutil.rmtree(owned_metrics_dir, ignore_errors=True)
    log.info("serve_stopped", **{f"{k}_returncode": v for k, v in results.items()})
    clean = stopping.is_set() and code[0] == "" and all(v == 0 for v in results.values())
    return 0 if clean else 1


def _wait_any(
    children: dict[str, subprocess.Popen[bytes]],
    stopping: threading.Event,
    tend: Callable[[], None] = lambda: None,
) -> tuple[str, int]:
    """Block until a signal arrives ("", 0) or a child exits (its name and code);
    ``tend`` runs on every look (it restarts the committer)."""
    while not stopping.is_set():
        for name, proc in children.items():
            if (rc := proc.poll()) is not None:
                return (name, rc) if not stopping.is_set() else ("", 0)
        tend()
        stopping.wait(0.2)
    return "", 0


def _display(settings: Settings) -> str:
    url = settings.database_url
    return url.split("@", 1)[-1] if "@" in url else url

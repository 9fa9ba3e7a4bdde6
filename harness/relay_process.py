"""``relay serve`` / ``relay worker`` as real subprocesses, for end-to-end tests.

Each process gets a free port, its own working directory (so no ``.env`` leaks in),
an environment built only from the dict a test passes, and its own process group
(``start_new_session``) so a test can ``kill -9`` serve, gunicorn and the worker at
once, the way a crashed machine would. Output goes to a log file the test can read.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import requests

from relay.store.sqlite import SQLiteStore

from .convex_standin import ConvexStandIn, Received
from .factories import SECRET, signed_headers

T = TypeVar("T")

#: Upper bound for a relay to boot (gunicorn + worker on a busy 2-core box).
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 40.0
_POLL_S = 0.05
_runs = itertools.count(1)


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(_POLL_S)


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def relay_env(workdir: Path, **values: str) -> dict[str, str]:
    """The baseline environment of a test relay: a SQLite file in ``workdir``, JSON logs."""
    return {
        "CLERK_WEBHOOK_SECRET": SECRET,
        "RELAY_DATABASE_URL": f"sqlite:///{workdir / 'relay.db'}",
        "RELAY_RETRY_SCHEDULE": "200ms,200ms,200ms",
        "RELAY_DELIVERY_TIMEOUT": "2s",
        "LOG_FORMAT": "json",
        **values,
    }


class RelayProcess:
    """One ``relay <command>`` subprocess; use as a context manager (always cleaned up)."""

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str],
        command: Sequence[str] = ("serve",),
    ) -> None:
        self.workdir = workdir
        self.command = tuple(command)
        self.port = int(env["PORT"]) if "PORT" in env else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        run = next(_runs)
        self.log_path = workdir / f"relay-{command[0]}-{run}.log"
        metrics_dir = workdir / f"metrics-{run}"
        metrics_dir.mkdir(parents=True)
        self.env = {
            # Only what the test chose, plus what a process needs to run at all.
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            # Several gunicorns at once must not fight over ~/.gunicorn/gunicorn.ctl.
            "GUNICORN_CMD_ARGS": "--no-control-socket",
            **env,
            "PORT": str(self.port),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._session = requests.Session()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> RelayProcess:
        """Start and wait until it serves (/healthz) or, for a bare worker, has started."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", *self.command],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ready = self._healthy if self.command[0] == "serve" else self._worker_started
        try:
            wait_until(lambda: self._exited() or ready(), START_TIMEOUT_S, "the relay to start")
        except AssertionError:
            self.kill9_group()
            raise AssertionError(f"relay did not start; log:\n{self.log()}") from None
        if self._exited():
            raise AssertionError(f"relay exited with {self.proc.returncode}; log:\n{self.log()}")
        return self

    @property
    def pid(self) -> int:
        """The ``relay`` process (its group holds every child)."""
        assert self.proc is not None
        return self.proc.pid

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def _healthy(self) -> bool:
        try:
            return self._session.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def _worker_started(self) -> bool:
        return "worker_started" in self.log()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (a platform's stop), then wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9_group()
            raise AssertionError(f"relay ignored SIGTERM for {timeout}s") from None

    def kill9_group(self) -> None:
        """SIGKILL every process of the group (serve, gunicorn master and workers, worker)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        # Orphaned children are reaped by init; wait until none can receive signals.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(_POLL_S)

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill9_group()
        self._session.close()

    # -- talking to it ----------------------------------------------------------------

    def log(self) -> str:
        """Everything the process group wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def post_event(
        self,
        envelope: Mapping[str, Any] | bytes,
        msg_id: str | None = None,
        *,
        secret: str = SECRET,
        at: datetime | None = None,
        path: str = "/webhooks/clerk",
    ) -> requests.Response:
        """POST a webhook signed as Clerk would sign it (bytes are sent as they are)."""
        body = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
        headers = signed_headers(body, secret=secret, msg_id=msg_id, at=at)
        return self.post(path, body, headers)

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> requests.Response:
        return self._session.post(f"{self.url}{path}", data=body, headers=dict(headers), timeout=10)

    def get(self, path: str) -> requests.Response:
        return self._session.get(f"{self.url}{path}", timeout=10)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``relay <args>`` with this relay's configuration (so it finds the same database)."""
        return subprocess.run(
            [sys.executable, "-m", "relay", *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def show(self, event_id: str) -> dict[str, Any]:
        """``relay show <id> --json``, parsed."""
        result = self.cli("show", event_id, "--json")
        assert result.returncode == 0, result.stderr
        value: dict[str, Any] = json.loads(result.stdout)
        return value

    def open_store(self) -> SQLiteStore:
        """The relay's SQLite file, opened in this process (the caller closes it)."""
        url = self.env["RELAY_DATABASE_URL"]
        return SQLiteStore.from_url(url)


class TrackingStandIn(ConvexStandIn):
    """The Convex stand-in, also recording what is in flight per Clerk object.

    ``entered`` lists svix-ids (or entity ids) as requests *arrive* (the base class
    records them only when answered), and ``max_in_flight`` shows whether two
    requests about one object were ever in flight together.
    """

    def __init__(self, secret: str) -> None:
        super().__init__(secret)
        self.entered: list[str] = []
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()

    def _handle(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        lowered = {k.lower(): v for k, v in headers.items()}
        key = _entity(body)
        with self.lock:
            self.entered.append(lowered.get("svix-id") or key)
            self.in_flight[key] += 1
            self.max_in_flight[key] = max(self.max_in_flight[key], self.in_flight[key])
        try:
            return super()._handle(path, headers, body)
        finally:
            with self.lock:
                self.in_flight[key] -= 1

    def down(self, status: int = 503) -> None:
        """Answer ``status`` to everything until :meth:`up`."""
        self.fail_next(100_000, status)

    def up(self) -> None:
        """Succeed again (drops every scripted reply and any hang)."""
        with self.lock:
            self.script.replies.clear()
            self.script.hang_s = 0.0

    def successes(self) -> list[Received]:
        """Requests answered 2xx, in the order they were answered."""
        with self.lock:
            return [r for r in self.received if 200 <= r.status < 300]

    def delivery_count(self, event_id: str) -> int:
        with self.lock:
            return self.delivered.count(event_id)


def _entity(body: bytes) -> str:
    try:
        value = json.loads(body)
    except ValueError:
        return "?"
    if not isinstance(value, dict):
        return "?"
    if "args" in value:  # function API: {"path", "args": {"data": {...}} | {"clerkUserId"}}
        args = value.get("args") or {}
        data = args.get("data") or {}
        return str(data.get("id") or args.get("clerkUserId") or "?")
    data = value.get("data") or {}
    return str(data.get("id") or "?") if isinstance(data, dict) else "?"

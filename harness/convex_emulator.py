"""A local Convex deployment for end-to-end tests: drives ``emulator/server.ts``.

``ConvexEmulator`` starts the Node emulator (convex-test underneath) on a free
loopback port; its ``url`` serves as both ``CONVEX_URL`` (``/api/mutation``) and
``CONVEX_SITE_URL`` (``/clerk-users-webhook``).

The fixtures ``convex_emulator`` (examples/convex) and ``official_convex_emulator``
(tests/convex_official) live here, not in conftest.py, to keep the emulator one
self-contained module: a test module imports ``convex_emulator_fixture`` /
``official_convex_emulator_fixture`` and takes the fixture by name. They need
``npm ci --prefix emulator``: without it they skip, except under ``CI`` where
they fail, so a broken CI setup cannot pass silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from . import factories

ROOT = Path(__file__).resolve().parents[1]
EMULATOR_DIR = ROOT / "emulator"
EXAMPLE_FUNCTIONS = ROOT / "examples" / "convex"
OFFICIAL_FUNCTIONS = ROOT / "tests" / "convex_official"

ADMIN_KEY = "test-admin-key"
#: The secret the emulated deployment verifies HTTP-action requests with
#: (Convex's CLERK_WEBHOOK_SECRET = the relay's RELAY_FORWARD_SECRET).
FORWARD_SECRET = factories.FORWARD_SECRET

START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 10.0
_READY = re.compile(r"^listening on (\d+)$", re.MULTILINE)


class EmulatorError(RuntimeError):
    """The emulator did not start, or a /_test/ control call failed."""


class ConvexEmulator:
    """One emulated Convex deployment serving the functions in ``functions_dir``."""

    def __init__(
        self,
        functions_dir: Path = EXAMPLE_FUNCTIONS,
        admin_key: str = ADMIN_KEY,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.functions_dir = Path(functions_dir)
        self.admin_key = admin_key
        self.env = dict(env or {})
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> ConvexEmulator:
        """Spawn node and wait for its ``listening on <port>`` line; sets ``url``."""
        fd, log_name = tempfile.mkstemp(prefix="convex-emulator-", suffix=".log")
        os.close(fd)
        self._log_path = Path(log_name)
        argv = [
            "node",
            "--import",
            "tsx",
            "server.ts",
            "--port",
            "0",
            "--functions",
            str(self.functions_dir.resolve()),
            "--admin-key",
            self.admin_key,
            "--exit-with-stdin",  # so a killed test run leaves no node behind
        ]
        for key, value in self.env.items():
            argv += ["--env", f"{key}={value}"]
        with self._log_path.open("wb") as log:
            # A minimal environment: Convex functions read process.env, and the
            # test runner's own CLERK_* or CONVEX_* variables must not leak in.
            self._process = subprocess.Popen(
                argv,
                cwd=EMULATOR_DIR,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    "PATH": os.environ.get("PATH", ""),
                    "HOME": os.environ.get("HOME", tempfile.gettempdir()),
                },
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            match = _READY.search(self.log())
            if match:
                self.url = f"http://127.0.0.1:{match.group(1)}"
                return self
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise EmulatorError(f"Convex emulator did not start:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """Terminate the node process (idempotent); the log file is kept for debugging."""
        if self._process is not None and self._process.poll() is None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> ConvexEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        """Everything the emulator printed so far (including console.log of functions)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    # -- Convex function API -----------------------------------------------------

    def call(
        self, kind: str, path: str, args: Mapping[str, Any], *, admin: bool = True
    ) -> requests.Response:
        """POST ``/api/<kind>`` like the relay does (admin auth unless ``admin=False``)."""
        headers = {"Authorization": f"Convex {self.admin_key}"} if admin else {}
        return requests.post(
            f"{self.url}/api/{kind}",
            json={"path": path, "args": dict(args), "format": "json"},
            headers=headers,
            timeout=REQUEST_TIMEOUT_S,
        )

    def mutation(self, path: str, args: Mapping[str, Any], *, admin: bool = True) -> Any:
        """The mutation's JSON reply (``{"status": ..., "value" | "errorMessage": ...}``)."""
        return self.call("mutation", path, args, admin=admin).json()

    # -- /_test/ control ---------------------------------------------------------

    def tables(self, name: str) -> list[dict[str, Any]]:
        """Every document of table ``name``."""
        return self._control("GET", f"/_test/tables/{name}")  # type: ignore[no-any-return]

    def insert(self, name: str, documents: list[dict[str, Any]]) -> None:
        """Insert documents into table ``name`` as they are (no function runs)."""
        self._control("POST", f"/_test/tables/{name}", documents)

    def reset(self) -> None:
        """Empty the database and clear faults and call counts (env stays)."""
        self._control("POST", "/_test/reset")

    def set_env(self, values: Mapping[str, str | None] | None = None, **more: str | None) -> None:
        """Set (or, with None, unset) deployment environment variables."""
        self._control("POST", "/_test/env", {**(values or {}), **more})

    def fail(self, function: str, message: str = "injected fault") -> None:
        """Make ``function`` (e.g. ``users:upsertFromClerk``) throw ``message`` until heal()."""
        self._control("POST", "/_test/faults", {"function": function, "message": message})

    def heal(self) -> None:
        """Clear every fault set with fail()."""
        self._control("DELETE", "/_test/faults")

    def calls(self) -> dict[str, int]:
        """How often each function's handler ran since the last reset."""
        return self._control("GET", "/_test/calls")  # type: ignore[no-any-return]

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        reply = requests.request(method, self.url + path, json=body, timeout=REQUEST_TIMEOUT_S)
        if reply.status_code != 200:
            raise EmulatorError(f"{method} {path}: {reply.status_code} {reply.text}")
        return reply.json()


def require_emulator() -> None:
    """Skip when the emulator's deps are not installed; fail instead under CI."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node is not on PATH")
    if not (EMULATOR_DIR / "node_modules").is_dir():
        missing.append("emulator/node_modules is missing (run `npm ci --prefix emulator`)")
    if not missing:
        return
    reason = "Convex emulator unavailable: " + "; ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


#: One running emulator per functions folder, shared by the whole test session
#: (starting node takes a second or two); each fixture use resets it.
_running: dict[Path, ConvexEmulator] = {}


def _shared_emulator(functions_dir: Path, config: pytest.Config) -> ConvexEmulator:
    emulator = _running.get(functions_dir)
    if emulator is None:
        require_emulator()
        emulator = ConvexEmulator(functions_dir, env={"CLERK_WEBHOOK_SECRET": FORWARD_SECRET})
        emulator.start()
        _running[functions_dir] = emulator
        config.add_cleanup(lambda: _running.pop(functions_dir).stop())
    emulator.reset()
    emulator.set_env(CLERK_WEBHOOK_SECRET=FORWARD_SECRET)
    return emulator


# `name=` so a test module can import the fixture object without the test's
# parameter shadowing the import (ruff F811).
@pytest.fixture(name="convex_emulator")
def convex_emulator_fixture(request: pytest.FixtureRequest) -> ConvexEmulator:
    """The emulator serving examples/convex, emptied for this test."""
    return _shared_emulator(EXAMPLE_FUNCTIONS, request.config)


@pytest.fixture(name="official_convex_emulator")
def official_convex_emulator_fixture(request: pytest.FixtureRequest) -> ConvexEmulator:
    """The emulator serving the reproduction of Convex's official template, emptied."""
    return _shared_emulator(OFFICIAL_FUNCTIONS, request.config)

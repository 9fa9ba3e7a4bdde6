"""Slow request bodies: a real ``relay serve`` keeps answering with hundreds stalled."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.factories import make_envelope
from harness.relay_process import RelayProcess, relay_env
from relay.web.deadline import BODY_DEADLINE_S

#: "Several hundred" stalled clients, as in the report (about 500 used up every slot of
#: the old configuration: two gevent workers x 256).
STALLED = 300

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def stalled_clients(port: int, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections that sent full headers, a lying Content-Length and one byte."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(
                b"POST /webhooks/clerk HTTP/1.1\r\nHost: relay\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            )
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _answer(sock: socket.socket, until: float) -> bytes:
    """Everything the server sends until it closes (or ``until``, a monotonic time)."""
    data = b""
    with contextlib.suppress(TimeoutError):
        while True:
            sock.settimeout(max(0.1, until - time.monotonic()))
            if not (chunk := sock.recv(65536)):
                break
            data += chunk
    return data


def test_ingest_answers_while_hundreds_of_clients_stall_and_they_get_408(tmp_path: Path) -> None:
    """With several hundred connections stuck mid-body, signed webhooks are still
    answered at once; each stalled request gets a JSON 408 at the body deadline and its
    connection is closed (it used to be held with no timeout at all)."""
    env = relay_env(tmp_path, CONVEX_SITE_URL="http://127.0.0.1:9")
    with (
        RelayProcess(tmp_path, env, ("serve", "--web-only")) as relay,
        stalled_clients(relay.port, STALLED) as stalled,
    ):
        for n in range(20):
            envelope = make_envelope("user.updated", entity_id=f"user_slow{n}")
            response = relay.post_event(envelope, f"msg_beside_stalled_{n}")
            assert response.json() == {"status": "accepted", "id": f"msg_beside_stalled_{n}"}
        until = time.monotonic() + BODY_DEADLINE_S * 3  # a bound for the test, not a check
        answers = [_answer(sock, until) for sock in stalled]
        log = relay.log()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
    body = answers[0].partition(b"\r\n\r\n")[2]
    assert json.loads(body)["error"] == "request_timeout"
    assert "Traceback" not in log

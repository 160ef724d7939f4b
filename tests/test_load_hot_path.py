"""The generator's per-request path: what each request costs the one core of a generator
process (issue 10: >= 4,000 open-model req/s per process). Each probe runs in a subprocess
patched for gevent exactly like a generator process (tests/fixtures/load/hot_path_probe.py)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.load.reference import start_static_haproxy
from experiments.procs import stop_group

PROBE = Path(__file__).resolve().parent / "fixtures" / "load" / "hot_path_probe.py"


class Listener:
    """A loopback TCP server that accepts connections, keeps them open, and closes them all
    on request: the server side of a keep-alive connection the client's pool holds idle."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close_all(self) -> None:
        for conn in self.accepted:
            conn.close()

    def close(self) -> None:
        self.close_all()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    try:
        yield server
    finally:
        server.close()


def test_an_idle_connection_is_checked_without_yielding_and_reused_past_fd_1024(
        listener: Listener) -> None:
    """geventhttpclient checked a pooled connection with gevent's select(): one trip through
    the event loop per request, and for a descriptor >= 1024 select() raised, the check read
    "dead", and the user opened a new connection for every request. Now: no yield, reused at
    any descriptor, and a connection the server closed is still replaced."""
    proc = subprocess.Popen([sys.executable, str(PROBE), "reuse", str(listener.port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        stage = json.loads(proc.stdout.readline())
        assert stage["fd"] >= 1024
        listener.close_all()
        proc.stdin.write("closed\n")
        proc.stdin.flush()
        result = json.loads(proc.stdout.readline())
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    checked = {k: result[k] for k in ("low_reused", "yielded", "reused", "replaced_after_close")}
    assert checked == {"low_reused": True, "yielded": False, "reused": True,
                       "replaced_after_close": True}
    assert len(listener.accepted) >= 3  # low pool, high pool, the high pool's replacement


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")
def test_an_open_model_request_resumes_its_user_twice(tmp_path: Path) -> None:
    """Per request a user greenlet is resumed at most twice: by its arrival (the gate) and by
    its response (the socket; not at all when the answer is already there). Before, the
    connection check and Locust's zero sleep after wait_time() each switched out to the event
    loop and back as well: at least three per request (measured 3.5), and the event loop was
    half of the process's CPU."""
    haproxy, url = start_static_haproxy(tmp_path)
    try:
        out = subprocess.run([sys.executable, str(PROBE), "switches", url, "200"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    finally:
        stop_group(haproxy, grace_s=0)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["errors"] == 0 and result["dropped"] == 0
    assert result["requests"] == pytest.approx(400, rel=0.05)
    assert result["resumes"] / result["requests"] <= 2.1, result

"""A reference server for measuring the load driver itself: HAProxy answering `200 ok` from
`http-request return` on loopback, the fastest endpoint we can offer load to. The driver's
benchmark and its tests both start it, so they measure against the same thing."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from experiments.procs import free_port, stop_group


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_static_haproxy(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the reference endpoint on a free loopback port; returns (process, base URL)."""
    port = free_port()
    config = workdir / f"haproxy-{port}.cfg"
    config.write_text(
        "global\n    maxconn 4000\n"
        "defaults\n    mode http\n    timeout client 10s\n    timeout connect 5s\n"
        "    timeout server 10s\n"
        f"frontend static\n    bind 127.0.0.1:{port}\n"
        "    http-request return status 200 content-type text/plain string ok\n"
    )
    proc = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port)
    except BaseException:
        stop_group(proc, grace_s=0)
        raise
    return proc, f"http://127.0.0.1:{port}"

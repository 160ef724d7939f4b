"""Child processes on loopback: a free port, and stopping a whole process group for sure.

One home for what the load driver, the local backend, the shop's dev server, the benchmarks
and the tests all need: every child is started in its own session (`start_new_session=True`)
so that stopping its group also stops what it forked (Gunicorn workers, Locust workers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 1.0,
               reap_s: float = 5.0) -> None:
    """SIGTERM the process group, wait up to `grace_s`, then SIGKILL the group (always: a
    master that exited may have left workers behind) and reap the leader.

    `grace_s=0` skips SIGTERM. Safe to call on a process that is already gone.
    """
    if grace_s > 0 and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(reap_s)

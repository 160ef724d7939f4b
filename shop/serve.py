"""Start a real Gunicorn on a free loopback port and stop it for sure: used by the shop's tests
and benchmark (the experiment backends have their own supervisor; this is the small version)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.procs import stop_group

PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """Gunicorn's workers are the master's direct children."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                             text=True, check=False).stdout
        return [int(p) for p in out.split()]


def wait_healthy(url: str, timeout_s: float = 20.0, process: subprocess.Popen[bytes] | None = None,
                 ) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")


@contextlib.contextmanager
def gunicorn(args: Sequence[str], port: int, log_path: Path, *, cwd: Path = PROJECT_DIR,
             env: Mapping[str, str] | None = None, health_path: str = "/healthz",
             prefix: Sequence[str] = ()) -> Iterator[Server]:
    """Run `gunicorn <args>` (which bind 127.0.0.1:<port> and name the app, e.g. from
    `Variant.gunicorn_args(bind)`), wait for the health path, kill its group on exit.

    `prefix` wraps the command (e.g. `taskset -c 0`). The master gets its own process group so
    the workers die with it even if the master is wedged.
    """
    bind = f"127.0.0.1:{port}"
    cmd = [*prefix, sys.executable, "-m", "gunicorn", *args]
    log = open(log_path, "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(f"http://{bind}{health_path}", process=proc)
        yield Server(f"http://{bind}", proc, log_path)
    finally:
        stop_group(proc, grace_s=10)  # SIGKILLs workers a dead master left behind, too
        log.close()

"""A supervised Gunicorn master: systemd's `Restart=always` for one emulated instance.

The master joins the instance's cgroup *before* exec through a two-line /bin/sh wrapper
(`echo $$ > cgroup.procs; exec ...`), so not one allocation of Gunicorn escapes the limits;
a `preexec_fn` would do the same but is unsafe in a process that runs sampler threads.
Each master gets its own session (process group): Ctrl-C in the terminal reaches only the
runner, which then tears down in order, and teardown kills the whole group.
"""

from __future__ import annotations

import contextlib
import math
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from experiments.model import LogLine
from experiments.procs import stop_group

# systemd's defaults for a Restart=always service.
RESTART_SEC = 0.1
START_LIMIT_INTERVAL_S = 10.0
START_LIMIT_BURST = 5

GUNICORN_GRACEFUL_TIMEOUT_S = 30
"""Gunicorn's default `graceful_timeout` (what a systemd-started Gunicorn on EC2 gets)."""


def dilated_seconds(seconds: float, dilation: float) -> int:
    """A server-side timeout stretched by the emulation's dilation, in whole seconds (Gunicorn
    takes integers), never shorter than the undilated one."""
    return max(int(seconds), math.ceil(seconds * dilation - 1e-9))


def dilate_gunicorn_args(args: list[str], dilation: float) -> list[str]:
    """Gunicorn's flags with `--timeout` and `--graceful-timeout` stretched by `dilation`.

    At cpu_scale s a request needs 1/s times the wall time it needs on the AWS box; an
    undilated 30 s worker timeout would kill workers that the real instance lets finish
    (scale-up dying by WORKER TIMEOUT on a request a t3.medium serves in 10 s). The graceful
    timeout (default 30 s) is added when absent, so both stay in the same emulated units.
    """
    out = list(args)
    seen_graceful = False
    for i, arg in enumerate(out[:-1]):
        if arg in ("--timeout", "-t", "--graceful-timeout"):
            out[i + 1] = str(dilated_seconds(float(out[i + 1]), dilation))
            seen_graceful |= arg == "--graceful-timeout"
    if not seen_graceful and dilation != 1.0:
        # Flags go before the trailing WSGI app argument.
        out[-1:-1] = ["--graceful-timeout",
                      str(dilated_seconds(GUNICORN_GRACEFUL_TIMEOUT_S, dilation))]
    return out


_WRAPPER = ('for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 97; shift; done; '
            'shift; exec "$@"')


def wrap_in_cgroup(procs_files: list[Path], argv: list[str],
                   cpus: list[int] | None = None) -> list[str]:
    """argv that first moves itself into each cgroup, then execs `argv` (same pid) — pinned
    with util-linux's `taskset` to `cpus` when given, so every worker Gunicorn forks inherits
    the pinning from its first instruction."""
    pinned = ["taskset", "--cpu-list", ",".join(map(str, cpus))] if cpus else []
    return ["/bin/sh", "-c", _WRAPPER, "sh", *map(str, procs_files), "--", *pinned, *argv]


def pump_lines(stream, source: str, sink: Callable[[LogLine], None]) -> threading.Thread:
    """Read a child's output line by line, stamping each with the time it arrived."""

    def run() -> None:
        with contextlib.suppress(ValueError, OSError):
            for raw in iter(stream.readline, b""):
                sink(LogLine(time.time(), source, raw.decode(errors="replace").rstrip("\n")))
        with contextlib.suppress(OSError):
            stream.close()

    thread = threading.Thread(target=run, name=f"log-{source}", daemon=True)
    thread.start()
    return thread


class Supervisor:
    """Keeps one command running; logs every exit and restart like systemd would."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str],
                 procs_files: list[Path], sink: Callable[[LogLine], None],
                 on_spawn: Callable[[int], None] = lambda pid: None,
                 cpus: list[int] | None = None) -> None:
        self.name = name
        self.cpus = cpus
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.procs_files = procs_files
        self.sink = sink
        self.on_spawn = on_spawn
        self.restarts = 0
        self.failed = False
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._readers: list[threading.Thread] = []
        self._starts: list[float] = []

    def _log(self, text: str) -> None:
        self.sink(LogLine(time.time(), f"supervisor:{self.name}", text))

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._stopping.is_set():
                return None
            proc = subprocess.Popen(
                wrap_in_cgroup(self.procs_files, self.argv, self.cpus), cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True)
            self.proc = proc
        self.on_spawn(proc.pid)
        self._starts.append(time.monotonic())
        self._readers.append(pump_lines(proc.stdout, f"gunicorn:{self.name}", self.sink))
        return proc

    def start(self) -> None:
        """Start the first master now (so errors surface here), then watch it in a thread."""
        proc = self._spawn()
        self._log(f"started gunicorn master pid {proc.pid if proc else '-'}")
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            proc = self.proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.is_set():
                return
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            recent = [t for t in self._starts if time.monotonic() - t < START_LIMIT_INTERVAL_S]
            if len(recent) >= START_LIMIT_BURST:
                self.failed = True
                self._log(f"gunicorn master pid {proc.pid} exited ({how}); start request "
                          f"repeated too quickly ({START_LIMIT_BURST} in "
                          f"{START_LIMIT_INTERVAL_S:.0f} s), giving up (Result: start-limit-hit)")
                return
            self._log(f"gunicorn master pid {proc.pid} exited ({how}); restarting "
                      "(Restart=always)")
            time.sleep(RESTART_SEC)
            new = self._spawn()
            if new is None:
                return
            self.restarts += 1
            self._log(f"restarted gunicorn master pid {new.pid} (restart #{self.restarts})")

    def stop(self, grace_s: float = 1.5) -> None:
        """Graceful stop (SIGTERM: idle workers exit at once), then SIGKILL the group."""
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is not None:
            stop_group(proc, grace_s, reap_s=2)
        if self._thread is not None:
            self._thread.join(2)
        for reader in self._readers:
            reader.join(1)

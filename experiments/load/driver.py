"""Parent side of the load driver: starts the Locust child process(es) and talks JSON lines.

This module never imports locust or gevent: `import locust` monkey-patches the whole process,
which breaks boto3, grpc and the Pulumi Automation API in the runner. The child
(`python -m experiments.load.child`) does the load; this side only sends commands, reads
results and guarantees that every process it started is gone when the session ends — on
success, on an exception inside the `with` block and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from experiments.errors import UserError
from experiments.load.pacing import whole_decks_hold_s
from experiments.load.survival import with_worker_loss
from experiments.model import LogLine, Observations, StepResult, SurvivalResult
from experiments.procs import free_port, stop_group

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 90.0
"""Importing locust and connecting N workers on a busy 2-core box takes a few seconds; be kind."""
REPLY_MARGIN_S = 60.0
QUIT_GRACE_S = 5.0


@dataclass
class LoadSettings:
    locustfile: Path
    """One User class (FastHttpUser), each task exactly one request; its wait_time is replaced."""
    load_workers: int = 0
    """0 = one local runner in one child; N = Locust distributed: a master plus N workers."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the child(ren), e.g. SHOP_ALL_WEIGHT."""
    dilation: float = 1.0
    """Time dilation of the emulated box (1/cpu_scale locally, 1 on AWS): every process that
    runs users (the local child, or each distributed worker) stretches the User class's client
    timeouts by it, so that a request is not given up on earlier, in the box's time, than on
    AWS."""


def check_url(url: str) -> str:
    """The target must be an http(s) URL with a host; returns the host. Which hosts are allowed
    is the backend's policy (local: loopback only; AWS: the stack's own `url` output)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        host, parts = "", None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise UserError(f"load target {url!r} is not an http(s) URL such as http://127.0.0.1:8000")
    return host


def check_loopback(url: str) -> None:
    """Refuse any target that is not on 127.0.0.0/8 or localhost (the local backend's policy)."""
    host = check_url(url)
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or address not in ipaddress.ip_network("127.0.0.0/8"):
        raise UserError(
            f"load target {url!r} is not on loopback; the load driver only sends traffic to "
            "127.0.0.0/8 or localhost"
        )


def host_cpu_times(stat: Path = Path("/proc/stat")) -> tuple[float, float] | None:
    """(busy, total) jiffies of all host CPUs from /proc/stat's first line; None off Linux.
    Busy is everything but idle and iowait (steal counts as busy: the host did not get it)."""
    try:
        fields = [float(x) for x in stat.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


def host_busy_share(start: tuple[float, float] | None, end: tuple[float, float] | None
                    ) -> float | None:
    """Share of the host's CPU time that was busy between two `host_cpu_times` readings."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return round(max(0.0, min(1.0, (end[0] - start[0]) / (end[1] - start[1]))), 4)


class _Proc:
    """One child process in its own session (so Ctrl-C hits us, and we kill its whole group)."""

    def __init__(self, args: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.stderr: IO[bytes] = tempfile.TemporaryFile(prefix=f"scalelab-{name}-")  # noqa: SIM115 - lives as long as the child
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "experiments.load.child", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"scalelab-{name}-reader", daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self.lines.put(raw.decode("utf-8", "replace"))
        self.lines.put(None)

    def stderr_tail(self, lines: int = 5) -> str:
        try:
            self.stderr.seek(0)
            text = self.stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())

    def send(self, message: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(message) + "\n").encode())
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.popen.stdin is not None:
                self.popen.stdin.close()

    def kill(self) -> None:
        """SIGKILL the child's whole process group (it is its own session leader)."""
        stop_group(self.popen, grace_s=0)
        with contextlib.suppress(OSError, ValueError):
            if self.popen.stdout is not None:
                self.popen.stdout.close()
        self.stderr.close()


class LoadSession:
    """One load generator (a child, or a master plus workers) reused for all steps of a variant.

    Use as a context manager. `step()` runs one open-model step, `offer()` open-model load
    with per-second ticks, `survival()` the closed-loop overload; all block until the child
    answers. The generator's user pool lives as long as the session.
    """

    def __init__(self, url: str, settings: LoadSettings) -> None:
        check_url(url)  # the backend chose the target (local: loopback only, see check_loopback)
        if settings.load_workers < 0:
            raise UserError(
                f"--load-workers {settings.load_workers} is negative; use 0 (one local "
                "generator) or a positive number of worker processes"
            )
        if not (math.isfinite(settings.dilation) and settings.dilation >= 1):
            raise UserError(f"time dilation {settings.dilation} is not a number >= 1 (it is "
                            "1/cpu_scale, and cpu_scale is at most 1)")
        self.url = url.rstrip("/")  # the locustfile's paths start with "/"
        self.settings = settings
        self._master: _Proc | None = None
        self._workers: list[_Proc] = []
        self.deck_cards = 0
        """Cards in each generator process's deck of tasks (0: one task, no deck)."""

    # ---- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> LoadSession:
        locustfile = Path(self.settings.locustfile).expanduser().resolve()
        env = {**os.environ, **self.settings.env}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        common = ["--locustfile", str(locustfile), "--url", self.url,
                  "--dilation", repr(float(self.settings.dilation))]
        try:
            if self.settings.load_workers:
                port = free_port()
                dist = ["--workers", str(self.settings.load_workers), "--master-port", str(port)]
                self._master = _Proc(["--role", "master", *common, *dist], env, "load-master")
                for i in range(self.settings.load_workers):
                    self._workers.append(
                        _Proc(["--role", "worker", *common, "--master-port", str(port)], env,
                              f"load-worker-{i}")
                    )
            else:
                self._master = _Proc(["--role", "local", *common], env, "load")
            ready = self._expect("ready", STARTUP_TIMEOUT_S)
            self.deck_cards = int(ready.get("deck") or 0)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Ask the child to quit, then kill whatever is left (master and every worker)."""
        procs = [p for p in (self._master, *self._workers) if p is not None]
        if self._master is not None and self._master.popen.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self._master.send({"cmd": "quit"})
        for proc in procs:
            proc.close_stdin()
        deadline = time.monotonic() + QUIT_GRACE_S
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in procs:
            proc.kill()
        self._master = None
        self._workers = []

    @property
    def pids(self) -> list[int]:
        """Process ids of the generator processes (for tests and the generator self-check)."""
        return [p.popen.pid for p in (self._master, *self._workers) if p is not None]

    @property
    def deck_arrivals(self) -> int:
        """Arrivals that deal every process one whole deck, i.e. the locustfile's mix exactly
        once (0: a one-task locustfile, any arrival is the mix)."""
        return self.deck_cards * max(1, self.settings.load_workers)

    def hold_s(self, offered_rps: float, hold_s: float) -> float:
        """The hold a step asked for `hold_s` at `offered_rps` lasts: the nearest whole number
        of decks (pacing.whole_decks_hold_s), so it holds the locustfile's mix exactly."""
        if not self.deck_cards:
            return hold_s
        per_process = offered_rps / max(1, self.settings.load_workers)
        return whole_decks_hold_s(hold_s, per_process, self.deck_cards)

    # ---- protocol --------------------------------------------------------------------

    def _expect(
        self,
        kind: str,
        timeout_s: float,
        on_tick: Callable[[dict[str, Any]], None] | None = None,
        on_mark: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Read lines until one of `kind` arrives; raise on an error line, EOF or timeout."""
        master = self._require()
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"load generator did not answer within {timeout_s:.0f} s "
                    f"(stderr: {master.stderr_tail()})"
                )
            dead = [w for w in self._workers if w.popen.poll() is not None]
            if dead:
                raise RuntimeError(
                    f"load worker exited with code {dead[0].popen.returncode} "
                    f"(stderr: {dead[0].stderr_tail()})"
                )
            try:
                line = master.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                master.popen.wait(timeout=5)
                raise RuntimeError(
                    f"load generator exited with code {master.popen.returncode} "
                    f"(stderr: {master.stderr_tail()})"
                )
            message = json.loads(line)
            if message.get("type") == "error":
                text = str(message.get("message", "unknown error"))
                if message.get("kind") == "usage":
                    raise UserError(text)
                raise RuntimeError(f"load generator: {text}")
            if message.get("type") == "tick" and on_tick is not None:
                on_tick(message)
                continue
            if message.get("type") == "mark":
                if on_mark is not None:
                    on_mark(str(message.get("what", "")))
                continue
            if message.get("type") == kind:
                return message

    def _require(self) -> _Proc:
        if self._master is None:
            raise RuntimeError("LoadSession is not started; use it as a context manager")
        return self._master

    # ---- measurements ----------------------------------------------------------------

    def step(
        self,
        offered_rps: float,
        warmup_s: float,
        hold_s: float,
        cpu_seconds: Callable[[], float | None] | None = None,
    ) -> StepResult:
        """Offer `offered_rps` arrivals/s: warm up, then measure for `hold_s` (passed=None).

        `cpu_seconds` (a deployment's cumulative CPU counter) is read when the hold starts and
        ends, giving the step's `server_cpu_s`: what the service demand is measured from.
        """
        if offered_rps <= 0 or warmup_s < 0 or hold_s <= 0:
            raise UserError(
                f"step needs offered_rps > 0, warmup_s >= 0 and hold_s > 0, got "
                f"{offered_rps}, {warmup_s}, {hold_s}"
            )
        hold_s = self.hold_s(offered_rps, hold_s)
        self._require().send(
            {"cmd": "step", "offered_rps": offered_rps, "warmup_s": warmup_s, "hold_s": hold_s}
        )
        cpu: dict[str, float | None] = {}
        host: dict[str, tuple[float, float] | None] = {}

        def on_mark(what: str) -> None:
            host[what] = host_cpu_times()
            if cpu_seconds is not None:
                cpu[what] = cpu_seconds()

        reply = self._expect("step", warmup_s + hold_s + REPLY_MARGIN_S, on_mark=on_mark)
        result = StepResult.from_dict(reply["result"])
        start, end = cpu.get("hold_start"), cpu.get("hold_end")
        if start is not None and end is not None:
            result.server_cpu_s = max(0.0, end - start)
        result.host_busy = host_busy_share(host.get("hold_start"), host.get("hold_end"))
        return result

    def offer(
        self,
        offered_rps: float,
        seconds: float,
        judge: bool = False,
        on_tick: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Open-model load at `offered_rps` arrivals/s for up to `seconds`, measured per second.

        Each tick (and each entry of the result's `timeline`) holds t, requests, errors,
        p95_ms, p95_intended_ms, scheduled, dropped and generator_saturated for that second.
        With `judge`, the child stops at the first second the survival rule
        (experiments.load.survival, fed the corrected p95) calls a failure; the result then
        has `failed_at_s` and `reason`. Same user pool and arrival gate as `step()`.
        """
        if offered_rps <= 0 or seconds <= 0:
            raise UserError(f"offer needs offered_rps > 0 and seconds > 0, got {offered_rps}, "
                            f"{seconds}")
        self._require().send({"cmd": "offer", "offered_rps": offered_rps, "seconds": seconds,
                              "judge": judge})
        reply = self._expect("offer", seconds + REPLY_MARGIN_S, on_tick)
        return dict(reply["result"])

    def survival(
        self, users: int, limit_s: float, on_tick: Callable[[float], None] | None = None,
        offered_rps: float | None = None, dilation: float = 1.0,
        hazard_path: str | None = None, hazard_rps: float = 0.0,
        server_failed: Callable[[], LogLine | None] | None = None,
    ) -> SurvivalResult:
        """A fixed load for up to `limit_s` seconds: `offered_rps` open-model arrivals/s when
        given (`users` is then ignored), else `users` closed-loop back-to-back users; plus
        `hazard_rps` open-model arrivals/s of `hazard_path` (e.g. the shop's `?all=1`).

        Rule (experiments.load.survival): failed when over the last 5 s more than 50 % of
        requests were errors, or none succeeded for 30 s (both × `dilation`); otherwise held.
        `on_tick(seconds)` each second. `server_failed()` (asked each second, e.g.
        `survival.worker_loss_watch`) returns the log line of a failure the server itself
        showed (a worker OOM-killed): the load then stops there, and the result is judged by
        that line (`survival.with_worker_loss`) instead of running on to `limit_s`.
        """
        if offered_rps is not None and not offered_rps > 0:
            raise UserError(f"survival needs a positive offered rate, got {offered_rps}")
        if (offered_rps is None and users < 1) or limit_s <= 0 or not dilation >= 1:
            raise UserError(f"survival needs users >= 1 (or an offered rate), limit_s > 0 and "
                            f"dilation >= 1, got {users}, {limit_s}, {dilation}")
        message: dict[str, Any] = {"cmd": "survival", "users": users, "limit_s": limit_s,
                                   "dilation": dilation}
        if offered_rps is not None:
            message["offered_rps"] = offered_rps
        if hazard_path and hazard_rps > 0:
            if not hazard_path.startswith("/"):
                raise UserError(f"survival hazard path {hazard_path!r} must start with '/'")
            message.update(hazard_path=hazard_path, hazard_rps=hazard_rps)
        self._require().send(message)
        stopped: list[LogLine] = []

        def tick(m: dict[str, Any]) -> None:
            if on_tick is not None:
                on_tick(float(m["t"]))
            if server_failed is not None and not stopped:
                line = server_failed()
                if line is not None:
                    stopped.append(line)
                    self._require().send({"cmd": "stop"})

        reply = self._expect("survival", limit_s + REPLY_MARGIN_S, tick)
        result = SurvivalResult.from_dict(reply["result"])
        return with_worker_loss(result, Observations(logs=stopped)) if stopped else result

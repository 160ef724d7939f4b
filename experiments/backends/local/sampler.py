"""Once a second: read each instance's cgroup, run its credit bucket, set its CPU quota.

Runs as a plain thread in the runner's process (never under gevent). It is also the credit
controller, because the bucket needs the very CPU usage the sample measures. HAProxy target
state changes and kernel OOM messages for our processes become log lines here too.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from experiments.backends.local.cgroups import InstanceCgroup
from experiments.backends.local.credits import CreditBucket
from experiments.backends.local.haproxy import target_states
from experiments.errors import UserError
from experiments.model import LogLine, SignalSample


@dataclass
class SampledInstance:
    name: str
    cgroup: InstanceCgroup
    vcpu: int
    cpu_scale: float
    bucket: CreditBucket | None
    time_compression: float = 1.0
    limit_cores: float = 0.0
    last_t: float | None = None
    last_cpu_s: float = 0.0
    last_oom: int = 0
    pids_seen: set[int] = field(default_factory=set)

    def target_cores(self) -> float:
        """Host cores the instance may use now: vCPUs allowed by its credits × cpu_scale."""
        vcpus = self.bucket.allowed_vcpus() if self.bucket else float(self.vcpu)
        return vcpus * self.cpu_scale

    def tick(self, now: float) -> tuple[SignalSample, list[tuple[str, str]]]:
        """One sample, plus (source kind, text) events worth a log line."""
        st = self.cgroup.stats()
        used_cores = None
        events: list[tuple[str, str]] = []
        if self.last_t is not None and now > self.last_t:
            dt = now - self.last_t
            used_cores = max(0.0, (st.cpu_usage_s - self.last_cpu_s) / dt)
            if self.bucket is not None:
                # Credits count emulated vCPUs: host cores used / cpu_scale.
                self.bucket.update(used_cores / self.cpu_scale, dt * self.time_compression)
        self.last_t, self.last_cpu_s = now, st.cpu_usage_s
        if st.oom_kills > self.last_oom:
            events.append(("kernel", f"memory cgroup out of memory: oom_kill counter "
                                     f"{self.last_oom} -> {st.oom_kills} in {self.name}"))
            self.last_oom = st.oom_kills
        new_limit = self.target_cores()
        if abs(new_limit - self.limit_cores) > 1e-9:
            self.cgroup.set_cpu(new_limit)
            if self.bucket is not None and self.limit_cores:
                what = "baseline" if new_limit < self.limit_cores else "full"
                events.append(("credits", f"cpu credits: balance {self.bucket.balance:.2f}, "
                                          f"quota -> {new_limit:.3f} cores ({what})"))
            self.limit_cores = new_limit
        with contextlib.suppress(OSError):
            self.pids_seen |= self.cgroup.pids()
        sample = SignalSample(
            t=now, instance=self.name, memory_bytes=st.memory_bytes,
            memory_limit_bytes=st.memory_limit_bytes, swap_bytes=st.swap_bytes,
            major_faults=st.major_faults, cpu_used_cores=used_cores,
            cpu_limit_cores=self.limit_cores, throttled_s=st.throttled_s,
            credit_balance=self.bucket.balance if self.bucket else None,
            surplus_credits=self.bucket.surplus if self.bucket else None,
            oom_kills=st.oom_kills)
        return sample, events


_KILLED = re.compile(r"Killed process (\d+)")
_PID = re.compile(r"\bpid=(\d+)")


class KernelLog:
    """New /dev/kmsg records (root only; silently absent otherwise), read without blocking."""

    def __init__(self) -> None:
        self.fd: int | None = None
        with contextlib.suppress(OSError):
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)

    def read(self) -> list[str]:
        out: list[str] = []
        while self.fd is not None:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: records overwritten before we read them; keep going
                continue
            if not record:
                break
            out.append(record.decode(errors="replace").split(";", 1)[-1].split("\n", 1)[0])
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Sampler:
    def __init__(self, instances: list[SampledInstance], sink_signal: Callable[[SignalSample],
                 None], sink_log: Callable[[LogLine], None], interval_s: float = 1.0) -> None:
        self.instances = instances
        self.sink_signal = sink_signal
        self.sink_log = sink_log
        self.interval_s = interval_s
        self.haproxy_socket: Path | None = None
        self.target_state: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kmsg = KernelLog()
        self._kernel_lines: list[str] = []

    def start(self) -> None:
        now = time.time()
        for inst in self.instances:
            inst.limit_cores = inst.target_cores()
            inst.cgroup.set_cpu(inst.limit_cores)
            with contextlib.suppress(OSError):
                st = inst.cgroup.stats()
                inst.last_t, inst.last_cpu_s, inst.last_oom = now, st.cpu_usage_s, st.oom_kills
        self._thread = threading.Thread(target=self._run, name="local-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.tick()
            next_t += self.interval_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def tick(self) -> None:
        now = time.time()
        kernel = self._kmsg.read()
        for inst in self.instances:
            try:
                sample, events = inst.tick(now)
            except (OSError, ValueError, UserError):
                continue  # cgroup going away at teardown; try again next second
            self.sink_signal(sample)
            for kind, text in events:
                self.sink_log(LogLine(now, f"{kind}:{inst.name}", text))
            for line in kernel:
                # `oom-kill:...,task_memcg=/.../<our cgroup>,task=python,pid=N` names the cgroup;
                # the `Killed process N` line that follows only names the pid.
                mine = inst.cgroup.name in line
                if mine:
                    inst.pids_seen.update(int(p) for p in _PID.findall(line))
                m = _KILLED.search(line)
                if mine or (m and int(m.group(1)) in inst.pids_seen):
                    self.sink_log(LogLine(now, f"kernel:{inst.name}", line))
        if self.haproxy_socket is not None:
            self.poll_haproxy(now)

    def poll_haproxy(self, now: float) -> dict[str, str]:
        states = target_states(self.haproxy_socket) if self.haproxy_socket else {}
        for name, status in states.items():
            before = self.target_state.get(name)
            if before is not None and before.split()[0] != status.split()[0]:
                self.sink_log(LogLine(now, "haproxy", f"target {name} {before} -> {status}"))
            self.target_state[name] = status
        return states

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)
        self._kmsg.close()

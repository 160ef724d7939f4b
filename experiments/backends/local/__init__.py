"""The local backend: each stack emulated on one Linux host (the embedded default).

An instance is the real app under a supervised Gunicorn master inside its own cgroup (memory
= instance memory − OS reserve, swap = the variant's swap, CPU = vCPUs × cpu_scale driven by
a credit bucket), listening on its own 127.x.y.z address; the ALB is a real HAProxy. Every
resource is written into a marker file before it is created, and removed in `finally`.

Time dilation: at cpu_scale s < 1 every emulated vCPU is a fraction s of a host core, so the
box is the AWS box in slow motion by d = 1/s — a request that takes 100 ms of CPU there takes
100·d ms here. Every wall-clock quantity the *server* applies is stretched by the same d, or
the emulation would judge a slowed box by real-time rules (Gunicorn killing a worker at 30 s
that a real t3.medium finishes in 10): Gunicorn's `timeout` and `graceful_timeout`, HAProxy's
health-check interval and timeout (and its idle timeouts), and the credit bucket's clock.
The experiment's own clocks (SLO, survival length) are dilated by the runner with the same d,
which this backend publishes as `dilation` and in `deployment.extra`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from experiments.backends.base import Deployment, Leftover
from experiments.backends.local import appsetup, haproxy, state, swap
from experiments.backends.local.cgroups import (
    CGROUP_PREFIX,
    CgroupLayout,
    InstanceCgroup,
    detect_layout,
)
from experiments.backends.local.credits import CREDIT_STARTS, CreditBucket, emulated_seconds
from experiments.backends.local.sampler import SampledInstance, Sampler
from experiments.backends.local.supervisor import (
    Supervisor,
    dilate_gunicorn_args,
    dilated_seconds,
    pump_lines,
    wrap_in_cgroup,
)
from experiments.errors import UserError
from experiments.load.driver import check_loopback
from experiments.model import LogLine, Observations, SignalSample
from experiments.procs import stop_group
from stacks.catalog import load_catalog
from stacks.variant import Variant

__all__ = ["LocalBackend", "LocalDeployment"]

INSTANCE_PORT = 8000
LB_PORT = 8080
MIB = 1024 * 1024
HEALTH_TIMEOUT_S = 90.0
GENERATOR_CORES = 0.5
"""Host cores kept free while the variants are loaded together: the load generators (one
Locust process per variant), HAProxy, the sampler and the runner itself."""


def dilation_for(cpu_scale: float) -> float:
    """d = 1/cpu_scale, never below 1: an emulated vCPU is never faster than a host core."""
    return max(1.0, 1.0 / cpu_scale)


def instance_cpus(index: int, vcpus: int, available: list[int], first: int | None = None
                  ) -> list[int] | None:
    """The host CPUs instance `index` with `vcpus` vCPUs is pinned to (None: all of them);
    `first` (a run-wide cursor) overrides where its CPUs start, so the instances of variants
    deployed together are spread over the host rather than all starting at its first CPU.

    Why: a t2.micro's two Gunicorn workers time-share its one vCPU. Spread over two host
    cores under a 0.66-core quota they ran side by side instead, and each request cost less
    CPU than on a one-vCPU box: measured with the shop's views in two processes
    (benchmarks/bench_quota_cost.py), 0.33 cores cost 1.16 ms per request and 0.66 cores
    1.06 ms unpinned, 1.13 ms at both when pinned to one CPU; the emulated micro's
    AWS-equivalent capacity read 20 % higher at cpu_scale 0.66 than at 0.33. Instances are
    laid round-robin over the host's CPUs, `vcpus` consecutive ones each.
    """
    cpus = sorted(available)
    if vcpus >= len(cpus) or vcpus < 1:
        return None
    first = index * vcpus if first is None else first
    return sorted(cpus[(first + k) % len(cpus)] for k in range(vcpus))


def host_cpu_cores() -> float:
    """Cores this process may use: CPU affinity, capped by its own cgroup's quota if any."""
    cores = float(len(os.sched_getaffinity(0)))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, int(quota) / int(period))
    return cores


@dataclass
class Instance:
    name: str
    host: str
    port: int
    cgroup: InstanceCgroup
    data_dir: Path
    supervisor: Supervisor | None = None
    sampled: SampledInstance | None = None
    cpus: list[int] | None = None
    """Host CPUs it is pinned to, as many as its vCPUs (None: not pinned)."""
    first_cpu: int = 0
    """Where its CPUs start before any round moved them (`LocalBackend.new_round`)."""


def pin_cgroup(cgroup: InstanceCgroup, cpus: list[int]) -> None:
    """Move every thread of every process in `cgroup` to `cpus` (a process may be gone)."""
    for pid in cgroup.pids():
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)


class LocalDeployment(Deployment):
    """A healthy local stack; `observe()` returns what the sampler and log readers collected."""

    def __init__(self, variant: Variant, url: str, instance_ids: list[str], started_at: float,
                 extra: dict[str, object], owner: _Stack) -> None:
        check_loopback(url)  # the local backend's target policy: loopback only, never beyond
        super().__init__(variant, url, instance_ids, started_at, extra)
        self._owner = owner

    def observe(self) -> Observations:
        return self._owner.observations()

    def cpu_seconds(self) -> float | None:
        """Sum of the instances' cgroup CPU time (HAProxy's own cgroup is not an instance)."""
        try:
            return sum(inst.cgroup.stats().cpu_usage_s for inst in self.instances)
        except (OSError, ValueError):
            return None

    def logs_since(self, t: float) -> list[LogLine] | None:
        """What the sampler and log readers collected at or after `t` (in memory: cheap)."""
        return self._owner.logs_since(t)

    def cpu_limit_cores(self) -> float | None:
        """Sum of the instances' current CPU quotas (they follow the credit balance)."""
        limits = [inst.sampled.limit_cores or inst.sampled.target_cores()
                  for inst in self.instances if inst.sampled is not None]
        return sum(limits) if limits else None

    @property
    def instances(self) -> list[Instance]:
        return self._owner.instances

    def target_states(self) -> dict[str, str]:
        """HAProxy's view of each target (empty without a load balancer)."""
        sock = self._owner.haproxy_socket
        return haproxy.target_states(sock) if sock else {}

    def set_credits(self, start: str) -> bool:
        """Switch every instance's credit balance to `start` ("exhausted" or "launch") now.

        This is how the sustained capacity is measured on the same deployment: a standard-mode
        box with no credits runs at its baseline. Returns False when no instance has a credit
        bucket (fixed-performance types) — nothing to switch. Waits until the sampler has
        applied the new CPU quota, so the next load step already sees it.
        """
        return self._owner.set_credits(start)


class LocalBackend:
    """Satisfies experiments.backends.base.Backend."""

    name = "local"

    def __init__(self, cpu_scale: float | None = None, credits: str = "launch",
                 time_compression: float = 1.0, state_dir: Path | None = None,
                 host_cores: float | None = None, dilation: float | None = None,
                 variants: list[Variant] | None = None) -> None:
        if credits not in CREDIT_STARTS:
            raise UserError(f"credit start {credits!r} is not valid; use 'launch' or "
                            "'exhausted'.")
        if not time_compression > 0:
            raise UserError(f"time compression must be a positive number, got "
                            f"{time_compression!r}.")
        if cpu_scale is not None and not 0 < cpu_scale <= 64:
            raise UserError(f"cpu_scale must be a positive number of host cores per vCPU, got "
                            f"{cpu_scale!r}.")
        self.credits = credits
        self.time_compression = float(time_compression)
        self.host_cores = host_cores
        self.state = state.StateDir(Path(state_dir) if state_dir else state.default_state_dir())
        if cpu_scale is None:
            try:
                from stacks.variant import load_variants

                cpu_scale = self.choose_cpu_scale(variants or load_variants(), host_cores)
            except UserError:
                cpu_scale = self.choose_cpu_scale([], host_cores)
        self.cpu_scale: float = cpu_scale
        if dilation is not None and not dilation >= 1:
            raise UserError(f"time dilation must be a number >= 1 (1 = none), got {dilation!r}.")
        self.dilation: float = dilation if dilation is not None else dilation_for(cpu_scale)
        """How many times slower than the AWS box the emulated one runs (1/cpu_scale)."""
        self._layout: CgroupLayout | None = None
        self._cpu_cursor = 0
        """The next host CPU an instance is pinned from (run-wide, see `instance_cpus`)."""
        self._shift = 0
        self._stacks: list[_Stack] = []
        """Stacks deployed and not yet torn down (`new_round` moves their instances)."""

    @staticmethod
    def choose_cpu_scale(variants: list[Variant], host_cores: float | None = None,
                         generator_cores: float = GENERATOR_CORES) -> float:
        """Host cores per emulated vCPU so that every variant of the run fits on the host at
        once, next to the load generators: the variants are then loaded together.

        (host − generator) / the variants' total vCPUs, rounded down to 0.01, kept within
        [0.05, 1]: 2 cores and the four stacks (7 vCPUs) give 0.21, micro alone 1. Never above
        1: an emulated vCPU is no faster than a host core.
        """
        host = host_cores if host_cores is not None else host_cpu_cores()
        total = sum(v.total_vcpu for v in variants) or 1
        scale = math.floor((host - generator_cores) / total * 100) / 100
        return min(1.0, max(0.05, scale))

    @property
    def concurrent_cores(self) -> float:
        """Host cores the variants' boxes may use at once while measured together: boxes whose
        CPU limits add up to more are loaded one after another (experiments/schedule.py)."""
        host = self.host_cores if self.host_cores is not None else host_cpu_cores()
        return max(self.cpu_scale, host - GENERATOR_CORES)

    def lane_cores(self, variant: Variant) -> float:
        """Host cores `variant`'s boxes may use when loaded (all instances at full quota)."""
        return variant.total_vcpu * self.cpu_scale

    def next_cpus(self, vcpus: int) -> tuple[list[int] | None, int]:
        """Host CPUs for the next instance of this run (None: not pinned), and the cursor
        they start from."""
        if not shutil.which("taskset"):  # util-linux, on every Linux
            return None, 0
        first = self._cpu_cursor + self._shift
        cpus = instance_cpus(0, vcpus, list(os.sched_getaffinity(0)), first=first)
        if cpus is not None:
            self._cpu_cursor += vcpus
        return cpus, first - self._shift

    def new_round(self) -> None:
        """A round of the schedule begins: every pinned instance moves on by one host CPU, so
        no variant keeps a faster or busier CPU for a whole search (RMIT for placement: the
        host's CPUs need not be alike — a hypervisor's vCPUs rarely are)."""
        self._shift += 1
        available = list(os.sched_getaffinity(0))
        for stack in list(self._stacks):
            for inst in stack.instances:
                if inst.cpus is None:
                    continue
                cpus = instance_cpus(0, len(inst.cpus), available,
                                     first=inst.first_cpu + self._shift)
                if cpus is not None:
                    inst.cpus = cpus
                    if inst.supervisor is not None:
                        inst.supervisor.cpus = cpus  # a restarted master starts there too
                    pin_cgroup(inst.cgroup, cpus)

    def layout(self) -> CgroupLayout:
        if self._layout is None:
            self._layout = detect_layout()
        return self._layout

    @contextlib.contextmanager
    def deployed(self, variant: Variant) -> Iterator[LocalDeployment]:
        """Deploy, wait until healthy, yield; tear everything down whatever happens."""
        layout = self.layout()
        if variant.load_balancer:
            haproxy.haproxy_binary()
            haproxy.maxconn_for(haproxy.fd_hard_limit())  # a too-low fd limit: say so now
        swept = [f"{i.kind} {i.ident}" for i in self.delete_leftovers()]
        stack = _Stack(self, variant, layout)
        self._stacks.append(stack)
        try:
            deployment = stack.start()
            deployment.extra["swept_leftovers"] = swept
            yield deployment
        finally:
            self._stacks.remove(stack)
            with _sigint_deferred():
                stack.teardown()

    def preflight(self, variants: list[Variant]) -> None:
        """Nothing to check before the run folder exists: cgroups, swap and HAProxy are
        checked when the first variant deploys, with a sentence naming what is missing."""

    def leftovers(self) -> list[Leftover]:
        return state.find_leftovers(self.state, self._layout_or_none())

    def delete_leftovers(self) -> Iterator[Leftover]:
        yield from state.delete_leftovers(self.state, self._layout_or_none())

    def _layout_or_none(self) -> CgroupLayout | None:
        try:
            return self.layout()
        except UserError:
            return None


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """A second Ctrl-C (or a SIGTERM) during teardown is held back until teardown is done
    (then re-raised as KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            raise KeyboardInterrupt


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_addresses(seed: str, count: int) -> tuple[list[str], str]:
    """127.x.y.(10+i) for instances, 127.x.y.1 for the load balancer; x, y from `seed`.

    Only ever inside 127.0.0.0/8 (Linux answers the whole /8 on `lo`); x is never 0, so the
    usual 127.0.0.1 services are never in the way. Re-salted when an address is taken.
    """
    for salt in range(64):
        digest = hashlib.sha256(f"{seed}/{salt}".encode()).digest()
        prefix = f"127.{1 + digest[0] % 254}.{digest[1]}"
        hosts = [f"{prefix}.{10 + i}" for i in range(count)]
        lb = f"{prefix}.1"
        if all(_free(h, INSTANCE_PORT) for h in hosts) and _free(lb, LB_PORT):
            return hosts, lb
    raise UserError("no free loopback address found in 127.0.0.0/8 after 64 tries; stop other "
                    "scalelab runs or free ports 8000/8080 on loopback.")


def _http_status(host: str, port: int, path: str, timeout_s: float = 2.0) -> int | None:
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class _Stack:
    """Everything one deployment created, in creation order, and how to remove it."""

    def __init__(self, backend: LocalBackend, variant: Variant, layout: CgroupLayout) -> None:
        self.backend = backend
        self.variant = variant
        self.layout = layout
        self.instances: list[Instance] = []
        self.swapfiles: list[Path] = []
        self.lb_cgroup: InstanceCgroup | None = None
        self.lb_proc: subprocess.Popen[bytes] | None = None
        self.haproxy_socket: Path | None = None
        self.lb_maxconn: int | None = None
        self.swappiness: dict[str, object] = {}
        self.sampler: Sampler | None = None
        self._signals: list[SignalSample] = []
        self._logs: list[LogLine] = []
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        st = backend.state
        st.ensure()
        self.id = f"p{os.getpid()}-{secrets.token_hex(3)}-{variant.name}"
        self.marker = st.new_marker(self.id, variant.run_id, variant.name)
        self.run_dir = st.root / "runs" / self.id
        self.marker.directories.append(str(self.run_dir))
        st.save(self.marker)
        self.run_dir.mkdir(parents=True)
        # Unix socket paths are limited to 108 bytes: keep them short, outside state_dir.
        self.socket_dir = Path(tempfile.mkdtemp(prefix=f"{CGROUP_PREFIX}{self.id[:24]}-"))
        self.marker.directories.append(str(self.socket_dir))
        st.save(self.marker)

    # ---- collected observations ------------------------------------------------------------
    def _log(self, line: LogLine) -> None:
        with self._lock:
            self._logs.append(line)

    def _signal(self, sample: SignalSample) -> None:
        with self._lock:
            self._signals.append(sample)

    def logs_since(self, t: float) -> list[LogLine]:
        with self._lock:
            return sorted((x for x in self._logs if x.t >= t), key=lambda line: line.t)

    def observations(self) -> Observations:
        with self._lock:
            return Observations(signals=list(self._signals),
                                logs=sorted(self._logs, key=lambda line: line.t))

    def set_credits(self, start: str) -> bool:
        if start not in CREDIT_STARTS:
            raise UserError(f"credit start {start!r} is not valid; use 'launch' or "
                            "'exhausted'.")
        sampled = [i.sampled for i in self.instances if i.sampled and i.sampled.bucket]
        for si in sampled:
            assert si.bucket is not None
            si.bucket.reset(start)
        self._log(LogLine(time.time(), "supervisor:host",
                          f"credit balance switched to {start} on {len(sampled)} instance(s)"))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if all(abs(si.limit_cores - si.target_cores()) < 1e-9 for si in sampled):
                break
            time.sleep(0.05)
        return bool(sampled)

    # ---- start -----------------------------------------------------------------------------
    def start(self) -> LocalDeployment:
        v, b = self.variant, self.backend
        started = time.time()
        phases: dict[str, float] = {}

        def phase(name: str) -> None:
            phases[name] = round(time.time() - started - sum(phases.values()), 3)

        appsetup.install_requirements(v, b.state.root)
        cache = appsetup.prepare_data(v, b.state.root)
        phase("app_setup_s")
        hosts, lb_host = pick_addresses(f"{v.run_id}/{v.name}/{self.id}", v.count)
        self._make_swap()
        phase("swap_s")
        it = load_catalog().instance(v.instance_type)
        memory = v.app_memory_mib * MIB
        for i, host in enumerate(hosts):
            name = f"i{i}"
            cg = self.layout.make(f"{CGROUP_PREFIX}{self.id}-{name}")
            self.marker.cgroups += [str(p) for p in cg.paths]
            b.state.save(self.marker)
            cg.create()
            bucket = CreditBucket.for_instance(it, v.credit_mode, b.credits)
            # The sampler advances the bucket by wall seconds × this rate: the emulated clock.
            clock = emulated_seconds(1.0, b.dilation, b.time_compression)
            sampled = SampledInstance(name, cg, v.vcpu, b.cpu_scale, bucket, clock)
            applied = cg.set_limits(memory, v.swap_mib * MIB, v.swappiness,
                                    sampled.target_cores())
            self.swappiness = applied.to_dict()
            if applied.note and i == 0:  # one sentence per deployment, not per instance
                self._log(LogLine(time.time(), "supervisor:host", applied.note))
                print(f"scalelab: note: {v.name}: {applied.note}.", file=sys.stderr)
            data = self.run_dir / name / "data"
            appsetup.copy_data(cache, data)
            cpus, first_cpu = b.next_cpus(v.vcpu)
            self.instances.append(Instance(name, host, INSTANCE_PORT, cg, data, sampled=sampled,
                                           cpus=cpus, first_cpu=first_cpu))
        for inst in self.instances:
            self._spawn(inst)
        self.sampler = Sampler([i.sampled for i in self.instances if i.sampled],
                               self._signal, self._log)
        self.sampler.start()
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        phase("cgroups_and_spawn_s")
        for inst in self.instances:
            self._wait_instance(inst, deadline)
        phase("gunicorn_healthy_s")
        url = f"http://{self.instances[0].host}:{INSTANCE_PORT}"
        if v.load_balancer:
            self._start_haproxy(lb_host, deadline)
            url = f"http://{lb_host}:{LB_PORT}"
            phase("haproxy_healthy_s")
        extra: dict[str, object] = {
            "cpu_scale": b.cpu_scale, "cgroup_version": self.layout.version,
            "credits_start": b.credits, "time_compression": b.time_compression,
            "dilation": b.dilation,
            "gunicorn_timeout_s": dilated_seconds(v.gunicorn.timeout_s, b.dilation),
            "memory_limit_mib": v.app_memory_mib,
            "os_reserve_mib": v.os_reserve_mib, "swapfiles": [str(p) for p in self.swapfiles],
            "instances": {i.name: f"http://{i.host}:{i.port}" for i in self.instances},
            "instance_cpus": {i.name: i.cpus for i in self.instances},
            "deployment_id": self.id, "startup_s": round(time.time() - started, 3),
            "startup_phases": phases, "lb_maxconn": self.lb_maxconn,
            "swappiness": self.swappiness,
        }
        return LocalDeployment(v, url, [i.name for i in self.instances], started, extra, self)

    def _make_swap(self) -> None:
        v = self.variant
        if v.swap_mib <= 0 or not swap.needs_swapfiles(v.swap_mib * v.count):
            return
        directory = self.backend.state.root / "swap"
        for i in range(v.count):
            path = directory / f"{CGROUP_PREFIX}{self.id}-{i}.swap"
            self.marker.swapfiles.append(str(path))
            self.backend.state.save(self.marker)
            self.swapfiles.append(path)
            swap.create_swapfile(path, v.swap_mib)
            self._log(LogLine(time.time(), "supervisor:host",
                              f"swapfile {path} ({v.swap_mib} MiB) created and swapped on"))

    def _spawn(self, inst: Instance) -> None:
        v = self.variant
        argv = gunicorn_argv(v, f"{inst.host}:{inst.port}", self.backend.dilation)

        def remember(pid: int) -> None:
            self.marker.pgids.append(pid)
            self.backend.state.save(self.marker)

        inst.supervisor = Supervisor(inst.name, argv, v.app.directory,
                                     appsetup.app_env(v, inst.data_dir),
                                     inst.cgroup.procs_files(), self._log, remember,
                                     cpus=inst.cpus)
        inst.supervisor.start()

    def _last_lines(self, source: str, n: int = 3) -> str:
        with self._lock:
            lines = [x.text for x in self._logs if x.source == source][-n:]
        return " | ".join(lines) or "no output"

    def _wait_instance(self, inst: Instance, deadline: float) -> None:
        path = self.variant.app.health_path
        while True:
            if _http_status(inst.host, inst.port, path) == 200:
                return
            sup = inst.supervisor
            if sup is not None and sup.failed:
                raise UserError(f"Gunicorn for {self.variant.name}/{inst.name} keeps exiting "
                                f"({self._last_lines(f'gunicorn:{inst.name}')}); check "
                                "scalelab:app.wsgi and the app.")
            if time.monotonic() > deadline:
                raise UserError(f"{self.variant.name}/{inst.name} did not answer 200 on {path} "
                                f"within {HEALTH_TIMEOUT_S:.0f} s (last output: "
                                f"{self._last_lines(f'gunicorn:{inst.name}')}); check "
                                "scalelab:app.healthPath.")
            time.sleep(0.1)

    def _start_haproxy(self, lb_host: str, deadline: float) -> None:
        v = self.variant
        sock = self.socket_dir / "haproxy.sock"
        cfg = self.run_dir / "haproxy.cfg"
        targets = [haproxy.Target(i.name, i.host, i.port) for i in self.instances]
        fd_hard = haproxy.fd_hard_limit()
        self.lb_maxconn = haproxy.maxconn_for(fd_hard)
        if self.lb_maxconn < haproxy.MAXCONN:
            self._log(LogLine(time.time(), "supervisor:host",
                              f"HAProxy maxconn {self.lb_maxconn} (not {haproxy.MAXCONN}): the "
                              f"open-files hard limit is {fd_hard}"))
        cfg.write_text(haproxy.render_config(v, lb_host, LB_PORT, targets, sock,
                                             dilation=self.backend.dilation,
                                             maxconn=self.lb_maxconn))
        cg = self.layout.make(f"{CGROUP_PREFIX}{self.id}-lb")
        self.marker.cgroups += [str(p) for p in cg.paths]
        self.backend.state.save(self.marker)
        cg.create()
        self.lb_cgroup = cg
        argv = wrap_in_cgroup(cg.procs_files(), [haproxy.haproxy_binary(), "-f", str(cfg), "-db"])
        self.lb_proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.marker.pgids.append(self.lb_proc.pid)
        self.backend.state.save(self.marker)
        self._readers.append(pump_lines(self.lb_proc.stdout, "haproxy", self._log))
        self.haproxy_socket = sock
        names = {t.name for t in targets}
        while True:
            if self.lb_proc.poll() is not None:
                raise UserError(f"HAProxy exited at start ({self._last_lines('haproxy')}); "
                                f"check {cfg}.")
            states = haproxy.target_states(sock) if sock.exists() else {}
            if names <= {n for n, s in states.items() if s == "UP"} and \
                    _http_status(lb_host, LB_PORT, v.health_check.path) == 200:
                break
            if time.monotonic() > deadline:
                raise UserError(f"HAProxy did not see all targets healthy within "
                                f"{HEALTH_TIMEOUT_S:.0f} s (states {states}); check "
                                "scalelab:healthCheck.path.")
            time.sleep(0.1)
        if self.sampler is not None:
            self.sampler.target_state = dict(states)
            self.sampler.haproxy_socket = sock

    # ---- teardown --------------------------------------------------------------------------
    def teardown(self) -> None:
        """Reverse order; every step runs even when an earlier one fails."""
        errors: list[str] = []

        def step(what: str, fn: Callable[..., object], *args: object) -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - teardown must go on
                errors.append(f"{what}: {exc}")

        if self.sampler is not None:
            step("final sample", self.sampler.tick)
            step("sampler", self.sampler.stop)
        if self.lb_proc is not None:
            step("haproxy", stop_group, self.lb_proc)
        stoppers = [threading.Thread(target=i.supervisor.stop, daemon=True)
                    for i in self.instances if i.supervisor]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(5)
        for inst in self.instances:
            step(f"cgroup {inst.name}", _remove_cgroup, inst.cgroup)
        if self.lb_cgroup is not None:
            step("cgroup lb", _remove_cgroup, self.lb_cgroup)
        for path in self.swapfiles:
            step(f"swapfile {path}", swap.remove_swapfile, path)
        step("run dir", shutil.rmtree, self.run_dir, True)
        step("socket dir", shutil.rmtree, self.socket_dir, True)
        for reader in self._readers:
            reader.join(1)
        if not errors:
            self.backend.state.drop(self.marker)
        else:
            self._log(LogLine(time.time(), "supervisor:host",
                              "teardown incomplete (kept marker for leftovers): "
                              + "; ".join(errors)))


def gunicorn_argv(variant: Variant, bind: str, dilation: float = 1.0) -> list[str]:
    """The command one emulated instance runs: Gunicorn with the variant's settings, its
    clocks (timeout, graceful timeout) dilated like the box's CPU."""
    return [sys.executable, "-m", "gunicorn", *_no_control_socket(),
            *dilate_gunicorn_args(variant.gunicorn_args(bind), dilation)]


def _no_control_socket() -> list[str]:
    """Gunicorn >= 25 opens ~/.gunicorn/gunicorn.ctl; several masters on one host would fight
    over it (each EC2 instance has its own home), and nothing here uses it."""
    from gunicorn.config import Config

    return ["--no-control-socket"] if "control_socket" in Config().settings else []


def _remove_cgroup(cg: InstanceCgroup) -> None:
    if not cg.remove():
        raise OSError(f"cgroup {cg.name} could not be removed")

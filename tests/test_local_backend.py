"""The local backend for real: Gunicorn in cgroups, real swap, HAProxy on loopback, OOM kills.

Each test deploys a tiny WSGI app (tests/fixtures/local_app) in a 100 MiB "instance" (t2.micro
with a large OS reserve) so the kernel's memory limits bite within a second.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from experiments.backends.local import LocalBackend, LocalDeployment
from experiments.backends.local.cgroups import detect_layout, host_swappiness
from experiments.backends.local.sampler import KernelLog
from experiments.backends.local.swap import active_swapfiles, needs_swapfiles
from experiments.errors import UserError
from experiments.model import Observations
from stacks.variant import AppSource, GunicornSettings, HealthCheck, Variant


def _cgroups_usable() -> bool:
    """Root, or an unprivileged user inside a delegated cgroup v2 subtree."""
    if os.geteuid() == 0:
        return True
    try:
        detect_layout()
    except UserError:
        return False
    return True


pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not _cgroups_usable(),
                                 reason="needs root, or a delegated cgroup v2 subtree "
                                        "(systemd-run --user --scope -p Delegate=yes)")]
IN_VM = bool(os.environ.get("SCALELAB_VM"))
"""Set by scripts/cgroup2-vm.sh: software emulation runs CPU-bound work ~20x slower."""


def needs_swap(mib: int) -> pytest.MarkDecorator:
    """Swap variants create swapfiles (root only) unless the host has enough swap on already."""
    return pytest.mark.skipif(os.geteuid() != 0 and needs_swapfiles(mib),
                              reason=f"needs root to swapon, or {mib} MiB of free host swap")


FIXTURE = Path(__file__).parent / "fixtures" / "local_app"
MIB = 1024 * 1024


def tiny(**changes: object) -> Variant:
    """A t2.micro whose cgroup holds 100 MiB: the tiny app's master + 1 worker need ~40."""
    app = AppSource(path=str(FIXTURE), wsgi="tinyapp:application", health_path="/healthz",
                    setup='touch "$SCALELAB_DATA_DIR/seeded"')
    base = Variant(name="tiny", app=app, os_reserve_mib=1024 - 100,
                   gunicorn=GunicornSettings(workers=1, timeout_s=30),
                   health_check=HealthCheck(path="/healthz", interval_s=1, timeout_s=1,
                                            healthy_threshold=1, unhealthy_threshold=1))
    return base.with_overrides(**changes)


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(cpu_scale=0.5, state_dir=tmp_path / "state")


def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def status(url: str, timeout: float = 2.0) -> int:
    """HTTP status, 0 when nothing answers (refused, reset, timed out)."""
    try:
        return get(url, timeout)[0]
    except OSError:
        return 0


def wait_for(check: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def texts(obs: Observations, source_prefix: str = "") -> list[str]:
    return [line.text for line in obs.logs if line.source.startswith(source_prefix)]


def assert_nothing_left(dep: LocalDeployment, backend: LocalBackend) -> None:
    for inst in dep.instances:
        for path in inst.cgroup.paths:
            assert not path.exists(), f"cgroup {path} left behind"
    assert not list((backend.state.root / "deployments").glob("*.json")), "marker left behind"
    # Other runs on this host may have swap on; ours lives under our state dir.
    assert not [p for p in active_swapfiles() if p.is_relative_to(backend.state.root)], \
        "swap left on"
    assert not [item for item in backend.leftovers()
                if str(dep.extra["deployment_id"]) in item.ident], "leftovers found"


def test_limits_are_applied_and_teardown_leaves_nothing(backend: LocalBackend) -> None:
    with backend.deployed(tiny()) as dep:
        status, body = get(dep.url + "/data")
        assert (status, body) == (200, "seeded")  # setup ran, data copied per instance
        limits = dep.instances[0].cgroup.read_limits()
        assert limits["memory_bytes"] == 100 * MIB
        assert limits["swap_bytes"] == 0  # no swap variant: none, even if the host has swap
        # v1 sets the variant's swappiness per cgroup; v2 has no such knob, so the host's applies
        assert limits["swappiness"] == (60 if dep.extra["cgroup_version"] == 1
                                         else host_swappiness())
        assert (limits["cpu_quota_us"], limits["cpu_period_us"]) == (50_000, 100_000)
        pids = dep.instances[0].cgroup.pids()
        assert len(pids) == 2  # master + 1 worker, all inside the cgroup
        if len(os.sched_getaffinity(0)) > 1:  # one vCPU: master and worker on one host CPU
            cpus = dep.instances[0].cpus
            assert cpus is not None and len(cpus) == 1
            assert dep.extra["instance_cpus"] == {"i0": cpus}
            assert all(os.sched_getaffinity(pid) == set(cpus) for pid in pids)
            backend.new_round()  # a round of the schedule: the box moves on by one host CPU
            moved = dep.instances[0].cpus
            assert moved is not None and moved != cpus and len(moved) == 1
            assert all(os.sched_getaffinity(pid) == set(moved) for pid in pids)
        host = dep.url.split("//")[1].split(":")[0]
        assert host.startswith("127.") and not host.startswith("127.0.")
        wait_for(lambda: len(dep.observe().signals) >= 2, 5, "two samples")
    obs = dep.observe()
    s = obs.signals[-1]
    assert s.memory_limit_bytes == 100 * MIB and s.cpu_limit_cores == 0.5
    assert s.credit_balance == pytest.approx(30, abs=0.5) and s.oom_kills == 0
    assert any("Booting worker" in t for t in texts(obs, "gunicorn:i0"))
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    assert_nothing_left(dep, backend)


def test_memory_hog_is_oom_killed_and_the_worker_replaced(backend: LocalBackend) -> None:
    with backend.deployed(tiny()) as dep:
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            get(dep.url + "/hog?mib=150", timeout=20)
        wait_for(lambda: any("Booting worker" in t for t in texts(dep.observe())[-5:])
                 or status(dep.url + "/healthz") == 200, 10, "a new worker")
        assert get(dep.url + "/healthz")[0] == 200
        wait_for(lambda: dep.observe().signals[-1].oom_kills, 5, "the oom_kill counter")
    obs = dep.observe()
    gunicorn = texts(obs, "gunicorn:")
    killed = [t for t in gunicorn if "was sent SIGKILL! Perhaps out of memory?" in t]
    assert killed, gunicorn
    assert any("Booting worker" in t for t in gunicorn[gunicorn.index(killed[0]):])
    assert max(s.oom_kills or 0 for s in obs.signals) >= 1
    assert max(s.swap_bytes or 0 for s in obs.signals) == 0  # no swap variant: none used
    kernel = texts(obs, "kernel:")
    assert any("oom_kill counter" in t for t in kernel)
    kmsg = KernelLog()  # /dev/kmsg is mode 644, but kernel.dmesg_restrict=1 refuses non-root
    readable = kmsg.fd is not None
    kmsg.close()
    if readable:  # the kernel's own words, when it lets us read them
        assert any("Killed process" in t for t in kernel), kernel
    assert_nothing_left(dep, backend)


@needs_swap(256)
def test_swap_variant_gets_a_swapfile_and_swaps_instead_of_dying(backend: LocalBackend) -> None:
    with backend.deployed(tiny(swap_mib=256)) as dep:
        assert dep.instances[0].cgroup.read_limits()["swap_bytes"] == 256 * MIB
        v2 = dep.extra["cgroup_version"] == 2
        # v2 cannot set the variant's swappiness (60): the host's applies, and the run says so
        assert dep.extra["swappiness"] == {
            "requested": 60, "applied": host_swappiness() if v2 else 60,
            "how": "host vm.swappiness (cgroup v2 has no per-cgroup swappiness)" if v2
            else "memory.swappiness"}
        said = [t for t in texts(dep.observe(), "supervisor:host") if "swappiness" in t]
        assert len(said) == (1 if v2 else 0), said
        created = [Path(p) for p in dep.extra["swapfiles"]]  # type: ignore[union-attr]
        for path in created:  # the host had too little swap: the seed's swapfile, on
            assert path in active_swapfiles() and oct(path.stat().st_mode)[-3:] == "600"
        status, body = get(dep.url + "/hog?mib=150", timeout=30)
        assert status == 200, body
        wait_for(lambda: (dep.observe().signals[-1].swap_bytes or 0) > 0, 5, "swap use")
    obs = dep.observe()
    assert max(s.swap_bytes or 0 for s in obs.signals) > 20 * MIB
    assert max(s.oom_kills or 0 for s in obs.signals) == 0
    for path in created:
        assert not path.exists() and path not in active_swapfiles()
    assert_nothing_left(dep, backend)


def _signal_cgroup(dep: LocalDeployment, name: str, sig: signal.Signals) -> None:
    inst = next(i for i in dep.instances if i.name == name)
    for pid in inst.cgroup.pids():
        os.kill(pid, sig)


def test_haproxy_takes_a_dead_target_out_and_back_in(backend: LocalBackend) -> None:
    with backend.deployed(tiny(count=2, load_balancer=True)) as dep:
        assert dep.url.endswith(":8080")
        assert dep.target_states() == {"i0": "UP", "i1": "UP"}
        i0_pids = {str(p) for p in dep.instances[0].cgroup.pids()}
        served = {get(dep.url + "/pid")[1] for _ in range(6)}
        assert len(served) == 2  # round robin over both targets
        if len(os.sched_getaffinity(0)) > 1:  # two one-vCPU instances: two different CPUs
            assert dep.instances[0].cpus != dep.instances[1].cpus
        _signal_cgroup(dep, "i1", signal.SIGSTOP)  # hangs: health checks time out
        try:
            wait_for(lambda: dep.target_states().get("i1") == "DOWN", 8, "i1 DOWN")
            served = {get(dep.url + "/pid")[1] for _ in range(6)}
            assert served <= i0_pids  # only the healthy target gets traffic
            _signal_cgroup(dep, "i0", signal.SIGSTOP)
            wait_for(lambda: dep.target_states().get("i0") == "DOWN", 8, "i0 DOWN")
            assert get(dep.url + "/healthz")[0] == 503  # no healthy target: the ALB's 503
        finally:
            _signal_cgroup(dep, "i0", signal.SIGCONT)
            _signal_cgroup(dep, "i1", signal.SIGCONT)
        wait_for(lambda: set(dep.target_states().values()) == {"UP"}, 8, "both UP again")
        assert get(dep.url + "/healthz")[0] == 200
        wait_for(lambda: sum("-> UP" in t for t in texts(dep.observe(), "haproxy")) >= 2, 3,
                 "UP transitions logged")
    haproxy_lines = texts(dep.observe(), "haproxy")
    assert any(t.startswith("target i1 UP -> DOWN") for t in haproxy_lines), haproxy_lines
    assert any(t.startswith("target i1 DOWN -> UP") for t in haproxy_lines), haproxy_lines
    assert_nothing_left(dep, backend)


def test_killed_master_is_restarted_like_systemd(backend: LocalBackend) -> None:
    with backend.deployed(tiny()) as dep:
        sup = dep.instances[0].supervisor
        assert sup is not None and sup.proc is not None
        old = sup.proc.pid
        os.killpg(old, signal.SIGKILL)
        wait_for(lambda: sup.restarts == 1 and status(dep.url + "/healthz") == 200, 10,
                 "restart")
        assert sup.proc.pid != old and sup.proc.pid in dep.instances[0].cgroup.pids()
    lines = texts(dep.observe(), "supervisor:i0")
    assert any("(killed by SIGKILL); restarting (Restart=always)" in t for t in lines), lines
    assert_nothing_left(dep, backend)


def test_cpu_quota_follows_the_credit_balance(tmp_path: Path) -> None:
    # 1200x on a box dilated 2x (cpu_scale 0.5): one real second is ten emulated minutes, so
    # 30 launch credits last ~3 s at 100 %.
    backend = LocalBackend(cpu_scale=0.5, state_dir=tmp_path / "state", time_compression=1200)
    with backend.deployed(tiny()) as dep:
        cg = dep.instances[0].cgroup
        # Full quota at launch; under emulation Gunicorn's boot alone can spend the 30 launch
        # credits at 600x, and then the quota is back within a second of idling.
        if IN_VM:
            wait_for(lambda: cg.read_limits()["cpu_quota_us"] == 50_000, 10, "full quota")
        assert cg.read_limits()["cpu_quota_us"] == 50_000
        get(dep.url + "/burn?s=6", timeout=30)
        wait_for(lambda: cg.read_limits()["cpu_quota_us"] == 5_000, 5, "baseline quota")
        at_baseline = dep.observe().signals[-1]
        # Idle again: credits come back (6/h at 600x = 1 per second) and so does the quota.
        wait_for(lambda: cg.read_limits()["cpu_quota_us"] == 50_000, 8, "full quota again")
    obs = dep.observe()
    assert at_baseline.cpu_limit_cores == pytest.approx(0.05)  # 10 % of a vCPU x cpu_scale
    assert at_baseline.credit_balance is not None and at_baseline.credit_balance < 1.0
    busy = [s.cpu_used_cores for s in obs.signals if s.cpu_used_cores]
    assert max(busy) == pytest.approx(0.5, abs=0.12)  # held at the quota, not a full core
    assert any("(baseline)" in t for t in texts(obs, "credits:"))
    assert_nothing_left(dep, backend)

    exhausted = LocalBackend(cpu_scale=0.5, state_dir=tmp_path / "state", credits="exhausted")
    with exhausted.deployed(tiny()) as dep:
        assert dep.instances[0].cgroup.read_limits()["cpu_quota_us"] == 5_000


@needs_swap(2 * 64)
def test_teardown_runs_when_the_body_raises(backend: LocalBackend) -> None:
    with pytest.raises(RuntimeError, match="boom"), \
            backend.deployed(tiny(count=2, load_balancer=True, swap_mib=64)) as dep:
        pids = set().union(*(i.cgroup.pids() for i in dep.instances))
        raise RuntimeError("boom")
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    assert_nothing_left(dep, backend)
    assert not any((backend.state.root / "runs").iterdir())


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_local_backend import tiny
    from experiments.backends.local import LocalBackend
    b = LocalBackend(cpu_scale=0.5, state_dir=Path({state!r}))
    with b.deployed(tiny(count=2, load_balancer=True, swap_mib=64)) as dep:
        print("UP", " ".join(str(p) for i in dep.instances for p in i.cgroup.pids()), flush=True)
        time.sleep(60)
""")


def _run_child(tmp_path: Path, state: Path) -> tuple[subprocess.Popen[str], list[int]]:
    root = str(Path(__file__).resolve().parent.parent)
    code = CHILD.format(root=root, tests=str(Path(__file__).parent), state=str(state))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=root)
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.startswith("UP"), line
    return proc, [int(p) for p in line.split()[1:]]


@needs_swap(2 * 64)
def test_ctrl_c_tears_down_and_leftovers_clean_a_killed_run(tmp_path: Path) -> None:
    state = tmp_path / "state"
    backend = LocalBackend(cpu_scale=0.5, state_dir=state)
    # Ctrl-C: KeyboardInterrupt inside the with-block still tears everything down.
    proc, pids = _run_child(tmp_path, state)
    proc.send_signal(signal.SIGINT)
    proc.wait(15)
    assert all(not Path(f"/proc/{p}").exists() for p in pids)
    assert [item for item in backend.leftovers() if item.detail != "unmarked"] == []
    # SIGKILL: nothing runs `finally`; the markers let leftovers find and remove the rest.
    proc, pids = _run_child(tmp_path, state)
    proc.kill()
    proc.wait(5)
    try:
        found = backend.leftovers()
        kinds = {item.kind for item in found}
        # swapfile too, unless another run on this host already had enough swap on
        assert {"cgroup", "directory", "marker"} <= kinds, found
        assert all(Path(f"/proc/{p}").exists() for p in pids)  # still serving, orphaned
        removed = list(backend.delete_leftovers())
        assert len(removed) == len(found)
    finally:
        list(backend.delete_leftovers())
    wait_for(lambda: all(not Path(f"/proc/{p}").exists() for p in pids), 5, "orphans gone")
    assert [item for item in backend.leftovers() if item.detail != "unmarked"] == []
    assert not [p for p in active_swapfiles() if p.is_relative_to(state)]


LOW_FD_CHILD = textwrap.dedent("""
    import sys, urllib.request
    from pathlib import Path
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_local_backend import tiny
    from experiments.backends.local import LocalBackend
    b = LocalBackend(cpu_scale=0.5, state_dir=Path({state!r}))
    with b.deployed(tiny(count=2, load_balancer=True)) as dep:
        with urllib.request.urlopen(dep.url + "/healthz", timeout=10) as resp:
            print("SERVED", resp.status, dep.extra["lb_maxconn"], flush=True)
""")


def test_haproxy_starts_under_a_1024_open_files_hard_limit(tmp_path: Path) -> None:
    # Where systemd or a container hands out nofile 1024:1024, HAProxy's maxconn 4096 would
    # need ~8200 descriptors and HAProxy would refuse to start.
    root = str(Path(__file__).resolve().parent.parent)
    state = tmp_path / "state"
    code = LOW_FD_CHILD.format(root=root, tests=str(Path(__file__).parent), state=str(state))

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          timeout=180, preexec_fn=low_limit)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["SERVED", "200", "480"], done.stdout
    backend = LocalBackend(cpu_scale=0.5, state_dir=state)
    assert [item for item in backend.leftovers() if item.detail != "unmarked"] == []

"""Local backend pieces that need no root: cgroup v2 file writes (fake tree), credit bucket,
cpu_scale, HAProxy config, loopback addresses, bad input."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from experiments.backends.local import LocalBackend, pick_addresses
from experiments.backends.local.cgroups import (
    CgroupV2,
    detect_layout,
    host_swappiness,
    prepare_v2_parent,
    swappiness_applied,
)
from experiments.backends.local.credits import CreditBucket
from experiments.backends.local.haproxy import MAXCONN, Target, maxconn_for, render_config
from experiments.errors import UserError
from stacks.catalog import load_catalog
from stacks.variant import HealthCheck, Variant


def _fake_v2(root: Path) -> None:
    """A cgroup2 mount as the kernel shows it: controllers available, none delegated yet."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("1\n")


def test_v2_limits_are_written_as_memory_max_swap_max_and_cpu_max(tmp_path: Path) -> None:
    cg = CgroupV2("scalelab-p1-abc-micro-i0", tmp_path)
    cg.create()
    applied = cg.set_limits(memory_bytes=674 * 1024 * 1024, swap_bytes=0, swappiness=60,
                            cpu_cores=0.33)
    assert (applied.applied, applied.note) == (host_swappiness(), None)  # no swap: moot
    assert (cg.path / "memory.max").read_text() == str(674 * 1024 * 1024)
    assert (cg.path / "memory.swap.max").read_text() == "0"
    assert (cg.path / "cpu.max").read_text() == "33000 100000"
    assert (cg.path / "memory.oom.group").read_text() == "0"
    cg.set_cpu(0.033)
    # v2 has no per-cgroup swappiness: what applies is the host's, reported, never written
    assert cg.read_limits() == {"memory_bytes": 674 * 1024 * 1024, "swap_bytes": 0,
                                "swappiness": host_swappiness(),
                                "cpu_quota_us": 3300, "cpu_period_us": 100000}
    assert not (cg.path / "memory.swappiness").exists()
    cg.set_limits(memory_bytes=None, swap_bytes=2048 * 1024 * 1024, swappiness=60,
                  cpu_cores=None)
    assert (cg.path / "memory.max").read_text() == "max"
    assert (cg.path / "cpu.max").read_text() == "max 100000"


def test_v2_stats_read_the_v2_counters(tmp_path: Path) -> None:
    cg = CgroupV2("scalelab-x-i0", tmp_path)
    cg.create()
    files = {
        "memory.current": "1048576", "memory.max": "2097152", "memory.swap.current": "4096",
        "memory.stat": "anon 100\npgmajfault 7\n",
        "cpu.stat": "usage_usec 2500000\nthrottled_usec 500000\nnr_throttled 3\n",
        "memory.events": "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n",
    }
    for name, text in files.items():
        (cg.path / name).write_text(text)
    st = cg.stats()
    assert (st.memory_bytes, st.memory_limit_bytes, st.swap_bytes) == (1048576, 2097152, 4096)
    assert (st.major_faults, st.cpu_usage_s, st.throttled_s, st.oom_kills) == (7, 2.5, 0.5, 2)


def test_v2_layout_is_detected_and_controllers_delegated(tmp_path: Path) -> None:
    root = tmp_path / "cg2"
    _fake_v2(root)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {root} cgroup2 rw,nosuid 0 0\nproc /proc proc rw 0 0\n")
    own = tmp_path / "self_cgroup"
    own.write_text("0::/user.slice/session-1.scope\n")
    (root / "scalelab").mkdir()
    (root / "scalelab" / "cgroup.controllers").write_text("cpu memory\n")
    (root / "scalelab" / "cgroup.subtree_control").write_text("")
    layout = detect_layout(mounts_file=mounts, cgroup_file=own, as_root=True)
    assert layout.version == 2
    parent = layout.parents["unified"]
    # subtree_control is a plain file here: the last write is what the kernel would get.
    assert (parent / "cgroup.subtree_control").read_text() in ("+memory", "+cpu")
    assert isinstance(layout.make("scalelab-p1-i0"), CgroupV2)


def test_delegated_v2_subtree_moves_our_processes_into_a_leaf(tmp_path: Path) -> None:
    scope = tmp_path / "user.slice" / "run-1.scope"
    _fake_v2(scope)
    (scope / "cgroup.procs").write_text("4242\n")
    parent = prepare_v2_parent(tmp_path, "/user.slice/run-1.scope", as_root=False)
    assert parent == scope
    assert (scope / "scalelab-supervisor" / "cgroup.procs").read_text() == "4242"
    assert (scope / "cgroup.subtree_control").read_text() in ("+memory", "+cpu")
    # A child process of the run starts in the leaf: same parent, no second leaf inside it.
    assert prepare_v2_parent(tmp_path, "/user.slice/run-1.scope/scalelab-supervisor",
                             as_root=False) == scope
    assert not (scope / "scalelab-supervisor" / "scalelab-supervisor").exists()
    (scope / "cgroup.controllers").write_text("pids\n")
    with pytest.raises(UserError, match="lacks the cpu, memory controller"):
        prepare_v2_parent(tmp_path, "/user.slice/run-1.scope", as_root=False)


def test_missing_cgroups_is_one_sentence(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\n")
    own = tmp_path / "self_cgroup"
    own.write_text("0::/\n")
    with pytest.raises(UserError, match="cgroup"):
        detect_layout(mounts_file=mounts, cgroup_file=own)


def test_missing_v1_cpu_controller_names_it(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup {tmp_path} cgroup rw,memory 0 0\n")
    own = tmp_path / "self_cgroup"
    own.write_text("4:memory:/\n")
    with pytest.raises(UserError, match="cpu, cpuacct"):
        detect_layout(mounts_file=mounts, cgroup_file=own)


# ---- credits -----------------------------------------------------------------------------

def _bucket(itype: str = "t2.micro", mode: str = "standard", start: str = "launch"
            ) -> CreditBucket:
    b = CreditBucket.for_instance(load_catalog().instance(itype), mode, start)  # type: ignore
    assert b is not None
    return b


def test_t2_micro_launches_with_30_credits_and_falls_to_baseline_when_empty() -> None:
    b = _bucket()
    assert b.balance == 30 and b.allowed_vcpus() == 1.0
    b.update(used_vcpus=1.0, dt_s=60 * 29)  # 29 minutes at 100 %: spend 29, earn 2.9
    assert b.allowed_vcpus() == 1.0
    b.update(used_vcpus=1.0, dt_s=60 * 10)
    assert b.balance == pytest.approx(0.0)
    assert b.allowed_vcpus() == pytest.approx(0.1)  # t2.micro baseline: 10 % of its vCPU
    # At the baseline the balance only grows when usage stays below it.
    b.update(used_vcpus=0.0, dt_s=5 * 60)  # 6 credits/h * 5 min = 0.5 credits
    assert b.allowed_vcpus() == pytest.approx(0.1)
    b.update(used_vcpus=0.0, dt_s=6 * 60)
    assert b.balance >= 1.0 and b.allowed_vcpus() == 1.0


def test_exhausted_start_is_at_baseline_and_earned_balance_caps() -> None:
    b = _bucket(start="exhausted")
    assert b.balance == 0 and b.allowed_vcpus() == pytest.approx(0.1)
    b.update(used_vcpus=0.0, dt_s=48 * 3600)
    assert b.balance == 144  # 24 h of earnings


def test_unlimited_never_throttles_and_counts_surplus() -> None:
    b = _bucket("t3.medium", mode="unlimited", start="launch")
    assert b.balance == 0  # T3: no launch credits
    b.update(used_vcpus=2.0, dt_s=3600)  # 120 credits spent, 24 earned
    assert b.allowed_vcpus() == 2.0
    assert b.surplus == pytest.approx(96.0)


def test_fixed_performance_types_have_no_bucket_and_bad_start_is_refused() -> None:
    assert CreditBucket.for_instance(load_catalog().instance("c6i.large"), "standard",
                                     "launch") is None
    with pytest.raises(UserError, match="launch"):
        LocalBackend(credits="half", cpu_scale=0.5)


# ---- cpu_scale, HAProxy config, addresses ------------------------------------------------

def test_cpu_scale_fits_every_variant_at_once_and_the_generators() -> None:
    """The variants are loaded together: their vCPUs add up (2 cores less half a core)."""
    micro = Variant(name="micro")
    out = Variant(name="scale-out", count=3, load_balancer=True)
    up = Variant(name="scale-up", instance_type="t3.medium")
    assert LocalBackend.choose_cpu_scale([micro, micro, out, up], host_cores=2) == 0.21
    assert LocalBackend.choose_cpu_scale([out, up], host_cores=2) == 0.3
    assert LocalBackend.choose_cpu_scale([up], host_cores=2) == 0.75
    assert LocalBackend.choose_cpu_scale([micro], host_cores=2) == 1.0
    assert LocalBackend.choose_cpu_scale([up], host_cores=16) == 1.0
    assert LocalBackend.choose_cpu_scale([out], host_cores=1) == 0.16
    assert LocalBackend.choose_cpu_scale([out, up], host_cores=0.5) == 0.05


def test_the_host_budget_lane_cores_and_a_run_wide_pin_cursor() -> None:
    backend = LocalBackend(cpu_scale=0.21, host_cores=2)
    assert backend.concurrent_cores == 1.5
    assert backend.lane_cores(Variant(name="scale-out", count=3, load_balancer=True)) == \
        pytest.approx(0.63)
    from experiments.backends.local import instance_cpus

    # a run-wide cursor spreads the variants' instances; a round moves each on by one CPU
    assert [instance_cpus(0, 1, [0, 1], first=f) for f in range(3)] == [[0], [1], [0]]


def test_haproxy_config_follows_the_target_group() -> None:
    v = Variant(name="lb", count=2, load_balancer=True, lb_algorithm="least_outstanding_requests",
                health_check=HealthCheck(path="/up", interval_s=7, timeout_s=3,
                                         healthy_threshold=4, unhealthy_threshold=2))
    cfg = render_config(v, "127.9.9.1", 8080, [Target("i0", "127.9.9.10", 8000),
                                               Target("i1", "127.9.9.11", 8000)],
                        Path("/tmp/s.sock"))
    assert "balance leastconn" in cfg
    assert "option httpchk GET /up" in cfg and "http-check expect status 200" in cfg
    assert "default-server inter 7s fall 2 rise 4" in cfg and "timeout check 3s" in cfg
    assert "server i1 127.9.9.11:8000 check" in cfg and "bind 127.9.9.1:8080" in cfg
    rr = render_config(Variant(name="rr"), "127.9.9.1", 8080, [], Path("/tmp/s.sock"))
    assert "balance roundrobin" in rr


def test_addresses_stay_in_loopback_and_differ_per_seed() -> None:
    hosts, lb = pick_addresses("run/scale-out/a", 3)
    other, _ = pick_addresses("run/scale-out/b", 3)
    for h in [*hosts, lb]:
        assert ipaddress.ip_address(h) in ipaddress.ip_network("127.0.0.0/8")
        assert not h.startswith("127.0.")
    assert len(set(hosts)) == 3 and hosts != other


def test_sweep_takes_only_our_dead_owners_cgroups(tmp_path: Path) -> None:
    import subprocess

    from experiments.backends.local.cgroups import CgroupLayout
    from experiments.backends.local.state import StateDir, find_leftovers

    root = tmp_path / "cg"
    _fake_v2(root)
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = [f"scalelab-p{dead.pid}-abcdef-micro-i0",  # ours, owner gone: a leftover
             f"scalelab-p{os.getpid()}-abcdef-micro-i0",  # ours, owner alive: not touched
             "scalelab-recording-micro"]  # someone else's naming: never touched
    for name in names:
        (root / name).mkdir()
        (root / name / "cgroup.procs").write_text("")
    found = find_leftovers(StateDir(tmp_path / "state"), CgroupLayout(2, {"unified": root}))
    assert [Path(item.ident).name for item in found] == [names[0]]


def test_haproxy_maxconn_fits_the_open_files_hard_limit(tmp_path: Path) -> None:
    assert maxconn_for(None) == maxconn_for(1 << 20) == MAXCONN == 4096
    assert maxconn_for(1024) == 480 and maxconn_for(4096) == 2016
    with pytest.raises(UserError, match="open-files hard limit is 100"):
        maxconn_for(100)
    cfg = render_config(Variant(name="lb"), "127.9.9.1", 8080, [], tmp_path / "s.sock",
                        maxconn=480)
    assert "    maxconn 480\n" in cfg


def test_v2_swappiness_is_explicit_the_hosts_applies_and_0_turns_swap_off(tmp_path: Path) -> None:
    # v1 sets it per cgroup, silently right
    v1 = swappiness_applied(1, 10, 256 * 1024 * 1024, host=60)
    assert (v1.applied, v1.how, v1.note) == (10, "memory.swappiness", None)
    # v2, a swap variant asking for another value than the host's: said, not hidden
    other = swappiness_applied(2, 10, 256 * 1024 * 1024, host=60)
    assert other.to_dict() == {"requested": 10, "applied": 60,
                               "how": "host vm.swappiness (cgroup v2 has no per-cgroup "
                                      "swappiness)"}
    assert other.note is not None and "swappiness 10 is NOT applied" in other.note \
        and "vm.swappiness (60)" in other.note
    same = swappiness_applied(2, 60, 256 * 1024 * 1024, host=60)
    assert same.applied == 60 and same.note is not None and "the same as the variant's" in \
        same.note
    unknown = swappiness_applied(2, 60, None, host=None)
    assert unknown.applied is None and unknown.note is not None and "(unreadable)" in unknown.note
    # no swap: swappiness changes nothing, nothing to say
    assert swappiness_applied(2, 10, 0, host=60).note is None
    # 0: v2's memory.swap.max 0, like v1's swappiness 0 in a cgroup
    off = swappiness_applied(2, 0, 256 * 1024 * 1024, host=60)
    assert (off.applied, off.how) == (0, "memory.swap.max 0") and off.note is not None
    cg = CgroupV2("scalelab-p1-abc-swap-i0", tmp_path)
    cg.create()
    written = cg.set_limits(memory_bytes=100 * 1024 * 1024, swap_bytes=256 * 1024 * 1024,
                            swappiness=0, cpu_cores=0.5)
    assert written == off
    assert (cg.path / "memory.swap.max").read_text() == "0"
    assert not (cg.path / "memory.swappiness").exists()
    cg.set_limits(memory_bytes=100 * 1024 * 1024, swap_bytes=256 * 1024 * 1024,
                  swappiness=30, cpu_cores=0.5)
    assert (cg.path / "memory.swap.max").read_text() == str(256 * 1024 * 1024)


def test_instances_are_pinned_to_as_many_host_cpus_as_they_have_vcpus() -> None:
    """A micro's workers time-share one CPU, as on its one vCPU; instances go round-robin."""
    from experiments.backends.local import instance_cpus
    from experiments.backends.local.supervisor import wrap_in_cgroup

    host = [0, 1]
    assert [instance_cpus(i, 1, host) for i in range(3)] == [[0], [1], [0]]
    assert instance_cpus(0, 2, host) is None  # as many vCPUs as the host has: not pinned
    assert instance_cpus(0, 4, host) is None
    assert [instance_cpus(i, 2, [0, 1, 2, 3]) for i in range(3)] == [[0, 1], [2, 3], [0, 1]]
    assert instance_cpus(1, 1, [3, 5, 7]) == [5]  # the CPUs this process may use
    argv = wrap_in_cgroup([Path("/x/cgroup.procs")], ["gunicorn", "app"], [1])
    assert argv[argv.index("--") + 1:] == ["taskset", "--cpu-list", "1", "gunicorn", "app"]
    unpinned = wrap_in_cgroup([Path("/x/cgroup.procs")], ["gunicorn", "app"])
    assert unpinned[unpinned.index("--") + 1:] == ["gunicorn", "app"]

"""One cgroup per emulated instance, on cgroup v1 or v2 behind one interface.

v1 (separate memory / cpu / cpuacct hierarchies) and v2 (one unified tree) name the same
limits differently; the rest of the backend only sees `InstanceCgroup`: set limits, read a
`CgroupStats`, list and kill members, remove. Cgroups are created as children of the cgroup
this process already runs in, so a run never escapes the limits (or the bookkeeping) of
whatever started it, and a delegated v2 subtree (`systemd-run --user --scope -p Delegate=yes`)
works without root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.errors import UserError

CGROUP_PREFIX = "scalelab-"
"""Every cgroup this backend creates starts with this, so a sweeper can find them."""
CPU_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000
FIX_HINT = ("run as root, or start scalelab inside a delegated cgroup v2 subtree: "
            "systemd-run --user --scope -p Delegate=yes python -m experiments ...")


@dataclass
class CgroupStats:
    """Raw counters read from one cgroup (cumulative ones are since the cgroup was made)."""

    memory_bytes: int
    memory_limit_bytes: int | None
    swap_bytes: int
    major_faults: int
    cpu_usage_s: float
    throttled_s: float
    oom_kills: int


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str | int) -> None:
    """Write one value; a refused write becomes a UserError naming the file (no traceback)."""
    try:
        with open(path, "w") as fh:
            fh.write(str(value))
    except OSError as exc:
        raise UserError(f"cannot write {value!r} to {path} ({exc.strerror}); {FIX_HINT}.") from None


def _kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
    return out


def quota_us(cores: float, period_us: int = CPU_PERIOD_US) -> int:
    """CFS quota for `cores` host cores per `period_us` (kernel minimum 1 ms)."""
    return max(MIN_QUOTA_US, round(cores * period_us))


def host_swappiness(proc_file: Path = Path("/proc/sys/vm/swappiness")) -> int | None:
    """vm.swappiness: what v2 cgroups swap by (v2 has no per-cgroup knob; we never set it)."""
    try:
        return int(_read(proc_file))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class SwappinessApplied:
    """What became of a variant's swappiness: v1 sets it per cgroup, v2 cannot.

    On v2 the host's vm.swappiness governs every cgroup's reclaim (changing it would change the
    whole host, so we never do). The one value v2 can honour is 0: under v1 a cgroup with
    swappiness 0 never swaps its memory out, and `memory.swap.max 0` does the same on v2.
    """

    requested: int
    applied: int | None
    """The swappiness the kernel reclaims this cgroup by (None: the host's is unreadable)."""
    how: str
    note: str | None
    """One sentence for the run's output when the variant's value is not what applies."""

    def to_dict(self) -> dict[str, object]:
        return {"requested": self.requested, "applied": self.applied, "how": self.how}


def swappiness_applied(version: int, requested: int, swap_bytes: int | None,
                       host: int | None) -> SwappinessApplied:
    """How `requested` is applied on cgroup `version` for a cgroup allowed `swap_bytes` swap."""
    if version == 1:
        return SwappinessApplied(requested, requested, "memory.swappiness", None)
    if requested == 0:
        note = None if swap_bytes == 0 else (
            "cgroup v2 has no per-cgroup swappiness; swappiness 0 is applied as memory.swap.max "
            "0 (no swap for this instance, as cgroup v1's swappiness 0 would do)")
        return SwappinessApplied(0, 0, "memory.swap.max 0", note)
    how = "host vm.swappiness (cgroup v2 has no per-cgroup swappiness)"
    if swap_bytes == 0:  # nothing to swap to: swappiness changes nothing
        return SwappinessApplied(requested, host, how, None)
    shown = "unreadable" if host is None else str(host)
    if host == requested:
        note = (f"cgroup v2 has no per-cgroup swappiness; the host's vm.swappiness ({shown}, "
                "the same as the variant's) applies")
    else:
        note = (f"cgroup v2 has no per-cgroup swappiness; the variant's swappiness {requested} "
                f"is NOT applied, the host's vm.swappiness ({shown}) is (sysctl "
                f"vm.swappiness={requested} would match it, for the whole host)")
    return SwappinessApplied(requested, host, how, note)


class InstanceCgroup:
    """The cgroup(s) of one instance; subclasses know the file names of one cgroup version."""

    version: int = 0

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def paths(self) -> list[Path]:
        raise NotImplementedError

    def create(self) -> None:
        for path in self.paths:
            try:
                path.mkdir(exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot create cgroup {path} ({exc.strerror}); {FIX_HINT}.") \
                    from None

    def procs_files(self) -> list[Path]:
        """Files a new process writes its pid into (before exec) to join this cgroup."""
        return [p / "cgroup.procs" for p in self.paths]

    def set_limits(self, memory_bytes: int | None, swap_bytes: int | None, swappiness: int,
                   cpu_cores: float | None) -> SwappinessApplied:
        """Memory, swap and CPU limits; says how `swappiness` could be applied here."""
        raise NotImplementedError

    def set_cpu(self, cpu_cores: float | None, period_us: int = CPU_PERIOD_US) -> None:
        """`cpu_cores` host cores (None: no limit) as a CFS quota per `period_us`."""
        raise NotImplementedError

    def read_limits(self) -> dict[str, int | None]:
        raise NotImplementedError

    def stats(self) -> CgroupStats:
        raise NotImplementedError

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths:
            with contextlib.suppress(OSError):
                found.update(int(x) for x in (path / "cgroup.procs").read_text().split())
        return found

    def kill_all(self, timeout_s: float = 3.0) -> None:
        """SIGKILL every member until the cgroup is empty (later forks die on the next pass)."""
        deadline = time.monotonic() + timeout_s
        while True:
            members = self.pids()
            if not members:
                return
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)

    def remove(self, timeout_s: float = 3.0) -> bool:
        """Kill what is left inside, then rmdir (the kernel refuses while a member lingers)."""
        self.kill_all(timeout_s)
        ok = True
        for path in reversed(self.paths):
            if not path.exists():
                continue
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        ok = False
                        break
                    time.sleep(0.02)
        return ok


# ---- cgroup v1 ------------------------------------------------------------------------------

class CgroupV1(InstanceCgroup):
    """v1: memory (+memsw for swap), cpu (CFS quota) and cpuacct, each its own hierarchy."""

    version = 1

    def __init__(self, name: str, memory_parent: Path, cpu_parent: Path,
                 cpuacct_parent: Path) -> None:
        super().__init__(name)
        self.memory = memory_parent / name
        self.cpu = cpu_parent / name
        # cpu and cpuacct are often co-mounted (cpu,cpuacct): then they are the same directory.
        self.cpuacct = cpuacct_parent / name

    @property
    def paths(self) -> list[Path]:
        return list(dict.fromkeys([self.memory, self.cpu, self.cpuacct]))

    def set_limits(self, memory_bytes: int | None, swap_bytes: int | None, swappiness: int,
                   cpu_cores: float | None) -> SwappinessApplied:
        m = self.memory
        _write(m / "memory.oom_control", 0)  # the kernel must kill, as on a real instance
        _write(m / "memory.swappiness", swappiness)
        if memory_bytes is not None:
            # memsw must stay >= limit: raise memsw first when growing, lower it last otherwise.
            memsw = memory_bytes + (swap_bytes or 0)
            memsw_file = m / "memory.memsw.limit_in_bytes"
            if not memsw_file.exists():
                raise UserError(f"{memsw_file} is missing, so swap cannot be limited; boot with "
                                "swapaccount=1 (or use cgroup v2).")
            current = int(_read(m / "memory.limit_in_bytes"))
            if memory_bytes > current:
                _write(memsw_file, memsw)
                _write(m / "memory.limit_in_bytes", memory_bytes)
            else:
                _write(m / "memory.limit_in_bytes", memory_bytes)
                _write(memsw_file, memsw)
        self.set_cpu(cpu_cores)
        return swappiness_applied(1, swappiness, swap_bytes, None)

    def set_cpu(self, cpu_cores: float | None, period_us: int = CPU_PERIOD_US) -> None:
        _write(self.cpu / "cpu.cfs_period_us", period_us)
        _write(self.cpu / "cpu.cfs_quota_us",
               -1 if cpu_cores is None else quota_us(cpu_cores, period_us))

    def read_limits(self) -> dict[str, int | None]:
        mem = int(_read(self.memory / "memory.limit_in_bytes"))
        memsw = int(_read(self.memory / "memory.memsw.limit_in_bytes"))
        quota = int(_read(self.cpu / "cpu.cfs_quota_us"))
        return {"memory_bytes": mem, "swap_bytes": memsw - mem,
                "swappiness": int(_read(self.memory / "memory.swappiness")),
                "cpu_quota_us": None if quota < 0 else quota,
                "cpu_period_us": int(_read(self.cpu / "cpu.cfs_period_us"))}

    def stats(self) -> CgroupStats:
        m = self.memory
        usage = int(_read(m / "memory.usage_in_bytes"))
        memsw = int(_read(m / "memory.memsw.usage_in_bytes"))
        mstat = _kv(m / "memory.stat")
        swap = mstat.get("total_swap", mstat.get("swap", max(0, memsw - usage)))
        cpu_stat = _kv(self.cpu / "cpu.stat")
        limit = int(_read(m / "memory.limit_in_bytes"))
        return CgroupStats(
            memory_bytes=usage,
            memory_limit_bytes=None if limit >= 1 << 62 else limit,
            swap_bytes=swap,
            major_faults=mstat.get("total_pgmajfault", mstat.get("pgmajfault", 0)),
            cpu_usage_s=int(_read(self.cpuacct / "cpuacct.usage")) / 1e9,
            throttled_s=cpu_stat.get("throttled_time", 0) / 1e9,
            oom_kills=_kv(m / "memory.oom_control").get("oom_kill", 0),
        )


# ---- cgroup v2 ------------------------------------------------------------------------------

class CgroupV2(InstanceCgroup):
    """v2: memory.max, memory.swap.max and cpu.max in one directory."""

    version = 2

    def __init__(self, name: str, parent: Path) -> None:
        super().__init__(name)
        self.path = parent / name

    @property
    def paths(self) -> list[Path]:
        return [self.path]

    def set_limits(self, memory_bytes: int | None, swap_bytes: int | None, swappiness: int,
                   cpu_cores: float | None) -> SwappinessApplied:
        p = self.path
        applied = swappiness_applied(2, swappiness, swap_bytes, host_swappiness())
        if swappiness == 0:  # v2's only way to honour it (see SwappinessApplied)
            swap_bytes = 0
        _write(p / "memory.max", "max" if memory_bytes is None else memory_bytes)
        _write(p / "memory.swap.max", "max" if swap_bytes is None else swap_bytes)
        # oom.group stays 0 so the kernel kills one process (a worker), not the whole instance.
        with contextlib.suppress(UserError):
            _write(p / "memory.oom.group", 0)
        self.set_cpu(cpu_cores)
        return applied

    def set_cpu(self, cpu_cores: float | None, period_us: int = CPU_PERIOD_US) -> None:
        quota = "max" if cpu_cores is None else str(quota_us(cpu_cores, period_us))
        _write(self.path / "cpu.max", f"{quota} {period_us}")

    def read_limits(self) -> dict[str, int | None]:
        def num(text: str) -> int | None:
            return None if text == "max" else int(text)

        quota, period = _read(self.path / "cpu.max").split()
        return {"memory_bytes": num(_read(self.path / "memory.max")),
                "swap_bytes": num(_read(self.path / "memory.swap.max")),
                "swappiness": host_swappiness(),
                "cpu_quota_us": num(quota), "cpu_period_us": int(period)}

    def stats(self) -> CgroupStats:
        p = self.path
        mstat = _kv(p / "memory.stat")
        cpu_stat = _kv(p / "cpu.stat")
        limit = _read(p / "memory.max")
        swap_file = p / "memory.swap.current"
        return CgroupStats(
            memory_bytes=int(_read(p / "memory.current")),
            memory_limit_bytes=None if limit == "max" else int(limit),
            swap_bytes=int(_read(swap_file)) if swap_file.exists() else 0,
            major_faults=mstat.get("pgmajfault", 0),
            cpu_usage_s=cpu_stat.get("usage_usec", 0) / 1e6,
            throttled_s=cpu_stat.get("throttled_usec", 0) / 1e6,
            oom_kills=_kv(p / "memory.events").get("oom_kill", 0),
        )


# ---- finding where to create cgroups ----------------------------------------------------

@dataclass
class CgroupLayout:
    """Where this host lets us create instance cgroups."""

    version: int
    parents: dict[str, Path]
    """v1: controller -> parent directory; v2: {"unified": parent}."""

    def make(self, name: str) -> InstanceCgroup:
        if self.version == 1:
            return CgroupV1(name, self.parents["memory"], self.parents["cpu"],
                            self.parents["cpuacct"])
        return CgroupV2(name, self.parents["unified"])

    def roots(self) -> list[Path]:
        """Directories a sweeper searches for `scalelab-*` cgroups."""
        return list(dict.fromkeys(self.parents.values()))


def _mounts(mounts_file: Path) -> list[tuple[str, str, set[str]]]:
    rows = []
    for line in mounts_file.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            rows.append((parts[1], parts[2], set(parts[3].split(","))))
    return rows


def _self_cgroups(cgroup_file: Path) -> dict[str, str]:
    """controller -> this process's path in that hierarchy ('' key = the v2 unified path)."""
    out: dict[str, str] = {}
    for line in cgroup_file.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def detect_layout(mounts_file: Path = Path("/proc/mounts"),
                  cgroup_file: Path = Path("/proc/self/cgroup"),
                  v2_root: Path | None = None, as_root: bool | None = None) -> CgroupLayout:
    """Pick v1 when the memory controller is mounted as v1 (hybrid hosts), else v2.

    Raises UserError naming what is missing: controllers, write access or swap accounting.
    """
    try:
        mounts = _mounts(mounts_file)
        own = _self_cgroups(cgroup_file)
    except OSError as exc:
        raise UserError(f"cannot read {exc.filename} to find cgroups; the local backend needs "
                        "Linux with cgroups mounted.") from None
    v1 = {c: Path(mnt) for mnt, fstype, opts in mounts if fstype == "cgroup"
          for c in ("memory", "cpu", "cpuacct") if c in opts}
    if "memory" in v1:
        missing = [c for c in ("cpu", "cpuacct") if c not in v1]
        if missing:
            raise UserError(f"cgroup v1 controller(s) {', '.join(missing)} are not mounted; mount "
                            "them under /sys/fs/cgroup or boot with cgroup v2 "
                            "(systemd.unified_cgroup_hierarchy=1).")
        parents = {c: root / own.get(c, "/").lstrip("/") for c, root in v1.items()}
        for c, parent in parents.items():
            if not os.access(parent, os.W_OK):
                raise UserError(f"cgroup {parent} ({c}) is not writable by this user; {FIX_HINT}.")
        return CgroupLayout(1, parents)
    unified = v2_root or next((Path(m) for m, fstype, _ in mounts if fstype == "cgroup2"), None)
    if unified is None:
        raise UserError("no cgroup v1 memory controller and no cgroup2 mount found; the local "
                        "backend needs cgroups (mount cgroup2 at /sys/fs/cgroup).")
    return CgroupLayout(2, {"unified": prepare_v2_parent(unified, own.get("", "/"), as_root)})


def prepare_v2_parent(unified: Path, own_path: str, as_root: bool | None = None) -> Path:
    """Return a v2 directory whose children may carry memory and cpu limits.

    Root: `<mount>/scalelab` under the root cgroup. Otherwise our own (delegated) cgroup; v2
    forbids processes in a cgroup that hands controllers to children, so our own processes move
    into a `scalelab-supervisor` leaf first.
    """
    if as_root is None:
        as_root = os.geteuid() == 0
    if as_root:
        parent = unified / "scalelab"
        try:
            parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create cgroup {parent} ({exc.strerror}); {FIX_HINT}.") \
                from None
        _enable_controllers(unified)
        _enable_controllers(parent)
        return parent
    parent = unified / own_path.lstrip("/")
    leaf_name = f"{CGROUP_PREFIX}supervisor"
    if parent.name == leaf_name:
        # A child of a delegated run (a test, a Locust worker) starts in the leaf its parent
        # made: the delegated cgroup is the leaf's parent; nesting a second leaf would drag the
        # parent's processes one level further down.
        parent = parent.parent
    if not os.access(parent / "cgroup.subtree_control", os.W_OK):
        raise UserError(f"cgroup {parent} is not delegated to this user (cannot write "
                        f"cgroup.subtree_control); {FIX_HINT}.")
    leaf = parent / leaf_name
    leaf.mkdir(exist_ok=True)
    for pid in (parent / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):
            _write(leaf / "cgroup.procs", pid)
    _enable_controllers(parent)
    return parent


def _enable_controllers(cgroup: Path) -> None:
    available = set((cgroup / "cgroup.controllers").read_text().split())
    missing = {"memory", "cpu"} - available
    if missing:
        raise UserError(f"cgroup {cgroup} lacks the {', '.join(sorted(missing))} controller(s); "
                        f"enable them in its parent's cgroup.subtree_control or {FIX_HINT}.")
    enabled = set((cgroup / "cgroup.subtree_control").read_text().split())
    for c in ("memory", "cpu"):
        if c not in enabled:
            _write(cgroup / "cgroup.subtree_control", f"+{c}")


def find_cgroups(layout: CgroupLayout, max_depth: int = 4) -> list[Path]:
    """Every `scalelab-<...>` instance cgroup below the layout's roots (not the supervisor leaf)."""
    found: list[Path] = []
    for root in layout.roots():
        # Search from the hierarchy's mount root: earlier runs may have nested under other
        # cgroups (each job of a CI system gets its own).
        top = root
        while top.parent != top and (top.parent / "cgroup.procs").exists():
            top = top.parent
        stack = [(top, 0)]
        while stack:
            d, depth = stack.pop()
            try:
                children = [c for c in d.iterdir() if c.is_dir()]
            except OSError:
                continue
            for c in children:
                if c.name.startswith(CGROUP_PREFIX) and c.name != f"{CGROUP_PREFIX}supervisor":
                    found.append(c)
                elif depth < max_depth:
                    stack.append((c, depth + 1))
    return found


class PlainCgroup(InstanceCgroup):
    """An existing cgroup directory found by a sweep: only members and removal are needed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path.name)
        self.path = path

    @property
    def paths(self) -> list[Path]:
        return [self.path]


def remove_cgroup_dir(path: Path, timeout_s: float = 3.0) -> bool:
    """Kill members of a (leftover) cgroup directory and remove it."""
    return PlainCgroup(path).remove(timeout_s)

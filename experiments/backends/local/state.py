"""Marker files: what each deployment created, written *before* creating it.

A run killed with SIGKILL (or a power cut) cannot clean up; the next run (or `leftovers
--delete`) reads the markers of deployments whose owner process is gone and removes their
cgroups (killing the processes inside), swapfiles and directories. Markers of live owners are
never touched, so two runs on one host do not sweep each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from experiments.backends.base import Leftover
from experiments.backends.local import swap
from experiments.backends.local.cgroups import (
    CGROUP_PREFIX,
    CgroupLayout,
    find_cgroups,
    remove_cgroup_dir,
)


def default_state_dir() -> Path:
    env = os.environ.get("SCALELAB_LOCAL_STATE_DIR")
    if env:
        return Path(env)
    suffix = "" if os.geteuid() == 0 else f"-{os.geteuid()}"
    return Path("/var/tmp") / f"scalelab-local{suffix}"


def _proc_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): pid plus this survives pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_alive(pid: int, start: str) -> bool:
    return _proc_start(pid) == start


@dataclass
class Marker:
    deployment_id: str
    run_id: str
    variant: str
    owner_pid: int
    owner_start: str
    created_at: float
    cgroups: list[str] = field(default_factory=list)
    swapfiles: list[str] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)
    pgids: list[int] = field(default_factory=list)


class StateDir:
    """`<state_dir>/deployments/<id>.json` markers plus the directories they point at."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.markers = root / "deployments"
        self._lock = threading.Lock()  # supervisor threads record restarted pids too

    def ensure(self) -> None:
        self.markers.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            self.root.chmod(0o700)

    def new_marker(self, deployment_id: str, run_id: str, variant: str) -> Marker:
        pid = os.getpid()
        marker = Marker(deployment_id, run_id, variant, pid, _proc_start(pid) or "",
                        time.time())
        self.save(marker)
        return marker

    def save(self, marker: Marker) -> None:
        """Atomic write: a crash mid-write must not leave an unreadable marker."""
        self.ensure()
        path = self.markers / f"{marker.deployment_id}.json"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with self._lock:
            tmp.write_text(json.dumps(asdict(marker), indent=1))
            os.replace(tmp, path)

    def drop(self, marker: Marker) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.markers / f"{marker.deployment_id}.json").unlink()

    def load_all(self) -> list[Marker]:
        out: list[Marker] = []
        if not self.markers.is_dir():
            return out
        for path in sorted(self.markers.glob("*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                out.append(Marker(**json.loads(path.read_text())))
        return out

    def dead_markers(self) -> list[Marker]:
        return [m for m in self.load_all() if not owner_alive(m.owner_pid, m.owner_start)]

    def live_ids(self) -> set[str]:
        return {m.deployment_id for m in self.load_all()
                if owner_alive(m.owner_pid, m.owner_start)}


_OWNED = re.compile(rf"^{re.escape(CGROUP_PREFIX)}p(\d+)-[0-9a-f]{{6}}-")


def _owner_pid_of(cgroup_name: str) -> int | None:
    """Our cgroup names are `scalelab-p<owner pid>-<6 hex>-<variant>-<role>`; anything else
    (someone else's `scalelab-...`) has no owner we can judge and is never swept."""
    m = _OWNED.match(cgroup_name)
    return int(m.group(1)) if m else None


def find_leftovers(state: StateDir, layout: CgroupLayout | None) -> list[Leftover]:
    """Everything dead runs left: from their markers, plus unmarked `scalelab-` cgroups and
    swapfiles (a marker can be lost with its directory)."""
    found: list[Leftover] = []
    seen: set[str] = set()
    live = state.live_ids()
    for m in state.dead_markers():
        for cg in m.cgroups:
            if Path(cg).exists():
                found.append(Leftover("cgroup", cg, f"variant {m.variant}", m.run_id))
                seen.add(cg)
        active = set(map(str, swap.active_swapfiles()))
        for swapfile in m.swapfiles:
            if Path(swapfile).exists() or swapfile in active:
                found.append(Leftover("swapfile", swapfile, f"variant {m.variant}", m.run_id))
                seen.add(swapfile)
        for d in m.directories:
            if Path(d).exists():
                found.append(Leftover("directory", d, f"variant {m.variant}", m.run_id))
        found.append(Leftover("marker", str(state.markers / f"{m.deployment_id}.json"),
                              f"deployment {m.deployment_id}", m.run_id))
    if layout is not None:
        for cg_path in find_cgroups(layout):
            if str(cg_path) in seen or any(i in cg_path.name for i in live):
                continue
            pid = _owner_pid_of(cg_path.name)
            if pid is None or Path(f"/proc/{pid}").exists():
                continue  # not ours, or its owner still runs (maybe with another state dir)
            found.append(Leftover("cgroup", str(cg_path), "unmarked"))
    for sf in swap.active_swapfiles():
        if str(sf) in seen or not sf.name.startswith(CGROUP_PREFIX):
            continue
        pid = _owner_pid_of(sf.name)
        if sf.is_relative_to(state.root) and pid is not None and \
                not Path(f"/proc/{pid}").exists():
            found.append(Leftover("swapfile", str(sf), "unmarked"))
    return found


def delete_leftover(item: Leftover) -> None:
    """Remove one leftover; cgroups first kill whatever still runs inside them."""
    path = Path(item.ident)
    if item.kind == "cgroup":
        remove_cgroup_dir(path)
    elif item.kind == "swapfile":
        swap.remove_swapfile(path)
    elif item.kind == "directory":
        shutil.rmtree(path, ignore_errors=True)
    elif item.kind == "marker":
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def delete_leftovers(state: StateDir, layout: CgroupLayout | None) -> Iterator[Leftover]:
    # Order matters: processes (cgroups) before swap (swapoff of a busy file is slow),
    # markers last so an interrupted sweep is resumed by the next one.
    rank = {"cgroup": 0, "swapfile": 1, "directory": 2, "marker": 3}
    for item in sorted(find_leftovers(state, layout), key=lambda i: rank.get(i.kind, 9)):
        delete_leftover(item)
        yield item

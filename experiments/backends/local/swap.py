"""Host swap for variants that have swap, made the way the seed made it.

A cgroup's swap limit only matters when the host has swap to give. When free host swap is
short, a swapfile is created with the seed's own commands (fallocate -l, chmod 600, mkswap,
swapon; permissions are tightened before mkswap so the file is never world-readable as swap)
and removed (swapoff, rm) at teardown.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from experiments.errors import UserError

PROC_SWAPS = Path("/proc/swaps")


def free_swap_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("SwapFree:"):
            return int(line.split()[1]) * 1024
    return 0


def active_swapfiles(proc_swaps: Path = PROC_SWAPS) -> list[Path]:
    """Swap areas in use (paths; `\\040` is how the kernel escapes a space)."""
    lines = proc_swaps.read_text().splitlines()[1:]
    return [Path(line.split()[0].replace("\\040", " ")) for line in lines if line.strip()]


def _run(cmd: list[str]) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} is not installed; install util-linux to give swap variants "
                        "their swap.") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise UserError(f"`{' '.join(cmd)}` failed ({why[-1] if why else done.returncode}); "
                        "swap variants need root (or enough free host swap already on).")


def create_swapfile(path: Path, size_mib: int) -> None:
    """The seed's commands: fallocate -l <size>M, chmod 600, mkswap, swapon."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _run(["fallocate", "-l", f"{size_mib}M", str(path)])
        _run(["chmod", "600", str(path)])
        _run(["mkswap", str(path)])
        _run(["swapon", str(path)])
    except BaseException:
        remove_swapfile(path)
        raise


def remove_swapfile(path: Path) -> None:
    """swapoff (pages move back to RAM) then rm; quiet when already gone."""
    if path in active_swapfiles():
        subprocess.run(["swapoff", str(path)], capture_output=True, timeout=120)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def needs_swapfiles(needed_mib: int) -> bool:
    """True when the host's free swap cannot hold `needed_mib` (the sum of the instances' swap)."""
    return needed_mib > 0 and free_swap_bytes() < needed_mib * 1024 * 1024

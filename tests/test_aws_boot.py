"""Issue 12 #6: a failed boot step stops the boot loudly; swap is verified where it is made.

The rendered files are written under a temporary root (absolute paths moved into it), runcmd
is turned into its shell script by cloud-init's own `shellify`, and system commands the swap
step needs are fakes on PATH. Steps after the one that fails are stand-ins that leave a mark.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from stacks.variant import load_variant
from userdata.render import AppFetch, cloud_config

FETCH = AppFetch("scalelab-bundle-bucket-1a2b3c4", "bundles/v/0123456789abcdef.zip")
MOVED = ("/usr/local/sbin/", "/var/lib/scalelab", "/etc/", "/swapfile")
LATER = ("scalelab-cloudwatch-agent.sh", "scalelab-fetch-app.sh", "scalelab-install-app.sh")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's cloud-init lives in the system interpreter


def relocate(text: str, root: Path) -> str:
    for prefix in MOVED:
        text = text.replace(prefix, f"{root}{prefix}")
    return text


def fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def runcmd_script(runcmd: list) -> str:
    """What cloud-init's runcmd module writes to /var/lib/cloud/instance/scripts/runcmd."""
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import json, sys; from cloudinit.util import shellify; "
                              "sys.stdout.write(shellify(json.load(sys.stdin)))"],
        input=json.dumps(runcmd), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def boot(tmp_path: Path, fakes: dict[str, str]) -> tuple[subprocess.CompletedProcess, Path]:
    root = tmp_path / "root"
    doc = cloud_config(load_variant("micro-swap"), FETCH)
    for f in doc["write_files"]:
        path = Path(relocate(f["path"], root))
        path.parent.mkdir(parents=True, exist_ok=True)
        content = f["content"]
        if path.name in LATER:
            content = f"#!/bin/bash\necho ran >> {root}/ran-{path.name}\n"
        path.write_text(relocate(content, root))
        path.chmod(int(f["permissions"], 8))
    (root / "etc" / "fstab").touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in fakes.items():
        fake(bin_dir, name, body)
    script = tmp_path / "runcmd"
    script.write_text(relocate(runcmd_script(doc["runcmd"]), root))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env,
                          timeout=60)
    return done, root


HARMLESS = {"chmod": "exit 0", "mkswap": "exit 0", "sysctl": "exit 0"}


def test_an_early_failed_step_stops_the_boot_loudly(tmp_path: Path) -> None:
    done, root = boot(tmp_path, {
        **HARMLESS, "swapon": "exit 0",
        "fallocate": "echo 'fallocate: fallocate failed: No space left on device' >&2; exit 1"})
    assert done.returncode != 0  # cloud-init then reports `status: error`
    assert "SCALELAB BOOT FAILED" in done.stderr and "scalelab-swap.sh exited 1" in done.stderr
    assert [p.name for p in root.glob("ran-*")] == []  # no later step ran
    failed = (root / "var/lib/scalelab/boot-failed").read_text()
    assert "scalelab-swap.sh exited 1" in failed


def test_swap_that_is_not_on_fails_the_swap_step(tmp_path: Path) -> None:
    """Every command "works", but swapon --show lists nothing: no silent swap-less box."""
    done, root = boot(tmp_path, {**HARMLESS, "fallocate": "exit 0", "swapon": "exit 0"})
    assert done.returncode != 0
    assert "/swapfile is not on with 2048 MiB" in done.stderr
    assert [p.name for p in root.glob("ran-*")] == []


@pytest.mark.parametrize("shown", [2048 * 1024 * 1024 - 4096])
def test_a_good_boot_runs_every_step_in_order(tmp_path: Path, shown: int) -> None:
    root = tmp_path / "root"
    done, root = boot(tmp_path, {
        **HARMLESS, "fallocate": "exit 0",
        "swapon": f'[ "$1" = "--show=NAME,SIZE" ] && echo "{root}/swapfile {shown}"; exit 0'})
    assert done.returncode == 0, done.stderr
    assert "scalelab: boot finished (4 steps)" in done.stdout
    assert sorted(p.name for p in root.glob("ran-*")) == sorted(f"ran-{n}" for n in LATER)
    assert not (root / "var/lib/scalelab/boot-failed").exists()

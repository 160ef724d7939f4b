"""Where a run's numbers came from: package versions, git revision, host (written to run.json)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from stacks.variant import PROJECT_DIR

PACKAGES = ("scalelab", "locust", "gunicorn", "django", "pulumi", "pulumi-aws", "boto3")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    try:
        first = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, timeout=5)
        found["haproxy"] = first.stdout.split("\n", 1)[0].split(" ")[2]
    except (OSError, IndexError, subprocess.SubprocessError):
        found["haproxy"] = "not installed"
    return found


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5).stdout
        return rev + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def host() -> dict[str, Any]:
    import psutil

    from experiments.estimate import host_cpu_model

    cgroup = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    return {"hostname": socket.gethostname(), "cores": os.cpu_count(),
            "cpu_model": host_cpu_model(),
            "memory_bytes": psutil.virtual_memory().total, "kernel": platform.release(),
            "cgroup": cgroup, "platform": platform.platform()}

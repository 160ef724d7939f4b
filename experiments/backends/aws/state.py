"""What the AWS backend remembers between runs, in a small JSON file next to the Pulumi state.

Leftovers must be found after a crash, so the facts a sweeper needs cannot live in memory:
which regions runs used, which runs are alive (pid + host), and which Pulumi stacks were
brought up and not yet destroyed.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from experiments.results import atomic_write_text

STATE_FILE = "scalelab-aws.json"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalState:
    """Read-modify-write of one JSON file; runs are rare and short-lived, so no locking."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        data.setdefault("regions", [])
        data.setdefault("runs", {})
        data.setdefault("stacks", {})
        return data

    def _save(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    # ---- regions -------------------------------------------------------------------------
    def regions(self) -> list[str]:
        return list(self._load()["regions"])

    def remember_region(self, region: str) -> None:
        data = self._load()
        if region not in data["regions"]:
            data["regions"].append(region)
            self._save(data)

    # ---- runs that are alive right now ---------------------------------------------------
    def mark_running(self, run_id: str) -> None:
        data = self._load()
        data["runs"][run_id] = {"pid": os.getpid(), "host": socket.gethostname()}
        self._save(data)

    def unmark_running(self, run_id: str) -> None:
        data = self._load()
        if data["runs"].pop(run_id, None) is not None:
            self._save(data)

    def running_run_ids(self) -> set[str]:
        """Runs whose process is alive; a run on another host counts as alive (cannot check)."""
        here = socket.gethostname()
        alive = set()
        for run_id, info in self._load()["runs"].items():
            if info.get("host") != here or _pid_alive(int(info.get("pid", 0))):
                alive.add(run_id)
        return alive

    # ---- stacks that may still hold resources --------------------------------------------
    def add_pending_stack(self, stack: str, run_id: str, region: str) -> None:
        data = self._load()
        data["stacks"][stack] = {"run_id": run_id, "region": region}
        self._save(data)

    def drop_pending_stack(self, stack: str) -> None:
        data = self._load()
        if data["stacks"].pop(stack, None) is not None:
            self._save(data)

    def pending_stacks(self) -> dict[str, dict[str, str]]:
        return dict(self._load()["stacks"])

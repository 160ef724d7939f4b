"""Getting the app ready once per deployment: requirements, setup command, per-instance data.

The setup command (the shop's `python -m shop seed` by default) runs in a cache directory
keyed by (command, app directory): seeding is idempotent, so a rerun is quick, and each
instance then gets its own copy, as each EC2 instance has its own disk.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from experiments.errors import UserError
from stacks.variant import Variant

SETUP_TIMEOUT_S = 1800


def app_env(variant: Variant, data_dir: Path) -> dict[str, str]:
    """os.environ + the app's env + SCALELAB_DATA_DIR; `python` on PATH is this venv's."""
    env = {**os.environ, **variant.app.env, "SCALELAB_DATA_DIR": str(data_dir),
           "PYTHONUNBUFFERED": "1"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two runs on one host must not seed or pip-install into the same place at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def install_requirements(variant: Variant, state_dir: Path) -> None:
    """pip install -r the app's requirements into this venv, once per file content."""
    if not variant.app.requirements:
        return
    req = variant.app.directory / variant.app.requirements
    if not req.is_file():
        raise UserError(f"scalelab:app.requirements names {req}, which does not exist; give a "
                        "requirements file inside the app directory or leave it empty.")
    done = state_dir / "pip-cache" / f"{_digest(req.read_text(), sys.executable)}.done"
    with _locked(done.with_suffix(".lock")):
        if done.exists():
            return
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(req)],
                              capture_output=True, text=True, cwd=variant.app.directory)
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise UserError(f"pip install -r {req} failed ({last[0]}); fix the requirements "
                            "file or install them into the venv yourself.")
        done.touch()


def prepare_data(variant: Variant, state_dir: Path) -> Path:
    """Run the app's setup command in its cache data dir; return that dir (copy it per instance)."""
    app_dir = variant.app.directory
    if not app_dir.is_dir():
        raise UserError(f"the app directory {app_dir} (scalelab:app.path) does not exist.")
    cache = state_dir / "setup-cache" / _digest(variant.app.setup, str(app_dir))
    cache.mkdir(parents=True, exist_ok=True)
    if not variant.app.setup.strip():
        return cache
    with _locked(cache.with_suffix(".lock")):
        try:
            proc = subprocess.run(["/bin/sh", "-c", variant.app.setup], cwd=app_dir,
                                  env=app_env(variant, cache), capture_output=True, text=True,
                                  timeout=SETUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise UserError(f"app setup `{variant.app.setup}` did not finish within "
                            f"{SETUP_TIMEOUT_S} s; fix scalelab:app.setup.") from None
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"app setup `{variant.app.setup}` failed in {app_dir} with exit code "
                        f"{proc.returncode} ({last[0]}); fix scalelab:app.setup.")
    return cache


def copy_data(cache: Path, target: Path) -> None:
    shutil.copytree(cache, target, dirs_exist_ok=True, symlinks=True)

"""scripts/cgroup2-vm.sh outside the VM: the checks that run before anything is built or booted
(the VM itself runs through `scripts/cgroup2-vm.sh test`, opt-in, see the README)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cgroup2-vm.sh"


def test_a_checkout_under_tmp_is_refused_in_one_sentence() -> None:
    """The guest mounts its scratch disk over /tmp, so a checkout there would vanish under it
    (issue 14: the VM run of a fresh clone in /tmp found no files)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as checkout:
        _refused(Path(checkout))


def _refused(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy2(SCRIPT, tmp_path / "scripts" / SCRIPT.name)
    for helper in SCRIPT.parent.glob("cgroup2-vm*"):
        if helper.is_dir():
            shutil.copytree(helper, tmp_path / "scripts" / helper.name)
    done = subprocess.run(["bash", str(tmp_path / "scripts" / SCRIPT.name), "run", "true"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert f"the checkout {tmp_path} is under /tmp or /var/tmp" in done.stderr
    assert "clone it elsewhere" in done.stderr
    assert done.stderr.count("\n") == 1

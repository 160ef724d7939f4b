"""What a stack that failed to come up leaves behind, saved before it is destroyed.

A health-check timeout points the user at the instance's cloud-init log, and then `finally`
destroys the instance: so first the console output (EC2 keeps it for the instance's
lifetime only) and the cloud-init log plus the boot script's failure marker (over SSM) are
written into the run folder. Also here: the on-instance check that swap is on and of the
configured size before anything is measured.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments.backends.aws.logs import run_script
from experiments.errors import UserError
from userdata.render import BOOT_FAILED

BOOT_LOG_LINES = 400
BOOT_COMMANDS = [
    f"echo '--- {BOOT_FAILED} ---'; cat {BOOT_FAILED} 2>/dev/null || echo '(none)'",
    "echo '--- cloud-init status --long ---'; cloud-init status --long 2>&1 || true",
    f"echo '--- /var/log/cloud-init-output.log (last {BOOT_LOG_LINES} lines) ---'",
    f"tail -n {BOOT_LOG_LINES} /var/log/cloud-init-output.log 2>&1 || true",
]
SWAP_COMMANDS = ["swapon --show=NAME,SIZE --bytes --noheadings"]
_SWAP_LINE = re.compile(r"^(\S+)\s+(\d+)\s*$")


def console_output(ec2: Any, instance: str) -> str:
    """The newest console output: `Latest=True` where the hypervisor offers it (Nitro), the
    buffered one otherwise (t2 is Xen: UnsupportedOperation)."""
    try:
        answer = ec2.get_console_output(InstanceId=instance, Latest=True)
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code not in ("UnsupportedOperation", "InvalidParameterValue", "InvalidParameter"):
            raise
        answer = ec2.get_console_output(InstanceId=instance)
    return str(answer.get("Output") or "")


def save_evidence(session: Any, region: str, instance_ids: list[str], folder: Path,
                  emit: Callable[[str], None], ssm_timeout_s: float = 60.0) -> list[Path]:
    """Console output and cloud-init log of every instance into `folder`; returns the files.
    Best effort: what cannot be fetched is written down as such, never raised."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ec2 = session.client("ec2", region_name=region)
    for instance in instance_ids:
        path = folder / f"console-{instance}.txt"
        try:
            text = console_output(ec2, instance) or "(EC2 returned no console output yet)\n"
        except Exception as exc:
            text = f"(get_console_output failed: {exc})\n"
        path.write_text(text)
        written.append(path)
    results = run_script(session.client("ssm", region_name=region), instance_ids, BOOT_COMMANDS,
                         "scalelab: save the boot log before destroying", ssm_timeout_s)
    for instance, result in results.items():
        path = folder / f"cloud-init-{instance}.log"
        text = result["stdout"]
        if result["status"] != "Success":
            text += f"\n(SSM command ended {result['status']}: {result['stderr'].strip()})\n"
        path.write_text(text)
        written.append(path)
    emit(f"saved the boot evidence of {', '.join(instance_ids)} in {folder}")
    return written


def verify_swap(session: Any, region: str, instance_ids: list[str], swap_mib: int,
                timeout_s: float = 60.0, poll_s: float = 2.0) -> None:
    """Refuse to measure a swap variant whose instances do not have that swap on."""
    results = run_script(session.client("ssm", region_name=region), instance_ids, SWAP_COMMANDS,
                         "scalelab: check swap before measuring", timeout_s, poll_s)
    want = swap_mib * 1024 * 1024
    for instance in instance_ids:
        result = results.get(instance, {"status": "Unknown", "stdout": "", "stderr": ""})
        if result["status"] != "Success":
            raise UserError(f"could not check swap on {instance} over SSM (command "
                            f"{result['status']}: {result['stderr'].strip() or 'no detail'}); "
                            "measuring without knowing it is on would be meaningless.")
        total = sum(int(m.group(2)) for line in result["stdout"].splitlines()
                    if (m := _SWAP_LINE.match(line.strip())))
        # mkswap keeps one page for its header: the file's size minus at most 1 MiB.
        if not want - 1024 * 1024 <= total <= want:
            seen = f"{total / 1024 / 1024:.0f} MiB" if total else "no swap"
            raise UserError(f"instance {instance} has {seen} on, not the {swap_mib} MiB of "
                            "scalelab:swapMib; its boot did not finish the swap step (see the "
                            "saved cloud-init log).")

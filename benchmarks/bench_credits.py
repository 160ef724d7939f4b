"""Burst vs sustained on one emulated instance, measured by an independent tool (`hey`).

Deploys a variant (default: micro, the shop on an emulated t2.micro) with launch credits,
drives it with `hey`'s closed loop (loopback only) for `--seconds`, switches the same
deployment's credit balance to exhausted (`Deployment.set_credits`) and drives it again. A
standard-mode t2.micro then runs at its 10 % baseline, so the ratio should be near 0.1 for a
CPU-bound page, and the runway printed next to it is what the report shows.

Prints figures; asserts nothing. Needs root (cgroups) and `hey` on PATH.

    flock /tmp/scalelab-cpu.lock .venv/bin/python benchmarks/bench_credits.py \
        [--variant micro] [--path /products/] [--seconds 20] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.backends.local import LocalBackend  # noqa: E402
from experiments.credits_model import credit_runway  # noqa: E402
from experiments.load.driver import check_loopback  # noqa: E402
from stacks.catalog import load_catalog  # noqa: E402
from stacks.variant import load_variant  # noqa: E402


def hey(url: str, seconds: float, concurrency: int) -> tuple[float, int, int]:
    """(requests/s, 200 responses, other responses) from one `hey -z` run."""
    check_loopback(url)
    out = subprocess.run([shutil.which("hey") or "hey", "-z", f"{seconds}s", "-c",
                          str(concurrency), "-t", "120", url],
                         capture_output=True, text=True, timeout=seconds + 180).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    ok = sum(int(n) for n in re.findall(r"\[200\]\s+(\d+) responses", out))
    other = sum(int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)
                if code != "200")
    return (float(rps.group(1)) if rps else 0.0), ok, other


def cpu_vcpus(dep, since: float, cpu_scale: float) -> float:  # type: ignore[no-untyped-def]
    used = [s.cpu_used_cores for s in dep.observe().signals
            if s.cpu_used_cores is not None and s.t > since]
    return (sum(used) / len(used) / cpu_scale) if used else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="micro")
    parser.add_argument("--path", default="/products/")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    if not shutil.which("hey"):
        print("hey is not installed (Debian: apt-get install hey)", file=sys.stderr)
        return 2
    variant = load_variant(args.variant)
    it = load_catalog().instance(variant.instance_type)
    with tempfile.TemporaryDirectory(prefix="scalelab-bench-") as state:
        backend = LocalBackend(state_dir=Path(state))
        with backend.deployed(variant) as dep:
            url = dep.url + args.path
            hey(url, 3, args.concurrency)  # warm-up: Django's first requests, page cache
            t0 = time.time()
            burst, ok_b, bad_b = hey(url, args.seconds, args.concurrency)
            used = cpu_vcpus(dep, t0, backend.cpu_scale)
            switched = dep.set_credits("exhausted")
            t1 = time.time()
            base, ok_s, bad_s = hey(url, args.seconds, args.concurrency)
            used_s = cpu_vcpus(dep, t1, backend.cpu_scale)
        print(f"{variant.name} ({variant.instance_type}, {variant.credit_mode} credits), "
              f"cpu_scale {backend.cpu_scale}, dilation {backend.dilation:.2f}; "
              f"hey -z {args.seconds:g}s -c {args.concurrency} {args.path}")
        print(f"  launch credits : {burst:7.2f} req/s ({ok_b} × 200, {bad_b} other), "
              f"{used:.2f} vCPU busy")
        print(f"  exhausted      : {base:7.2f} req/s ({ok_s} × 200, {bad_s} other), "
              f"{used_s:.2f} vCPU busy (switched: {switched})")
        print(f"  ratio exhausted / launch = {base / burst:.3f} "
              f"(baseline {it.baseline_per_vcpu:.2f} of a vCPU)" if burst else "  no burst")
        runway = credit_runway(it, variant.credit_mode, used)
        if runway is not None:
            print(f"  runway at that CPU: {runway.describe(burst, base)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

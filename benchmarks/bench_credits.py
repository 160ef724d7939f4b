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
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


@dataclass
class Phase:
    """One `hey` run on the deployment, with the instances' cgroup CPU time around it."""

    rps: float
    ok: int
    other: int
    cpu_s: float
    """Host core-seconds the instances' cgroups used during the run (cpu.stat usage)."""
    wall_s: float
    limit_cores: float

    @property
    def used_cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        """Host core-milliseconds per answered request (idle overhead included)."""
        return 1000 * self.cpu_s / self.ok if self.ok else math.nan


def measure(dep, url: str, seconds: float, concurrency: int) -> Phase:  # type: ignore[no-untyped-def]
    """One `hey` run, bracketed by the cgroups' CPU counters (exact, not 1 s samples)."""
    cpu0, t0 = dep.cpu_seconds(), time.monotonic()
    rps, ok, other = hey(url, seconds, concurrency)
    cpu1, t1 = dep.cpu_seconds(), time.monotonic()
    return Phase(rps, ok, other, (cpu1 or 0.0) - (cpu0 or 0.0), t1 - t0,
                 dep.cpu_limit_cores() or 0.0)


def idle_cores(dep, seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Host cores the instances use with no load at all (Gunicorn arbiter and worker
    heartbeats, HAProxy health checks): the fixed overhead a quota pays before any request."""
    cpu0, t0 = dep.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return ((dep.cpu_seconds() or 0.0) - (cpu0 or 0.0)) / (time.monotonic() - t0)


def set_period(dep, period_us: int) -> list[str]:  # type: ignore[no-untyped-def]
    """Rewrite each instance's cgroup v2 cpu.max with the same quota/period ratio but another
    period (a diagnostic: does the CFS period change the baseline's throughput?)."""
    done = []
    for inst in dep.instances:
        path = getattr(inst.cgroup, "path", None)
        if path is None or not (Path(path) / "cpu.max").exists():
            continue
        quota, period = (Path(path) / "cpu.max").read_text().split()
        if quota == "max":
            continue
        new_quota = max(1000, round(int(quota) / int(period) * period_us))
        (Path(path) / "cpu.max").write_text(f"{new_quota} {period_us}")
        done.append(f"{inst.name}: {quota}/{period} -> {new_quota}/{period_us} us")
    return done


def describe(label: str, ph: Phase, cpu_scale: float) -> str:
    return (f"  {label:<15}: {ph.rps:7.2f} req/s ({ph.ok} × 200, {ph.other} other); "
            f"instances used {ph.used_cores:.3f} of {ph.limit_cores:.3f} host cores "
            f"({ph.used_cores / ph.limit_cores:.0%} of the quota, "
            f"{ph.used_cores / cpu_scale:.3f} vCPU); {ph.cpu_ms_per_request:.1f} core-ms/request"
            if ph.limit_cores else f"  {label}: {ph.rps:.2f} req/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="micro")
    parser.add_argument("--path", default="/products/")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="measure the instances' CPU with no load for this long, at the "
                             "baseline quota (0: skip)")
    parser.add_argument("--period-us", type=int, default=0,
                        help="diagnostic: after the exhausted run, rewrite cpu.max with this "
                             "CFS period (same quota/period ratio) and measure again")
    args = parser.parse_args()
    if not shutil.which("hey"):
        print("hey is not installed (Debian: apt-get install hey)", file=sys.stderr)
        return 2
    variant = load_variant(args.variant)
    it = load_catalog().instance(variant.instance_type)
    extra: list[str] = []
    with tempfile.TemporaryDirectory(prefix="scalelab-bench-") as state:
        backend = LocalBackend(state_dir=Path(state))
        scale = backend.cpu_scale
        with backend.deployed(variant) as dep:
            url = dep.url + args.path
            hey(url, 3, args.concurrency)  # warm-up: Django's first requests, page cache
            burst = measure(dep, url, args.seconds, args.concurrency)
            switched = dep.set_credits("exhausted")
            idle = idle_cores(dep, args.idle_seconds) if args.idle_seconds > 0 else None
            base = measure(dep, url, args.seconds, args.concurrency)
            if args.period_us:
                extra += set_period(dep, args.period_us)
                period = measure(dep, url, args.seconds, args.concurrency)
                extra.append(describe(f"period {args.period_us} us", period, scale))
                extra.append(f"  ratio at that period = {period.rps / burst.rps:.3f}"
                             if burst.rps else "")
        print(f"{variant.name} ({variant.instance_type}, {variant.credit_mode} credits), "
              f"cpu_scale {scale}, dilation {backend.dilation:.2f}; "
              f"hey -z {args.seconds:g}s -c {args.concurrency} {args.path}")
        print(describe("launch credits", burst, scale))
        print(describe("exhausted", base, scale) + f" (switched: {switched})")
        if idle is not None:
            print(f"  idle at baseline: {idle:.4f} host cores ({idle / scale:.4f} vCPU, "
                  f"{idle / base.limit_cores:.0%} of the baseline quota)"
                  if base.limit_cores else f"  idle: {idle:.4f} host cores")
        for line in extra:
            print(line)
        if not burst.rps:
            print("  no burst throughput measured")
            return 0
        ratio = base.rps / burst.rps
        quota_ratio = base.limit_cores / burst.limit_cores if burst.limit_cores else math.nan
        used_ratio = base.used_cores / burst.used_cores if burst.used_cores else math.nan
        demand_ratio = base.cpu_ms_per_request / burst.cpu_ms_per_request
        print(f"  ratio exhausted / launch = {ratio:.3f} (baseline {it.baseline_per_vcpu:.2f} "
              f"of a vCPU; quota ratio {quota_ratio:.3f})")
        print(f"  = CPU used ratio {used_ratio:.3f} / CPU-per-request ratio {demand_ratio:.3f}")
        if idle is not None and base.limit_cores:
            # Utilisation law with a fixed overhead o: X = (U - o) / D.
            net = (base.used_cores - idle) / (burst.used_cores - idle)
            print(f"  without the idle overhead ({idle:.4f} cores) the CPU left for requests "
                  f"is in the ratio {net:.3f}")
        runway = credit_runway(it, variant.credit_mode, burst.used_cores / scale)
        if runway is not None:
            print(f"  runway at that CPU: {runway.describe(burst.rps, base.rps)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Are the AWS-equivalent estimates stable across cpu_scale? (issue 11: within 10 %)

The same variants are measured twice on the local backend, at two cpu_scales (default 0.33 and
0.66), each time by the real `python -m experiments run` (capacity search, survival, report).
If the estimate is right, capacity × 1/cpu_scale — summary.json's
`aws_estimate.capacity_rps` — is the same figure at both scales. Prints the measured and the
AWS-equivalent capacities, their 95 % intervals when the run has them, and the spread
(max / min − 1) per variant. Exit status 0 when every spread is within --tolerance, 1 if not:
a measurement, not a unit test (run it alone, under the CPU lock, on an otherwise idle host).

    flock /tmp/scalelab-cpu.lock .venv/bin/python benchmarks/bench_dilation_stability.py \\
        [--variants micro,scale-up] [--scales 0.33,0.66] [--profile quick] [--tolerance 0.10]
        [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_once(variants: str, scale: float, profile: str, out: Path) -> dict[str, Any]:
    """One real run; returns its summary.json (which carries the aws_estimate objects)."""
    before = set(out.glob("*/summary.json"))
    cmd = [sys.executable, "-m", "experiments", "run", "--backend", "local",
           "--variants", variants, "--profile", profile, "--cpu-scale", f"{scale:g}",
           "--out", str(out)]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    new = sorted(set(out.glob("*/summary.json")) - before)
    if done.returncode != 0 or not new:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"the run at cpu_scale {scale:g} failed (exit {done.returncode}): "
                         + " | ".join(tail))
    summary = json.loads(new[-1].read_text())
    print(f"  cpu_scale {scale:g}: {new[-1].parent.name} in {elapsed:.0f} s "
          f"(host load average at the end: {_loadavg()})", flush=True)
    return summary


def _loadavg() -> str:
    """1-minute load average: other work on the host shows up here, and in the figures."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def fits_host(names: list[str], scale: float) -> str:
    """A warning when the largest variant's vCPUs × scale leave no core for the generator."""
    from stacks.variant import load_variant

    cores = os.cpu_count() or 1
    need = max(load_variant(n).vcpu for n in names) * scale
    if need > cores - 0.5:
        return (f"  note: at cpu_scale {scale:g} the largest variant takes {need:.2f} of "
                f"{cores} host cores, leaving under half a core for the load generator and the "
                "host: its figures are bounded by the host, not by the emulated box")
    return ""


def _by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in summary.get("variants") or [] if v}


def _ci(est: dict[str, Any]) -> str:
    ci = est.get("capacity_ci95")
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "—"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="micro,scale-up")
    parser.add_argument("--scales", default="0.33,0.66")
    parser.add_argument("--profile", default="quick", choices=("quick", "standard"))
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per scale, interleaved (0.33, 0.66, 0.33, ...); the spread "
                             "compares the medians")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    names = [n.strip() for n in args.variants.split(",") if n.strip()]

    with tempfile.TemporaryDirectory(prefix="scalelab-dilation-") as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        print(f"Measuring {', '.join(names)} at cpu_scale {', '.join(f'{s:g}' for s in scales)} "
              f"(profile {args.profile}) into {out}", flush=True)
        runs: dict[float, list[dict[str, dict[str, Any]]]] = {scale: [] for scale in scales}
        for _ in range(max(1, args.repeat)):
            for scale in scales:
                runs[scale].append(_by_name(run_once(",".join(names), scale, args.profile,
                                                     out)))

    host = None
    ok = True
    print()
    print(f"{'variant':<11} {'cpu_scale':>9} {'measured':>9} {'≈ AWS':>8} {'95 % (AWS)':>18} "
          f"{'p95 ms':>7} {'≈ AWS p95':>9}")
    for name in names:
        aws = []
        for scale in scales:
            per_scale = []
            for by_name in runs[scale]:
                entry = by_name.get(name)
                if not entry or not entry.get("aws_estimate"):
                    print(f"{name:<11} {scale:>9g}  (no result)")
                    ok = False
                    continue
                est = entry["aws_estimate"]
                host = next((a for a in est.get("assumptions", []) if "host CPU" in a), host)
                per_scale.append(est["capacity_rps"])
                print(f"{name:<11} {scale:>9g} {entry['capacity_rps']:>9.1f} "
                      f"{est['capacity_rps']:>8.1f} {_ci(est):>18} "
                      f"{entry.get('p95_ms_at_capacity') or 0:>7.0f} "
                      f"{est.get('p95_ms_at_capacity') or 0:>9.0f}")
            if per_scale:
                aws.append(statistics.median(per_scale))
        if len(aws) == len(scales) and min(aws) > 0:
            spread = max(aws) / min(aws) - 1
            verdict = "ok" if spread <= args.tolerance else "OUT OF TOLERANCE"
            ok &= spread <= args.tolerance
            medians = " vs ".join(f"{a:.1f}" for a in aws)
            print(f"{'':<11} AWS-equivalent medians {medians}: spread {spread:.1%} "
                  f"(tolerance {args.tolerance:.0%}) {verdict}")
    for scale in scales:
        warning = fits_host(names, scale)
        if warning:
            print(warning)
    if host:
        print(f"\nAssumption under test: {host}.")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

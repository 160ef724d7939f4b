"""Are the AWS-equivalent estimates stable across cpu_scale? (issue 11: within 10 %)

The same variants are measured twice on the local backend, at two cpu_scales (default 0.33 and
0.66), each time by the real `python -m experiments run` (capacity search, survival, report).
If the estimate is right, capacity × 1/cpu_scale — summary.json's
`aws_estimate.capacity_rps` — is the same figure at both scales. Prints the measured and the
AWS-equivalent capacities, their 95 % intervals when the run has them, and the spread
(max / min − 1) per variant. Exit status 0 when every spread is within --tolerance, 1 if not,
2 if a figure was bounded by the host rather than by the emulated box (inconclusive): a
measurement, not a unit test (run it alone, under the CPU lock, on an otherwise idle host).

Host headroom. The emulated instances, the load generator, HAProxy and the kernel's loopback
share the host. Each step records `host_busy` (the share of the host's CPU busy during its
hold); when the step that bounded a search ran on a saturated host while the instances were
below their quota, the run's `aws_estimate.host_saturated` is true and the figure is the host's
limit (experiments.estimate.host_bound). This bench prints, per run, the bounding step's host
busy share and the instances' cores against their quota, and calls such a spread
inconclusive. The default scales 0.33 and 0.66 are the issue's; on a 2-core host the scale-up
at 0.66 takes 1.32 cores and leaves ~0.7 for everything else, which the generator (~0.2) and
loopback fit only when nothing else runs on the host: pass --scales 0.33,0.5 on a shared host.

`--cross-check SECONDS` adds an independent figure: each variant deployed alone at each scale
(same backend, the shop) and driven by `hey` (closed loop, back to back) on --path; hey's
saturation throughput × 1/cpu_scale must also be the same at both scales.

    flock /tmp/scalelab-cpu.lock .venv/bin/python benchmarks/bench_dilation_stability.py \\
        [--variants micro,scale-up] [--scales 0.33,0.66] [--profile quick] [--tolerance 0.10]
        [--repeat N] [--searches N] [--cross-check 20 --path /products/] [--skip-runs]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_once(variants: str, scale: float, profile: str, out: Path,
             searches: int = 0) -> dict[str, Any]:
    """One real run; returns its summary.json (which carries the aws_estimate objects).
    `searches` > 0 is the run's own `--repeat`: that many capacity searches per variant on
    one deployment, the median reported with its 95 % interval."""
    before = set(out.glob("*/summary.json"))
    cmd = [sys.executable, "-m", "experiments", "run", "--backend", "local",
           "--variants", variants, "--profile", profile, "--cpu-scale", f"{scale:g}",
           "--out", str(out)] + (["--repeat", str(searches)] if searches else [])
    started = time.monotonic()
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as run:
        try:
            stdout, stderr = run.communicate()
        except KeyboardInterrupt:  # let the run tear its deployment down (not SIGKILL)
            run.send_signal(signal.SIGINT)
            run.wait(timeout=120)
            raise
    done = subprocess.CompletedProcess(cmd, run.returncode, stdout, stderr)
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


def bounding_step(entry: dict[str, Any], scale: float) -> str:
    """The host's headroom at the step that bounded the search: the evidence for (or against)
    a host-bound figure."""
    capacity = entry.get("capacity_rps") or 0.0
    above = [st for st in entry.get("steps") or []
             if st.get("passed") is False and st.get("offered_rps", 0) > capacity]
    if not above:
        return "no failing step above capacity"
    st = min(above, key=lambda x: x["offered_rps"])
    quota = float(entry.get("vcpu") or 1) * int(entry.get("count") or 1) * scale
    used = (st["server_cpu_s"] / st["duration_s"]
            if st.get("server_cpu_s") is not None and st.get("duration_s") else None)
    busy = st.get("host_busy")
    return (f"bounded by {st['offered_rps']:g} req/s: host "
            f"{'?' if busy is None else f'{busy:.0%}'} busy, instances "
            f"{'?' if used is None else f'{used:.2f}'}/{quota:.2f} cores")


class _HostMeter:
    """Share of the host's CPU busy between start() and stop() (/proc/stat)."""

    def __enter__(self) -> _HostMeter:
        from experiments.load.driver import host_cpu_times

        self.start = host_cpu_times()
        self.busy: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        from experiments.load.driver import host_busy_share, host_cpu_times

        self.busy = host_busy_share(self.start, host_cpu_times())


def cross_check(names: list[str], scales: list[float], seconds: int, path: str
                ) -> dict[str, dict[float, float]]:
    """hey's closed-loop saturation × 1/scale per variant and scale (independent of Locust)."""
    from benchmarks.bench_capacity_truth import hey_saturation
    from experiments.backends.local import LocalBackend
    from experiments.load.driver import check_loopback
    from stacks.variant import load_variant

    out: dict[str, dict[float, float]] = {}
    print(f"\nCross-check: hey -z {seconds}s closed loop on {path}, each variant alone")
    for name in names:
        variant = load_variant(name)
        concurrency = 8 * variant.vcpu * variant.count
        for scale in scales:
            with tempfile.TemporaryDirectory(prefix="scalelab-dilation-hey-") as state:
                backend = LocalBackend(cpu_scale=scale, state_dir=Path(state))
                with backend.deployed(variant) as dep:
                    url = dep.url + path
                    check_loopback(url)
                    hey_saturation(url, 3, concurrency)  # warm-up
                    cpu0 = dep.cpu_seconds()
                    with _HostMeter() as meter:
                        started = time.monotonic()
                        rps = hey_saturation(url, seconds, concurrency)
                        wall = time.monotonic() - started
                    cpu1 = dep.cpu_seconds()
                    quota = dep.cpu_limit_cores() or 0.0
            used = ((cpu1 or 0.0) - (cpu0 or 0.0)) / wall if wall > 0 else 0.0
            out.setdefault(name, {})[scale] = rps / scale
            print(f"  {name:<9} cpu_scale {scale:g}: hey {rps:7.1f} req/s (-c {concurrency}) "
                  f"≈ AWS {rps / scale:7.1f}; instances {used:.2f}/{quota:.2f} cores, host "
                  f"{'?' if meter.busy is None else f'{meter.busy:.0%}'} busy", flush=True)
        figures = list(out.get(name, {}).values())
        if len(figures) == len(scales) and min(figures) > 0:
            print(f"  {name:<9} hey AWS-equivalent spread {max(figures) / min(figures) - 1:.1%}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="micro,scale-up")
    parser.add_argument("--scales", default="0.33,0.66")
    parser.add_argument("--profile", default="quick", choices=("quick", "standard"))
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per scale, interleaved (0.33, 0.66, 0.33, ...); the spread "
                             "compares the medians")
    parser.add_argument("--searches", type=int, default=0, metavar="N",
                        help="capacity searches per variant within each run (the run's own "
                             "--repeat N: one deployment, the median of N; default: the "
                             "profile's)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--cross-check", type=int, default=0, metavar="SECONDS",
                        help="also measure hey's closed-loop saturation at each scale")
    parser.add_argument("--path", default="/products/", help="hey's path (--cross-check)")
    parser.add_argument("--skip-runs", action="store_true",
                        help="only the hey cross-check (with --cross-check)")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    if args.skip_runs and not args.cross_check:
        parser.error("--skip-runs needs --cross-check SECONDS")

    runs: dict[float, list[dict[str, dict[str, Any]]]] = {scale: [] for scale in scales}
    if not args.skip_runs:
        with tempfile.TemporaryDirectory(prefix="scalelab-dilation-") as tmp:
            out = args.keep or Path(tmp)
            out.mkdir(parents=True, exist_ok=True)
            print(f"Measuring {', '.join(names)} at cpu_scale "
                  f"{', '.join(f'{s:g}' for s in scales)} (profile {args.profile}) into {out}",
                  flush=True)
            for _ in range(max(1, args.repeat)):
                for scale in scales:
                    runs[scale].append(_by_name(run_once(",".join(names), scale, args.profile,
                                                         out, args.searches)))
    status = report(names, scales, runs, args.tolerance) if not args.skip_runs else 0
    if args.cross_check:
        hey = cross_check(names, scales, args.cross_check, args.path)
        for name in names:
            for scale in scales:
                locust = [r[name]["aws_estimate"]["capacity_rps"] for r in runs[scale]
                          if r.get(name, {}).get("aws_estimate")]
                if locust and hey.get(name, {}).get(scale):
                    print(f"  {name:<9} cpu_scale {scale:g}: scalelab / hey = "
                          f"{statistics.median(locust) / hey[name][scale]:.2f}")
    return status


def report(names: list[str], scales: list[float],
           runs: dict[float, list[dict[str, dict[str, Any]]]], tolerance: float) -> int:
    """Print the table and the spreads; 0 within tolerance, 1 out of it, 2 host-bound."""
    host = None
    ok = True
    host_bound: list[str] = []
    print()
    print(f"{'variant':<11} {'cpu_scale':>9} {'measured':>9} {'≈ AWS':>8} {'95 % (AWS)':>18} "
          f"{'p95 ms':>7} {'≈ AWS p95':>9}  search bound")
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
                if est.get("host_saturated"):
                    host_bound += est.get("warnings") or [f"{name} at {scale:g}: host-bound"]
                print(f"{name:<11} {scale:>9g} {entry['capacity_rps']:>9.1f} "
                      f"{est['capacity_rps']:>8.1f} {_ci(est):>18} "
                      f"{entry.get('p95_ms_at_capacity') or 0:>7.0f} "
                      f"{est.get('p95_ms_at_capacity') or 0:>9.0f}  "
                      f"{bounding_step(entry, scale)}"
                      + ("  HOST-BOUND" if est.get("host_saturated") else ""))
            if per_scale:
                aws.append(statistics.median(per_scale))
        if len(aws) == len(scales) and min(aws) > 0:
            spread = max(aws) / min(aws) - 1
            verdict = "ok" if spread <= tolerance else "OUT OF TOLERANCE"
            ok &= spread <= tolerance
            medians = " vs ".join(f"{a:.1f}" for a in aws)
            print(f"{'':<11} AWS-equivalent medians {medians}: spread {spread:.1%} "
                  f"(tolerance {tolerance:.0%}) {verdict}")
    for scale in scales:
        warning = fits_host(names, scale)
        if warning:
            print(warning)
    for line in host_bound:
        print(f"  host-bound: {line}")
    if host:
        print(f"\nAssumption under test: {host}.")
    if not ok:
        return 1
    if host_bound:
        print("Inconclusive: a figure above was set by the host's CPU, not by the emulated box.")
        return 2
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # the run in progress got SIGINT too and tore down
        print("interrupted: the run in progress was torn down; finished runs stay in --keep",
              file=sys.stderr)
        raise SystemExit(130) from None

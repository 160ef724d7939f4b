"""Does a tighter CPU quota make each request cost more CPU? (issue 11: dilation stability)

The AWS-equivalent estimate assumes a request costs the same CPU time at every cpu_scale: the
box is only slowed down. Measured last: the shop's CPU per request was higher at cpu_scale
0.33 than at 0.66 (micro 8.5 vs 6.5 ms in one interleaved pair), which alone moves the
estimate. This benchmark takes the load generator, HAProxy and the network out: two worker
processes (a micro's two Gunicorn workers) run the shop's own views in-process through
Django's test client, in a cgroup with a CFS quota, and the cgroup's CPU time is divided by
the requests served. Configurations are interleaved round by round, so the host's own drift
hits them alike; each line prints the median and the ratio to the unlimited cgroup.

    sudo .venv/bin/python benchmarks/bench_quota_cost.py [--rounds 5] [--seconds 6]
        [--configs 0.33@100,0.66@100,0.33@10,none]

A config is CORES@PERIOD_MS (the quota is CORES × PERIOD) or `none` (no quota). Needs root
(or a delegated cgroup v2 subtree), like the local backend.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.backends.local.cgroups import detect_layout  # noqa: E402

WORKER = textwrap.dedent("""
    import os, sys, time
    if os.environ.get("PROBE_CPUS"):  # a box with fewer vCPUs than the host: pinned
        os.sched_setaffinity(0, {int(c) for c in os.environ["PROBE_CPUS"].split(",")})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    import django
    django.setup()
    from django.test import Client
    client = Client()
    paths = ["/products/?page=1", "/products/4242/", "/products/?page=3", "/products/77/",
             "/products/?page=2&category=kitchen", "/products/123456/"]
    for path in paths:  # warm: imports, templates, SQLite pages
        client.get(path)
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    seconds = float(sys.stdin.readline())
    served, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        client.get(paths[served % len(paths)])
        served += 1
    print(served, flush=True)
""")


def parse_config(text: str) -> tuple[float | None, int]:
    """'0.33@100' -> (0.33 cores, 100_000 µs period); 'none' -> (None, 100_000)."""
    if text == "none":
        return None, 100_000
    try:
        cores, period_ms = text.split("@")
        value, period = float(cores), int(float(period_ms) * 1000)
    except ValueError:
        raise SystemExit(f"--configs: {text!r} is not CORES@PERIOD_MS (e.g. 0.33@100) or "
                         "'none'") from None
    if not 0 < value <= (os.cpu_count() or 1) or not 1_000 <= period <= 1_000_000:
        raise SystemExit(f"--configs: {text!r} needs 0 < CORES <= host cores and a period of "
                         "1 to 1000 ms")
    return value, period


def measure(config: str, seconds: float, workers: int, env: dict[str, str]) -> float:
    """CPU ms per request of `workers` processes in a fresh cgroup with `config`'s quota."""
    cores, period = parse_config(config)
    cgroup = detect_layout().make(f"scalelab-quota-probe-{os.getpid()}")
    cgroup.create()
    procs: list[subprocess.Popen[str]] = []
    try:
        cgroup.set_cpu(cores, period)
        for _ in range(workers):
            proc = subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT, env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            for procs_file in cgroup.procs_files():
                procs_file.write_text(str(proc.pid))
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        before = cgroup.stats().cpu_usage_s
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{seconds}\n")
            proc.stdin.flush()
        served = 0
        for proc in procs:
            assert proc.stdout is not None
            served += int(proc.stdout.readline())
        used = cgroup.stats().cpu_usage_s - before
        return 1000 * used / max(1, served)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        cgroup.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="work per configuration and round (host seconds)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes in the cgroup (a micro runs two Gunicorn workers)")
    parser.add_argument("--configs", default="0.33@100,0.66@100,0.33@10,0.66@10,none")
    parser.add_argument("--cpus", default="",
                        help="pin the workers to these host CPUs, e.g. 0 (a one-vCPU box)")
    args = parser.parse_args()
    configs = args.configs.split(",")
    for config in configs:
        parse_config(config)
    with tempfile.TemporaryDirectory(prefix="scalelab-quota-") as data:
        env = {**os.environ, "SCALELAB_DATA_DIR": data, "PROBE_CPUS": args.cpus}
        subprocess.run([sys.executable, "-m", "shop", "seed"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        per: dict[str, list[float]] = {c: [] for c in configs}
        for round_no in range(args.rounds):
            for config in configs:
                per[config].append(measure(config, args.seconds, args.workers, env))
            print(f"round {round_no + 1}: " + "  ".join(
                f"{c} {per[c][-1]:.2f}" for c in configs), flush=True)
    base = statistics.median(per["none"]) if "none" in per else None
    print(f"\nCPU ms per request (median of {args.rounds}; {args.workers} workers"
          + (f" pinned to CPU {args.cpus}" if args.cpus else "") + ", "
          f"{args.seconds:g} s each, the shop's list and product views in-process):")
    for config in configs:
        median = statistics.median(per[config])
        spread = (max(per[config]) - min(per[config])) / median
        ratio = f"  {median / base:.3f} × unlimited" if base else ""
        print(f"  {config:>9}: {median:6.2f} ms  (range {spread:.0%}){ratio}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted; the probe cgroup and its workers were removed", file=sys.stderr)
        raise SystemExit(130) from None

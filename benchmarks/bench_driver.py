"""How many requests/s the load driver sustains, next to wrk, on a static loopback endpoint.

    .venv/bin/python benchmarks/bench_driver.py [--seconds 10] [--users 50] [--workers 0,2]

The target is HAProxy answering every request itself (`http-request return`), so the server
costs almost nothing and the figure is the generator's ceiling: closed loop, no pacing, the
driver's survival mode (FastHttpUser, HdrHistogram recording, per-second windows). One
generator process is one gevent thread, i.e. at most one core. Targets (issue 5): >= 4,000
req/s per generator process, and 2 workers >= 1.5x one. Then the same generator in its open
model (the arrival gate of a capacity step), scanned upward per generator process: at each rate
achieved vs offered, dropped arrivals and how late requests left (corrected minus actual p95);
the open-model ceiling is the highest rate held (>= 97 % served, nothing dropped, corrected p95
<= 50 ms), per process and for 2 workers vs 1.
Prints figures; asserts nothing.
Timing on a shared machine is noisy: run it when the box is quiet, and read the CPU columns.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.load.driver import LoadSession, LoadSettings  # noqa: E402
from experiments.load.reference import start_static_haproxy  # noqa: E402
from experiments.procs import stop_group  # noqa: E402

DEFAULT_LOCUSTFILE = ROOT / "tests" / "fixtures" / "load" / "ping_locustfile.py"


def run_wrk(url: str, seconds: int, connections: int) -> float | None:
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True, text=True, check=False,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else None


class CpuWatch:
    """Peak and mean CPU (cores) of the generator processes, sampled from outside."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self.samples: list[list[float]] = []
        self._stop = threading.Event()
        for proc in self.procs:
            proc.cpu_percent(None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            row = []
            for proc in self.procs:
                try:
                    row.append(proc.cpu_percent(None) / 100)
                except psutil.Error:
                    row.append(0.0)
            self.samples.append(row)

    def stop(self) -> tuple[float, float]:
        """(mean total cores, peak of any single process)."""
        self._stop.set()
        self._thread.join()
        rows = self.samples[1:] or self.samples  # skip the spawn second
        if not rows:
            return 0.0, 0.0
        mean_total = sum(sum(row) for row in rows) / len(rows)
        return mean_total, max(max(row) for row in rows)


def run_driver(url: str, locustfile: Path, workers: int, users: int, seconds: int) -> dict:
    with LoadSession(url, LoadSettings(locustfile, load_workers=workers)) as session:
        watch = CpuWatch(session.pids)
        result = session.survival(users=users, limit_s=seconds)
        cpu_total, cpu_peak = watch.stop()
    steady = result.timeline[1:] or result.timeline  # the first second includes spawning
    span = steady[-1]["t"] - (result.timeline[0]["t"] if len(result.timeline) > 1 else 0.0)
    rps = sum(p["requests"] for p in steady) / span if span > 0 else 0.0
    errors = sum(p["errors"] for p in result.timeline)
    p95 = max(p["p95_ms"] for p in steady)
    return {"rps": rps, "errors": errors, "p95_ms": p95, "cpu_total": cpu_total,
            "cpu_peak": cpu_peak, "held": result.held}


CLEAN_SHARE = 0.97
"""An open-model rate is held when the hold served >= 97 % of it..."""
CLEAN_LATE_MS = 50.0
"""...no arrival was dropped, and the corrected p95 (from the scheduled send) stays within 50 ms:
against a static HAProxy answer, anything above that is the generator running late."""


def scan_open(url: str, locustfile: Path, workers: int, rates: list[float], seconds: int,
              label: str) -> float:
    """Open-model steps at rising total rates on one session (its pool kept, as in a capacity
    search) until one is not held; prints each step, returns the highest held rate (0: none)."""
    best = 0.0
    with LoadSession(url, LoadSettings(locustfile, load_workers=workers)) as session:
        for rate in rates:
            step = session.step(rate, warmup_s=2, hold_s=seconds)
            late = (step.p95_intended_ms or 0.0) - step.p95_ms
            held = (step.achieved_rps >= CLEAN_SHARE * rate and step.dropped == 0
                    and (step.p95_intended_ms or 0.0) <= CLEAN_LATE_MS)
            print(f"open model, {label:<18} {rate:>7,.0f} req/s: achieved "
                  f"{step.achieved_rps:>7,.0f} ({step.achieved_rps / rate:.1%}), dropped "
                  f"{step.dropped} of {step.scheduled}, p95 {step.p95_ms:.1f} ms, corrected p95 "
                  f"{step.p95_intended_ms or 0.0:.1f} ms (+{late:.1f}), generator CPU peak "
                  f"{step.generator_cpu:.2f}{' SATURATED' if step.generator_saturated else ''}"
                  f"{'' if held else '  <- not held'}")
            if not held:
                break
            best = rate
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--workers", default="0,2",
                        help="comma-separated --load-workers values (0 = one local process)")
    parser.add_argument("--locustfile", type=Path, default=DEFAULT_LOCUSTFILE)
    parser.add_argument("--skip-wrk", action="store_true")
    parser.add_argument("--open-rates", default="2000,3000,3500,4000,4500,5000,5500,6000",
                        help="open-model rates per generator process, scanned upward until one "
                        "is not held")
    args = parser.parse_args()
    args.open_rates = [float(r) for r in args.open_rates.split(",")]

    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
          "(shared machine: figures are noisy)")
    with tempfile.TemporaryDirectory(prefix="scalelab-bench-") as tmp:
        haproxy, url = start_static_haproxy(Path(tmp))
        try:
            if not args.skip_wrk:
                wrk = run_wrk(url, args.seconds, args.users)
                print(f"wrk -t1 -c{args.users}:                 "
                      + (f"{wrk:>9,.0f} req/s" if wrk else "not available"))
            results: dict[int, dict] = {}
            for workers in (int(w) for w in args.workers.split(",")):
                fig = run_driver(url, args.locustfile, workers, args.users, args.seconds)
                results[workers] = fig
                procs = max(1, workers)
                label = "1 local process" if workers == 0 else f"--load-workers {workers}"
                print(
                    f"driver, {label:<18} {fig['rps']:>9,.0f} req/s  "
                    f"({fig['rps'] / procs:,.0f} per generator process; CPU mean "
                    f"{fig['cpu_total']:.2f} cores, peak {fig['cpu_peak']:.2f} of one core; "
                    f"p95 {fig['p95_ms']:.1f} ms; errors {fig['errors']})"
                )
            ceilings: dict[int, float] = {}
            for workers in results:
                procs = max(1, workers)
                label = "1 local process" if workers == 0 else f"--load-workers {workers}"
                rates = [r * procs for r in args.open_rates]
                ceilings[workers] = scan_open(url, args.locustfile, workers, rates, args.seconds,
                                              label)
                print(f"open model, {label:<18} held up to {ceilings[workers]:,.0f} req/s = "
                      f"{ceilings[workers] / procs:,.0f} per generator process "
                      "(target >= 4,000)")
            if 0 in results and 2 in results and results[0]["rps"]:
                ratio = results[2]["rps"] / results[0]["rps"]
                print(f"closed loop, 2 workers / 1 process: {ratio:.2f}x (target >= 1.5x; needs "
                      "2 free cores besides HAProxy)")
            if ceilings.get(0) and 2 in ceilings:
                print(f"open model, 2 workers / 1 process: {ceilings[2] / ceilings[0]:.2f}x "
                      "(target >= 1.5x)")
        finally:
            stop_group(haproxy, grace_s=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

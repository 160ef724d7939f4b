"""Is scalelab's capacity the truth? Checked against independent generators on the same box.

    sudo .venv/bin/python benchmarks/bench_capacity_truth.py [--variants micro,scale-up]
        [--profiles quick,standard] [--burn-ms 7] [--httperf-seconds 10]

Deploys each emulated variant (local backend, real cgroups) with the project's own test app
(tests/fixtures/byo_app) serving a CPU-bound endpoint (`/burn`: a fixed ~7 ms of CPU per
request), then on that same deployment:

- `hey -c 8` (closed loop, back to back): the saturation throughput, an upper bound no
  capacity may exceed;
- `httperf --rate R` (open loop, one connection per request): its capacity is the highest
  rate at which it sends >= 95 % of R, >= 95 % of the requests succeed and its *slowest*
  connection stays within the SLO (500 ms), bisected to 2 % between 0.5x and 1.5x hey's
  saturation (the upper end assumed to fail);
- scalelab's capacity search, exactly as a run does it (experiments.load.search), per profile.

Prints each figure, scalelab / httperf and scalelab / hey, and the targets of issue 10
(quick >= 90 % of httperf, never above hey; quick and standard within 10 %). Asserts
nothing: the figures are the point. Needs root (cgroups), httperf and hey (bootstrap's test
extras install both). Run it under the CPU lock on a quiet box.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.backends.local import LocalBackend  # noqa: E402
from experiments.load.driver import LoadSession, LoadSettings  # noqa: E402
from experiments.load.search import search_capacity  # noqa: E402
from experiments.model import Slo  # noqa: E402
from experiments.profiles import get_profile  # noqa: E402
from stacks.variant import Variant, load_variant, load_variants  # noqa: E402

APP = ROOT / "tests" / "fixtures" / "byo_app"
LOCUSTFILE = APP / "burn_locustfile.py"
SLO = Slo()


def byo_variant(name: str) -> Variant:
    """The stack `name` serving the test app instead of the shop."""
    variant = load_variant(name)
    app = replace(variant.app, path=str(APP), setup="", locustfile="", wsgi="app:application",
                  health_path="/health", requirements="")
    health = replace(variant.health_check, path="/health")
    return variant.with_overrides(app=app, health_check=health)


def hey_saturation(url: str, seconds: int, concurrency: int = 8) -> float:
    """Closed-loop throughput: `concurrency` connections, each sending back to back."""
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(concurrency), url],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"hey printed no Requests/sec: {out[-300:]}")
    return float(match.group(1))


@dataclass
class HttperfRun:
    rate: float
    sent_rate: float
    ok: int
    total: int
    max_ms: float
    errors: int

    @property
    def passed(self) -> bool:
        return (self.sent_rate >= 0.95 * self.rate and self.ok >= 0.95 * self.total
                and self.max_ms <= SLO.p95_ms and self.errors <= SLO.max_error_rate * self.total)


def httperf(url: str, rate: float, seconds: float) -> HttperfRun:
    parts = urlsplit(url)
    total = max(1, round(rate * seconds))
    out = subprocess.run(
        ["httperf", "--hog", "--server", parts.hostname or "127.0.0.1",
         "--port", str(parts.port or 80), "--uri", parts.path + ("?" + parts.query if parts.query
                                                                  else ""),
         "--rate", f"{rate:g}", "--num-conns", str(total), "--timeout", "5"],
        capture_output=True, text=True, check=True).stdout

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        if match is None:
            raise RuntimeError(f"httperf output lacks {pattern!r}: {out[-400:]}")
        return float(match.group(1))

    return HttperfRun(
        rate=rate,
        sent_rate=number(r"Request rate: ([\d.]+) req/s"),
        ok=int(number(r"Reply status: 1xx=\d+ 2xx=(\d+)")),
        total=total,
        max_ms=number(r"Connection time \[ms\]: min [\d.]+ avg [\d.]+ max ([\d.]+)"),
        errors=int(number(r"Errors: total (\d+)")),
    )


def httperf_capacity(url: str, low: float, high: float, seconds: float) -> float:
    """Bisect the highest passing httperf rate in [low, high] to 2 %."""
    best = 0.0
    run = httperf(url, low, seconds)
    print(f"    httperf {low:7.1f}/s: sent {run.sent_rate:6.1f}/s, 2xx {run.ok}/{run.total}, "
          f"slowest {run.max_ms:6.0f} ms  {'pass' if run.passed else 'fail'}", flush=True)
    if not run.passed:
        return 0.0
    best = low
    while (high - best) / best > 0.02:
        mid = round((best + high) / 2, 1)
        time.sleep(1)
        run = httperf(url, mid, seconds)
        print(f"    httperf {mid:7.1f}/s: sent {run.sent_rate:6.1f}/s, 2xx {run.ok}/{run.total}, "
              f"slowest {run.max_ms:6.0f} ms  {'pass' if run.passed else 'fail'}", flush=True)
        if run.passed:
            best = mid
        else:
            high = mid
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="micro,scale-up")
    parser.add_argument("--profiles", default="quick,standard")
    parser.add_argument("--burn-ms", type=float, default=7.0)
    parser.add_argument("--httperf-seconds", type=float, default=10.0)
    parser.add_argument("--hey-seconds", type=int, default=10)
    args = parser.parse_args()
    for tool in ("httperf", "hey"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed: bash scripts/bootstrap.sh test installs it")
            return 2

    cpu_scale = LocalBackend.choose_cpu_scale(load_variants())
    print(f"cpu_scale {cpu_scale} host cores per vCPU; /burn?ms={args.burn_ms:g}; SLO p95 "
          f"{SLO.p95_ms:.0f} ms (httperf: slowest connection)")
    rows: list[tuple[str, float, float, dict[str, tuple[float, str, float]]]] = []
    for name in args.variants.split(","):
        variant = byo_variant(name)
        with tempfile.TemporaryDirectory(prefix="scalelab-truth-") as state:
            backend = LocalBackend(cpu_scale=cpu_scale, state_dir=Path(state))
            with backend.deployed(variant) as deployment:
                target = f"{deployment.url.rstrip('/')}/burn?ms={args.burn_ms:g}"
                print(f"\n{name}: {deployment.cpu_limit_cores():.2f} cores at {deployment.url}",
                      flush=True)
                sat = hey_saturation(target, args.hey_seconds)
                print(f"  hey -c 8 (closed loop): {sat:.1f} req/s", flush=True)
                time.sleep(2)
                truth = httperf_capacity(target, 0.5 * sat, 1.5 * sat, args.httperf_seconds)
                print(f"  httperf open-loop capacity: {truth:.1f} req/s", flush=True)
                found: dict[str, tuple[float, str, float]] = {}
                for profile_name in args.profiles.split(","):
                    profile = get_profile(profile_name).dilated(backend.dilation)
                    time.sleep(2)
                    started = time.monotonic()
                    settings = LoadSettings(LOCUSTFILE, env={"BYO_BURN_MS": f"{args.burn_ms:g}"})
                    with LoadSession(deployment.url, settings) as load:
                        result = search_capacity(
                            load, deployment, profile, SLO,
                            on_step=lambda s: print(
                                f"    {s.phase:7} {s.offered_rps:7.1f}/s: achieved "
                                f"{s.achieved_rps:6.1f}, p95 {s.p95_intended_ms or 0:6.1f} ms "
                                f"(actual send {s.p95_ms:6.1f}), dropped {s.dropped}  "
                                f"{'pass' if s.passed else 'fail'}", flush=True))
                    took = time.monotonic() - started
                    found[profile_name] = (result.capacity_rps, result.bound_sentence(), took)
                    print(f"  scalelab {profile_name}: {result.capacity_rps:g} req/s in "
                          f"{took:.0f} s, {len(result.steps)} steps; {result.verdict}; "
                          f"{result.bound_sentence()}", flush=True)
        rows.append((name, sat, truth, found))

    print("\nvariant    hey(closed)  httperf(open)  " + "  ".join(
        f"{p:>8} /httperf /hey" for p in args.profiles.split(",")))
    for name, sat, truth, found in rows:
        cells = []
        for p in args.profiles.split(","):
            cap = found[p][0]
            cells.append(f"{cap:8.1f} {cap / truth if truth else 0:8.2f} {cap / sat:4.2f}")
        print(f"{name:<10} {sat:11.1f}  {truth:13.1f}  " + "  ".join(cells))
    for name, sat, truth, found in rows:
        if "quick" in found:
            quick = found["quick"][0]
            print(f"{name}: quick = {quick / truth if truth else 0:.0%} of httperf (target >= 90 %)"
                  f", {quick / sat:.0%} of hey saturation (target <= 100 %)")
        if "quick" in found and "standard" in found and found["standard"][0]:
            diff = abs(found["quick"][0] - found["standard"][0]) / found["standard"][0]
            print(f"{name}: quick vs standard differ by {diff:.1%} (target <= 10 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Is the comparison fair? Two identical boxes must read the same (an A/A test).

    sudo .venv/bin/python benchmarks/bench_fairness.py [--variants micro,micro-swap,micro-copy]
        [--rounds 10] [--mode together|sequential] [--profile quick] [--cpu-scale F]
        [--hey-seconds 0] [--json FILE]

Deploys every variant once on the local backend (real cgroups, Gunicorn, HAProxy; the shop),
then measures their capacity `--rounds` times. `together` is what a run does
(experiments/sweep.py): each round advances every variant's search in one shuffled schedule,
boxes that fit the host loaded at the same time. `sequential` is what runs did before: each
round measures one variant's whole search after the other's. `micro-copy` is micro's own
stack under another name; micro-swap is micro plus swap, which the capacity search never
touches (it holds no memory hazard): all three are the same t2.micro CPU.

Per round it prints each capacity, CPU per request and share of the CPU bound, and each
variant's ratio to the first one. At the end: for every variant, the ratios' median, RSD and
how many rounds fell within 10 % of 1 (the A/A target: 9 of 10). With `--hey-seconds S`,
after each round `hey -c 8` saturates every variant at the same time for S seconds: an
independent generator's A/A ratio beside scalelab's. Asserts nothing: the figures are the
point. Needs root (cgroups) and, for --hey-seconds, hey (bootstrap's test extras).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_capacity_truth import hey_saturation  # noqa: E402
from experiments.backends.local import LocalBackend  # noqa: E402
from experiments.load.capacity import CapacityResult  # noqa: E402
from experiments.load.driver import LoadSession, LoadSettings  # noqa: E402
from experiments.load.search import capacity_prober, new_capacity_search  # noqa: E402
from experiments.model import Slo  # noqa: E402
from experiments.profiles import get_profile  # noqa: E402
from experiments.schedule import Lane, run_rounds  # noqa: E402
from stacks.variant import Variant, load_variant  # noqa: E402

LOCUSTFILE = ROOT / "shop" / "locustfile.py"
COPY_SUFFIX = "-copy"


def variant_named(name: str) -> Variant:
    """A stack by name; NAME-copy is NAME's own stack under another name."""
    if name.endswith(COPY_SUFFIX):
        return load_variant(name[: -len(COPY_SUFFIX)]).with_overrides(name=name)
    return load_variant(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="micro,micro-swap,micro-copy")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--mode", choices=("together", "sequential"), default="together")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cpu-scale", type=float, default=None,
                        help="default: what a run of these variants would choose")
    parser.add_argument("--hey-seconds", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if args.hey_seconds and shutil.which("hey") is None:
        print("hey is not installed: bash scripts/bootstrap.sh test installs it")
        return 2
    variants = [variant_named(n) for n in args.variants.split(",")]
    backend = LocalBackend(cpu_scale=args.cpu_scale, variants=variants)
    profile = get_profile(args.profile).dilated(backend.dilation)
    slo = Slo().dilated(backend.dilation)
    budget = backend.concurrent_cores if args.mode == "together" else 0.0
    rng = random.Random(args.seed)
    print(f"{args.mode}: {', '.join(v.name for v in variants)}; cpu_scale {backend.cpu_scale} "
          f"(dilation {backend.dilation:.2f}); {args.profile} profile; {args.rounds} rounds",
          flush=True)
    rows: list[dict[str, object]] = []
    first = variants[0].name
    with ExitStack() as stack:
        deployed = {v.name: stack.enter_context(backend.deployed(v)) for v in variants}
        settings = LoadSettings(locustfile=LOCUSTFILE, env={"SHOP_ALL_WEIGHT": "0"},
                                dilation=backend.dilation)
        loads = {n: stack.enter_context(LoadSession(d.url, settings))
                 for n, d in deployed.items()}
        for number in range(1, args.rounds + 1):
            began = time.monotonic()
            lanes = {n: Lane(n, new_capacity_search(loads[n], d, profile, slo),
                             capacity_prober(loads[n], d, profile),
                             backend.lane_cores(d.variant)) for n, d in deployed.items()}
            if args.mode == "together":
                run_rounds(list(lanes.values()), budget, rng)
            else:
                order = list(lanes.values())
                rng.shuffle(order)
                for lane in order:
                    run_rounds([lane], budget, rng)
            found: dict[str, CapacityResult] = {}
            for name, lane in lanes.items():
                if lane.error is not None or lane.result is None:
                    print(f"  {name}: {lane.error}", flush=True)
                    continue
                found[name] = lane.result
            hey = hey_together(deployed, args.hey_seconds) if args.hey_seconds else {}
            row: dict[str, object] = {"round": number, "seconds": time.monotonic() - began,
                                      "capacity": {n: c.capacity_rps for n, c in found.items()},
                                      "demand_ms": {n: 1000 * (c.demand_cpu_s or 0)
                                                    for n, c in found.items()},
                                      "pct_of_bound": {n: c.pct_of_cpu_bound
                                                       for n, c in found.items()},
                                      "hey": hey}
            rows.append(row)
            print(f"round {number} ({row['seconds']:.0f} s): " + "  ".join(
                f"{n} {c.capacity_rps:g} ({1000 * (c.demand_cpu_s or 0):.2f} ms, "
                f"{c.pct_of_cpu_bound or 0:.0f} %)" for n, c in found.items())
                + "".join(f"  ×{first}: {n} {found[n].capacity_rps / found[first].capacity_rps:.3f}"
                          for n in found if n != first and first in found
                          and found[first].capacity_rps)
                + ("  hey: " + " ".join(f"{n} {r:.1f}" for n, r in hey.items()) if hey else ""),
                flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    summarize(rows, first, [v.name for v in variants])
    return 0


def hey_together(deployed: dict[str, object], seconds: int) -> dict[str, float]:
    """hey's closed-loop saturation on every deployment at the same time."""
    rates: dict[str, float] = {}

    def one(name: str, url: str) -> None:
        rates[name] = hey_saturation(url + "/products/", seconds)

    threads = [threading.Thread(target=one, args=(n, d.url))  # type: ignore[attr-defined]
               for n, d in deployed.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return rates


def summarize(rows: list[dict[str, object]], first: str, names: list[str]) -> None:
    print(f"\nratio to {first} over {len(rows)} rounds (median, RSD, rounds within 10 %):")
    for key, label in (("capacity", "scalelab"), ("hey", "hey -c 8")):
        for name in names:
            if name == first:
                continue
            ratios = [r[key][name] / r[key][first] for r in rows  # type: ignore[index]
                      if name in r[key] and r[key].get(first)]  # type: ignore[operator,union-attr]
            if not ratios:
                continue
            rsd = statistics.stdev(ratios) / statistics.mean(ratios) if len(ratios) > 1 else 0
            within = sum(abs(x - 1) <= 0.10 for x in ratios)
            print(f"  {label:9} {name:>12} / {first}: median {statistics.median(ratios):.3f}, "
                  f"RSD {rsd:.1%}, within 10 %: {within} of {len(ratios)}  "
                  f"[{', '.join(f'{x:.2f}' for x in ratios)}]")
    for name in names:
        figures = [r["capacity"][name] for r in rows if name in r["capacity"]]  # type: ignore[index,operator]
        if len(figures) > 1:
            print(f"  {name}: capacity median {statistics.median(figures):g}, RSD "
                  f"{statistics.stdev(figures) / statistics.mean(figures):.1%} (the host's "
                  "drift moves single figures; the ratios above are what must hold)")


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted; every deployment was torn down", file=sys.stderr)
        raise SystemExit(130) from None

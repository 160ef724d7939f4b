"""Is the comparison fair? Two identical boxes must read the same (an A/A test).

    sudo .venv/bin/python benchmarks/bench_fairness.py [--variants micro,micro-swap,micro-copy]
        [--rounds 10] [--mode together|sequential] [--profile quick] [--cpu-scale F]
        [--scales 0.33,0.5,1.0] [--hey-seconds 0] [--json FILE]

Deploys every variant once on the local backend (real cgroups, Gunicorn, HAProxy; the shop),
then measures their capacity `--rounds` times. `together` is what a run does
(experiments/sweep.py): each round advances every variant's search in one shuffled schedule,
boxes that fit the host loaded at the same time. `sequential` is what runs did before: each
round measures one variant's whole search after the other's. `micro-copy` is micro's own
stack under another name; micro-swap is micro plus swap, which the capacity search never
touches (it holds no memory hazard): all three are the same t2.micro CPU.

`--scales` instead puts every variant at each cpu_scale (one backend per scale) and compares
their AWS-equivalent capacities (capacity / cpu_scale): do the scales agree?

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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_capacity_truth import hey_saturation  # noqa: E402
from experiments.backends.local import LocalBackend  # noqa: E402
from experiments.load.capacity import CapacityResult, search_trail  # noqa: E402
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


@dataclass
class Box:
    """One measured box: a variant on its backend (several backends: several cpu_scales)."""

    name: str
    variant: Variant
    backend: LocalBackend

    @property
    def scale(self) -> float:
        return self.backend.cpu_scale


def boxes_from(args: argparse.Namespace) -> list[Box]:
    variants = [variant_named(n) for n in args.variants.split(",")]
    if not args.scales:
        backend = LocalBackend(cpu_scale=args.cpu_scale, variants=variants)
        return [Box(v.name, v, backend) for v in variants]
    boxes, cursor = [], 0
    for scale in (float(x) for x in args.scales.split(",")):
        backend = LocalBackend(cpu_scale=scale)
        backend._cpu_cursor = cursor  # one run-wide cursor: spread the boxes over the host
        cursor += sum(v.total_vcpu for v in variants)
        boxes += [Box(f"{v.name}@{scale:g}", v.with_overrides(name=f"{v.name}-s{i}"), backend)
                  for i, v in enumerate(variants, start=len(boxes))]
    return boxes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="micro,micro-swap,micro-copy")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--mode", choices=("together", "sequential"), default="together")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cpu-scale", type=float, default=None,
                        help="default: what a run of these variants would choose")
    parser.add_argument("--scales", default="",
                        help="e.g. 0.33,0.5,1.0: every variant at each cpu_scale, compared in "
                             "AWS-equivalent req/s (capacity / cpu_scale)")
    parser.add_argument("--hey-seconds", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if args.hey_seconds and shutil.which("hey") is None:
        print("hey is not installed: bash scripts/bootstrap.sh test installs it")
        return 2
    boxes = boxes_from(args)
    budget = boxes[0].backend.concurrent_cores if args.mode == "together" else 0.0
    rng = random.Random(args.seed)
    print(f"{args.mode}: " + ", ".join(f"{b.name} (cpu_scale {b.scale:g})" for b in boxes)
          + f"; {args.profile} profile; {args.rounds} rounds; host cores at once {budget:g}",
          flush=True)
    rows: list[dict[str, object]] = []
    first = boxes[0].name
    with ExitStack() as stack:
        deployed = {b.name: stack.enter_context(b.backend.deployed(b.variant)) for b in boxes}
        loads = {b.name: stack.enter_context(LoadSession(deployed[b.name].url, LoadSettings(
            locustfile=LOCUSTFILE, env={"SHOP_ALL_WEIGHT": "0"}, dilation=b.backend.dilation)))
            for b in boxes}
        backends = list({id(b.backend): b.backend for b in boxes}.values())
        for number in range(1, args.rounds + 1):
            began = time.monotonic()
            lanes = {}
            for b in boxes:
                profile = get_profile(args.profile).dilated(b.backend.dilation)
                slo = Slo().dilated(b.backend.dilation)
                d, load = deployed[b.name], loads[b.name]
                lanes[b.name] = Lane(b.name, new_capacity_search(load, d, profile, slo),
                                     capacity_prober(load, d, profile),
                                     b.backend.lane_cores(b.variant))
            def new_round(_: object, backends: list[LocalBackend] = backends) -> None:
                for backend in backends:
                    backend.new_round()
            if args.mode == "together":
                run_rounds(list(lanes.values()), budget, rng, new_round)
            else:
                order = list(lanes.values())
                rng.shuffle(order)
                for lane in order:
                    run_rounds([lane], budget, rng, new_round)
            found: dict[str, CapacityResult] = {}
            for name, lane in lanes.items():
                if lane.error is not None or lane.result is None:
                    print(f"  {name}: {lane.error}", flush=True)
                    continue
                found[name] = lane.result
            scale = {b.name: b.scale for b in boxes}
            aws = {n: c.capacity_rps / scale[n] for n, c in found.items()}
            hey = hey_together(deployed, args.hey_seconds) if args.hey_seconds else {}
            row: dict[str, object] = {"round": number, "seconds": time.monotonic() - began,
                                      "capacity": {n: c.capacity_rps for n, c in found.items()},
                                      "aws_capacity": aws,
                                      "demand_ms": {n: 1000 * (c.demand_cpu_s or 0)
                                                    for n, c in found.items()},
                                      "pct_of_bound": {n: c.pct_of_cpu_bound
                                                       for n, c in found.items()},
                                      "trail": {n: search_trail(c.steps) for n, c in found.items()},
                                      "steps": {n: [s.to_dict() for s in c.steps]
                                                for n, c in found.items()},
                                      "hey": {n: r / scale[n] for n, r in hey.items()}}
            rows.append(row)
            print(f"round {number} ({row['seconds']:.0f} s): " + "  ".join(
                f"{n} {c.capacity_rps:g} ({1000 * (c.demand_cpu_s or 0):.2f} ms, "
                f"{c.pct_of_cpu_bound or 0:.0f} %)" for n, c in found.items())
                + "".join(f"  ×{first}: {n} {aws[n] / aws[first]:.3f}"
                          for n in aws if n != first and aws.get(first))
                + ("  hey: " + " ".join(f"{n} {r:.1f}" for n, r in hey.items()) if hey else ""),
                flush=True)
            for name, trail in row["trail"].items():  # type: ignore[attr-defined]
                print(f"    {name}: {trail}", flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    summarize(rows, first, [b.name for b in boxes])
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
    for key, label in (("aws_capacity", "scalelab"), ("hey", "hey -c 8")):
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
        figures = [r["aws_capacity"][name] for r in rows if name in r["aws_capacity"]]  # type: ignore[index,operator]
        if len(figures) > 1:
            print(f"  {name}: AWS-eq capacity median {statistics.median(figures):.1f}, RSD "
                  f"{statistics.stdev(figures) / statistics.mean(figures):.1%} (the host's "
                  "drift moves single figures; the ratios above are what must hold)")


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted; every deployment was torn down", file=sys.stderr)
        raise SystemExit(130) from None

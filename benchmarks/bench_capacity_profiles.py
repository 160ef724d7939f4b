"""Does the shop's capacity hold still? Quick vs standard, and repeated quick searches.

    sudo .venv/bin/python benchmarks/bench_capacity_profiles.py
        [--variants micro,micro-swap,scale-up,scale-out] [--quick-repeats 3]
        [--profiles quick,standard] [--hey-seconds 12 [--hey-path /products/]]
        [--steps-json steps.json]

Deploys each shop variant once (local backend, real cgroups, the run's cpu_scale and dilated
SLO) and runs on that deployment the capacity search exactly as a run does
(experiments.load.search, the shopper mix without the `?all=1` hazard, as the capacity stage
offers it): `--quick-repeats` quick searches (what `run --repeat N` does), then one standard
search. No sustained or survival stage: this measures the capacity figure only, so the
standard profile fits in minutes per variant instead of a quarter of an hour.

With `--hey-seconds S`, each quick search is followed by one `hey -z Ss -c 8` on --hey-path on
the same deployment (interleaved, so both see the same minutes of the host): the RSD of those
closed-loop saturation figures is the noise floor an independent generator measures here at
that time scale, printed next to the searches' RSD, and so is the RSD of each search's ratio to
the hey figure after it (the host's swings divided out: what is left is scalelab's own), and
the RSD of each search's figure as a share of the CPU bound measured in its own hold (the same,
by the box's own CPU).

With `--steps-json FILE`, every step of every search (its StepResult, with the variant, profile,
search number and CPU limit) is written to FILE as a JSON list, for questions the printed
trail cannot answer (e.g. how close to the SLO the short step a confirmation hold refuted was).

Prints each figure and the targets of issue 10: the quick searches' relative standard
deviation <= 5 % per variant; the quick median and the standard figure within 10 %. Asserts
nothing: the figures are the point. Run it under the CPU lock on a quiet box.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.backends.local import LocalBackend  # noqa: E402
from experiments.load.capacity import search_trail  # noqa: E402
from experiments.load.driver import LoadSession, LoadSettings  # noqa: E402
from experiments.load.search import search_capacity  # noqa: E402
from experiments.model import Slo  # noqa: E402
from experiments.profiles import get_profile  # noqa: E402
from stacks.variant import load_variant, load_variants  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="micro,micro-swap,scale-up,scale-out")
    parser.add_argument("--quick-repeats", type=int, default=3)
    parser.add_argument("--profiles", default="quick,standard")
    parser.add_argument("--hey-seconds", type=int, default=0,
                        help="after each quick search, hey closed loop for this long (0: none)")
    parser.add_argument("--hey-path", default="/products/")
    parser.add_argument("--steps-json", type=Path, default=None,
                        help="write every step of every search to this JSON file")
    args = parser.parse_args()
    from benchmarks.bench_capacity_truth import hey_saturation
    profiles = args.profiles.split(",")
    cpu_scale = LocalBackend.choose_cpu_scale(load_variants())
    rows: list[tuple[str, list[float], float | None, float]] = []
    of_bound: dict[str, list[float]] = {}
    """Each quick search's figure as a % of the CPU bound measured in its own hold."""
    hey_rows: dict[str, list[float]] = {}
    step_records: list[dict[str, object]] = []
    for name in args.variants.split(","):
        variant = load_variant(name)
        locustfile = variant.app.directory / variant.app.locustfile
        with tempfile.TemporaryDirectory(prefix="scalelab-profiles-") as state:
            backend = LocalBackend(cpu_scale=cpu_scale, state_dir=Path(state))
            slo = Slo().dilated(backend.dilation)
            with backend.deployed(variant) as deployment:
                print(f"\n{name}: {deployment.cpu_limit_cores():.2f} cores, SLO p95 "
                      f"{slo.p95_ms:.0f} ms (dilation {backend.dilation:.2f})", flush=True)
                quick: list[float] = []
                standard: float | None = None
                started = time.monotonic()
                runs = [(p, i) for p in profiles
                        for i in range(args.quick_repeats if p == "quick" else 1)]
                for profile_name, i in runs:
                    profile = get_profile(profile_name).dilated(backend.dilation)
                    began = time.monotonic()
                    settings = LoadSettings(locustfile, env={
                        "SHOP_ALL_WEIGHT": str(profile.hazard_weight_capacity)})
                    with LoadSession(deployment.url, settings) as load:
                        result = search_capacity(load, deployment, profile, slo)
                    took = time.monotonic() - began
                    trail = search_trail(result.steps)
                    about = {"variant": name, "profile": profile_name, "search": i + 1,
                             "cpu_limit_cores": deployment.cpu_limit_cores(),
                             "capacity_rps": result.capacity_rps}
                    step_records += [{**about, **s.to_dict()} for s in result.steps]
                    if args.steps_json is not None:  # rewritten after each search: Ctrl-C keeps it
                        args.steps_json.write_text(json.dumps(step_records, indent=1))
                    # per step: CPU ms per request and the host's busy share (other processes)
                    detail = " ".join(
                        f"{s.offered_rps:g}:{1000 * s.server_cpu_s / s.requests:.1f}ms/"
                        f"{(s.host_busy or 0):.0%}" for s in result.steps
                        if s.server_cpu_s is not None and s.requests)
                    first = next((s for s in result.steps
                                  if s.server_cpu_s is not None and s.requests), None)
                    first_ms = ""
                    if first is not None and first.server_cpu_s:
                        first_ms = (f"; first step's demand "
                                    f"{1000 * first.server_cpu_s / first.requests:.2f} ms")
                    print(f"  {profile_name} #{i + 1}: {result.capacity_rps:g} req/s in "
                          f"{took:.0f} s, {len(result.steps)} steps [{trail}]"
                          f"{'' if result.confirmed is not False else ' UNCONFIRMED'}; "
                          f"{result.bound_sentence()}{first_ms}\n    demand/host busy: "
                          f"{detail}", flush=True)
                    if profile_name == "quick":
                        quick.append(result.capacity_rps)
                        if result.pct_of_cpu_bound is not None:
                            of_bound.setdefault(name, []).append(result.pct_of_cpu_bound)
                        if args.hey_seconds > 0:
                            time.sleep(profile.cooldown_s)
                            rps = hey_saturation(deployment.url + args.hey_path,
                                                 args.hey_seconds)
                            hey_rows.setdefault(name, []).append(rps)
                            print(f"  hey -z {args.hey_seconds}s -c 8 {args.hey_path}: "
                                  f"{rps:.1f} req/s", flush=True)
                    else:
                        standard = result.capacity_rps
                rows.append((name, quick, standard, time.monotonic() - started))

    print("\nvariant     quick runs              median   RSD   standard  quick/standard")
    for name, quick, standard, _ in rows:
        median = statistics.median(quick) if quick else None
        rsd = (statistics.stdev(quick) / statistics.mean(quick)
               if len(quick) > 1 and statistics.mean(quick) else None)
        ratio = median / standard if median and standard else None
        print(f"{name:<11} {' '.join(f'{q:6.1f}' for q in quick):<22} "
              f"{median or 0:6.1f} {'' if rsd is None else f'{rsd:5.1%}':>6} "
              f"{standard or 0:9.1f}  {'' if ratio is None else f'{ratio:.2f}'}")
    for name, quick, standard, took in rows:
        if len(quick) > 1:
            rsd = statistics.stdev(quick) / statistics.mean(quick)
            print(f"{name}: quick RSD {rsd:.1%} over {len(quick)} searches (target <= 5 %)")
        hey = hey_rows.get(name, [])
        if len(hey) > 1:
            print(f"{name}: hey RSD {statistics.stdev(hey) / statistics.mean(hey):.1%} over "
                  f"{len(hey)} runs interleaved with the searches ("
                  + ", ".join(f"{h:.1f}" for h in hey) + " req/s): the host's noise floor")
        if len(hey) == len(quick) > 2:
            # Each search next to the hey run that followed it: the ratio divides out the
            # host's swings between searches, so its RSD is what is scalelab's own.
            ratios = [q / h for q, h in zip(quick, hey, strict=True)]
            print(f"{name}: search / hey ratios " + ", ".join(f"{r:.2f}" for r in ratios)
                  + f": RSD {statistics.stdev(ratios) / statistics.mean(ratios):.1%}; "
                  f"correlation of the two series {statistics.correlation(quick, hey):+.2f}")
        pct = of_bound.get(name, [])
        if len(pct) > 1:
            # The box's speed moves the figure and its CPU bound alike; where the search stops
            # relative to the bound is the search's own precision.
            print(f"{name}: % of the CPU bound " + ", ".join(f"{x:.0f}" for x in pct)
                  + f": RSD {statistics.stdev(pct) / statistics.mean(pct):.1%}")
        if quick and standard:
            diff = abs(statistics.median(quick) - standard) / standard
            print(f"{name}: quick median vs standard differ by {diff:.1%} (target <= 10 %)")
        print(f"{name}: {took:.0f} s of searches")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Local backend lifecycle: time from `deployed()` to healthy, and teardown, for a variant.

Prints figures; asserts nothing (timings are noisy on a shared host). Default: the real
scale-out stack (3 × t2.micro with the shop, 2 GiB swap each, HAProxy), which the design's
target is about: start to healthy <= 10 s, teardown <= 5 s.

    .venv/bin/python benchmarks/bench_local_lifecycle.py [--variant scale-out] [--repeat 3]
        [--tiny]   # the tests' tiny WSGI app instead of the shop (no seeding cost)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.backends.local import LocalBackend  # noqa: E402
from stacks.variant import AppSource, load_variant  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="scale-out")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tiny", action="store_true",
                        help="serve tests/fixtures/local_app instead of the variant's app")
    args = parser.parse_args()
    variant = load_variant(args.variant)
    if args.tiny:
        variant = variant.with_overrides(app=AppSource(
            path="tests/fixtures/local_app", wsgi="tinyapp:application",
            health_path=variant.health_check.path, setup="true"))
    with tempfile.TemporaryDirectory(prefix="scalelab-bench-") as state:
        backend = LocalBackend(state_dir=Path(state))
        starts, teardowns = [], []
        for i in range(args.repeat):
            t0 = time.perf_counter()
            with backend.deployed(variant) as dep:
                t1 = time.perf_counter()
            t2 = time.perf_counter()
            starts.append(t1 - t0)
            teardowns.append(t2 - t1)
            print(f"run {i + 1}: {variant.name} ({variant.count} instance(s), "
                  f"{'HAProxy' if variant.load_balancer else 'no LB'}, swap {variant.swap_mib} MiB,"
                  f" cpu_scale {backend.cpu_scale}): start-to-healthy {t1 - t0:.2f} s, "
                  f"teardown {t2 - t1:.2f} s  [{dep.url}]", flush=True)
            print(f"    phases: {dep.extra['startup_phases']}", flush=True)
        print(f"start-to-healthy: median {statistics.median(starts):.2f} s, "
              f"max {max(starts):.2f} s (target <= 10 s)")
        print(f"teardown:         median {statistics.median(teardowns):.2f} s, "
              f"max {max(teardowns):.2f} s (target <= 5 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where does the shop's capacity noise come from? Per-route CPU cost, per-step demand spread.

    flock /tmp/scalelab-cpu.lock .venv/bin/python benchmarks/bench_shop_noise.py
        [--variant micro] [--routes-n 60] [--steps 6] [--rates 8,30] [--hold 4] [--probe-steps]
        [--route PATH] [--window-steps 8]

Deploys one shop variant (local backend, real cgroups, the run's cpu_scale) and measures on it:

1. per route, CPU-milliseconds per request: `hey -n N -c 2` (an independent closed-loop
   generator) on each URL the shopper mix sends, the instances' cgroup CPU time read before and
   after (minus the idle CPU of the same span, measured first);
2. the shopper mix (shop/locustfile.py, `?all=1` off as the capacity stage offers it) at fixed
   rates, `--steps` steps each exactly as the quick search measures them (warm-up, hold): each
   step's demand (CPU-seconds / request), their mean and coefficient of variation, and whether
   the demand moves with the requests the deployment has already served (state drift);
3. the host: steal and other processes' CPU share over each phase (/proc/stat), and with
   `--host-probe S` the CPU time a fixed piece of work takes alone and beside a busy second
   CPU (on this 2-vCPU host it varied 20-36 ms for the same work: see the report of issue 10);
   with `--probe-steps` the same work timed on each CPU *during* every step, set next to the
   step's demand (correlation, and the demand's CV with the host's speed divided out);
4. the floor any capacity search has on this host: an *ideal* search that reads capacity as
   the CPU limit / the mean demand of `--window-steps` consecutive steps (about one quick
   search's time), run three times that many steps apart — how often would its three figures
   have an RSD <= 5 %, and two of them lie within 10 % (issue 10's targets)? With `--route
   PATH` every request is that one GET (a fixed piece of work: no mix), so what moves is the
   host and the server, not which requests a step drew.

The mix's expected mean and the spread a step of n requests *should* have if requests were
drawn independently from the mix (sqrt(var / n)) are printed next to the measured spread, so
"the mix's sampling" can be confirmed or ruled out with figures. Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.backends.local import LocalBackend  # noqa: E402
from experiments.load.driver import LoadSession, LoadSettings  # noqa: E402
from experiments.stats import spread  # noqa: E402
from stacks.variant import load_variant, load_variants  # noqa: E402


def proc_stat() -> list[int]:
    """The aggregate cpu line of /proc/stat: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def host_share(before: list[int], after: list[int]) -> tuple[float, float]:
    """(busy share, steal share) of the host between two /proc/stat reads."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    busy = total - d[3] - d[4]
    return busy / total, d[7] / total


def fixed_work_ms() -> float:
    """CPU milliseconds (this thread's) of a fixed piece of Python work: constant on a host
    whose speed holds still. /burn-style apps burn a fixed CPU *time* and cannot see this."""
    start, acc = time.thread_time(), 0
    for i in range(400_000):
        acc += i * i % 7
    return 1000 * (time.thread_time() - start)


def host_speed(seconds: float) -> dict[str, float]:
    """The fixed work on CPU 0, repeated: alone, then with a spinning process on CPU 1 (the
    load generator's and HAProxy's place during a step). Returns mean and CV of each."""
    def series(s: float) -> list[float]:
        out, end = [], time.monotonic() + s
        while time.monotonic() < end:
            out.append(fixed_work_ms())
            time.sleep(0.3)
        return out

    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        alone = series(seconds)
        spin = subprocess.Popen([sys.executable, "-c", "import os, time\n"
                                 "os.sched_setaffinity(0, {1})\n"
                                 f"end = time.monotonic() + {seconds + 1}\n"
                                 "while time.monotonic() < end: pass"])
        try:
            time.sleep(0.5)
            busy = series(seconds)
        finally:
            spin.wait()
    finally:
        os.sched_setaffinity(0, before)
    return {f"{name}_{k}": v for name, xs in (("alone", alone), ("other_cpu_busy", busy))
            for k, v in (("mean_ms", statistics.mean(xs)),
                         ("cv", statistics.stdev(xs) / statistics.mean(xs)))}


class StepProbe:
    """`fixed_work_ms` every `period_s` on each host CPU (one thread pinned to each) while
    steps run: the host's speed *during* each step, to set next to the step's demand. If the
    demand's scatter is the host's, demand / probe scatters less than demand does."""

    def __init__(self, period_s: float = 0.5) -> None:
        self.period_s = period_s
        self.samples: list[tuple[float, int, float]] = []  # (monotonic end, cpu, ms)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(cpu,), daemon=True)
                         for cpu in sorted(os.sched_getaffinity(0))]

    def _run(self, cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})  # this thread only
        while not self._stop.wait(self.period_s):
            ms = fixed_work_ms()
            self.samples.append((time.monotonic(), cpu, ms))

    def __enter__(self) -> StepProbe:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def median_ms(self, start: float, end: float) -> float | None:
        xs = [ms for t, _, ms in self.samples if start <= t <= end]
        return statistics.median(xs) if xs else None


def hey_cost(url: str, n: int, cpu: callable, idle_cores: float, method: str = "GET",
             body: str | None = None) -> tuple[float, float]:
    """(CPU ms per request, requests/s) of `n` requests by hey -c 2 to `url`."""
    cmd = ["hey", "-n", str(n), "-c", "2", "-m", method]
    if body is not None:
        cmd += ["-T", "application/json", "-d", body]
    start_cpu, start = cpu(), time.monotonic()
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    took = time.monotonic() - start
    used = cpu() - start_cpu - idle_cores * took
    codes = [line.strip() for line in out.splitlines() if "responses" in line]
    if not any(c.startswith("[2") for c in codes):
        raise SystemExit(f"hey got no 2xx from {url}: {codes}")
    return 1000 * used / n, n / took


ROUTE_LOCUSTFILE = """\
from locust import FastHttpUser, task


class OneRoute(FastHttpUser):
    @task
    def get(self) -> None:
        self.client.get({path!r}, name={path!r})
"""


def ideal_search_floor(demands_ms: list[float], cpu_limit_cores: float, window: int
                       ) -> dict[str, float] | None:
    """What an ideal search would read from these consecutive steps' demands: capacity =
    limit / the mean demand of `window` steps. Over every three windows at least `window`
    steps apart: the median RSD and the share <= 5 %; over every two: the share within 10 %.
    None when fewer than three windows fit."""
    caps = [cpu_limit_cores * 1000 / statistics.mean(demands_ms[i:i + window])
            for i in range(len(demands_ms) - window + 1)]
    triples = [[caps[a], caps[b], caps[c]] for a, b, c in itertools.combinations(
        range(len(caps)), 3) if b - a >= window and c - b >= window]
    pairs = [(caps[a], caps[b]) for a, b in itertools.combinations(range(len(caps)), 2)
             if b - a >= window]
    if not triples:
        return None
    rsds = sorted(spread(t).rsd or 0.0 for t in triples)  # the run's own RSD (summary.json)
    return {"capacity_min": min(caps), "capacity_max": max(caps),
            "rsd_median": rsds[len(rsds) // 2],
            "rsd_share_within_5pct": sum(r <= 0.05 for r in rsds) / len(rsds),
            "pair_share_within_10pct": sum(abs(a - b) / min(a, b) <= 0.10 for a, b in pairs)
            / len(pairs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="micro")
    parser.add_argument("--routes-n", type=int, default=60)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rates", default="8,30")
    parser.add_argument("--hold", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--skip-routes", action="store_true")
    parser.add_argument("--route", metavar="PATH",
                        help="load one fixed GET (e.g. /products/4242/) instead of the shop's "
                             "mix: the drift of a constant piece of work")
    parser.add_argument("--window-steps", type=int, default=8,
                        help="steps one ideal search spans in the floor estimate (8 steps of "
                             "a 4.5 s hold ~ one quick search's minute)")
    parser.add_argument("--probe-steps", action="store_true",
                        help="time a fixed piece of work on each CPU during every step and set "
                             "the host's speed next to the step's demand")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--host-probe", type=float, default=0.0, metavar="S",
                        help="first time a fixed piece of work S s alone and S s beside a "
                             "busy CPU 1 (needs 2 CPUs), and print both")
    args = parser.parse_args()
    if args.window_steps < 1:
        parser.error(f"--window-steps must be a whole number >= 1, got {args.window_steps}")
    out: dict[str, object] = {}
    if args.host_probe > 0:
        out["host_speed"] = speed = host_speed(args.host_probe)
        print("host: fixed work " + ", ".join(f"{k} {v:.3g}" for k, v in speed.items()),
              flush=True)
    variant = load_variant(args.variant)
    cpu_scale = LocalBackend.choose_cpu_scale(load_variants())
    locustfile = variant.app.directory / variant.app.locustfile
    out.update({"variant": args.variant, "cpu_scale": cpu_scale})
    with tempfile.TemporaryDirectory(prefix="scalelab-noise-") as state:
        backend = LocalBackend(cpu_scale=cpu_scale, state_dir=Path(state))
        with backend.deployed(variant) as dep:
            cpu = dep.cpu_seconds
            print(f"{args.variant}: {dep.cpu_limit_cores():.3f} cores (cpu_scale "
                  f"{cpu_scale:.2f})", flush=True)
            c0, t0 = cpu(), time.monotonic()
            time.sleep(3)
            idle = (cpu() - c0) / (time.monotonic() - t0)
            print(f"idle: {1000 * idle:.2f} core-ms/s", flush=True)
            out["idle_core_ms_per_s"] = 1000 * idle
            if not args.skip_routes:
                base = dep.url.rstrip("/")
                n = args.routes_n
                routes = [
                    ("list page 1", f"{base}/products/?page=1", "GET", None),
                    ("list page 5", f"{base}/products/?page=5", "GET", None),
                    ("list category", f"{base}/products/?category=books&page=1", "GET", None),
                    ("list deep 1875", f"{base}/products/?page=1875", "GET", None),
                    ("list deep 3750", f"{base}/products/?page=3750", "GET", None),
                    ("list deep 7500", f"{base}/products/?page=7500", "GET", None),
                    ("product", f"{base}/products/4242/", "GET", None),
                    ("search kettle", f"{base}/search/?q=kettle", "GET", None),
                    ("search none", f"{base}/search/?q=nothing-matches-this", "GET", None),
                    ("cart add", f"{base}/cart/", "POST",
                     json.dumps({"product_id": 77, "quantity": 1})),
                    ("order", f"{base}/orders/", "POST",
                     json.dumps({"items": [{"product_id": 78, "quantity": 1},
                                           {"product_id": 79, "quantity": 1}]})),
                ]
                costs = {}
                for label, url, method, body in routes:
                    h0 = proc_stat()
                    ms, rps = hey_cost(url, n, cpu, idle, method, body)
                    busy, steal = host_share(h0, proc_stat())
                    costs[label] = ms
                    print(f"  {label:<16} {ms:7.2f} CPU ms/request  ({rps:6.1f} req/s closed "
                          f"loop; host busy {busy:.0%}, steal {steal:.1%})", flush=True)
                out["route_cpu_ms"] = costs
                # The mix's expected per-request cost and spread (locustfile weights, ?all=1 off):
                # browse 42 (10 % deep: uniform over the catalogue ~ mean of the three deep
                # points; 25 % category; the rest shallow), product 30, search 3, cart 14 +
                # order 10 (about half the order tasks are orders, half cart adds).
                deep = [costs["list deep 1875"], costs["list deep 3750"], costs["list deep 7500"]]
                shallow = (costs["list page 1"] + costs["list page 5"]) / 2
                parts = [  # (share of requests, cost ms)
                    (0.42 * 0.1, statistics.mean(deep)),
                    (0.42 * 0.9 * 0.25, costs["list category"]),
                    (0.42 * 0.9 * 0.75, shallow),
                    (0.30, costs["product"]),
                    (0.03, (costs["search kettle"] + costs["search none"]) / 2),
                    (0.14 + 0.05, costs["cart add"]),
                    (0.05, costs["order"]),
                ]
                total = sum(w for w, _ in parts)
                mean = sum(w * c for w, c in parts) / total
                second = sum(w * c * c for w, c in parts) / total
                # a deep page's cost is spread over 0..max too: add its own variance (uniform)
                deep_var = (costs["list deep 7500"] - shallow) ** 2 / 12
                second += 0.042 * deep_var / total
                sd = (second - mean * mean) ** 0.5
                print(f"  mix: expected {mean:.2f} ms/request, per-request sd {sd:.2f} ms; "
                      "share of CPU: " + ", ".join(
                          f"{name} {100 * w * c / total / mean:.0f} %" for name, (w, c) in zip(
                              ("deep", "category", "shallow", "product", "search", "cart",
                               "order"), parts, strict=True)), flush=True)
                out["mix_expected_ms"], out["mix_sd_ms"] = mean, sd
            if args.route:
                locustfile = Path(state) / "one_route.py"
                locustfile.write_text(ROUTE_LOCUSTFILE.format(path=args.route))
                out["route"] = args.route
            settings = LoadSettings(locustfile, env={"SHOP_ALL_WEIGHT": "0"})
            load_name = f"route {args.route}" if args.route else "mix"
            steps_out = []
            served = 0
            probe = StepProbe() if args.probe_steps else contextlib.nullcontext()
            with LoadSession(dep.url, settings) as load, probe:
                for rate in (float(r) for r in args.rates.split(",")):
                    demands, speeds = [], []
                    for i in range(args.steps):
                        h0, t0 = proc_stat(), time.monotonic()
                        step = load.step(rate, args.warmup, args.hold, cpu_seconds=cpu)
                        busy, steal = host_share(h0, proc_stat())
                        speed = (probe.median_ms(t0 + args.warmup, time.monotonic())
                                 if isinstance(probe, StepProbe) else None)
                        served += step.requests
                        d = None
                        if step.server_cpu_s is not None and step.requests:
                            # raw: what the search divides (cgroup CPU / requests, idle in)
                            d = 1000 * step.server_cpu_s / step.requests
                            demands.append(d)
                            if speed is not None:
                                speeds.append(speed)
                        steps_out.append({"rate": rate, "i": i, "requests": step.requests,
                                          "demand_ms": d, "p95_ms": step.p95_ms,
                                          "served_before": served, "host_busy": busy,
                                          "steal": steal, "probe_ms": speed})
                        print(f"  {load_name} {rate:g} req/s #{i + 1}: {step.requests} requests, "
                              f"demand {d or 0:.2f} ms, p95 {step.p95_ms:.0f} ms, host busy "
                              f"{busy:.0%} steal {steal:.1%}"
                              + (f", fixed work {speed:.1f} ms" if speed else ""), flush=True)
                        time.sleep(0.5)
                    if len(demands) > 1:
                        cv = statistics.stdev(demands) / statistics.mean(demands)
                        n_mean = statistics.mean(
                            s["requests"] for s in steps_out if s["rate"] == rate)
                        expected = ""
                        if "mix_sd_ms" in out:
                            cv_draws = (out["mix_sd_ms"] / out["mix_expected_ms"]  # type: ignore[operator]
                                        / n_mean ** 0.5)
                            expected = (f"; independent draws of {n_mean:.0f} requests would "
                                        f"give CV {cv_draws:.1%}")
                        print(f"  {load_name} {rate:g} req/s: demand mean "
                              f"{statistics.mean(demands):.2f} ms, CV {cv:.1%}{expected}",
                              flush=True)
                    if len(speeds) == len(demands) > 2:
                        per_work = [d / w for d, w in zip(demands, speeds, strict=True)]
                        cv_per_work = statistics.stdev(per_work) / statistics.mean(per_work)
                        print(f"  {load_name} {rate:g} req/s: fixed work CV "
                              f"{statistics.stdev(speeds) / statistics.mean(speeds):.1%}, "
                              f"correlation with the demand "
                              f"{statistics.correlation(demands, speeds):+.2f}; demand / fixed "
                              f"work CV {cv_per_work:.1%}"
                              " (the demand with the host's speed divided out)", flush=True)
                    floor = ideal_search_floor(demands, dep.cpu_limit_cores(), args.window_steps)
                    if floor is not None:
                        out.setdefault("ideal_search_floor", {})[str(rate)] = floor  # type: ignore[union-attr]
                        print(f"  {load_name} {rate:g} req/s: an ideal search (limit / mean "
                              f"demand of {args.window_steps} steps) reads "
                              f"{floor['capacity_min']:.1f}-"
                              f"{floor['capacity_max']:.1f} req/s here; three of them: median "
                              f"RSD {floor['rsd_median']:.1%}, RSD <= 5 % in "
                              f"{floor['rsd_share_within_5pct']:.0%} of triples; two within "
                              f"10 % in {floor['pair_share_within_10pct']:.0%} of pairs",
                              flush=True)
            out["steps"] = steps_out
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

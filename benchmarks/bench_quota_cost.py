"""Does a tighter CPU quota make each request cost more CPU? (issue 11: dilation stability)

The AWS-equivalent estimate assumes a request costs the same CPU time at every cpu_scale: the
box is only slowed down. Measured last: the shop's CPU per request was higher at cpu_scale
0.33 than at 0.66 (micro 8.5 vs 6.5 ms in one interleaved pair), which alone moves the
estimate. This benchmark takes the load generator, HAProxy and the network out: two worker
processes (a micro's two Gunicorn workers) run the shop's own views in-process through
Django's test client, in a cgroup with a CFS quota, and the cgroup's CPU time is divided by
the requests served. Configurations are interleaved round by round, so the host's own drift
hits them alike; each line prints the median and the ratio to the --base configuration.

    sudo .venv/bin/python benchmarks/bench_quota_cost.py [--rounds 5] [--seconds 6]
        [--configs 0.33@100,0.66@100,0.33@10,none] [--cpus 0] [--base 1.0@100] [--detail]
        [--bracket] [--same-workers]

A config is CORES@PERIOD_MS (the quota is CORES × PERIOD) or `none` (no quota), optionally
followed by modifiers: `/wN` runs N worker processes instead of --workers, `/fill` keeps a
SCHED_IDLE busy loop (outside the cgroup) on each CPU the workers may use, so the CPU never
idles while the cgroup is throttled (it yields at once to the workers), `/thrash` the same but
writing every cache line of 16 MiB over and over (another process using the core while the
cgroup is throttled, as the load generator or HAProxy can), e.g. `0.33@100/w1`,
`0.33@100/fill`. The workers join the cgroup after their warm-up (imports, templates) and stay
alive until its CPU time is read, so neither start-up nor exit is counted. `--detail` adds, per
configuration, the share of CFS periods that were throttled and the workers' context switches
per request (voluntary / involuntary). `--bracket` measures the --base configuration between
every two others and divides each by the mean of the base measurements either side of it (this
VM's speed drifts 10-40 % within minutes); `--same-workers` measures all of a round's
configurations with one set of workers, changing the quota between segments, so differences
between process sets (memory layout, hash seed) drop out too. Needs root (or a delegated cgroup
v2 subtree), like the local backend.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.backends.local.cgroups import InstanceCgroup, detect_layout  # noqa: E402

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
    served = 0
    for line in sys.stdin:  # one segment per line; idle in between (exit is never counted)
        count, end = 0, time.monotonic() + float(line)
        while time.monotonic() < end:
            client.get(paths[served % len(paths)])
            served += 1
            count += 1
        print(count, flush=True)
""")

FILLER = textwrap.dedent("""
    import os
    if os.environ.get("PROBE_CPUS"):
        os.sched_setaffinity(0, {int(c) for c in os.environ["PROBE_CPUS"].split(",")})
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if os.environ.get("THRASH"):  # write every cache line of 16 MiB (4 x this VM's L2)
        buf = bytearray(16 << 20)
        zeros, ones = bytes(len(buf) // 64), b"\\x01" * (len(buf) // 64)
        while True:
            buf[::64] = zeros
            buf[::64] = ones
    while True:
        pass
""")


def parse_config(text: str) -> tuple[float | None, int]:
    """'0.33@100' -> (0.33 cores, 100_000 µs period); 'none' -> (None, 100_000).

    Modifiers after '/' (see parse_modifiers) are ignored here.
    """
    text = text.split("/")[0]
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


def parse_modifiers(text: str, workers: int) -> tuple[int, str]:
    """'0.33@100/w1/fill' -> (1 worker, 'fill'); no modifiers -> (`workers`, '')."""
    fill = ""
    for mod in text.split("/")[1:]:
        if mod in ("fill", "thrash"):
            fill = mod
        elif mod.startswith("w") and mod[1:].isdigit() and int(mod[1:]) >= 1:
            workers = int(mod[1:])
        else:
            raise SystemExit(f"--configs: unknown modifier {mod!r} in {text!r} (use /wN, "
                             "/fill or /thrash)")
    return workers, fill


def _switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of one process so far."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return (int(fields.get("voluntary_ctxt_switches", 0)),
            int(fields.get("nonvoluntary_ctxt_switches", 0)))


def _cpu_stat(cgroup: InstanceCgroup) -> dict[str, int]:
    """nr_periods and nr_throttled of the cgroup's CFS bandwidth (same names on v1 and v2)."""
    stat_file = getattr(cgroup, "cpu", cgroup.paths[0]) / "cpu.stat"  # v1: the cpu hierarchy
    out: dict[str, int] = {}
    for line in stat_file.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


@dataclass
class Sample:
    ms_per_request: float
    throttled_share: float
    """Throttled CFS periods / periods that ran (0 without a quota)."""
    voluntary_per_request: float
    involuntary_per_request: float


class Probe:
    """`workers` warmed-up processes in one fresh cgroup; `segment` measures one quota."""

    made = 0

    def __init__(self, workers: int, env: dict[str, str]) -> None:
        self.env = env
        Probe.made += 1
        self.cgroup = detect_layout().make(f"scalelab-quota-probe-{os.getpid()}-{Probe.made}")
        self.cgroup.create()
        self.procs: list[subprocess.Popen[str]] = []
        try:
            for _ in range(workers):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", WORKER], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, text=True))
            for proc in self.procs:  # warm-up runs outside the quota (it is not measured)
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
                for procs_file in self.cgroup.procs_files():
                    procs_file.write_text(str(proc.pid))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.cgroup.remove()

    def segment(self, config: str, seconds: float) -> Sample:
        """CPU ms per request over `seconds` under `config`'s quota (and filler)."""
        cores, period = parse_config(config)
        _, fill = parse_modifiers(config, len(self.procs))
        cgroup, procs = self.cgroup, self.procs
        fillers: list[subprocess.Popen[bytes]] = []
        try:
            cgroup.set_cpu(cores, period)
            if fill:
                env = self.env
                cpus = env.get("PROBE_CPUS") or ",".join(str(c) for c in os.sched_getaffinity(0))
                for cpu in cpus.split(","):
                    fillers.append(subprocess.Popen(
                        [sys.executable, "-c", FILLER],
                        env={**env, "PROBE_CPUS": cpu, "THRASH": "1" if fill == "thrash" else ""}))
                time.sleep(0.2)  # let them start and settle on their CPUs
            before = cgroup.stats().cpu_usage_s
            stat_before = _cpu_stat(cgroup)
            switches_before = [_switches(proc.pid) for proc in procs]
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(f"{seconds}\n")
                proc.stdin.flush()
            served = 0
            for proc in procs:
                assert proc.stdout is not None
                served += int(proc.stdout.readline())
            used = cgroup.stats().cpu_usage_s - before
            stat_after = _cpu_stat(cgroup)
            switches_after = [_switches(proc.pid) for proc in procs]
        finally:
            for filler in fillers:
                filler.kill()
                filler.wait()
        served = max(1, served)
        periods = stat_after.get("nr_periods", 0) - stat_before.get("nr_periods", 0)
        throttled = stat_after.get("nr_throttled", 0) - stat_before.get("nr_throttled", 0)
        voluntary = sum(a[0] - b[0] for a, b in zip(switches_after, switches_before, strict=True))
        involuntary = sum(a[1] - b[1] for a, b in
                          zip(switches_after, switches_before, strict=True))
        return Sample(ms_per_request=1000 * used / served,
                      throttled_share=throttled / periods if periods else 0.0,
                      voluntary_per_request=voluntary / served,
                      involuntary_per_request=involuntary / served)


def measure(config: str, seconds: float, workers: int, env: dict[str, str]) -> Sample:
    """CPU ms per request of `workers` processes in a fresh cgroup with `config`'s quota."""
    probe = Probe(parse_modifiers(config, workers)[0], env)
    try:
        return probe.segment(config, seconds)
    finally:
        probe.close()


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
    parser.add_argument("--base", default=None,
                        help="the configuration ratios are given to (default: 'none' when "
                             "measured, else the first)")
    parser.add_argument("--bracket", action="store_true",
                        help="measure the base between every two other configurations and give "
                             "each its ratio to the base measurements either side of it (drift "
                             "within a round cancels too; twice the measurements)")
    parser.add_argument("--same-workers", action="store_true",
                        help="one set of workers per round, measuring every configuration in "
                             "turn (the quota changes between segments): differences between "
                             "process sets (memory layout, hash seed) drop out of the ratios")
    parser.add_argument("--pair-cpus", default="",
                        help="A,B: run the base on CPU A and each other config on CPU B at the "
                             "same time (one set of workers per CPU), then swapped; ratios are "
                             "the geometric mean of the two (overrides --cpus, --bracket)")
    parser.add_argument("--detail", action="store_true",
                        help="also print throttled periods and context switches per request")
    args = parser.parse_args()
    configs = args.configs.split(",")
    for config in configs:
        parse_config(config)
        if ((args.same_workers or args.pair_cpus)
                and parse_modifiers(config, args.workers)[0] != args.workers):
            raise SystemExit(f"--same-workers/--pair-cpus: {config!r} asks for another worker "
                             "count")
    if args.pair_cpus and len(args.pair_cpus.split(",")) != 2:
        raise SystemExit("--pair-cpus: two CPUs, e.g. 0,1")
    if len(set(configs)) != len(configs):
        raise SystemExit("--configs: each configuration once")
    base_config = args.base or ("none" if "none" in configs else configs[0])
    if base_config not in configs:
        raise SystemExit(f"--base: {base_config!r} is not one of --configs")
    with tempfile.TemporaryDirectory(prefix="scalelab-quota-") as data:
        env = {**os.environ, "SCALELAB_DATA_DIR": data, "PROBE_CPUS": args.cpus}
        subprocess.run([sys.executable, "-m", "shop", "seed"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        samples: dict[str, list[Sample]] = {c: [] for c in configs}
        ratios: dict[str, list[float]] = {c: [] for c in configs}
        others = [c for c in configs if c != base_config]

        probes: list[Probe] = []  # --same-workers: this round's workers

        def pair_round(round_no: int) -> None:
            # Two sets of workers, one per CPU, measured at the same time (the host's drift
            # hits both): base on A with the config on B, then swapped; the geometric mean of
            # the two ratios cancels any speed difference between the two CPUs.
            cpu_a, cpu_b = args.pair_cpus.split(",")
            pair = [Probe(args.workers, {**env, "PROBE_CPUS": cpu_a})]
            try:
                pair.append(Probe(args.workers, {**env, "PROBE_CPUS": cpu_b}))
                shift = round_no % max(1, len(others))
                shown = []
                for config in others[shift:] + others[:shift]:
                    got = []
                    for first, second in ((base_config, config), (config, base_config)):
                        with ThreadPoolExecutor(2) as pool:
                            futures = [pool.submit(pair[0].segment, first, args.seconds),
                                       pool.submit(pair[1].segment, second, args.seconds)]
                            results = [f.result() for f in futures]
                        samples[first].append(results[0])
                        samples[second].append(results[1])
                        got.append((results[0].ms_per_request, results[1].ms_per_request))
                    (b_a, c_b), (c_a, b_b) = got
                    ratios[config].append(((c_b / b_a) * (c_a / b_b)) ** 0.5)
                    shown.append(f"{config} {c_a:.3f}|{c_b:.3f} vs {b_a:.3f}|{b_b:.3f}")
                print(f"round {round_no + 1} (CPU {cpu_a}|{cpu_b}): " + "  ".join(shown),
                      flush=True)
                ratios[base_config].append(1.0)
            finally:
                for probe in pair:
                    probe.close()

        def run(config: str) -> float:
            if probes:
                samples[config].append(probes[0].segment(config, args.seconds))
            else:
                samples[config].append(measure(config, args.seconds, args.workers, env))
            return samples[config][-1].ms_per_request

        def one_round(round_no: int) -> None:
            if args.bracket:
                # base, c1, base, c2, base, ...: each config against the mean of the two base
                # measurements either side of it (seconds apart); the order rotates each round.
                shift = round_no % max(1, len(others))
                before = run(base_config)
                shown = [f"{base_config} {before:.3f}"]
                for config in others[shift:] + others[:shift]:
                    value = run(config)
                    after = run(base_config)
                    ratios[config].append(value / ((before + after) / 2))
                    shown += [f"{config} {value:.3f}", f"{base_config} {after:.3f}"]
                    before = after
                print(f"round {round_no + 1}: " + "  ".join(shown), flush=True)
            else:
                for config in configs:
                    run(config)
                print(f"round {round_no + 1}: " + "  ".join(
                    f"{c} {samples[c][-1].ms_per_request:.3f}" for c in configs), flush=True)
                for config in others:
                    # Ratio to the base in the same round: drift slower than a round cancels.
                    ratios[config].append(samples[config][-1].ms_per_request
                                          / samples[base_config][-1].ms_per_request)
            ratios[base_config].append(1.0)

        for round_no in range(args.rounds):
            if args.pair_cpus:
                pair_round(round_no)
                continue
            if args.same_workers:
                probes.append(Probe(args.workers, env))
            try:
                one_round(round_no)
            finally:
                while probes:
                    probes.pop().close()
    per = {c: [s.ms_per_request for s in samples[c]] for c in configs}
    base = statistics.median(per[base_config])
    pinned = (f" pinned to CPU {args.pair_cpus.replace(',', ' or ')}, two sets at once"
              if args.pair_cpus else f" pinned to CPU {args.cpus}" if args.cpus else "")
    method = ("simultaneous-pair" if args.pair_cpus else "bracketed" if args.bracket
              else "per-round")
    print(f"\nCPU ms per request (median of {args.rounds} rounds; {args.workers} workers"
          + pinned + ", "
          f"{args.seconds:g} s each, the shop's list and product views in-process):")
    for config in configs:
        median = statistics.median(per[config])
        spread = (max(per[config]) - min(per[config])) / median
        paired = ratios[config]
        line = (f"  {config:>14}: {median:6.3f} ms  (range {min(per[config]):.3f}-"
                f"{max(per[config]):.3f}, {spread:.0%})  {median / base:.3f} × {base_config}"
                f"  ({method} ratio median "
                f"{statistics.median(paired):.3f}, {min(paired):.3f}-{max(paired):.3f})")
        if args.detail:
            got = samples[config]
            line += (f"  throttled {statistics.median(s.throttled_share for s in got):.0%} of "
                     "periods, switches/request vol "
                     f"{statistics.median(s.voluntary_per_request for s in got):.3f} invol "
                     f"{statistics.median(s.involuntary_per_request for s in got):.3f}")
        print(line)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted; the probe cgroup and its workers were removed", file=sys.stderr)
        raise SystemExit(130) from None

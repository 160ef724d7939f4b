"""Is a difference between two variants real? Each variant's capacity as a ratio to the
baseline's (micro, else the run's first variant), with a 95 % interval, and "within noise"
when the interval holds 1.

The ratio is only as fair as the schedule that measured it: a run measures its variants
together (sweep.py), so search i of every variant ran in the same rounds and the searches
pair up. Then:

- `--repeat N` (N >= 2): the N paired ratios; the interval is Student's t on their logarithms
  (a ratio's noise is multiplicative), exp(mean ± t · s / √N). Pairing takes out what the
  host's drift did to both alike.
- one search each (quick): nothing in the run says how far a second search would land, so
  the interval is the search's known scatter, `SEARCH_LOG_SD` per search (measured by
  benchmarks/bench_fairness.py: identical boxes searched together), as a normal 95 % interval
  of the log ratio, widened to hold the searches' own resolution (a search brackets its
  knee between its capacity and the lowest rate above it that failed).

A run measured the old way, one variant after another (no `schedule` in run.json), is
compared all the same, with a warning that drift between the searches is in the ratio.
CPU per request stands beside each ratio: where it differs, the boxes did different work.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

BASELINE = "micro"
SEARCH_LOG_SD = 0.08
"""How far one quick search of a box lands from another's of an identical box measured beside
it: the standard deviation of ln(capacity), from the A/A benchmark (docs/validation.md,
"Fair comparison"). Without it a single search's resolution alone (about 5 %) called two
identical boxes 8 % apart "higher beyond noise"."""
Z95 = 1.96
NO_FAIL_MARGIN = 0.05
"""A search that never failed above its capacity is known to this precision upwards (the
profiles' search precision)."""


def baseline_name(entries: list[dict[str, Any]]) -> str | None:
    names = [str(e.get("name")) for e in entries if e.get("name")]
    if not names:
        return None
    return BASELINE if BASELINE in names else names[0]


def resolution(entry: dict[str, Any]) -> tuple[float, float] | None:
    """(capacity, the lowest failed rate above it): where the search placed the knee."""
    capacity = float(entry.get("capacity_rps") or 0)
    if capacity <= 0:
        return None
    above = [float(s["offered_rps"]) for s in entry.get("steps") or []
             if isinstance(s, dict) and s.get("passed") is False
             and not s.get("generator_saturated") and float(s.get("offered_rps") or 0) > capacity]
    return capacity, min(above, default=capacity * (1 + NO_FAIL_MARGIN))


def paired_interval(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of paired ratios and its Student's t 95 % interval."""
    from scipy import stats as scipy_stats

    logs = [math.log(r) for r in ratios]
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    half = float(scipy_stats.t.ppf(0.975, len(logs) - 1)) * sd / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def compare(entry: dict[str, Any], base: dict[str, Any], together: bool) -> dict[str, Any] | None:
    """One variant against the baseline; None when either has no capacity."""
    runs_a = [float(x) for x in entry.get("capacity_runs") or [] if x]
    runs_b = [float(x) for x in base.get("capacity_runs") or [] if x]
    pairs = min(len(runs_a), len(runs_b))
    if together and pairs >= 2 and len(runs_a) == len(runs_b):
        ratio, low, high = paired_interval([a / b for a, b in zip(runs_a, runs_b, strict=True)])
        basis = f"{pairs} paired searches (Student's t on log ratios)"
    else:
        a, b = resolution(entry), resolution(base)
        if a is None or b is None:
            return None
        ratio = a[0] / b[0]
        spread = math.exp(Z95 * math.sqrt(2) * SEARCH_LOG_SD)
        low, high = min(a[0] / b[1], ratio / spread), max(a[1] / b[0], ratio * spread)
        basis = (f"one search each: a search's scatter ({SEARCH_LOG_SD:.0%} per search, "
                 "measured A/A) and resolution")
    verdict = ("within noise" if low <= 1 <= high else
               f"{'higher' if ratio > 1 else 'lower'} beyond noise")
    result: dict[str, Any] = {
        "variant": entry.get("name"), "baseline": base.get("name"),
        "ratio": round(ratio, 3), "ci95": [round(low, 3), round(high, 3)], "verdict": verdict,
        "basis": basis, "measured_together": together,
        "demand_cpu_ms": [entry.get("demand_cpu_ms"), base.get("demand_cpu_ms")],
    }
    if not together:
        result["warning"] = ("measured one after another: the host's drift between the "
                             "searches is part of this ratio")
    return result


def comparisons(entries: list[dict[str, Any]], together: bool) -> list[dict[str, Any]]:
    """Every variant against the baseline (summary.json's `comparisons`)."""
    name = baseline_name(entries)
    base = next((e for e in entries if e.get("name") == name), None)
    if base is None:
        return []
    found = [compare(e, base, together) for e in entries if e is not base]
    return [c for c in found if c is not None]


def sentence(c: dict[str, Any]) -> str:
    """E.g. 'micro-swap ÷ micro = 1.02 (0.93–1.11): within noise; CPU per request 6.4 vs
    6.3 ms'."""
    low, high = c["ci95"]
    cpu = c.get("demand_cpu_ms") or [None, None]
    cpu_text = (f"; CPU per request {cpu[0]:.2f} vs {cpu[1]:.2f} ms"
                if cpu[0] is not None and cpu[1] is not None else "")
    return (f"{c['variant']} ÷ {c['baseline']} = {c['ratio']:.2f} ({low:.2f}–{high:.2f}): "
            f"{c['verdict']}{cpu_text}" + (f" ({c['warning']})" if c.get("warning") else ""))

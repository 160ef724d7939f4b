"""How sure a repeated figure is: the median, a 95 % interval and the relative spread of N
capacity searches, and whether two runs' figures differ by more than their noise.

Kept apart from the runner and the report so both read the same definitions:

- `capacity_rps` is the **median** of the searches: one wild search cannot move it.
- `capacity_ci95` is Student's t interval for the **mean** of the searches,
  mean ± t(0.975, n−1) · s / √n, cut at 0 (a rate is never negative). With 3–5 searches it
  is the honest small-sample choice: a distribution-free interval for the median needs at
  least 6 searches to reach 95 %, and a bootstrap of 3 values only resamples those 3 values.
  One search has no interval (None).
- `capacity_rsd` is the sample standard deviation over the mean (relative spread).
- `welch` is Welch's t-test (unequal variances) on two runs' searches, as scipy computes it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


@dataclass(frozen=True)
class Spread:
    """N figures of one quantity, summarised."""

    runs: list[float]
    median: float
    ci95: tuple[float, float] | None
    """Student's t 95 % interval for the mean; None with fewer than 2 figures."""
    rsd: float | None
    """Sample standard deviation / mean; None with fewer than 2 figures or a zero mean."""


def spread(values: list[float]) -> Spread:
    """Median, 95 % interval and relative standard deviation of `values` (at least one)."""
    if not values:
        raise ValueError("spread() needs at least one value")
    runs = [float(v) for v in values]
    median = statistics.median(runs)
    if len(runs) < 2:
        return Spread(runs, median, None, None)
    mean = statistics.fmean(runs)
    sd = statistics.stdev(runs)
    from scipy import stats as scipy_stats  # ~1 s to import: only when there are repeats

    half = float(scipy_stats.t.ppf(1 - ALPHA / 2, len(runs) - 1)) * sd / math.sqrt(len(runs))
    rsd = sd / mean if mean else None
    # A rate is never negative: with 2 scattered searches (t = 12.7) the interval's lower end
    # would be (measured: runs 27.9 and 19.1 req/s gave -32.4); it is cut at 0.
    return Spread(runs, median, (max(0.0, mean - half), mean + half), rsd)


@dataclass(frozen=True)
class Significance:
    """Welch's t-test of contender vs baseline."""

    p_value: float | None
    """None when the test cannot be made (fewer than 2 figures on a side, or no spread)."""
    significant: bool
    sentence: str


def welch(baseline: list[float], contender: list[float]) -> Significance:
    """Is the contender's mean different from the baseline's beyond their noise (p < 0.05)?"""
    if len(baseline) < 2 or len(contender) < 2:
        return Significance(None, False, f"not testable: {len(baseline)} vs {len(contender)} "
                                         "searches; run both with --repeat 3 or more")
    if statistics.stdev(baseline) == 0 and statistics.stdev(contender) == 0:
        same = statistics.fmean(baseline) == statistics.fmean(contender)
        return Significance(None, not same, "identical" if same else
                            "every search agrees within each run and the runs differ")
    from scipy import stats as scipy_stats

    result = scipy_stats.ttest_ind(contender, baseline, equal_var=False)
    p = float(result.pvalue)
    if math.isnan(p):
        return Significance(None, False, "not testable: the test is undefined for these figures")
    if p < ALPHA:
        return Significance(p, True, f"significant (Welch's t-test, p = {p:.3f})")
    return Significance(p, False, f"within noise (Welch's t-test, p = {p:.2f})")

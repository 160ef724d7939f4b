"""A variant against the baseline: the ratio, its interval and the "within noise" verdict."""

from __future__ import annotations

import math

import pytest

from experiments.comparison import SEARCH_LOG_SD, comparisons, resolution, sentence


def entry(name: str, capacity: float, failed_above: float | None = None,
          runs: list[float] | None = None, demand: float = 6.0) -> dict[str, object]:
    steps = [{"offered_rps": capacity * 0.5, "passed": True},
             {"offered_rps": capacity, "passed": True}]
    if failed_above:
        steps.append({"offered_rps": failed_above, "passed": False})
        steps.append({"offered_rps": failed_above * 1.5, "passed": False})
    return {"name": name, "capacity_rps": capacity, "steps": steps,
            "capacity_runs": runs or [capacity], "demand_cpu_ms": demand}


def test_one_search_each_is_compared_within_a_searchs_scatter() -> None:
    micro, twin = entry("micro", 40, 42), entry("micro-swap", 43.2, 45)
    assert resolution(micro) == (40, 42)
    (c,) = comparisons([micro, twin], together=True)
    assert c["ratio"] == pytest.approx(1.08, abs=1e-3)
    spread = math.exp(1.96 * math.sqrt(2) * SEARCH_LOG_SD)  # about x/÷ 1.25
    assert c["ci95"] == pytest.approx([1.08 / spread, 1.08 * spread], abs=1e-3)
    assert c["verdict"] == "within noise" and "warning" not in c  # 8 % apart: one search can't tell
    wide = entry("micro-swap", 41, 60)  # a search that ended far from its knee
    (c,) = comparisons([micro, wide], together=True)
    assert c["ci95"][1] == pytest.approx(60 / 40, abs=1e-3)
    up = entry("scale-up", 90, 95)
    (c,) = comparisons([micro, up], together=True)
    assert c["verdict"] == "higher beyond noise" and c["ci95"][0] > 1
    assert "scale-up ÷ micro = 2.25" in sentence(c) and "CPU per request" in sentence(c)


def test_repeated_searches_pair_up_round_by_round() -> None:
    """The host drifted 30 % between rounds; the pairs cancel it."""
    micro = entry("micro", 40, 42, runs=[40, 52, 44])
    up = entry("scale-up", 80, 84, runs=[80.8, 104, 88.4])
    (c,) = comparisons([up, micro], together=True)  # the baseline is micro wherever it is
    assert c["baseline"] == "micro" and c["variant"] == "scale-up"
    assert c["ratio"] == pytest.approx(2.01, abs=0.01)
    low, high = c["ci95"]
    assert 1.95 < low < 2.01 < high < 2.07  # tight: the drift is in both figures alike
    assert "paired" in c["basis"]


def test_a_run_measured_one_after_another_says_so() -> None:
    (c,) = comparisons([entry("micro", 40, 42), entry("micro-swap", 53, 55)], together=False)
    assert c["verdict"] == "higher beyond noise"  # 1.33 > x1.25
    assert "one after another" in c["warning"] and "one after another" in sentence(c)


def test_nothing_to_compare() -> None:
    assert comparisons([], together=True) == []
    assert comparisons([entry("micro", 40, 42), entry("broken", 0)], together=True) == []

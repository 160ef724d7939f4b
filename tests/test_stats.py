"""The interval and the significance test, checked against figures worked out by hand."""

import math

import pytest

from experiments.stats import spread, welch


def test_one_search_has_no_interval() -> None:
    s = spread([31.0])
    assert s.median == 31.0 and s.ci95 is None and s.rsd is None and s.runs == [31.0]


def test_interval_is_students_t_around_the_mean() -> None:
    # mean 30, sample sd 2 (values 28, 30, 32); t(0.975, 2) = 4.302653
    s = spread([32.0, 28.0, 30.0])
    assert s.median == 30.0
    half = 4.302653 * 2 / math.sqrt(3)
    assert s.ci95 == pytest.approx((30 - half, 30 + half), rel=1e-6)
    assert s.rsd == pytest.approx(2 / 30)


def test_median_resists_one_wild_search() -> None:
    s = spread([30.0, 31.0, 90.0])
    assert s.median == 31.0
    assert s.ci95 is not None and s.ci95[1] - s.ci95[0] > 60  # the interval shows the doubt


def test_interval_of_a_rate_stops_at_zero() -> None:
    s = spread([27.9, 19.1])  # a real quick-profile pair: mean 23.5, t(0.975, 1) = 12.71
    assert s.ci95 is not None and s.ci95[0] == 0.0
    assert s.ci95[1] == pytest.approx(23.5 + 12.7062 * 6.2225 / math.sqrt(2), rel=1e-4)


def test_spread_needs_a_value() -> None:
    with pytest.raises(ValueError):
        spread([])


def test_welch_separates_clear_differences_from_noise() -> None:
    clear = welch([30.0, 31.0, 29.5], [40.0, 41.0, 39.0])
    assert clear.significant and clear.p_value is not None and clear.p_value < 0.01
    noise = welch([30.0, 33.0, 27.0], [31.0, 28.0, 34.0])
    assert not noise.significant and noise.p_value is not None and noise.p_value > 0.5
    assert "within noise" in noise.sentence


def test_welch_matches_the_textbook_statistic() -> None:
    a, b = [10.0, 12.0, 11.0, 13.0], [15.0, 14.0, 17.0]
    # t = (mean_b - mean_a) / sqrt(var_a/n_a + var_b/n_b) = 3.8333 / 1.0 ... worked below
    ma, mb = 11.5, 46 / 3
    va, vb = 5 / 3, ((15 - mb) ** 2 + (14 - mb) ** 2 + (17 - mb) ** 2) / 2
    t = (mb - ma) / math.sqrt(va / 4 + vb / 3)
    df = (va / 4 + vb / 3) ** 2 / ((va / 4) ** 2 / 3 + (vb / 3) ** 2 / 2)
    from scipy.stats import t as student

    expected_p = 2 * student.sf(abs(t), df)
    assert welch(a, b).p_value == pytest.approx(expected_p, rel=1e-9)


def test_welch_needs_repeats() -> None:
    result = welch([30.0], [40.0, 41.0])
    assert result.p_value is None and not result.significant
    assert "--repeat" in result.sentence


def test_welch_without_spread() -> None:
    assert welch([30.0, 30.0], [30.0, 30.0]).sentence == "identical"
    differ = welch([30.0, 30.0], [35.0, 35.0])
    assert differ.significant and differ.p_value is None


# ---- the runner's repeat loop (no deployment: each search is a stand-in result) -----------

def test_repeated_searches_land_in_the_summary(tmp_path, monkeypatch) -> None:
    import io
    import json

    from rich.console import Console
    from rich.progress import Progress

    from experiments.load.capacity import CapacityResult
    from experiments.model import Failure, Observations, Slo, StepResult, SurvivalResult
    from experiments.profiles import get_profile
    from experiments.results import RunStore
    from experiments.runplan import RunPlan
    from experiments.variant_run import VariantRun
    from stacks.variant import load_variant

    variant = load_variant("micro")
    plan = RunPlan(run_id="r", backend_name="local", variants=[variant],
                   profile=get_profile("quick"), slo=Slo(), locustfile=tmp_path / "l.py",
                   load_workers=0, out=tmp_path, cpu_scale=None, credits="launch",
                   max_usd=None, app_overrides={}, repeat=3)
    store = RunStore.create(tmp_path, "r", {"variants": ["micro"]})

    def result(capacity: float, p95: float) -> CapacityResult:
        step = StepResult(offered_rps=capacity, achieved_rps=capacity, p50_ms=1, p95_ms=p95,
                          p99_ms=1, error_rate=0, requests=100, passed=True)
        return CapacityResult(capacity, p95, [step], (capacity, capacity * 1.05))

    searches = [result(30.0, 100.0), result(36.0, 300.0), result(31.0, 120.0)]
    with Progress(console=Console(file=io.StringIO())) as progress:
        run = VariantRun(variant, plan, store, progress)
        capacity = run.capacity(searches)
        assert capacity.capacity_rps == 31.0 and capacity.p95_ms_at_capacity == 120.0
        assert [s.offered_rps for s in capacity.steps] == [31.0]  # the median search's
        run.finish(capacity, SurvivalResult(seconds=33, held=True, limit_s=33), Observations(),
                   Failure())
    entry = json.loads((tmp_path / "r" / "micro" / "result.json").read_text())
    assert entry["capacity_rps"] == 31.0
    assert entry["capacity_runs"] == [30.0, 36.0, 31.0]
    low, high = entry["capacity_ci95"]
    assert low < 31.0 < high and (low + high) / 2 == pytest.approx(97 / 3, abs=0.01)
    assert entry["capacity_rsd"] == pytest.approx(3.2146 / (97 / 3), abs=1e-3)

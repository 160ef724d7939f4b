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

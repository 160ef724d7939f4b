"""`run --threshold`: parsing (one sentence for bad syntax) and judging on a summary."""

import pytest

from experiments.errors import UserError
from experiments.thresholds import check_variants, failures, parse_threshold


def summary(**micro: object) -> dict[str, object]:
    entry = {"name": "micro", "capacity_rps": 31.0, "p95_ms_at_capacity": 120.0,
             "capacity_ci95": [28.0, 34.0], "capacity_rsd": 0.04,
             "survival": {"seconds": 33.0, "held": True},
             "cost": {"hourly_usd": 0.0116, "usd_per_million_requests": 0.104}}
    entry.update(micro)
    return {"variants": [entry]}


def test_parse() -> None:
    t = parse_threshold(" scale-out:capacity_rps >= 60 ")
    assert (t.variant, t.metric, t.op, t.value) == ("scale-out", "capacity_rps", ">=", 60.0)
    assert str(parse_threshold("*:p95_ms_at_capacity<250.5")) == "*:p95_ms_at_capacity<250.5"


@pytest.mark.parametrize(("text", "needle"), [
    ("capacity_rps>=60", "not of the form"),
    ("micro:capacity_rps=>60", "not of the form"),
    ("micro:capacity_rps==60", "not of the form"),
    ("micro:speed>=1", "unknown metric 'speed'"),
    ("micro:capacity_rps>=inf", "finite number"),
    ("micro:capacity_rps>=", "not of the form"),
])
def test_bad_syntax_is_one_sentence(text: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle) as err:
        parse_threshold(text)
    assert str(err.value).count(". ") == 0 and str(err.value).endswith(".")


def test_variant_must_be_planned() -> None:
    check_variants([parse_threshold("*:capacity_rps>=1")], ["micro"])
    with pytest.raises(UserError, match="'scale-up'.*valid: micro"):
        check_variants([parse_threshold("scale-up:capacity_rps>=1")], ["micro"])


def test_judging() -> None:
    passing = [parse_threshold(t) for t in ("micro:capacity_rps>=30", "micro:capacity_rsd<0.05",
                                            "micro:usd_per_million_requests<=0.5",
                                            "micro:capacity_ci95_low>27", "*:survival_s>=33")]
    assert failures(passing, summary(), ["micro"]) == []
    failing = [parse_threshold("micro:capacity_rps>=60"),
               parse_threshold("micro:p95_ms_at_capacity<100")]
    assert failures(failing, summary(), ["micro"]) == [
        "threshold micro:capacity_rps>=60 failed: micro capacity_rps = 31",
        "threshold micro:p95_ms_at_capacity<100 failed: micro p95_ms_at_capacity = 120"]


def test_missing_data_fails() -> None:
    lines = failures([parse_threshold("*:capacity_rsd<0.1")],
                     summary(capacity_rsd=None), ["micro", "scale-out"])
    assert lines == ["threshold *:capacity_rsd<0.1 failed: micro has no capacity_rsd",
                     "threshold *:capacity_rsd<0.1 failed: scale-out was not measured"]

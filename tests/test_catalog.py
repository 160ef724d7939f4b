"""The embedded catalog: coverage, credit facts against AWS's published baselines, sources."""

from __future__ import annotations

import pytest

from experiments.pricing import embedded_prices
from stacks.catalog import load_catalog

REGIONS = ["us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1",
           "ap-northeast-1", "ap-northeast-2", "ap-southeast-1"]
BURSTABLE_SIZES = ["nano", "micro", "small", "medium", "large", "xlarge", "2xlarge"]
FIXED_SIZES = ["large", "xlarge", "2xlarge", "4xlarge"]


def test_catalog_covers_the_families_people_buy() -> None:
    types = load_catalog().instance_types
    for family in ("t2", "t3", "t3a", "t4g"):
        for size in BURSTABLE_SIZES:
            it = types[f"{family}.{size}"]
            assert it.burstable and it.max_credits == pytest.approx(24 * it.credits_per_hour)
    for family in ("m7i", "m7g", "c7i", "c7g", "m6i", "c6i"):
        for size in FIXED_SIZES:
            it = types[f"{family}.{size}"]
            assert not it.burstable and it.baseline_per_vcpu == 1.0
            assert it.arch == ("arm64" if family.endswith("g") else "x86_64")
            # m: 4 GiB per vCPU, c: 2 GiB per vCPU
            assert it.memory_mib == it.vcpu * (4096 if family[0] == "m" else 2048)


@pytest.mark.parametrize("name,baseline_percent", [
    # AWS EC2 user guide, baseline utilization per vCPU
    ("t2.nano", 5), ("t2.micro", 10), ("t2.small", 20), ("t2.medium", 20), ("t2.large", 30),
    ("t2.xlarge", 22.5), ("t2.2xlarge", 17), ("t3.nano", 5), ("t3.micro", 10),
    ("t3.small", 20), ("t3.medium", 20), ("t3.large", 30), ("t3.xlarge", 40),
    ("t3.2xlarge", 40), ("t3a.xlarge", 40), ("t4g.2xlarge", 40),
])
def test_baseline_matches_aws(name: str, baseline_percent: float) -> None:
    assert load_catalog().instance(name).baseline_per_vcpu * 100 == pytest.approx(baseline_percent)


def test_launch_credits_only_for_t2_standard() -> None:
    cat = load_catalog()
    assert cat.instance("t2.micro").launch_credits == 30
    assert cat.instance("t2.2xlarge").launch_credits == 240
    assert cat.instance("t3.micro").launch_credits == 0
    assert cat.instance("t2.micro").default_credit_mode == "standard"
    assert cat.instance("t4g.small").default_credit_mode == "unlimited"


def test_every_region_prices_the_burstable_families_with_a_source() -> None:
    cat = load_catalog()
    assert set(REGIONS) <= set(cat.region_prices)
    for region in REGIONS:
        names = [f"{f}.{s}" for f in ("t2", "t3", "t3a", "t4g") for s in BURSTABLE_SIZES[:6]]
        table = embedded_prices(region, names + ["c6i.large"])
        assert table.source.startswith("embedded: ") and table.date
        assert all(0 < p < 1 for p in table.instance_usd_hour.values())
    us = embedded_prices("us-east-1", ["t3.micro"])
    assert "Karpenter" in us.source and us.date == "2026-07-20"
    other = embedded_prices("eu-west-1", ["t3.micro"])
    assert "SkyPilot" in other.source


def test_prices_grow_with_size_and_regions_cost_at_least_us_east_1() -> None:
    """A typo in the table shows up as a price that does not double with the size."""
    cat = load_catalog()
    for family in ("t3", "t3a", "t4g", "c6i"):
        sizes = BURSTABLE_SIZES[3:] if family != "c6i" else FIXED_SIZES
        for region in REGIONS:
            prices = [cat.instance(f"{family}.{s}").price_usd_hour[region] for s in sizes]
            for small, big in zip(prices, prices[1:], strict=False):
                assert big == pytest.approx(2 * small, rel=0.01), (family, region, prices)
            assert prices[0] >= cat.instance(f"{family}.{sizes[0]}").price_usd_hour["us-east-1"]


def test_assumed_region_figures_are_flagged() -> None:
    table = embedded_prices("eu-west-1", ["t3.micro"])
    assert any("assumed equal to us-east-1" in n for n in table.notes)
    assert not embedded_prices("us-east-1", ["t3.micro"]).notes

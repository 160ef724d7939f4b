"""Cost model: arithmetic against hand-computed figures, LCU dimensions, surplus credits,
the bill of materials read from declared resources, and `cost` under Pulumi's mocks."""

from __future__ import annotations

import json

import pytest

from experiments.cli import main
from experiments.cost import (
    FREE_TIER_NOTE,
    MeasuredTraffic,
    bill_of_materials,
    estimate_lcu,
    price_bom,
    price_variant,
    rescaled,
)
from experiments.errors import UserError
from experiments.model import StepResult
from experiments.pricing import embedded_prices
from stacks.preview import DeclaredResource
from stacks.variant import Network, load_variant

# Hand-computed (aws-facts.md prices; gp3 GB-month / 730 h):
# micro   us-east-1: 0.0116 + 8*0.08/730 + 0.005                          = 0.017476712
# micro   Seoul:     0.0144 + 8*0.0912/730 + 0.005                        = 0.020399452
# scale-up us-east-1: 0.0416 + 8*0.08/730 + 0.005                         = 0.047476712
# scale-up Seoul:     0.052 + 8*0.0912/730 + 0.005                        = 0.057999452
# scale-out us-east-1: 3*0.0116 + 24*0.08/730 + 5*0.005 + 0.0225          = 0.084930137
# scale-out Seoul:     3*0.0144 + 24*0.0912/730 + 5*0.005 + 0.0225        = 0.093698356
EXPECTED_HOURLY = {
    ("micro", "us-east-1"): 0.017476712, ("micro", "ap-northeast-2"): 0.020399452,
    ("micro-swap", "us-east-1"): 0.017476712, ("micro-swap", "ap-northeast-2"): 0.020399452,
    ("scale-up", "us-east-1"): 0.047476712, ("scale-up", "ap-northeast-2"): 0.057999452,
    ("scale-out", "us-east-1"): 0.084930137, ("scale-out", "ap-northeast-2"): 0.093698356,
}


def _instance(name: str, itype: str, size: float = 8, mode: str = "standard",
              **extra: object) -> DeclaredResource:
    return DeclaredResource("aws:ec2/instance:Instance", name, {
        "instanceType": itype, "rootBlockDevice": {"volumeSize": size, "volumeType": "gp3"},
        "creditSpecification": {"cpuCredits": mode}, **extra})


def _alb(subnets: int = 2, internal: bool = False) -> DeclaredResource:
    return DeclaredResource("aws:lb/loadBalancer:LoadBalancer", "alb", {
        "loadBalancerType": "application", "internal": internal,
        "subnets": [f"subnet-{i}" for i in range(subnets)]})


def hand_built(name: str) -> list[DeclaredResource]:
    """What the program declares for each stack, the priceable part, written by hand."""
    if name in ("micro", "micro-swap"):
        return [_instance(f"{name}-web", "t2.micro"),
                DeclaredResource("aws:ec2/securityGroup:SecurityGroup", "sg", {})]
    if name == "scale-up":
        return [_instance("scale-up-web", "t3.medium", mode="unlimited")]
    return [*(_instance(f"web-{i}", "t2.micro") for i in range(3)), _alb(2),
            DeclaredResource("aws:lb/targetGroup:TargetGroup", "tg", {"port": 80})]


@pytest.mark.parametrize("name,region", sorted(EXPECTED_HOURLY))
def test_hourly_cost_matches_hand_computed_figures(name: str, region: str) -> None:
    variant = load_variant(name)
    bom = bill_of_materials(hand_built(name), variant)
    cost = price_bom(bom, embedded_prices(region, list(bom.instances)), name)
    assert cost.hourly_usd == pytest.approx(EXPECTED_HOURLY[(name, region)], abs=1e-9)
    assert cost.monthly_usd == pytest.approx(EXPECTED_HOURLY[(name, region)] * 730, abs=1e-6)
    assert cost.region == region


def test_bill_of_materials_counts_what_costs_money() -> None:
    bom = bill_of_materials(hand_built("scale-out"), load_variant("scale-out"))
    assert dict(bom.instances) == {"t2.micro": 3}
    assert bom.root_gb == 24
    assert bom.alb and bom.alb_subnets == 2
    assert bom.public_ipv4 == 5 and bom.alb_public_ipv4 == 2  # 3 instances + one per AZ
    assert bom.instance_vcpus == 3


def test_usage_priced_notes_do_not_depend_on_declaration_order() -> None:
    """Pulumi's mocks register resources concurrently: the bill must read the same either way."""
    usage = [DeclaredResource("aws:s3/bucket:Bucket", "bundle", {}),
             DeclaredResource("aws:cloudwatch/logGroup:LogGroup", "logs", {})]
    variant = load_variant("scale-up")
    forward = bill_of_materials([_instance("w", "t3.medium"), *usage], variant)
    backward = bill_of_materials([*reversed(usage), _instance("w", "t3.medium")], variant)
    assert forward.notes == backward.notes
    assert forward.notes == ["not priced (usage-based, cents at this scale): CloudWatch log group "
                             "($0.50 per GB ingested); S3 bucket (the app bundle: a few MB, well "
                             "under $0.01/month)."]


def test_public_ipv4_follows_the_program_not_the_default() -> None:
    variant = load_variant("micro")
    private = bill_of_materials([_instance("w", "t2.micro", associatePublicIpAddress=False)],
                                variant)
    assert private.public_ipv4 == 0
    new_vpc = variant.with_overrides(network=Network(vpc="new"))
    assert bill_of_materials([_instance("w", "t2.micro")], new_vpc).public_ipv4 == 0
    mapped = [DeclaredResource("aws:ec2/subnet:Subnet", "s", {"mapPublicIpOnLaunch": True}),
              _instance("w", "t2.micro")]
    assert bill_of_materials(mapped, new_vpc).public_ipv4 == 1
    internal = bill_of_materials([_instance("w", "t2.micro"), _alb(3, internal=True)],
                                 load_variant("scale-out"))
    assert internal.public_ipv4 == 1 and internal.alb_subnets == 3
    eip = bill_of_materials([_instance("w", "t2.micro"),
                             DeclaredResource("aws:ec2/eip:Eip", "ip", {})], variant)
    assert eip.public_ipv4 == 2


def test_root_volume_defaults_to_the_variant_size() -> None:
    variant = load_variant("micro").with_overrides(root_volume_gib=20)
    res = [DeclaredResource("aws:ec2/instance:Instance", "w", {"instanceType": "t2.micro"})]
    assert bill_of_materials(res, variant).root_gb == 20


def test_lcu_takes_the_highest_dimension() -> None:
    by_conn = estimate_lcu(MeasuredTraffic(rps=10, response_bytes_per_s=0, active_connections=30,
                                           new_connections_per_s=50))
    assert by_conn.dimension == "new_connections" and by_conn.lcu == pytest.approx(2.0)
    by_active = estimate_lcu(MeasuredTraffic(10, 0, 9000, 1))
    assert by_active.dimension == "active_connections" and by_active.lcu == pytest.approx(3.0)
    by_bytes = estimate_lcu(MeasuredTraffic(10, 2e9 / 3600, 10, 1))  # 2 GB per hour
    assert by_bytes.dimension == "processed_bytes" and by_bytes.lcu == pytest.approx(2.0)
    by_rules = estimate_lcu(MeasuredTraffic(1000, 0, 10, 1), rules=12)  # 2 paid rules × 1000/s
    assert by_rules.dimension == "rule_evaluations" and by_rules.lcu == pytest.approx(2.0)
    assert estimate_lcu(MeasuredTraffic(1000, 0, 10, 1), rules=10).rule_evaluations == 0


def test_lcu_hours_are_priced_only_with_an_alb_and_traffic() -> None:
    variant = load_variant("scale-out")
    bom = bill_of_materials(hand_built("scale-out"), variant)
    prices = embedded_prices("us-east-1", ["t2.micro"])
    traffic = MeasuredTraffic(rps=30, response_bytes_per_s=30 * 14500, active_connections=12,
                              new_connections_per_s=3)
    cost = price_bom(bom, prices, "scale-out", traffic)
    expected_lcu = 30 * 14500 * 3600 / 1e9  # 1.566 GB/h beats 3/25 and 12/3000
    assert cost.lcu == pytest.approx(expected_lcu)
    assert cost.lcu_dimension == "processed_bytes"
    assert cost.alb_lcu == pytest.approx(expected_lcu * 0.008)
    assert any("partial hours" in n for n in cost.notes)
    single = price_bom(bill_of_materials(hand_built("micro"), load_variant("micro")), prices,
                       "micro", traffic)
    assert single.alb_lcu == 0 and single.alb_hours == 0


def test_surplus_credits_in_unlimited_mode() -> None:
    prices = embedded_prices("us-east-1", ["t3.medium", "t4g.medium", "t2.micro"])
    t3 = bill_of_materials(hand_built("scale-up"), load_variant("scale-up"))
    # 120 credits = 120 vCPU-minutes = 2 vCPU-hours per hour × $0.05
    assert price_bom(t3, prices, traffic=None, surplus_credits_per_hour=120).surplus_credits \
        == pytest.approx(0.10)
    t4g = bill_of_materials([_instance("w", "t4g.medium", mode="unlimited")],
                            load_variant("scale-up"))
    assert price_bom(t4g, prices, surplus_credits_per_hour=120).surplus_credits \
        == pytest.approx(0.08)
    standard = bill_of_materials(hand_built("micro"), load_variant("micro"))
    cost = price_bom(standard, prices, surplus_credits_per_hour=120)
    assert cost.surplus_credits == 0
    assert any("unlimited" in n for n in cost.notes)


def test_traffic_from_a_step() -> None:
    step = StepResult(offered_rps=20, achieved_rps=19.5, p50_ms=1, p95_ms=2, p99_ms=3,
                      error_rate=0, duration_s=10, users=8, response_bytes=1_000_000)
    traffic = MeasuredTraffic.from_step(step)
    assert traffic == MeasuredTraffic(rps=19.5, response_bytes_per_s=100_000,
                                      active_connections=8, new_connections_per_s=0.8)


def test_summary_figures_per_request_and_per_dollar() -> None:
    bom = bill_of_materials(hand_built("micro"), load_variant("micro"))
    cost = price_bom(bom, embedded_prices("us-east-1", ["t2.micro"]), "micro")
    s = cost.to_summary(capacity_rps=40.0)
    assert s["hourly_usd"] == pytest.approx(0.017477, abs=1e-6)
    assert s["usd_per_million_requests"] == pytest.approx(0.017476712 / (40 * 3600) * 1e6,
                                                          rel=1e-5)
    assert s["capacity_per_usd_hour"] == pytest.approx(40 / 0.017476712, abs=0.01)
    assert set(s["items"]) == {"instances", "ebs", "public_ipv4", "alb_hours", "alb_lcu",
                               "surplus_credits"}
    assert FREE_TIER_NOTE in s["notes"]  # noted ...
    assert s["items"]["instances"] == 0.0116  # ... never assumed
    assert cost.to_summary(None)["usd_per_million_requests"] is None
    scale_up = price_bom(bill_of_materials(hand_built("scale-up"), load_variant("scale-up")),
                         embedded_prices("us-east-1", ["t3.medium"]))
    assert FREE_TIER_NOTE not in scale_up.notes


def test_rescaled_bill_keeps_the_alb_and_scales_instances() -> None:
    bom = bill_of_materials(hand_built("scale-out"), load_variant("scale-out"))
    ten = rescaled(bom, "t2.micro", 10)
    assert dict(ten.instances) == {"t2.micro": 10}
    assert ten.public_ipv4 == 12 and ten.root_gb == 80 and ten.alb


def test_unknown_instance_type_or_region_is_one_sentence() -> None:
    with pytest.raises(UserError, match="unknown instance type 'x9.huge'"):
        bill_of_materials([_instance("w", "x9.huge")], load_variant("micro"))
    with pytest.raises(UserError, match="unknown region 'mars-1'"):
        embedded_prices("mars-1", ["t2.micro"])
    with pytest.raises(UserError, match="c7g.medium"):
        embedded_prices("ap-northeast-2", ["c7g.medium"])


# ---- the real program under Pulumi's mocks ------------------------------------------------

@pytest.mark.parametrize("name", ["micro", "micro-swap", "scale-up", "scale-out"])
@pytest.mark.parametrize("region", ["us-east-1", "ap-northeast-2"])
def test_price_variant_prices_what_the_program_declares(name: str, region: str) -> None:
    pytest.importorskip("stacks.preview")
    cost = price_variant(load_variant(name), region=region)
    assert cost.hourly_usd == pytest.approx(EXPECTED_HOURLY[(name, region)], abs=1e-9)
    assert not any("stack config" in n for n in cost.notes)  # really came from the program


def test_cost_command_json_for_all_four_stacks(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("stacks.preview")
    assert main(["cost", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["variant"] for d in data] == ["micro", "micro-swap", "scale-up", "scale-out"]
    for d in data:
        assert d["hourly_usd"] == pytest.approx(EXPECTED_HOURLY[(d["variant"], "us-east-1")],
                                                abs=1e-6)
        assert d["region"] == "us-east-1" and d["price_source"].startswith("embedded")
    assert data[3]["resources"] == "3 × t2.micro, ALB in 2 subnets, 24 GB gp3, 5 public IPv4"


def test_cost_command_table_and_bad_region(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--variants", "micro,scale-out", "--region", "ap-northeast-2"]) == 0
    out = capsys.readouterr().out
    assert "scale-out" in out and "ap-northeast-2" in out and "free tier" in out
    assert main(["cost", "--region", "eu-nowhere-9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scalelab: unknown region 'eu-nowhere-9'") and err.count("\n") == 0

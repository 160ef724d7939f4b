"""What a variant costs on AWS, priced from the resources its Pulumi program declares.

`stacks/preview.py` runs the real Pulumi program under Pulumi's mocks and hands back every
resource it declares (what Infracost does for Terraform). `bill_of_materials` reads THAT list,
not the stack file, so a resource the program adds is priced without anyone remembering to
teach the cost model. Items per hour: instances, gp3 root volumes, public IPv4 addresses,
ALB hours, LCU-hours from the measured traffic, and unlimited-mode surplus credits.
The free tier is noted, never subtracted: it depends on the account, not on the stack.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from experiments.model import Observations, StepResult
from experiments.pricing import PriceTable, get_prices
from stacks.catalog import load_catalog
from stacks.variant import Variant

if TYPE_CHECKING:
    from experiments.credits_model import Sustained
    from stacks.preview import DeclaredResource

FREE_TIER_NOTE = ("free tier not applied: accounts created before 2025-07-15 get 750 h/month of "
                  "t2.micro or t3.micro (and 750 public-IPv4 hours) for 12 months; newer "
                  "accounts get credits instead.")
ALB_HOURS_NOTE = "ALB and LCU partial hours bill as full hours."

INSTANCE_TYPES = ("aws:ec2/instance:Instance",)
LB_TYPES = ("aws:lb/loadBalancer:LoadBalancer", "aws:alb/loadBalancer:LoadBalancer")
EIP_TYPES = ("aws:ec2/eip:Eip",)
VOLUME_TYPES = ("aws:ebs/volume:Volume",)
ASG_TYPES = ("aws:autoscaling/group:Group",)
USAGE_PRICED_TYPES = {
    "aws:s3/bucket:Bucket": "S3 bucket (the app bundle: a few MB, well under $0.01/month)",
    "aws:cloudwatch/logGroup:LogGroup": "CloudWatch log group ($0.50 per GB ingested)",
}
"""Declared resources that bill by usage only; noted, not priced."""
LAUNCH_TEMPLATE_TYPES = ("aws:ec2/launchTemplate:LaunchTemplate",)


# ---- measured traffic ----------------------------------------------------------------------

@dataclass
class MeasuredTraffic:
    """What the ALB would have seen: the LCU dimensions come from these four figures."""

    rps: float
    response_bytes_per_s: float
    active_connections: float
    new_connections_per_s: float

    @classmethod
    def from_step(cls, step: StepResult) -> MeasuredTraffic:
        """Each simulated user holds one keep-alive connection for the whole hold, so the
        step's users are its active connections and opened users/duration new ones a second."""
        duration = step.duration_s or (step.ended_at - step.started_at) or 0.0
        bytes_per_s = step.response_bytes / duration if duration > 0 else 0.0
        new_per_s = step.users / duration if duration > 0 else 0.0
        return cls(rps=step.achieved_rps, response_bytes_per_s=bytes_per_s,
                   active_connections=float(step.users), new_connections_per_s=new_per_s)

    def scaled(self, factor: float) -> MeasuredTraffic:
        """The same traffic mix at another rate (for `plan`)."""
        return MeasuredTraffic(self.rps * factor, self.response_bytes_per_s * factor,
                               self.active_connections * factor,
                               self.new_connections_per_s * factor)


@dataclass(frozen=True)
class LcuEstimate:
    new_connections: float
    active_connections: float
    processed_bytes: float
    rule_evaluations: float

    @property
    def lcu(self) -> float:
        return max(self.new_connections, self.active_connections, self.processed_bytes,
                   self.rule_evaluations)

    @property
    def dimension(self) -> str:
        dims = {"new_connections": self.new_connections,
                "active_connections": self.active_connections,
                "processed_bytes": self.processed_bytes,
                "rule_evaluations": self.rule_evaluations}
        return max(dims, key=lambda k: dims[k])


def estimate_lcu(traffic: MeasuredTraffic, rules: int = 1) -> LcuEstimate:
    """One LCU is the highest of 25 new connections/s, 3,000 active connections (per minute),
    1 GB processed per hour (EC2 targets) and 1,000 rule evaluations/s beyond the free 10."""
    lcu = load_catalog().lcu
    paid_rules = max(0, rules - 10)
    return LcuEstimate(
        new_connections=traffic.new_connections_per_s / lcu["new_connections_per_s"],
        active_connections=traffic.active_connections / lcu["active_connections_per_min"],
        processed_bytes=traffic.response_bytes_per_s * 3600 / 1e9 / lcu["processed_gb_per_hour"],
        rule_evaluations=traffic.rps * paid_rules / lcu["rule_evaluations_per_s"],
    )


# ---- what is declared ------------------------------------------------------------------------

@dataclass
class BillOfMaterials:
    """The priceable facts of one stack, read from its declared resources."""

    instances: Counter[str] = field(default_factory=Counter)
    """instance type → count."""
    instance_vcpus: int = 0
    unlimited_instances: Counter[str] = field(default_factory=Counter)
    """instance type → count of instances in unlimited credit mode."""
    root_gb: float = 0.0
    extra_volume_gb: float = 0.0
    public_ipv4: int = 0
    alb_public_ipv4: int = 0
    """The part of public_ipv4 the ALB holds (one per subnet/AZ when internet-facing)."""
    alb: bool = False
    alb_subnets: int = 0
    listener_rules: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def instance_count(self) -> int:
        return sum(self.instances.values())

    def describe(self) -> str:
        parts = [f"{n} × {t}" for t, n in sorted(self.instances.items())]
        if self.alb:
            parts.append(f"ALB in {self.alb_subnets} subnets")
        parts.append(f"{self.root_gb + self.extra_volume_gb:g} GB gp3")
        parts.append(f"{self.public_ipv4} public IPv4")
        return ", ".join(parts)


def _get(inputs: dict[str, Any], *path: str, default: Any = None) -> Any:
    node: Any = inputs
    for key in path:
        if not isinstance(node, dict) or node.get(key) is None:
            return default
        node = node[key]
    return node


def rescaled(bom: BillOfMaterials, instance_type: str, count: int) -> BillOfMaterials:
    """The same stack with `count` instances of `instance_type` (what `plan` prices): per-instance
    volumes and addresses scale, the ALB and its addresses stay."""
    it = load_catalog().instance(instance_type)
    per = max(1, bom.instance_count)
    unlimited = bool(bom.unlimited_instances) if it.burstable else False
    return BillOfMaterials(
        instances=Counter({instance_type: count}), instance_vcpus=it.vcpu * count,
        unlimited_instances=Counter({instance_type: count}) if unlimited else Counter(),
        root_gb=bom.root_gb / per * count, extra_volume_gb=bom.extra_volume_gb,
        public_ipv4=round((bom.public_ipv4 - bom.alb_public_ipv4) / per * count)
        + bom.alb_public_ipv4,
        alb_public_ipv4=bom.alb_public_ipv4, alb=bom.alb, alb_subnets=bom.alb_subnets,
        listener_rules=bom.listener_rules, notes=list(bom.notes))


def bill_of_materials(resources: list[DeclaredResource], variant: Variant) -> BillOfMaterials:
    """Count what costs money among the resources the program declares.

    Instances in the default VPC get a public IPv4 each unless `associatePublicIpAddress` is
    false (the default subnets map one on launch); in a new VPC only when a declared subnet maps
    them or the instance asks. An internet-facing ALB holds one public IPv4 per subnet (AZ).
    Root volumes without a size are the AMI's default, `variant.root_volume_gib`.
    """
    catalog = load_catalog()
    bom = BillOfMaterials()
    subnets_map_public = any(r.type == "aws:ec2/subnet:Subnet"
                             and _get(r.inputs, "mapPublicIpOnLaunch", default=False)
                             for r in resources)
    default_public = variant.network.vpc == "default" or subnets_map_public
    templates = {r.name: r for r in resources if r.type in LAUNCH_TEMPLATE_TYPES}

    def add_instances(inputs: dict[str, Any], count: int, block_key: str) -> None:
        itype = inputs.get("instanceType") or variant.instance_type
        it = catalog.instance(str(itype))  # unknown type → UserError
        bom.instances[it.name] += count
        bom.instance_vcpus += it.vcpu * count
        mode = _get(inputs, "creditSpecification", "cpuCredits",
                    default=it.default_credit_mode if it.burstable else None)
        if it.burstable and mode == "unlimited":
            bom.unlimited_instances[it.name] += count
        block = inputs.get(block_key)
        if isinstance(block, list):  # launch templates: blockDeviceMappings[0].ebs
            block = _get(block[0], "ebs", default={}) if block else {}
        size = _get(block or {}, "volumeSize", default=variant.root_volume_gib)
        vtype = _get(block or {}, "volumeType", default="gp3")
        if vtype != "gp3":
            bom.notes.append(f"root volume type {vtype} priced as gp3.")
        bom.root_gb += float(size) * count
        public = _get(inputs, "associatePublicIpAddress")
        if public is None:
            public = _get(inputs, "networkInterfaces", default=[{}])[0].get(
                "associatePublicIpAddress") if inputs.get("networkInterfaces") else None
        if public is None:
            public = default_public
        if str(public).lower() == "true":
            bom.public_ipv4 += count

    for r in resources:
        if r.type in INSTANCE_TYPES:
            add_instances(r.inputs, 1, "rootBlockDevice")
        elif r.type in ASG_TYPES:
            count = int(_get(r.inputs, "desiredCapacity", default=_get(r.inputs, "minSize",
                                                                       default=0)))
            ref = _get(r.inputs, "launchTemplate", "name") or _get(r.inputs, "launchTemplate", "id")
            template = templates.get(str(ref)) or next(iter(templates.values()), None)
            add_instances(template.inputs if template else {}, count, "blockDeviceMappings")
        elif r.type in LB_TYPES:
            lb_type = r.inputs.get("loadBalancerType", "application")
            if lb_type != "application":
                bom.notes.append(f"{r.name}: {lb_type} load balancer priced as an ALB.")
            bom.alb = True
            subnets = r.inputs.get("subnets") or r.inputs.get("subnetMappings") or []
            n = len(subnets) if isinstance(subnets, list) and subnets else \
                variant.network.availability_zones
            bom.alb_subnets += n
            if not r.inputs.get("internal"):
                bom.public_ipv4 += n
                bom.alb_public_ipv4 += n
        elif r.type in EIP_TYPES:
            bom.public_ipv4 += 1
        elif r.type in VOLUME_TYPES:
            bom.extra_volume_gb += float(r.inputs.get("size") or 0)
        elif r.type == "aws:lb/listenerRule:ListenerRule":
            bom.listener_rules += 1
    # Sorted: Pulumi's mocks register resources concurrently, so their order varies per run.
    usage_only = sorted({USAGE_PRICED_TYPES[r.type] for r in resources
                         if r.type in USAGE_PRICED_TYPES})
    if usage_only:
        bom.notes.append("not priced (usage-based, cents at this scale): "
                         + "; ".join(usage_only) + ".")
    return bom


def declared(variant: Variant) -> list[DeclaredResource]:
    """The resources the real Pulumi program declares for `variant`, run under Pulumi's mocks.
    (Imported here: Pulumi takes a second to import, and `report` never needs it.)"""
    from stacks.preview import declared_resources

    return list(declared_resources(variant))


# ---- pricing ------------------------------------------------------------------------------

@dataclass
class CostBreakdown:
    """Per-hour cost items of one variant, with where the prices came from."""

    variant: str
    instances: float
    ebs: float
    public_ipv4: float
    alb_hours: float
    alb_lcu: float
    surplus_credits: float
    region: str
    price_source: str
    price_date: str
    hours_per_month: float = 730.0
    lcu: float = 0.0
    lcu_dimension: str = ""
    resources: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def items(self) -> dict[str, float]:
        return {"instances": self.instances, "ebs": self.ebs, "public_ipv4": self.public_ipv4,
                "alb_hours": self.alb_hours, "alb_lcu": self.alb_lcu,
                "surplus_credits": self.surplus_credits}

    @property
    def hourly_usd(self) -> float:
        return sum(self.items.values())

    @property
    def monthly_usd(self) -> float:
        return self.hourly_usd * self.hours_per_month

    def usd_per_million_requests(self, capacity_rps: float | None) -> float | None:
        if not capacity_rps or capacity_rps <= 0:
            return None
        return self.hourly_usd / (capacity_rps * 3600) * 1e6

    def capacity_per_usd_hour(self, capacity_rps: float | None) -> float | None:
        if not capacity_rps or capacity_rps <= 0 or self.hourly_usd <= 0:
            return None
        return capacity_rps / self.hourly_usd

    def to_summary(self, capacity_rps: float | None) -> dict[str, Any]:
        per_m = self.usd_per_million_requests(capacity_rps)
        per_usd = self.capacity_per_usd_hour(capacity_rps)
        return {
            "hourly_usd": round(self.hourly_usd, 6),
            "monthly_usd": round(self.monthly_usd, 2),
            "usd_per_million_requests": None if per_m is None else round(per_m, 6),
            "capacity_per_usd_hour": None if per_usd is None else round(per_usd, 2),
            "items": {k: round(v, 6) for k, v in self.items.items()},
            "lcu": round(self.lcu, 4),
            "lcu_dimension": self.lcu_dimension,
            "resources": self.resources,
            "region": self.region,
            "price_source": self.price_source,
            "price_date": self.price_date,
            "notes": list(self.notes),
        }


def price_bom(bom: BillOfMaterials, prices: PriceTable, name: str = "",
              traffic: MeasuredTraffic | None = None,
              surplus_credits_per_hour: float = 0.0) -> CostBreakdown:
    """Multiply the bill of materials by the unit prices (all figures per hour)."""
    notes = [*bom.notes, *prices.notes]
    instances = sum(prices.instance(t) * n for t, n in bom.instances.items())
    ebs = (bom.root_gb + bom.extra_volume_gb) * prices.gp3_gb_month / prices.hours_per_month
    ipv4 = bom.public_ipv4 * prices.public_ipv4_hour
    alb_hours = prices.alb_hour if bom.alb else 0.0
    lcu_value, dimension, alb_lcu = 0.0, "", 0.0
    if bom.alb:
        notes.append(ALB_HOURS_NOTE)
        if traffic is None:
            notes.append("no measured traffic: LCU-hours not estimated (0 here; a run prices "
                         "them from the measured traffic).")
        else:
            est = estimate_lcu(traffic, bom.listener_rules)
            lcu_value, dimension = est.lcu, est.dimension
            alb_lcu = lcu_value * prices.alb_lcu_hour
    surplus = 0.0
    if surplus_credits_per_hour > 0:
        unlimited = sum(bom.unlimited_instances.values())
        if unlimited:
            # one credit = one vCPU-minute; billed per vCPU-hour at the family's rate
            rate = sum(prices.surplus(t) * n
                       for t, n in bom.unlimited_instances.items()) / unlimited
            surplus = surplus_credits_per_hour / 60.0 * rate
        else:
            notes.append("surplus credits ignored: no instance runs in unlimited credit mode.")
    if any(t.startswith(("t2.micro", "t3.micro")) for t in bom.instances):
        notes.append(FREE_TIER_NOTE)
    return CostBreakdown(
        variant=name, instances=instances, ebs=ebs, public_ipv4=ipv4, alb_hours=alb_hours,
        alb_lcu=alb_lcu, surplus_credits=surplus, region=prices.region,
        price_source=prices.source, price_date=prices.date,
        hours_per_month=prices.hours_per_month, lcu=lcu_value, lcu_dimension=dimension,
        resources=bom.describe(), notes=notes,
    )


def variant_bom(variant: Variant) -> BillOfMaterials:
    """The bill of materials of what the variant's program declares."""
    return bill_of_materials(declared(variant), variant)


def price_variant(variant: Variant, traffic: MeasuredTraffic | None = None,
                  surplus_credits_per_hour: float = 0.0, region: str | None = None,
                  live_prices: bool = False) -> CostBreakdown:
    """Price what the variant's Pulumi program declares, in `region` (default: the stack's)."""
    bom = variant_bom(variant)
    prices = get_prices(region or variant.region, list(bom.instances), live=live_prices)
    return price_bom(bom, prices, variant.name, traffic, surplus_credits_per_hour)


# ---- `python -m experiments cost` -----------------------------------------------------------

def cost_command(variants: list[str] | None, region: str | None, live_prices: bool,
                 as_json: bool) -> int:
    """Price the stacks without deploying anything (the program runs under Pulumi's mocks)."""
    from stacks.variant import load_variants

    if region is not None and not live_prices:
        load_catalog().region(region)  # unknown region → one sentence, before any work
        # (with --live-prices any region works while the Price List API answers)
    breakdowns = [price_variant(v, region=region, live_prices=live_prices)
                  for v in load_variants(variants)]
    if as_json:
        print(json.dumps([{"variant": b.variant, **b.to_summary(None)} for b in breakdowns],
                         indent=2))
        return 0
    _print_table(breakdowns)
    return 0


def _money(value: float) -> str:
    if value == 0:
        return "–"
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def _print_table(breakdowns: list[CostBreakdown]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="What each stack costs on AWS (on-demand USD per hour)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("variant", style="bold", no_wrap=True)
    for col in ("instances", "EBS", "IPv4", "ALB", "LCU", "total/h", "/month"):
        table.add_column(col, justify="right", no_wrap=True)
    for b in breakdowns:
        table.add_row(b.variant, _money(b.instances), _money(b.ebs), _money(b.public_ipv4),
                      _money(b.alb_hours), _money(b.alb_lcu), _money(b.hourly_usd),
                      f"[bold]{_money(b.monthly_usd)}[/bold]")
    console.print(table)
    for b in breakdowns:
        console.print(f"  {b.variant}: {b.resources}", highlight=False)
    first = breakdowns[0] if breakdowns else None
    if first:
        console.print(f"Region {first.region}; prices: {first.price_source} ({first.price_date}); "
                      f"month = {first.hours_per_month:g} h.", highlight=False)
    for n in dict.fromkeys(n for b in breakdowns for n in b.notes):
        console.print(f"  • {n}", highlight=False)


def surplus_credits_per_hour(observations: Observations) -> float:
    """Unlimited-mode credits spent beyond the balance, per hour of the measurement."""
    per_instance: dict[str, list[tuple[float, float]]] = {}
    for s in observations.signals:
        if s.surplus_credits is not None:
            per_instance.setdefault(s.instance, []).append((s.t, s.surplus_credits))
    total, span = 0.0, 0.0
    for samples in per_instance.values():
        samples.sort()
        total += samples[-1][1] - samples[0][1]
        span = max(span, samples[-1][0] - samples[0][0])
    return total / (span / 3600) if span > 0 else 0.0


@dataclass
class PricedCapacity:
    """A variant's bill at its measured capacity, and its burst-vs-sustained figures."""

    cost: dict[str, Any]
    """summary.json's cost keys (CostBreakdown.to_summary + sustained per-dollar)."""
    burst: dict[str, Any]
    """summary.json's burst-vs-sustained keys (credits_model.burst_summary)."""


def price_at_capacity(variant: Variant, capacity_rps: float, steps: list[StepResult],
                      observations: Observations, sustained: Sustained | None,
                      cpu_scale: float | None) -> PricedCapacity:
    """The bill at capacity: unlimited-mode surplus credits at the CPU measured there (the
    price of *sustaining* it), else what the run measured; plus per-dollar figures on the
    sustained capacity (what the ★ ranks by default)."""
    from experiments.credits_model import burst_summary, vcpus_used_during
    from experiments.model import step_at_capacity

    at_capacity = step_at_capacity(steps)
    traffic = MeasuredTraffic.from_step(at_capacity) if at_capacity else None
    used = (vcpus_used_during(at_capacity, observations.signals, cpu_scale)
            if at_capacity else None)
    it = load_catalog().instance(variant.instance_type)
    burst = burst_summary(it, variant.credit_mode, variant.count, capacity_rps, used, sustained)
    surplus = surplus_credits_per_hour(observations)
    runway = burst.get("credit_runway") or {}
    if runway.get("mode") == "unlimited":
        surplus = runway["surplus_credits_per_hour"] * variant.count
    breakdown = price_variant(variant, traffic=traffic, surplus_credits_per_hour=surplus)
    cost = breakdown.to_summary(capacity_rps)
    per_usd = breakdown.capacity_per_usd_hour(burst.get("sustained_capacity_rps"))
    cost["sustained_capacity_per_usd_hour"] = None if per_usd is None else round(per_usd, 2)
    return PricedCapacity(cost, burst)

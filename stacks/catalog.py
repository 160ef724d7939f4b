"""Instance types and AWS prices: one catalog for the stacks, the emulator and the cost model.

The data lives in `data/catalog.yaml` (every price with its source and date); this module only
loads and answers questions about it, so a price is never typed twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import yaml

from stacks.errors import UserError

CATALOG_FILE = Path(__file__).with_name("data") / "catalog.yaml"

CreditMode = Literal["standard", "unlimited"]


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpu: int
    memory_mib: int
    arch: str
    price_usd_hour: dict[str, float]
    credits_per_hour: float | None = None
    max_credits: float | None = None
    launch_credits_per_vcpu: float = 0.0
    default_credit_mode: CreditMode | None = None
    price_notes: dict[str, str] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def burstable(self) -> bool:
        return self.credits_per_hour is not None

    @property
    def baseline_per_vcpu(self) -> float:
        """Fraction of one vCPU the instance may use forever (1.0 for fixed-performance types)."""
        if self.credits_per_hour is None:
            return 1.0
        return self.credits_per_hour / self.vcpu / 60.0

    @property
    def launch_credits(self) -> float:
        return self.launch_credits_per_vcpu * self.vcpu

    @property
    def baseline_vcpus(self) -> float:
        """vCPUs' worth of CPU the instance sustains forever (all of them without credits)."""
        return self.baseline_per_vcpu * self.vcpu

    def hourly_price(self, region: str) -> float:
        try:
            return self.price_usd_hour[region]
        except KeyError:
            known = ", ".join(sorted(self.price_usd_hour))
            raise UserError(
                f"region {region!r} has no embedded price for {self.name}; "
                f"known regions for it: {known} (or use --live-prices)."
            ) from None


@dataclass(frozen=True)
class RegionPrices:
    region: str
    alb_hour: float
    alb_lcu_hour: float
    gp3_gb_month: float
    public_ipv4_hour: float
    notes: tuple[str, ...] = ()
    """Which of these figures are assumptions rather than verified prices."""


@dataclass(frozen=True)
class PriceSource:
    source: str
    date: str


@dataclass(frozen=True)
class Catalog:
    instance_types: dict[str, InstanceType]
    region_prices: dict[str, RegionPrices]
    surplus_credit_usd_per_vcpu_hour: dict[str, float]
    lcu: dict[str, float]
    hours_per_month: float
    price_sources: dict[str, PriceSource]
    prices_date: str

    @property
    def prices_source(self) -> str:
        """The default (non-us-east-1) source, for callers that want one line."""
        return self.price_sources["default"].source

    def price_source(self, region: str) -> PriceSource:
        """Where the embedded instance prices of `region` were read."""
        return self.price_sources.get(region) or self.price_sources["default"]

    def instance(self, name: str) -> InstanceType:
        try:
            return self.instance_types[name]
        except KeyError:
            known = ", ".join(self.instance_types)
            raise UserError(f"unknown instance type {name!r}; known types: {known}.") from None

    def region(self, name: str) -> RegionPrices:
        try:
            return self.region_prices[name]
        except KeyError:
            known = ", ".join(self.region_prices)
            raise UserError(f"unknown region {name!r}; regions with prices: {known}.") from None

    def surplus_credit_price(self, instance_type: str) -> float:
        family = self.instance(instance_type).family
        return self.surplus_credit_usd_per_vcpu_hour.get(family, 0.05)


@cache
def load_catalog(path: Path = CATALOG_FILE) -> Catalog:
    raw = yaml.safe_load(path.read_text())
    types = {n: InstanceType(name=n, **spec) for n, spec in raw["instance_types"].items()}
    regions = {n: RegionPrices(region=n, **{**spec, "notes": tuple(spec.get("notes", ()))})
               for n, spec in raw["region_prices"].items()}
    sources = {n: PriceSource(source=str(v["source"]), date=str(v["date"]))
               for n, v in raw["price_sources"].items()}
    return Catalog(
        instance_types=types,
        region_prices=regions,
        surplus_credit_usd_per_vcpu_hour=raw["surplus_credit_usd_per_vcpu_hour"],
        lcu=raw["lcu"],
        hours_per_month=float(raw["hours_per_month"]),
        price_sources=sources,
        prices_date=str(raw["prices_date"]),
    )

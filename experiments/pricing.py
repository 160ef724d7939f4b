"""Unit prices for the cost model: the embedded catalog, or the AWS Price List API on request.

Embedded prices (stacks/data/catalog.yaml) carry their source and date and are the
default, so `cost` works offline and in CI. `--live-prices` asks the Price List API through
boto3 (the client must live in us-east-1; the target region is a `regionCode` filter),
caches the answer on disk under the day's date, and falls back to the embedded table with a
visible note when the API is unreachable, has no credentials or answers something we cannot
parse. Mixing live and embedded figures silently would hide where a number came from, so a
fallback is all-or-nothing for one region.

What is asked of the Price List API (decided here, documented in the README). Every query also
filters locationType="AWS Region", and each price must come from exactly one matching product
(none or several: the embedded table is used, with a note saying what matched):
- instances: AmazonEC2, TERM_MATCH instanceType, regionCode, operatingSystem=Linux,
  tenancy=Shared, preInstalledSw=NA, capacitystatus=Used (unit Hrs)
- ALB hour and LCU-hour: AWSELB, productFamily "Load Balancer-Application"; the hour is the
  item whose usagetype ends in "LoadBalancerUsage", the LCU the one ending in "LCUUsage"
- gp3: AmazonEC2, productFamily "Storage", volumeApiName gp3 (unit GB-Mo)
- public IPv4: AmazonVPC, regionCode; the item whose usagetype ends in
  "PublicIPv4:InUseAddress" (the in-use and idle rates are equal since 2024-02)
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from experiments.errors import UserError
from stacks.catalog import load_catalog

PRICING_API_REGION = "us-east-1"
LOCATION_TYPE = "AWS Region"
"""Local Zones, Wavelength zones and Outposts share their parent's regionCode; this keeps them
out, so a query matches the region's own product (and exactly one is then required)."""


@dataclass(frozen=True)
class PriceTable:
    """Every unit price the cost model needs for one region, with where it came from."""

    region: str
    instance_usd_hour: dict[str, float]
    alb_hour: float
    alb_lcu_hour: float
    gp3_gb_month: float
    public_ipv4_hour: float
    surplus_usd_per_vcpu_hour: dict[str, float]
    hours_per_month: float
    source: str
    date: str
    notes: list[str] = field(default_factory=list)

    def instance(self, instance_type: str) -> float:
        try:
            return self.instance_usd_hour[instance_type]
        except KeyError:
            raise UserError(f"no price for instance type {instance_type!r} in {self.region}; "
                            f"priced types: {', '.join(sorted(self.instance_usd_hour))}.") from None

    def surplus(self, instance_type: str) -> float:
        family = instance_type.split(".", 1)[0]
        return self.surplus_usd_per_vcpu_hour.get(family, 0.05)


def embedded_prices(region: str, instance_types: Iterable[str]) -> PriceTable:
    """Prices from the catalog; unknown region or type, or a type unpriced there → UserError."""
    catalog = load_catalog()
    rp = catalog.region(region)
    instances = {t: catalog.instance(t).hourly_price(region) for t in instance_types}
    notes = [f"{n}." for n in rp.notes]
    for t in instances:
        note = catalog.instance(t).price_notes.get(region)
        if note:
            notes.append(f"{t} in {region}: {note}.")
    origin = catalog.price_source(region)
    return PriceTable(
        region=region, instance_usd_hour=instances, alb_hour=rp.alb_hour,
        alb_lcu_hour=rp.alb_lcu_hour, gp3_gb_month=rp.gp3_gb_month,
        public_ipv4_hour=rp.public_ipv4_hour,
        surplus_usd_per_vcpu_hour=dict(catalog.surplus_credit_usd_per_vcpu_hour),
        hours_per_month=catalog.hours_per_month, source="embedded: " + origin.source,
        date=origin.date, notes=notes,
    )


# ---- the Price List API --------------------------------------------------------------------

class PriceListError(Exception):
    """The Price List API answered something we cannot turn into a price."""


def _default_client() -> Any:
    import boto3

    return boto3.client("pricing", region_name=PRICING_API_REGION)


client_factory: Callable[[], Any] = _default_client
"""How a pricing client is made; tests replace it with a Stubber-wrapped client."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scalelab"


def _filters(**terms: str) -> list[dict[str, str]]:
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in terms.items()]


def _products(client: Any, service: str, **terms: str) -> list[dict[str, Any]]:
    """Every product matching the filters (always in the region itself), JSON decoded."""
    items: list[dict[str, Any]] = []
    terms = {**terms, "locationType": LOCATION_TYPE}
    kwargs: dict[str, Any] = {"ServiceCode": service, "Filters": _filters(**terms),
                              "FormatVersion": "aws_v1", "MaxResults": 100}
    while True:
        answer = client.get_products(**kwargs)
        for raw in answer.get("PriceList", []):
            try:
                item = json.loads(raw) if isinstance(raw, str) else raw
            except json.JSONDecodeError as exc:
                raise PriceListError(f"{service} returned a price list item that is not JSON "
                                     f"({exc.msg})") from None
            if not isinstance(item, dict):
                raise PriceListError(f"{service} returned a price list item that is not an object")
            items.append(item)
        token = answer.get("NextToken")
        if not token:
            return items
        kwargs["NextToken"] = token


def _on_demand_usd(item: dict[str, Any]) -> float:
    """terms → OnDemand → <sku> → priceDimensions → <dim> → pricePerUnit → USD (first nonzero)."""
    try:
        offers = item["terms"]["OnDemand"]
        prices = [float(dim["pricePerUnit"]["USD"])
                  for offer in offers.values() for dim in offer["priceDimensions"].values()]
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise PriceListError(f"price list item lacks terms.OnDemand…pricePerUnit.USD ({exc!r})") \
            from None
    nonzero = [p for p in prices if p > 0]
    if not nonzero:
        raise PriceListError("price list item has no nonzero on-demand USD price")
    return nonzero[0]


def _usagetype(item: dict[str, Any]) -> str:
    return str(item.get("product", {}).get("attributes", {}).get("usagetype", ""))


def _one_price(items: list[dict[str, Any]], what: str,
               usagetype_suffix: str | None = None) -> float:
    """The price of the one product that matched; none or several is an error, not a guess
    (several means the filters are not specific enough: taking the first could price a Local
    Zone, a reserved capacity or another OS)."""
    if usagetype_suffix is not None:
        items = [i for i in items if _usagetype(i).endswith(usagetype_suffix)]
    if not items:
        raise PriceListError(f"the price list has no product for {what}")
    if len(items) > 1:
        kinds = ", ".join(sorted({_usagetype(i) or "?" for i in items}))
        raise PriceListError(f"the price list has {len(items)} products for {what} where one "
                             f"was expected (usagetypes: {kinds})")
    return _on_demand_usd(items[0])


def fetch_live(client: Any, region: str, instance_types: Iterable[str]) -> dict[str, Any]:
    """Ask the Price List API; returns the plain dict that is cached. Raises on any trouble."""
    instances = {}
    for t in instance_types:
        items = _products(client, "AmazonEC2", instanceType=t, regionCode=region,
                          operatingSystem="Linux", tenancy="Shared", preInstalledSw="NA",
                          capacitystatus="Used")
        instances[t] = _one_price(items, f"{t} in {region}")
    alb = _products(client, "AWSELB", productFamily="Load Balancer-Application", regionCode=region)
    gp3 = _products(client, "AmazonEC2", productFamily="Storage", volumeApiName="gp3",
                    regionCode=region)
    vpc = _products(client, "AmazonVPC", regionCode=region)
    return {
        "instance_usd_hour": instances,
        "alb_hour": _one_price(alb, f"the ALB hour in {region}", "LoadBalancerUsage"),
        "alb_lcu_hour": _one_price(alb, f"the ALB LCU-hour in {region}", "LCUUsage"),
        "gp3_gb_month": _one_price(gp3, f"gp3 storage in {region}"),
        "public_ipv4_hour": _one_price(vpc, f"a public IPv4 address in {region}",
                                       "PublicIPv4:InUseAddress"),
    }


def live_prices(region: str, instance_types: Iterable[str], client: Any | None = None,
                cache: Path | None = None, today: dt.date | None = None) -> PriceTable:
    """Price List API prices (cached per day); the embedded table with a note on any failure."""
    types = sorted(set(instance_types))
    embedded = embedded_prices_or_empty(region, types)
    day = (today or dt.date.today()).isoformat()
    cache_file = (cache or cache_dir()) / f"prices-{day}.json"
    cached = _read_cache(cache_file)
    entry = cached.get(region)
    if entry and all(t in entry.get("instance_usd_hour", {}) for t in types):
        return _table_from_live(region, entry, embedded, f"AWS Price List API (cached {day})", day)
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        client = client if client is not None else client_factory()
        fresh = fetch_live(client, region, types)
    except (BotoCoreError, ClientError, PriceListError, OSError) as exc:
        reason = str(exc).rstrip(".") or type(exc).__name__
        if embedded is None:
            raise UserError(f"live prices for {region} failed ({reason}) and the embedded "
                            f"catalog cannot stand in: {_embedded_gap(region, types)}.") from None
        note = (f"live prices unavailable ({reason}); used the embedded prices from "
                f"{embedded.date} instead.")
        return PriceTable(**{**asdict(embedded), "notes": [*embedded.notes, note]})
    if entry:
        fresh["instance_usd_hour"] = {**entry.get("instance_usd_hour", {}),
                                      **fresh["instance_usd_hour"]}
    cached[region] = fresh
    _write_cache(cache_file, cached)
    return _table_from_live(region, fresh, embedded, f"AWS Price List API ({day})", day)


def _embedded_gap(region: str, types: list[str]) -> str:
    """Why the embedded table cannot price `types` in `region` (for the fallback's sentence)."""
    catalog = load_catalog()
    if region not in catalog.region_prices:
        known = ", ".join(catalog.region_prices)
        return f"it has no prices for {region} (embedded regions: {known})"
    missing = [t for t in types if region not in catalog.instance(t).price_usd_hour]
    return f"it has no {region} price for {', '.join(missing)}"


def embedded_prices_or_empty(region: str, types: list[str]) -> PriceTable | None:
    try:
        return embedded_prices(region, types)
    except UserError:
        return None


def _table_from_live(region: str, data: dict[str, Any], embedded: PriceTable | None,
                     source: str, day: str) -> PriceTable:
    catalog = load_catalog()
    return PriceTable(
        region=region, instance_usd_hour=dict(data["instance_usd_hour"]),
        alb_hour=float(data["alb_hour"]), alb_lcu_hour=float(data["alb_lcu_hour"]),
        gp3_gb_month=float(data["gp3_gb_month"]),
        public_ipv4_hour=float(data["public_ipv4_hour"]),
        surplus_usd_per_vcpu_hour=dict(catalog.surplus_credit_usd_per_vcpu_hour),
        hours_per_month=catalog.hours_per_month, source=source, date=day,
        notes=["surplus-credit rates are embedded (the Price List API has no simple entry "
               "for them)."],
    )


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    """Best effort: a read-only home must not break pricing."""
    try:
        from experiments.results import write_json

        write_json(path, data)
    except OSError:
        pass


def get_prices(region: str, instance_types: Iterable[str], live: bool = False) -> PriceTable:
    return live_prices(region, instance_types) if live else embedded_prices(region, instance_types)

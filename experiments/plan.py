"""`python -m experiments plan --target-rps N`: the cheapest way each strategy reaches N req/s.

From a measured run: scale-out needs ceil(N / (per-instance capacity × measured scale-out
efficiency)) instances; scale-up needs the cheapest instance type whose measured (or, if not
measured, extrapolated) capacity reaches N; swap and the untouched box cannot grow, they reach
N or they do not. Prices come from the same bill of materials `cost` uses, rescaled.

Extrapolation is linear in vCPUs from the measured scale-up type, and shrinks with memory
when a candidate has less of it. Burstable types hold such figures only while they have CPU
credits: the table says which figures are measured and which are extrapolated. Candidates keep
the measured type's architecture (an arm64 type needs an arm64 AMI and a new measurement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.cost import (
    BillOfMaterials,
    MeasuredTraffic,
    price_bom,
    rescaled,
    variant_bom,
)
from experiments.errors import UserError
from experiments.model import StepResult, step_at_capacity
from experiments.pricing import embedded_prices
from experiments.results import RunStore
from stacks.catalog import load_catalog
from stacks.variant import Variant, VariantError, load_variant

STRATEGY_BY_NAME = {"micro": "as is", "micro-swap": "add swap", "scale-up": "scale up",
                    "scale-out": "scale out"}


@dataclass
class PlanOption:
    strategy: str
    variant: str
    instance_type: str
    count: int
    capacity_rps: float
    basis: str
    """'measured', 'extrapolated' or 'measured × N at efficiency E'."""
    hourly_usd: float
    monthly_usd: float
    reaches: bool
    note: str = ""

    @property
    def configuration(self) -> str:
        return f"{self.count} × {self.instance_type}" + (" + ALB" if self.strategy == "scale out"
                                                         else "")


def strategy_of(entry: dict[str, Any]) -> str:
    name = entry.get("name", "")
    if name in STRATEGY_BY_NAME:
        return STRATEGY_BY_NAME[name]
    if entry.get("load_balancer") or (entry.get("count") or 1) > 1:
        return "scale out"
    if entry.get("swap_mib"):
        return "add swap"
    return "scale up"


def newest_run(root: Path = Path("results")) -> Path:
    """The newest folder under results/ that has a summary.json (run ids sort by time)."""
    candidates = sorted((p.parent for p in root.glob("*/summary.json")),
                        key=lambda p: (p / "summary.json").stat().st_mtime)
    if not candidates:
        raise UserError(f"no run with a summary.json under {root}/; run `python -m experiments "
                        "run` first or pass --from RUN_DIR.")
    return candidates[-1]


def _variant(entry: dict[str, Any]) -> Variant | None:
    try:
        base = load_variant(entry["name"])
    except VariantError:
        return None
    return base.with_overrides(instance_type=entry["instance_type"], count=entry["count"],
                               swap_mib=entry.get("swap_mib", base.swap_mib),
                               load_balancer=entry.get("load_balancer", base.load_balancer))


def _traffic_at_capacity(store: RunStore, name: str) -> MeasuredTraffic | None:
    raw = store.load_json(name, "steps.json") or []
    best = step_at_capacity([StepResult.from_dict(s) for s in raw])
    return MeasuredTraffic.from_step(best) if best else None


def _price(bom: BillOfMaterials, region: str, traffic: MeasuredTraffic | None,
           name: str) -> tuple[float, float]:
    prices = embedded_prices(region, list(bom.instances))
    cost = price_bom(bom, prices, name, traffic)
    return cost.hourly_usd, cost.monthly_usd


def make_plan(run_dir: Path, target_rps: float) -> list[PlanOption]:
    """Every strategy's cheapest configuration for the target, from one run's measurements."""
    if target_rps <= 0:
        raise UserError(f"--target-rps must be a request rate above 0, got {target_rps:g}.")
    store = RunStore.open(Path(run_dir))
    entries = [v for v in store.summary()["variants"] if v and v.get("capacity_rps")]
    if not entries:
        raise UserError(f"{run_dir} has no variant with a measured capacity to plan from.")
    catalog = load_catalog()
    options: list[PlanOption] = []
    singles = [e for e in entries if strategy_of(e) != "scale out"]
    for entry in entries:
        variant = _variant(entry)
        if variant is None:
            continue
        strategy = strategy_of(entry)
        region = (entry.get("cost") or {}).get("region") or variant.region
        bom = variant_bom(variant)
        traffic = _traffic_at_capacity(store, entry["name"])
        capacity = float(entry["capacity_rps"])
        scale = target_rps / capacity
        at_target = traffic.scaled(scale) if traffic else None
        if strategy == "scale out":
            same = [e for e in singles if e["instance_type"] == entry["instance_type"]
                    and e.get("swap_mib") == entry.get("swap_mib")] or \
                   [e for e in singles if e["instance_type"] == entry["instance_type"]]
            if same:
                per_instance = float(max(same, key=lambda e: e["capacity_rps"])["capacity_rps"])
                efficiency = min(1.0, capacity / (entry["count"] * per_instance))
                basis_src = f"{same[0]['name']}"
            else:
                per_instance, efficiency, basis_src = capacity / entry["count"], 1.0, "itself"
            count = max(2, math.ceil(target_rps / (per_instance * efficiency)))
            hourly, monthly = _price(rescaled(bom, entry["instance_type"], count), region,
                                     at_target, entry["name"])
            options.append(PlanOption(
                strategy, entry["name"], entry["instance_type"], count,
                per_instance * efficiency * count,
                f"{per_instance:.1f}/instance ({basis_src}) × {count} @ {efficiency:.0%}",
                hourly, monthly, True,
                "" if count == entry["count"] else "assumes the efficiency measured at "
                f"{entry['count']} instances holds at {count}"))
        elif strategy == "scale up":
            measured = {e["instance_type"]: float(e["capacity_rps"]) for e in singles
                        if not e.get("swap_mib")}
            ref = catalog.instance(entry["instance_type"])
            candidates = []
            for it in catalog.instance_types.values():
                if region not in it.price_usd_hour or it.arch != ref.arch:
                    continue
                if it.name in measured:
                    est, basis = measured[it.name], "measured"
                else:
                    ratio = it.vcpu / ref.vcpu
                    if it.memory_mib < ref.memory_mib:
                        ratio = min(ratio, it.memory_mib / ref.memory_mib)
                    est, basis = capacity * ratio, f"extrapolated ({ref.name})"
                hourly, monthly = _price(rescaled(bom, it.name, 1), region, at_target,
                                         entry["name"])
                candidates.append(PlanOption(strategy, entry["name"], it.name, 1, est, basis,
                                             hourly, monthly, est >= target_rps))
            reaching = [c for c in candidates if c.reaches]
            pick = min(reaching, key=lambda c: c.hourly_usd) if reaching else \
                max(candidates, key=lambda c: (c.capacity_rps, -c.hourly_usd))
            if not reaching:
                pick.note = "no single instance type in the catalog reaches the target"
            elif "extrapolated" in pick.basis:
                pick.note = "extrapolated: measure it before buying"
            options.append(pick)
        else:
            hourly, monthly = _price(bom, region, at_target, entry["name"])
            options.append(PlanOption(
                strategy, entry["name"], entry["instance_type"], entry["count"], capacity,
                "measured", hourly, monthly, capacity >= target_rps,
                "" if capacity >= target_rps else "cannot grow: one box as measured"))
    return options


def winner(options: list[PlanOption]) -> PlanOption | None:
    reaching = [o for o in options if o.reaches]
    return min(reaching, key=lambda o: o.monthly_usd) if reaching else None


def plan_command(target_rps: float, from_run: Path | None) -> int:
    """Print each strategy's cheapest configuration for the target and which one wins."""
    if target_rps <= 0:
        raise UserError(f"--target-rps must be a request rate above 0, got {target_rps:g}.")
    run_dir = Path(from_run) if from_run is not None else newest_run()
    options = make_plan(run_dir, target_rps)
    best = winner(options)

    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Cheapest way to serve {target_rps:g} req/s (from {run_dir})",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("strategy", "configuration", "req/s", "$/month", "reaches", "basis"):
        table.add_column(col, justify="right" if col in ("req/s", "$/month") else "left",
                         no_wrap=col != "basis")
    notes = []
    for o in options:
        mark = "[green]yes[/green]" if o.reaches else "[red]no[/red]"
        name = f"[bold green]★ {o.strategy}[/bold green]" if o is best else o.strategy
        basis = o.basis
        if o.note:
            notes.append(f"{o.strategy}: {o.note}.")
            basis += f" [{len(notes)}]"
        table.add_row(name, o.configuration, f"{o.capacity_rps:,.1f}", f"${o.monthly_usd:,.2f}",
                      mark, basis)
    console.print(table)
    for i, note in enumerate(notes, 1):
        console.print(f"  [{i}] {note}", highlight=False, markup=False)
    if best:
        console.print(f"Winner: [bold]{best.strategy}[/bold] with {best.configuration} at "
                      f"${best.monthly_usd:,.2f}/month (on-demand, 730 h; LCU at the target rate, "
                      "unlimited-mode surplus credits not included).", highlight=False)
        return 0
    console.print("No measured strategy reaches the target; measure bigger configurations.",
                  highlight=False)
    return 1

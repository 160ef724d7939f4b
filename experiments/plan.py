"""`python -m experiments plan --target-rps N`: the cheapest way each strategy reaches N req/s.

Every figure is an AWS-equivalent one (experiments/estimate.py: a local run at cpu_scale s is
the AWS box in slow motion, so its capacity × 1/s) and, by default, a *sustained* one: what the
box carries forever, not on its launch credits (`--burst` plans on burst capacity instead).

- **as is / add swap**: one box as measured; it reaches N or it does not.
- **scale up**: every instance type of the catalog priced in the run's region, with the measured
  type's architecture and at least its memory (the measured Gunicorn workers must fit). A type
  that was measured keeps its measured figure; any other is *extrapolated from the measured
  service demand* D = vCPUs ÷ capacity (CPU-seconds per request at capacity): capacity ≈ usable
  vCPUs ÷ D, where usable vCPUs are all of them, or the baseline for a burstable type in standard
  mode when planning on sustained capacity. Unlimited-mode types are charged their surplus
  credits at the target load. Extrapolation assumes the app stays CPU-bound and Gunicorn's
  workers grow with the vCPUs; across families it also assumes equal per-vCPU speed: it is
  flagged, "measure it before buying".
- **scale out**: n × the per-instance capacity of the same single box (micro-swap for the
  scale-out variant) × the efficiency measured at the run's instance count (capacity of the
  fleet ÷ n × single box), assumed to hold at the new n.

Answers stay bounded: when no configuration reaches N the row says why (the largest type's
estimate, an ALB's 1,000-target limit) instead of printing an absurd fleet.
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
from experiments.estimate import variant_estimate
from experiments.model import StepResult, step_at_capacity
from experiments.pricing import embedded_prices
from experiments.results import RunStore
from stacks.catalog import InstanceType, load_catalog
from stacks.variant import Variant, VariantError, load_variant

STRATEGY_BY_NAME = {"micro": "as is", "micro-swap": "add swap", "scale-up": "scale up",
                    "scale-out": "scale out"}
ALB_MAX_TARGETS = 1000
"""AWS quota: registered targets per Application Load Balancer (not adjustable past this here)."""


@dataclass
class PlanOption:
    strategy: str
    variant: str
    instance_type: str
    count: int
    capacity_rps: float
    basis: str
    """'measured', 'extrapolated (...)' or '<per instance> × N @ efficiency'."""
    hourly_usd: float | None
    monthly_usd: float | None
    reaches: bool
    note: str = ""

    @property
    def configuration(self) -> str:
        alb = " + ALB" if self.strategy == "scale out" else ""
        if self.count > ALB_MAX_TARGETS:
            return f"over {ALB_MAX_TARGETS:,} × {self.instance_type}{alb}"
        return f"{self.count} × {self.instance_type}{alb}"


@dataclass(frozen=True)
class Measured:
    """One summary entry's AWS-equivalent figures for planning."""

    entry: dict[str, Any]
    burst: float
    sustained: float
    sustained_basis: str

    def rate(self, burst: bool) -> float:
        return self.burst if burst else self.sustained


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


def credit_mode(entry: dict[str, Any], it: InstanceType) -> str | None:
    """The credit mode the candidate runs in: the measured one for the measured type, else the
    family's default (None for fixed-performance types)."""
    if not it.burstable:
        return None
    if entry.get("instance_type") == it.name and entry.get("credit_mode"):
        return str(entry["credit_mode"])
    return it.default_credit_mode


def usable_vcpus(it: InstanceType, mode: str | None, burst: bool) -> float:
    """vCPUs a box can keep busy: all of them, or its baseline in standard mode when sustained."""
    if it.burstable and mode == "standard" and not burst:
        return it.baseline_vcpus
    return float(it.vcpu)


def measured_figures(entry: dict[str, Any], cpu_scale: float | None,
                     backend: str) -> Measured | None:
    """AWS-equivalent burst and sustained capacity of one variant (None without a capacity).

    Sustained: the measured `sustained_capacity_rps` when the run has it; otherwise, for a
    standard-mode burstable box, the burst capacity × its baseline fraction (CPU-bound at
    capacity), flagged as such; otherwise the burst capacity (credits never throttle it).
    """
    est = variant_estimate(entry, cpu_scale, backend, host_cpu="-")
    if not est or not est.get("capacity_rps"):
        return None
    burst = float(est["capacity_rps"])
    if "sustained_capacity_rps" in entry and entry["sustained_capacity_rps"] is not None:
        return Measured(entry, burst, float(est["sustained_capacity_rps"]), "measured")
    it = load_catalog().instance_types.get(str(entry.get("instance_type")))
    mode = str(entry.get("credit_mode") or (it.default_credit_mode if it else ""))
    if it is not None and it.burstable and mode == "standard":
        return Measured(entry, burst, burst * it.baseline_per_vcpu,
                        f"baseline {it.baseline_per_vcpu:.0%} of the burst capacity "
                        "(sustained not measured in this run)")
    return Measured(entry, burst, burst, "burst = sustained (credits never throttle it)")


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


def _price(bom: BillOfMaterials, region: str, traffic: MeasuredTraffic | None, name: str,
           surplus_credits_per_hour: float = 0.0) -> tuple[float, float]:
    prices = embedded_prices(region, list(bom.instances))
    cost = price_bom(bom, prices, name, traffic, surplus_credits_per_hour)
    return cost.hourly_usd, cost.monthly_usd


def _check_target(target_rps: float) -> None:
    if not math.isfinite(target_rps) or target_rps <= 0:
        raise UserError(f"--target-rps must be a request rate above 0, got {target_rps:g}.")


def make_plan(run_dir: Path, target_rps: float, burst: bool = False) -> list[PlanOption]:
    """Every strategy's cheapest configuration for the target, from one run's measurements."""
    _check_target(target_rps)
    store = RunStore.open(Path(run_dir))
    summary = store.summary()
    backend = str(summary.get("backend") or "local")
    measured = [m for m in (measured_figures(v, summary.get("cpu_scale"), backend)
                            for v in summary["variants"] if v) if m]
    if not measured:
        raise UserError(f"{run_dir} has no variant with a measured capacity to plan from.")
    singles = [m for m in measured if strategy_of(m.entry) != "scale out"]
    options: list[PlanOption] = []
    for m in measured:
        entry = m.entry
        variant = _variant(entry)
        if variant is None:
            continue
        strategy = strategy_of(entry)
        region = (entry.get("cost") or {}).get("region") or variant.region
        bom = variant_bom(variant)
        traffic = _traffic_at_capacity(store, entry["name"])
        at_target = traffic.scaled(target_rps / traffic.rps) if traffic and traffic.rps else None
        if strategy == "scale out":
            options.append(_scale_out(m, singles, bom, region, at_target, target_rps, burst))
        elif strategy == "scale up":
            options.append(_scale_up(m, singles, bom, region, at_target, target_rps, burst))
        else:
            capacity = m.rate(burst)
            hourly, monthly = _price(bom, region, at_target, entry["name"])
            reaches = capacity >= target_rps
            options.append(PlanOption(
                strategy, entry["name"], entry["instance_type"], entry["count"], capacity,
                "measured" if burst or m.sustained_basis == "measured"
                else f"sustained: {m.sustained_basis}", hourly, monthly, reaches,
                "" if reaches else f"cannot grow: one box carries {capacity:,.1f} req/s"))
    return options


def _scale_out(m: Measured, singles: list[Measured], bom: BillOfMaterials, region: str,
               at_target: MeasuredTraffic | None, target: float, burst: bool) -> PlanOption:
    entry = m.entry
    same = [s for s in singles if s.entry["instance_type"] == entry["instance_type"]
            and s.entry.get("swap_mib") == entry.get("swap_mib")] or \
           [s for s in singles if s.entry["instance_type"] == entry["instance_type"]]
    n_run = int(entry.get("count") or 1)
    if same:
        single = max(same, key=lambda s: s.burst)
        # efficiency from like-for-like burst figures, applied to the chosen (sustained) rate
        efficiency = min(1.0, m.burst / (n_run * single.burst))
        per_instance, source = single.rate(burst), single.entry["name"]
    else:
        per_instance, efficiency, source = m.rate(burst) / n_run, 1.0, "itself"
    per_box = per_instance * efficiency
    if per_box <= 0:
        return PlanOption("scale out", entry["name"], entry["instance_type"], n_run, 0.0,
                          "no capacity per instance", None, None, False,
                          "the measured per-instance capacity is 0")
    count = max(2, math.ceil(target / per_box))
    basis = f"{per_instance:,.1f}/instance ({source}) × n @ {efficiency:.0%}"
    if count > ALB_MAX_TARGETS:
        return PlanOption(
            "scale out", entry["name"], entry["instance_type"], count,
            per_box * ALB_MAX_TARGETS, basis, None, None, False,
            f"needs more than {ALB_MAX_TARGETS:,} instances; one ALB takes at most "
            f"{ALB_MAX_TARGETS:,} targets, which carry {per_box * ALB_MAX_TARGETS:,.0f} req/s")
    hourly, monthly = _price(rescaled(bom, entry["instance_type"], count), region, at_target,
                             entry["name"])
    note = "" if count == n_run else (f"assumes the efficiency measured at {n_run} instances "
                                      f"holds at {count}")
    return PlanOption("scale out", entry["name"], entry["instance_type"], count,
                      per_box * count, basis, hourly, monthly, True, note)


def _scale_up(m: Measured, singles: list[Measured], bom: BillOfMaterials, region: str,
              at_target: MeasuredTraffic | None, target: float, burst: bool) -> PlanOption:
    catalog = load_catalog()
    entry = m.entry
    ref = catalog.instance(entry["instance_type"])
    ref_mode = credit_mode(entry, ref)
    # measured service demand: CPU-seconds per request at (burst) capacity, on AWS
    demand_s = usable_vcpus(ref, ref_mode, burst=True) / m.burst
    measured = {s.entry["instance_type"]: s for s in singles if not s.entry.get("swap_mib")}
    candidates: list[PlanOption] = []
    for it in catalog.instance_types.values():
        if region not in it.price_usd_hour or it.arch != ref.arch \
                or it.memory_mib < ref.memory_mib:
            continue
        mode = credit_mode(entry, it)
        if it.name in measured:
            capacity, basis = measured[it.name].rate(burst), "measured"
        else:
            capacity = usable_vcpus(it, mode, burst) / demand_s
            basis = f"extrapolated ({demand_s * 1000:.0f} ms CPU/request from {ref.name})"
        load = min(target, capacity)
        surplus = 0.0
        if it.burstable and mode == "unlimited":
            busy = load * demand_s  # vCPUs kept busy at the target (or at capacity)
            surplus = max(0.0, busy - it.baseline_vcpus) * 60.0  # credits per hour
        one = rescaled(bom, it.name, 1)
        one.unlimited_instances.clear()
        if it.burstable and mode == "unlimited":
            one.unlimited_instances[it.name] = 1
        hourly, monthly = _price(one, region, at_target, entry["name"], surplus)
        candidates.append(PlanOption("scale up", entry["name"], it.name, 1, capacity, basis,
                                     hourly, monthly, capacity >= target))
    if not candidates:
        raise UserError(f"no instance type in the catalog is priced in {region} with "
                        f"{ref.arch} and at least {ref.memory_mib} MiB.")
    reaching = [c for c in candidates if c.reaches]
    if reaching:
        pick = min(reaching, key=lambda c: c.hourly_usd or math.inf)
        if pick.basis.startswith("extrapolated"):
            pick.note = "extrapolated from the measured service demand: measure it before buying"
        return pick
    biggest = max(candidates, key=lambda c: c.capacity_rps)
    biggest.note = (f"no single instance type in the catalog reaches it: the largest, "
                    f"{biggest.instance_type}, carries {biggest.capacity_rps:,.0f} req/s")
    return biggest


def winner(options: list[PlanOption]) -> PlanOption | None:
    reaching = [o for o in options if o.reaches and o.monthly_usd is not None]
    return min(reaching, key=lambda o: o.monthly_usd or math.inf) if reaching else None


def plan_command(target_rps: float, from_run: Path | None, burst: bool = False) -> int:
    """Print each strategy's cheapest configuration for the target and which one wins."""
    _check_target(target_rps)
    run_dir = Path(from_run) if from_run is not None else newest_run()
    options = make_plan(run_dir, target_rps, burst)
    best = winner(options)

    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    kind = "burst" if burst else "sustained"
    table = Table(title=f"Cheapest way to serve {target_rps:,.6g} req/s on AWS ({kind} capacity, "
                        f"AWS-equivalent, from {run_dir})",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("strategy", "configuration", "req/s", "$/month", "reaches", "basis"):
        table.add_column(col, justify="right" if col in ("req/s", "$/month") else "left",
                         no_wrap=col not in ("basis", "configuration"))
    notes = []
    for o in options:
        mark = "[green]yes[/green]" if o.reaches else "[red]no[/red]"
        name = f"[bold green]★ {o.strategy}[/bold green]" if o is best else o.strategy
        basis = o.basis
        if o.note:
            notes.append(f"{o.strategy}: {o.note}.")
            basis += f" [{len(notes)}]"
        money = "—" if o.monthly_usd is None else f"${o.monthly_usd:,.2f}"
        table.add_row(name, o.configuration, f"{o.capacity_rps:,.1f}", money, mark, basis)
    console.print(table)
    for i, note in enumerate(notes, 1):
        console.print(f"  [{i}] {note}", highlight=False, markup=False)
    other = "--burst plans on burst capacity (only while CPU credits last)" if not burst else \
        "without --burst the plan uses sustained capacity (what the box carries forever)"
    console.print(f"  Capacities are AWS-equivalent estimates (local figures × 1/cpu_scale, see "
                  f"`report`); {other}.", highlight=False)
    if best:
        console.print(f"Winner: [bold]{best.strategy}[/bold] with {best.configuration} at "
                      f"${best.monthly_usd:,.2f}/month (on-demand, 730 h; LCU at the target rate; "
                      "unlimited-mode surplus credits at the target load included).",
                      highlight=False)
        return 0
    console.print("No strategy reaches the target (see the notes above).", highlight=False)
    return 1

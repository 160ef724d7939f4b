"""The comparison table on the terminal, at the end of `run` (rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from experiments.comparison import sentence
from experiments.report.tables import UNCONFIRMED
from experiments.results import VariantSummary

LEFT = ("variant", "failure", "instances")


def print_summary_table(summary: dict[str, Any], variants: list[VariantSummary],
                        out: Console) -> None:
    """One row per finished variant: capacity, survival, failure, price."""
    emulated = (f", cpu_scale {summary['cpu_scale']:.2f}, emulated"
                if summary.get("cpu_scale") else "")
    table = Table(title=f"scalelab run {summary['run_id']} ({summary.get('backend')}{emulated})")
    estimated = summary.get("backend") == "local" and any(v.aws_estimate for v in variants)
    columns = ["variant", "instances", "capacity (req/s)", "p95 at capacity", "survival",
               "failure", "$/hour", "$ per M req"]
    if estimated:
        columns.insert(3, "≈ AWS req/s")
    for column in columns:
        table.add_column(column, justify="left" if column in LEFT else "right")
    for v in variants:
        per_million = v.cost.get("usd_per_million_requests")
        loss = v.survival.first_worker_loss_s
        aws = (v.aws_estimate or {}).get("capacity_rps")
        host_bound = bool((v.aws_estimate or {}).get("host_saturated"))
        table.add_row(
            v.name,
            f"{v.count}×{v.instance_type}" + ("+ALB" if v.load_balancer else "")
            + (f", swap {v.swap_mib / 1024:g} GiB" if v.swap_mib else ""),
            f"{v.capacity_rps:.1f}" + (UNCONFIRMED if v.capacity_confirmed is False else "")
            + ("" if v.capacity_ci95 is None else
                                       f" ({v.capacity_ci95[0]:.1f}–{v.capacity_ci95[1]:.1f})")
            + (f" → {v.sustained_capacity_rps:.1f}" if v.sustained_capacity_rps is not None
               and v.sustained_capacity_rps < v.capacity_rps - 0.05 else ""),
            *([("—" if aws is None else f"≥ {aws:.1f} !" if host_bound else f"{aws:.1f}")]
              if estimated else []),
            "—" if v.p95_ms_at_capacity is None else f"{v.p95_ms_at_capacity:.0f} ms",
            ("held" if v.survival.held else f"{v.survival.seconds:.0f} s")
            + ("" if loss is None else f" (worker lost at {loss:.0f} s)"),
            v.failure.kind,
            "—" if v.hourly_usd is None else f"{v.hourly_usd:.4f}",
            "—" if per_million is None else f"{per_million:.3f}",
        )
    out.print(table)
    if estimated:
        out.print(f"  ≈ AWS req/s: an estimate (capacity × 1/cpu_scale) assuming a host core "
                  f"({summary.get('host_cpu') or 'CPU not recorded'}) ≈ one vCPU; the other "
                  "assumptions are in the report.", highlight=False)
    if summary.get("comparisons"):
        out.print("  Against the baseline, measured together (95 % interval):", highlight=False)
    for c in summary.get("comparisons") or []:
        out.print(f"    {sentence(c)}", highlight=False)
    for v in variants:  # the host, not the box, capped these: say so where the figure is read
        for warning in (v.aws_estimate or {}).get("warnings") or []:
            out.print(f"  [yellow]! {warning}[/yellow]", highlight=False)


def build_report_or_say_how(run_dir: Path, out: Console) -> None:
    """Build the report at the end of a run; if that fails, the results are safe on disk and
    the user is told how to rebuild it (a report bug must not lose a measured run)."""
    try:
        from experiments.report import build_report

        html = [p for p in build_report(run_dir) if p.suffix == ".html"]
        if html:
            out.print(f"Report: {html[0]}")
    except Exception as exc:
        out.print(f"[yellow]The report could not be built ({type(exc).__name__}: {exc}); "
                  f"rebuild it with `python -m experiments report {run_dir}`.[/yellow]")

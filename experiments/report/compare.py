"""`python -m experiments compare RUN_A RUN_B`: baseline vs contender, variant by variant.

Like esrally's `compare`: two run folders in, one table out with absolute and relative
differences, printed and written as Markdown into the contender's folder so it travels with
the run it judges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.errors import UserError
from experiments.report.tables import variant_rows
from experiments.results import atomic_write_text, load_summary


@dataclass(frozen=True)
class Metric:
    label: str
    key: str
    unit: str
    digits: int
    higher_is_better: bool


METRICS = [
    Metric("capacity", "capacity_rps", "req/s", 1, True),
    Metric("p95 @ capacity", "p95_ms_at_capacity", "ms", 0, False),
    Metric("survival", "survival_s", "s", 0, True),
    Metric("$/hour", "hourly_usd", "$", 4, False),
    Metric("$/M requests", "usd_per_million_requests", "$", 3, False),
]


@dataclass(frozen=True)
class Diff:
    variant: str
    metric: Metric
    baseline: float | None
    contender: float | None

    @property
    def absolute(self) -> float | None:
        if self.baseline is None or self.contender is None:
            return None
        return self.contender - self.baseline

    @property
    def percent(self) -> float | None:
        if self.absolute is None or not self.baseline:
            return None
        return self.absolute / abs(self.baseline) * 100

    @property
    def verdict(self) -> str:
        """'better', 'worse' or '' (unchanged within 1 %, or not comparable)."""
        pct = self.percent
        if pct is None or abs(pct) < 1:
            return ""
        better = (pct > 0) == self.metric.higher_is_better
        return "better" if better else "worse"


def _fmt(value: float | None, metric: Metric, signed: bool = False) -> str:
    if value is None:
        return "—"
    sign = "+" if signed and value > 0 else ""
    if metric.unit == "$":
        return f"{sign}{'-' if value < 0 else ''}${abs(value):,.{metric.digits}f}"
    return f"{sign}{value:,.{metric.digits}f} {metric.unit}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f} %"


def diffs(summary_a: dict[str, Any], summary_b: dict[str, Any]) -> list[Diff]:
    """One Diff per metric per variant present in either run (missing side → None)."""
    rows_a = {r["variant"]: r for r in variant_rows(summary_a)}
    rows_b = {r["variant"]: r for r in variant_rows(summary_b)}
    names = list(rows_a) + [n for n in rows_b if n not in rows_a]
    out = []
    for name in names:
        a, b = rows_a.get(name, {}), rows_b.get(name, {})
        for m in METRICS:
            out.append(Diff(name, m, a.get(m.key), b.get(m.key)))
    return out


def to_markdown(run_a: str, run_b: str, all_diffs: list[Diff]) -> str:
    lines = [f"# {run_b} compared with {run_a}", "",
             f"Baseline: `{run_a}`. Contender: `{run_b}`. Differences are contender − baseline.",
             "", "| variant | metric | baseline | contender | diff | diff % | |",
             "|---|---|---:|---:|---:|---:|---|"]
    for d in all_diffs:
        lines.append(f"| {d.variant} | {d.metric.label} | {_fmt(d.baseline, d.metric)} | "
                     f"{_fmt(d.contender, d.metric)} | {_fmt(d.absolute, d.metric, True)} | "
                     f"{_pct(d.percent)} | {d.verdict} |")
    return "\n".join(lines) + "\n"


def _print(run_a: str, run_b: str, all_diffs: list[Diff]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    style: dict[str, Callable[[str], str]] = {
        "better": lambda s: f"[green]{s}[/green]", "worse": lambda s: f"[red]{s}[/red]",
        "": lambda s: s}
    table = Table(title=f"baseline {run_a}  vs  contender {run_b}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("variant", "metric", "baseline", "contender", "diff", "diff %"):
        table.add_column(col, justify="left" if col in ("variant", "metric") else "right",
                         no_wrap=True)
    previous = None
    for d in all_diffs:
        paint = style[d.verdict]
        table.add_row(d.variant if d.variant != previous else "", d.metric.label,
                      _fmt(d.baseline, d.metric), _fmt(d.contender, d.metric),
                      paint(_fmt(d.absolute, d.metric, True)), paint(_pct(d.percent)),
                      end_section=d.metric is METRICS[-1])
        previous = d.variant
    Console().print(table)


def compare_command(run_a: Path, run_b: Path) -> int:
    """Print baseline (A) vs contender (B) per variant; write compare-<a>-vs-<b>.md into B."""
    summary_a, summary_b = load_summary(Path(run_a)), load_summary(Path(run_b))
    if not summary_a["variants"] and not summary_b["variants"]:
        raise UserError(f"neither {run_a} nor {run_b} has a finished variant to compare; "
                        "pass run folders whose variants completed.")
    id_a, id_b = str(summary_a["run_id"]), str(summary_b["run_id"])
    all_diffs = diffs(summary_a, summary_b)
    _print(id_a, id_b, all_diffs)
    out = Path(run_b) / f"compare-{id_a}-vs-{id_b}.md"
    atomic_write_text(out, to_markdown(id_a, id_b, all_diffs))
    print(f"Written: {out}")
    return 0

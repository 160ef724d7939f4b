"""The comparison table in three forms (rows for HTML, summary.csv, summary.md), from summary.json.

Every figure comes from the run's summary; nothing is recomputed here except the derived
"which one gives the most capacity per dollar", so the three files cannot disagree.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from experiments.comparison import sentence
from experiments.load.capacity import bound_sentence
from experiments.results import VariantSummary

CSV_COLUMNS = [
    "variant", "instance_type", "count", "swap_mib", "load_balancer", "capacity_rps",
    "p95_ms_at_capacity", "survival_s", "survival_held", "failure_kind", "failure_summary",
    "hourly_usd", "monthly_usd", "usd_per_million_requests", "capacity_per_usd_hour", "region",
    "capacity_ci95_low", "capacity_ci95_high", "capacity_rsd", "capacity_runs",
    # AWS-equivalent estimates (experiments/estimate.py), after the measured figures
    "aws_capacity_rps", "aws_capacity_ci95_low", "aws_capacity_ci95_high",
    "aws_sustained_capacity_rps", "aws_p95_ms_at_capacity", "aws_survival_s",
    "aws_usd_per_million_requests", "aws_capacity_per_usd_hour",
    "sustained_capacity_rps", "credit_runway_minutes", "sustained_capacity_per_usd_hour",
    "capacity_confirmed",
]


def variant_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per variant (None where the run has no figure), from the typed records."""
    rows = []
    for v in (VariantSummary.from_dict(raw) for raw in summary.get("variants") or [] if raw):
        cost = v.cost
        rows.append({
            "variant": v.name,
            "instance_type": v.instance_type,
            "count": v.count,
            "swap_mib": v.swap_mib,
            "load_balancer": v.load_balancer,
            "capacity_rps": v.capacity_rps,
            "p95_ms_at_capacity": v.p95_ms_at_capacity,
            "survival_s": v.survival.seconds,
            "survival_held": v.survival.held,
            "failure_kind": v.failure.kind,
            "failure_summary": v.failure.summary,
            "hourly_usd": cost.get("hourly_usd"),
            "monthly_usd": cost.get("monthly_usd"),
            "usd_per_million_requests": cost.get("usd_per_million_requests"),
            "capacity_per_usd_hour": cost.get("capacity_per_usd_hour"),
            "region": cost.get("region") or v.region,
            "sustained_capacity_rps": v.sustained_capacity_rps,
            "sustained_source": v.sustained_source,
            "sustained_derived_rps": v.sustained_derived_rps,
            "credit_runway_minutes": v.credit_runway_minutes,
            "runway_text": (v.credit_runway or {}).get("text"),
            "sustained_capacity_per_usd_hour": cost.get("sustained_capacity_per_usd_hour"),
            "survival_rps": v.survival.offered_rps,
            "evidence": list(v.failure.evidence),
            "cost_items": cost.get("items") or {},
            "cost_notes": list(cost.get("notes") or []),
            "capacity_ci95_low": v.capacity_ci95[0] if v.capacity_ci95 else None,
            "capacity_ci95_high": v.capacity_ci95[1] if v.capacity_ci95 else None,
            "capacity_rsd": v.capacity_rsd,
            "capacity_confirmed": v.capacity_confirmed,
            "demand_cpu_ms": v.demand_cpu_ms,
            "capacity_pct_of_cpu_bound": v.capacity_pct_of_cpu_bound,
            "capacity_runs": " ".join(f"{r:g}" for r in v.capacity_runs) or None,
            "cpu_bound_sentence": bound_sentence(v.capacity_rps, v.capacity_pct_of_cpu_bound,
                                                 v.cpu_bound_rps, v.demand_cpu_ms),
            **aws_fields(v.aws_estimate),
        })
    return rows


def aws_fields(estimate: dict[str, Any] | None) -> dict[str, Any]:
    """The flat `aws_*` row fields of one variant's `aws_estimate` (None where absent)."""
    est = estimate or {}
    ci = est.get("capacity_ci95") or [None, None]
    return {
        "aws_capacity_rps": est.get("capacity_rps"),
        "aws_capacity_ci95_low": ci[0], "aws_capacity_ci95_high": ci[1],
        "aws_sustained_capacity_rps": est.get("sustained_capacity_rps"),
        "aws_sustained_measured": bool(est.get("sustained_measured")),
        "aws_p95_ms_at_capacity": est.get("p95_ms_at_capacity"),
        "aws_survival_s": est.get("survival_seconds"),
        "aws_usd_per_million_requests": est.get("usd_per_million_requests"),
        "aws_capacity_per_usd_hour": est.get("capacity_per_usd_hour"),
        "aws_basis": est.get("basis"),
        "aws_assumptions": list(est.get("warnings") or []) + list(est.get("assumptions") or []),
    }


def aws_assumptions(rows: list[dict[str, Any]]) -> list[str]:
    """The estimates' stated assumptions, once (they are the same for every variant of a run)."""
    return list(dict.fromkeys(a for r in rows for a in r.get("aws_assumptions") or []))


def fmt_ci(row: dict[str, Any]) -> str:
    low, high = row.get("aws_capacity_ci95_low"), row.get("aws_capacity_ci95_high")
    return "" if low is None or high is None else f"{low:,.1f}–{high:,.1f}"


def per_dollar(row: dict[str, Any], burst: bool = False) -> float | None:
    """req/s per $/hour on the sustained capacity (what a standard-mode burstable box serves
    once its credits are gone), or on the burst capacity with `burst`; runs from before the
    split have only the burst figure."""
    if burst:
        return row.get("capacity_per_usd_hour")
    sustained = row.get("sustained_capacity_per_usd_hour")
    return sustained if sustained is not None else row.get("capacity_per_usd_hour")


def best_value(rows: list[dict[str, Any]], burst: bool = False) -> str | None:
    """The variant with the most capacity per dollar-hour (cheapest per unit of capacity),
    ranked on sustained capacity unless `burst`."""
    priced = [r for r in rows if per_dollar(r, burst)]
    if not priced:
        return None
    return max(priced, key=lambda r: per_dollar(r, burst) or 0.0)["variant"]


UNCONFIRMED = " unconfirmed"
"""After a capacity whose confirmation holds all failed: the figure is the highest search step
that passed, not one a long hold carried."""


def fmt_capacity(row: dict[str, Any], interval: bool = True) -> str:
    """`68.0`, `68.0 → 4.5` when the sustained capacity (credits gone) is lower, and the
    burst figure's 95 % interval when the run repeated its searches: `31.0 (28.4–33.6)`;
    `37.2 unconfirmed` when every confirmation hold failed (the highest step that passed)."""
    burst, sustained = row.get("capacity_rps"), row.get("sustained_capacity_rps")
    text = fmt_num(burst) + (UNCONFIRMED if row.get("capacity_confirmed") is False else "")
    ci = fmt_interval(row.get("capacity_ci95_low"), row.get("capacity_ci95_high"))
    if ci and interval:
        text += f" ({ci})"
    if sustained is not None and burst is not None and sustained < burst - 0.05:
        text += f" → {fmt_num(sustained)}"
    return text


def burst_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per variant whose credits matter: `22 req/s for 31 min, then 2.3 req/s`."""
    out = []
    for r in rows:
        if r.get("runway_text"):
            src = r.get("sustained_source") or ""
            derived = r.get("sustained_derived_rps")
            out.append(f"{r['variant']}: {r['runway_text']}"
                       + (f" (sustained {src})" if src in ("measured", "estimated") else "")
                       + (f"; the utilization law would say {derived:g} req/s (CPU at the "
                          "baseline ÷ CPU per request), the measured knee is where the SLO "
                          "broke" if derived and src == "measured" else ""))
    return out


def cpu_bound_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per variant with a CPU signal: `micro: 57 req/s = 92 % of the CPU bound`."""
    return [f"{r['variant']}: {r['cpu_bound_sentence']}" for r in rows
            if r.get("cpu_bound_sentence")]


CPU_BOUND_NOTE = ("The CPU bound is the utilization law's limit: the CPU the box may use ÷ the "
                  "CPU time one request took (measured in the search). Near 100 % the box ran "
                  "out of CPU; far below, of something else (workers, memory, a lock, the "
                  "database); above 100 %, the demand measured at low load overstated the one "
                  "at capacity.")


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    return out.getvalue()


# ---- text formatting shared by the Markdown and the HTML ---------------------------------

def fmt_num(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def fmt_usd(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"${value:,.{digits}f}"


def fmt_interval(low: float | None, high: float | None) -> str:
    """`28.4–33.6`, or "" when the run has no interval (one search)."""
    return "" if low is None or high is None else f"{low:,.1f}–{high:,.1f}"


def fmt_minutes(seconds: float) -> str:
    """E.g. 238.4 -> '3:58' (minutes:seconds)."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"


STAGE_WORDS = {"observe": "signals + teardown"}


def stage_times(stage_seconds: dict[str, float] | None) -> str:
    """A variant's time by stage, e.g. '3:58 (deploy 0:09, capacity 1:02, survival 1:41, …)';
    stages under a second are left out; '' when none was recorded."""
    if not stage_seconds:
        return ""
    parts = [f"{STAGE_WORDS.get(k, k)} {fmt_minutes(v)}" for k, v in stage_seconds.items()
             if v >= 1]
    return f"{fmt_minutes(sum(stage_seconds.values()))} ({', '.join(parts)})"


def fmt_survival(row: dict[str, Any]) -> str:
    if row.get("survival_s") is None:
        return "—"
    held = " (held)" if row.get("survival_held") else ""
    return f"{row['survival_s']:.0f} s{held}"


def instances_text(row: dict[str, Any]) -> str:
    text = f"{row.get('count')} × {row.get('instance_type')}"
    if row.get("load_balancer"):
        text += " + ALB"
    if row.get("swap_mib"):
        text += f", swap {row['swap_mib'] / 1024:g} GiB"
    return text


AWS_SIGNALS_NOTE = ("AWS signals: CPU, memory and swap come from the CloudWatch agent every 10 s; "
                    "CPU credit balances exist only as 5-minute CloudWatch metrics, so the credit "
                    "timeline is coarse (each value is carried forward to the 10 s samples).")


def run_context(summary: dict[str, Any], info: dict[str, Any]) -> list[str]:
    """Sentences that qualify every number (emulation, SLO, prices)."""
    lines = []
    slo = summary.get("slo") or {}
    if slo:
        lines.append(f"A step passes when p95 ≤ {slo.get('p95_ms', 500):g} ms, errors ≤ "
                     f"{100 * slo.get('max_error_rate', 0.01):g} % and achieved ≥ "
                     f"{100 * slo.get('min_achieved_ratio', 0.95):g} % of offered; capacity is "
                     "the highest passing offered rate.")
    if summary.get("backend") == "aws":
        lines.append(AWS_SIGNALS_NOTE)
    if summary.get("backend") == "local":
        scale = summary.get("cpu_scale")
        lines.append(f"Local run: every instance was emulated on one host (cgroups + HAProxy) "
                     f"with cpu_scale {scale if scale is not None else '?'} host cores per vCPU, "
                     "so capacities are emulated: compare them with each other; the AWS-"
                     "equivalent figures are estimates (× 1/cpu_scale) with stated assumptions.")
        d = summary.get("dilation") or 1.0
        if d > 1:
            lines.append(f"Time dilation {d:.2f} (= 1/cpu_scale): the emulated boxes run {d:.2f}× "
                         "slower than the AWS ones, so Gunicorn's timeouts, HAProxy's health "
                         "checks, the credit clock, the SLO's p95 and the survival windows were "
                         f"all stretched {d:.2f}× (the SLO above is the AWS-time one).")
    survival = summary.get("survival") or {}
    if survival.get("offered_rps"):
        lines.append(f"Survival: every variant was offered {survival['offered_rps']:g} req/s "
                     f"({survival.get('source') or 'chosen for the run'}) plus the shop's "
                     "memory hazard, and is judged held or failed (time, cause).")
    profile = (info.get("config") or {}).get("profile")
    if profile:
        lines.append(f"Measurement profile: {profile}.")
    if any(isinstance(v, dict) and v.get("capacity_ci95") for v in summary.get("variants") or []):
        lines.append(INTERVAL_NOTE)
    times = [f"{v['name']} {took}" for v in summary.get("variants") or []
             if isinstance(v, dict) and (took := stage_times(v.get("stage_seconds")))]
    if times:
        lines.append("Time spent (host wall clock, by stage): " + "; ".join(times) + ".")
    return lines


INTERVAL_NOTE = ("Capacity is the median of the repeated searches; in brackets, the 95 % "
                 "interval of their mean (Student's t): a difference smaller than that interval "
                 "is within the measurement's noise.")


def to_markdown(summary: dict[str, Any], rows: list[dict[str, Any]],
                info: dict[str, Any], burst: bool = False) -> str:
    best = best_value(rows, burst)
    out = [f"# scalelab run {summary.get('run_id')}", ""]
    out += [f"Backend: {summary.get('backend')}. " + " ".join(run_context(summary, info)), ""]
    out.append("| variant | instances | capacity (req/s) | p95 at capacity | survival | failure | "
               "$/hour | $/month | $ per million req | req/s per $/h |")
    out.append("|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        name = f"**{r['variant']}** ★" if r["variant"] == best else r["variant"]
        out.append(" | ".join([
            f"| {name}", instances_text(r), fmt_capacity(r),
            fmt_num(r["p95_ms_at_capacity"], 0, " ms"), fmt_survival(r),
            f"`{r['failure_kind'] or '—'}`", fmt_usd(r["hourly_usd"]),
            fmt_usd(r["monthly_usd"], 2), fmt_usd(r["usd_per_million_requests"], 3),
            fmt_num(per_dollar(r, burst), 0)]) + " |")
    if best:
        out += ["", f"★ most capacity per dollar: **{best}** (on "
                    f"{'burst' if burst else 'sustained'} capacity)."]
    if summary.get("comparisons"):
        out += ["", "## Against the baseline (capacity ratio, 95 % interval)", ""]
        out += [f"- {sentence(c)}" for c in summary["comparisons"]]
    lines = burst_lines(rows)
    if lines:
        out += ["", "## Burst vs sustained (CPU credits)", ""] + [f"- {line}" for line in lines]
    lines = cpu_bound_lines(rows)
    if lines:
        out += ["", "## Capacity and the CPU bound", "", CPU_BOUND_NOTE, ""]
        out += [f"- {line}" for line in lines]
    out += ["", "## Why each variant failed", ""]
    for r in rows:
        out.append(f"### {r['variant']}: `{r['failure_kind']}`")
        if r["failure_summary"]:
            out += ["", r["failure_summary"]]
        out.append("")
        out += [f"- `{line}`" for line in r["evidence"]] or ["- (no evidence recorded)"]
        out.append("")
    estimated = [r for r in rows if r.get("aws_capacity_rps") is not None]
    if estimated and summary.get("backend") != "aws":
        out += ["## AWS-equivalent estimates", "",
                f"Local figures scaled by cpu_scale {summary.get('cpu_scale')}: capacity × 1/s, "
                "latency and survival × s. Estimates, not measurements.", "",
                "| variant | capacity (req/s) | 95 % interval | sustained (req/s) | "
                "p95 at capacity | survival | $ per million req | req/s per $/h |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in estimated:
            survival = fmt_num(r["aws_survival_s"], 0, " s")
            if r["survival_held"]:
                survival += " (held)"
            out.append(" | ".join([
                f"| {r['variant']}", fmt_num(r["aws_capacity_rps"]), fmt_ci(r) or "—",
                fmt_num(r["aws_sustained_capacity_rps"]) if r["aws_sustained_measured"] else "—",
                fmt_num(r["aws_p95_ms_at_capacity"], 0, " ms"), survival,
                fmt_usd(r["aws_usd_per_million_requests"], 3),
                fmt_num(r["aws_capacity_per_usd_hour"], 0)]) + " |")
        out += ["", "Assumptions:", ""] + [f"- {a}" for a in aws_assumptions(estimated)] + [""]
    notes = list(dict.fromkeys(n for r in rows for n in r["cost_notes"]))
    if notes:
        out += ["## Cost notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)

"""The run report: summary.md, summary.csv, summary.json and a self-contained report.html.

Built ONLY from the files a run wrote (RunStore), so it can be rebuilt at any time, on
another machine, without the stacks, the backend or the network. Charts are PNGs inlined as
base64: the HTML is one file that opens offline.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from experiments.comparison import sentence
from experiments.model import Failure, SignalSample, StepResult, SurvivalResult
from experiments.report import tables
from experiments.results import DamagedRunError, RunStore, atomic_write_text

TEMPLATES = Path(__file__).with_name("templates")
COST_ITEMS = [("instances", "instances"), ("ebs", "EBS gp3"), ("public_ipv4", "public IPv4"),
              ("alb_hours", "ALB hours"), ("alb_lcu", "ALB LCU"),
              ("surplus_credits", "surplus credits")]

__all__ = ["build_report"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _steps(store: RunStore, name: str, entry: dict[str, Any]) -> list[StepResult]:
    raw = store.load_json(name, "steps.json")
    if raw is None:  # fall back to the summary's own step list
        raw = entry.get("steps") or []
    steps = []
    for s in raw:
        full = {"p50_ms": 0.0, "p99_ms": 0.0, "error_rate": 0.0, **s}
        steps.append(StepResult.from_dict(full))
    return steps


def _phases(steps: list[StepResult], survival: SurvivalResult | None) -> list[tuple[str, float,
                                                                                    float]]:
    phases = []
    timed = [s for s in steps if s.started_at]
    if timed:
        phases.append(("capacity search", min(s.started_at for s in timed),
                       max(s.ended_at for s in timed)))
    if survival and survival.started_at:
        end = survival.failed_at or survival.started_at + (survival.limit_s or survival.seconds)
        phases.append(("survival", survival.started_at, end))
    return phases


def _variant_view(store: RunStore, entry: dict[str, Any], row: dict[str, Any],
                  slo_p95: float, damage: list[str]) -> dict[str, Any]:
    from experiments.report import plots  # matplotlib: only when a report is drawn

    name = entry["name"]
    try:
        steps = _steps(store, name, entry)
        survival_raw = store.load_json(name, "survival.json")
        survival = SurvivalResult.from_dict(survival_raw) if survival_raw else None
        diagnosis = store.load_json(name, "diagnosis.json") or entry.get("failure") or {}
        failure = Failure.from_dict(diagnosis)
        signals: list[SignalSample] = store.load_observations(name).signals
    except DamagedRunError as exc:  # the summary row still shows; the charts cannot
        damage.append(f"{exc} The report shows {name}'s summary row without its charts.")
        steps, survival, signals = [], None, []
        failure = Failure.from_dict(entry.get("failure") or {})
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        from experiments.results import last_file_read

        damage.append(f"{last_file_read()} is damaged ({type(exc).__name__}: {exc}). The "
                      f"report shows {name}'s summary row without its charts.")
        steps, survival, signals = [], None, []
        failure = Failure.from_dict(entry.get("failure") or {})
    return {
        "name": name, **_row_view(row),
        "failure_summary": failure.summary or row["failure_summary"],
        "evidence": failure.evidence or row["evidence"],
        "rate_chart": _b64(plots.rate_chart(name, steps, slo_p95, entry.get("capacity_rps"),
                                            _interval(entry.get("capacity_ci95"))))
        if steps else None,
        "cpu_bound": row.get("cpu_bound_sentence") or "",
        "timeline_chart": _b64(plots.timeline_chart(name, signals, failure.at,
                                                    _phases(steps, survival)))
        if signals else None,
    }


def _interval(raw: Any) -> tuple[float, float] | None:
    """summary.json's `capacity_ci95` ([low, high]) as numbers; None when absent or odd."""
    try:
        low, high = (float(x) for x in raw)
    except (TypeError, ValueError):
        return None
    return (low, high) if low <= high else None


def _row_view(r: dict[str, Any], burst: bool = False) -> dict[str, Any]:
    return {
        "variant": r["variant"], "instances": tables.instances_text(r),
        "capacity": tables.fmt_capacity(r, interval=False),
        "capacity_ci": tables.fmt_interval(r.get("capacity_ci95_low"), r.get("capacity_ci95_high")),
        "p95": tables.fmt_num(r["p95_ms_at_capacity"], 0, " ms"),
        "survival": tables.fmt_survival(r), "survival_held": r["survival_held"],
        "failure_kind": r["failure_kind"] or "—",
        "hourly": tables.fmt_usd(r["hourly_usd"]), "monthly": tables.fmt_usd(r["monthly_usd"], 2),
        "per_million": tables.fmt_usd(r["usd_per_million_requests"], 3),
        "per_dollar": tables.fmt_num(tables.per_dollar(r, burst), 0),
        "cost_items": {k: tables.fmt_usd(v) if v else "—" for k, v in r["cost_items"].items()},
        **_aws_view(r),
    }


def _aws_view(r: dict[str, Any]) -> dict[str, Any]:
    """The "≈ on AWS" line under each measured figure ('' when the run has no estimate)."""
    def fmt(value: Any, text: str) -> str:
        return "" if value is None else text

    ci = tables.fmt_ci(r)
    sustained = r.get("aws_sustained_capacity_rps")
    survival = r.get("aws_survival_s")
    return {
        "aws_capacity": fmt(r.get("aws_capacity_rps"),
                            f"≈ {tables.fmt_num(r.get('aws_capacity_rps'))}"),
        "aws_ci": f"{ci}" if ci else "",
        "aws_sustained": tables.fmt_num(sustained)
        if sustained is not None and r.get("aws_sustained_measured") else "",
        "aws_p95": fmt(r.get("aws_p95_ms_at_capacity"),
                       f"≈ {tables.fmt_num(r.get('aws_p95_ms_at_capacity'), 0, ' ms')}"),
        "aws_survival": fmt(survival, f"≈ {tables.fmt_num(survival, 0, ' s')}"),
        "aws_per_million": fmt(r.get("aws_usd_per_million_requests"),
                               f"≈ {tables.fmt_usd(r.get('aws_usd_per_million_requests'), 3)}"),
        "aws_per_dollar": fmt(r.get("aws_capacity_per_usd_hour"),
                              f"≈ {tables.fmt_num(r.get('aws_capacity_per_usd_hour'), 0)}"),
    }


def render_html(store: RunStore, summary: dict[str, Any], rows: list[dict[str, Any]],
                damage: list[str] | None = None, burst: bool = False) -> str:
    from experiments.report import plots

    info = store.info
    best = tables.best_value(rows, burst)
    slo_p95 = float((summary.get("slo") or {}).get("p95_ms", 500))
    entries = {v["name"]: v for v in summary["variants"] if v}
    damage = [] if damage is None else damage
    variants = [_variant_view(store, entries[r["variant"]], r, slo_p95, damage) for r in rows]
    created = info.get("created_at")
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["j2"]))
    return env.get_template("report.html.j2").render(
        run_id=summary["run_id"], backend=summary.get("backend"),
        created=dt.datetime.fromtimestamp(created, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        if isinstance(created, (int, float)) else None,
        profile=(info.get("config") or {}).get("profile"),
        emulated=summary.get("backend") == "local", cpu_scale=summary.get("cpu_scale"),
        rows=[_row_view(r, burst) for r in rows], best=best,
        best_basis="burst" if burst else "sustained", burst_lines=tables.burst_lines(rows),
        cpu_bound_lines=tables.cpu_bound_lines(rows), cpu_bound_note=tables.CPU_BOUND_NOTE,
        estimated=any(r.get("aws_capacity_rps") is not None for r in rows)
        and summary.get("backend") != "aws",
        aws_assumptions=tables.aws_assumptions(rows),
        context=tables.run_context(summary, info),
        cost_chart=_b64(plots.cost_capacity_chart(
            rows, best, summary.get("cpu_scale") if summary.get("backend") == "local" else None)),
        cost_items=COST_ITEMS,
        cost_notes=list(dict.fromkeys(n for r in rows for n in r["cost_notes"])),
        variants=variants, run_dir=str(store.dir), git_revision=info.get("git_revision"),
        comparisons=[sentence(c) for c in summary.get("comparisons") or []],
    )


def build_report(run_dir: Path, damage: list[str] | None = None,
                 burst: bool | None = None) -> list[Path]:
    """Rebuild summary.json, summary.md, summary.csv and report.html; returns their paths.

    A damaged file of one variant does not stop the report: the variant is left out (its
    result.json) or shown without charts (its other files), and `damage` gets one sentence
    naming the file.
    """
    damage = [] if damage is None else damage
    store = RunStore.open(Path(run_dir))
    summary = store.write_summary()
    damage.extend(store.damaged.values())
    rows = tables.variant_rows(summary)
    md, csv_path = store.dir / "summary.md", store.dir / "summary.csv"
    html = store.dir / "report.html"
    if burst is None:  # as the run was asked (`run --burst`), else sustained
        burst = bool((store.info.get("config") or {}).get("burst", False))
    atomic_write_text(md, tables.to_markdown(summary, rows, store.info, burst))
    atomic_write_text(csv_path, tables.to_csv(rows))
    atomic_write_text(html, render_html(store, summary, rows, damage, burst))
    return [md, csv_path, store.dir / "summary.json", html]

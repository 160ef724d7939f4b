"""`python -m experiments compare RUN_A RUN_B`: baseline vs contender, variant by variant.

Like esrally's `compare`: two run folders in, one table out with absolute and relative
differences, printed and written as Markdown into the contender's folder so it travels with
the run it judges. A capacity difference is also tested against the runs' own noise (Welch's
t-test on each run's repeated searches, `run --repeat N`), and the comparison warns first when
the two runs were not measured alike (SLO, profile, cpu_scale, backend, app): then a
difference may be the setting's, not the system's. Measured alike, it also warns when the CPU
one request cost moved between the runs: a CPU-bound box's capacity moves with the host's
speed, so that part of a difference is the host's, not the system's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments import stats
from experiments.errors import UserError
from experiments.report.tables import variant_rows
from experiments.results import RunStore, atomic_write_text


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
    Metric("CPU per request", "demand_cpu_ms", "ms", 2, False),
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
    significance: stats.Significance | None = None
    """Capacity only: Welch's t-test of the two runs' repeated searches."""

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
        """'better', 'worse' or '' (unchanged within 1 %, within noise, or not comparable)."""
        pct = self.percent
        if pct is None or abs(pct) < 1:
            return ""
        if self.significance is not None and self.significance.p_value is not None \
                and not self.significance.significant:
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
    runs_a = {v["name"]: _runs(v) for v in summary_a.get("variants") or [] if v}
    runs_b = {v["name"]: _runs(v) for v in summary_b.get("variants") or [] if v}
    for name in names:
        a, b = rows_a.get(name, {}), rows_b.get(name, {})
        for m in METRICS:
            test = None
            if m.key == "capacity_rps" and name in runs_a and name in runs_b:
                test = stats.welch(runs_a[name], runs_b[name])
            out.append(Diff(name, m, a.get(m.key), b.get(m.key), test))
    return out


def _runs(entry: dict[str, Any]) -> list[float]:
    """A variant's capacity searches (one, the capacity itself, for runs without --repeat)."""
    runs = entry.get("capacity_runs")
    if isinstance(runs, list) and runs and all(isinstance(r, (int, float)) for r in runs):
        return [float(r) for r in runs]
    return [float(entry["capacity_rps"])]


ALIKE = [
    ("SLO", lambda s, i: s.get("slo")),
    ("profile", lambda s, i: _config(i).get("profile")),
    ("cpu_scale", lambda s, i: s.get("cpu_scale")),
    ("backend", lambda s, i: s.get("backend")),
    ("app", lambda s, i: (_config(i).get("app_overrides") or {}, _locustfile(_config(i)))),
]
"""What must match for a difference to be the system's: (label, getter(summary, run.json))."""


def _locustfile(config: dict[str, Any]) -> str | None:
    """The load's identity: its content's sha256 — two clones of the project run the same
    locustfile from different paths — or, for runs that did not record it, its path."""
    digest = config.get("locustfile_sha256")
    return f"sha256 {digest[:12]}" if isinstance(digest, str) else config.get("locustfile")


def _config(info: dict[str, Any]) -> dict[str, Any]:
    config = info.get("config")
    return config if isinstance(config, dict) else {}


def _shown(value: Any) -> str:
    if isinstance(value, dict) and "p95_ms" in value:
        return f"p95 ≤ {value['p95_ms']:g} ms"
    if isinstance(value, tuple):
        overrides, locustfile = value
        return f"{overrides.get('wsgi', 'the shop')} with locustfile {locustfile}"
    return "unset" if value is None else str(value)


def warnings(dir_a: Path, dir_b: Path, summary_a: dict[str, Any], info_a: dict[str, Any],
             summary_b: dict[str, Any], info_b: dict[str, Any]) -> list[str]:
    """Sentences saying why the two runs may not be comparable (empty when they are)."""
    out = []
    if dir_a.resolve() == dir_b.resolve():
        out.append(f"{dir_a} is compared with itself: every difference is 0.")
    unlike = False
    for label, get in ALIKE:
        a, b = get(summary_a, info_a), get(summary_b, info_b)
        if a != b:
            unlike = True
            out.append(f"the runs differ in {label} (baseline {_shown(a)}, contender "
                       f"{_shown(b)}): differences may come from that, not from the system.")
    return out if unlike else out + host_speed_notes(summary_a, summary_b)


HOST_SPEED_TOLERANCE = 0.10
"""Two runs of the same app and settings whose CPU per request at capacity differs by more than
this ran on a host of a different speed: the shop mix's own sampling moves a hold's demand by
~5 % (a 4.5 s step at 45 req/s on micro: CV 4.8 %, fixed work on the host CV 6.1 %, measured),
while this 2-vCPU VM's CPU per request moved 27 % between searches minutes apart (micro
5.9 vs 7.4-7.7 ms, every search at 94-100 % of its CPU bound)."""
KNEE_SHARE = 90.0
"""At or above this share of its CPU bound a box ended at its CPU knee."""


def host_speed_notes(summary_a: dict[str, Any], summary_b: dict[str, Any]) -> list[str]:
    """Per variant in both runs: a sentence when the CPU one request cost moved by more than
    `HOST_SPEED_TOLERANCE` (runs measured alike: same app, SLO, profile, cpu_scale, backend).

    Why: a CPU-bound box serves about (CPU limit / CPU per request), so on a host whose speed
    drifts the capacity drifts with it; when both runs ended at their CPU knee, the capacity
    difference is the CPU each request cost, not the system."""
    rows_b = {r["variant"]: r for r in variant_rows(summary_b)}
    out = []
    for a in variant_rows(summary_a):
        b = rows_b.get(a["variant"])
        if b is None or not a["demand_cpu_ms"] or not b["demand_cpu_ms"]:
            continue
        moved = b["demand_cpu_ms"] / a["demand_cpu_ms"] - 1
        if abs(moved) <= HOST_SPEED_TOLERANCE:
            continue
        sentence = (f"{a['variant']}: a request cost {100 * moved:+.0f} % CPU in the contender "
                    f"({a['demand_cpu_ms']:.2g} → {b['demand_cpu_ms']:.2g} ms) with the same "
                    f"app: the host ran {'slower' if moved > 0 else 'faster'}, and a "
                    "CPU-bound box's capacity moves with that")
        shares = (a["capacity_pct_of_cpu_bound"], b["capacity_pct_of_cpu_bound"])
        if all(s is not None and s >= KNEE_SHARE for s in shares):
            sentence += (f"; both runs ended at the box's CPU knee ({shares[0]:.0f} and "
                         f"{shares[1]:.0f} % of the CPU bound), so their capacity difference is "
                         "the CPU per request, not the system")
        out.append(sentence + ".")
    return out


def _significance(d: Diff) -> str:
    return d.significance.sentence if d.significance is not None else ""


def to_markdown(run_a: str, run_b: str, all_diffs: list[Diff],
                notes: list[str] | None = None) -> str:
    lines = [f"# {run_b} compared with {run_a}", "",
             f"Baseline: `{run_a}`. Contender: `{run_b}`. Differences are contender − baseline.",
             ""]
    lines += [f"> **Warning:** {n}" for n in notes or []] + ([""] if notes else [])
    lines += ["| variant | metric | baseline | contender | diff | diff % | | significance |",
              "|---|---|---:|---:|---:|---:|---|---|"]
    for d in all_diffs:
        lines.append(f"| {d.variant} | {d.metric.label} | {_fmt(d.baseline, d.metric)} | "
                     f"{_fmt(d.contender, d.metric)} | {_fmt(d.absolute, d.metric, True)} | "
                     f"{_pct(d.percent)} | {d.verdict} | {_significance(d)} |")
    return "\n".join(lines) + "\n"


def _print(run_a: str, run_b: str, all_diffs: list[Diff], notes: list[str]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    style: dict[str, Callable[[str], str]] = {
        "better": lambda s: f"[green]{s}[/green]", "worse": lambda s: f"[red]{s}[/red]",
        "": lambda s: s}
    table = Table(title=f"baseline {run_a}  vs  contender {run_b}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    tested = any(d.significance is not None and d.significance.p_value is not None
                 for d in all_diffs)
    columns = ["variant", "metric", "baseline", "contender", "diff", "diff %"]
    for col in columns + (["significance"] if tested else []):
        table.add_column(col, justify="left" if col in ("variant", "metric") else "right",
                         no_wrap=True)
    previous = None
    for d in all_diffs:
        paint = style[d.verdict]
        cells = [d.variant if d.variant != previous else "", d.metric.label,
                 _fmt(d.baseline, d.metric), _fmt(d.contender, d.metric),
                 paint(_fmt(d.absolute, d.metric, True)), paint(_pct(d.percent))]
        table.add_row(*cells, *([_significance(d)] if tested else []),
                      end_section=d.metric is METRICS[-1])
        previous = d.variant
    console = Console()
    for note in notes:
        console.print(f"[yellow]warning: {note}[/yellow]", highlight=False)
    console.print(table)
    if not tested:
        console.print("Capacity differences are not tested for significance: that needs "
                      "several searches per variant in both runs (run --repeat 3).",
                      highlight=False)


def compare_command(run_a: Path, run_b: Path) -> int:
    """Print baseline (A) vs contender (B) per variant; write compare-<a>-vs-<b>.md into B."""
    store_a, store_b = RunStore.open(Path(run_a)), RunStore.open(Path(run_b))
    summary_a, summary_b = store_a.summary(), store_b.summary()
    damaged = [*store_a.damaged.values(), *store_b.damaged.values()]
    if not summary_a["variants"] and not summary_b["variants"]:
        raise UserError(f"neither {run_a} nor {run_b} has a finished variant to compare; "
                        "pass run folders whose variants completed.")
    id_a, id_b = str(summary_a["run_id"]), str(summary_b["run_id"])
    notes = warnings(Path(run_a), Path(run_b), summary_a, store_a.info, summary_b,
                     store_b.info) + [f"{d} It is left out of the comparison." for d in damaged]
    all_diffs = diffs(summary_a, summary_b)
    _print(id_a, id_b, all_diffs, notes)
    out = Path(run_b) / f"compare-{id_a}-vs-{id_b}.md"
    atomic_write_text(out, to_markdown(id_a, id_b, all_diffs, notes))
    print(f"Written: {out}")
    return 0

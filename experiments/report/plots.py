"""The report's charts as PNG bytes (matplotlib, Agg: no display, no network, same on CI).

Each function takes plain records and returns PNG bytes, so the HTML can inline them as
base64 and the page opens offline.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from experiments.model import SignalSample, StepResult  # noqa: E402

MIB = 1024 * 1024
INK = "#1f2933"
GRID = "#e4e7eb"
PASS, FAIL, ACCENT, SLO_RED = "#2f9e44", "#e03131", "#1c7ed6", "#c92a2a"
INSTANCE_COLORS = ["#1c7ed6", "#f08c00", "#7048e8", "#0ca678", "#d6336c", "#495057"]
VARIANT_COLORS = {"micro": "#e8590c", "micro-swap": "#f59f00", "scale-up": "#1c7ed6",
                  "scale-out": "#2f9e44"}

plt.rcParams.update({
    "font.size": 9.5, "axes.edgecolor": "#9aa5b1", "axes.labelcolor": INK,
    "axes.titleweight": "bold", "axes.titlesize": 10.5, "axes.grid": True,
    "grid.color": GRID, "grid.linewidth": 0.8, "axes.spines.top": False,
    "axes.spines.right": False, "xtick.color": "#52606d", "ytick.color": "#52606d",
    "legend.frameon": False, "legend.fontsize": 8.5, "figure.dpi": 100,
})


def variant_color(name: str, index: int = 0) -> str:
    return VARIANT_COLORS.get(name, INSTANCE_COLORS[index % len(INSTANCE_COLORS)])


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _ms_label(value: float, _pos: int) -> str:
    if value >= 1000:
        return f"{value / 1000:g} s"
    return f"{value:g}"


def rate_chart(name: str, steps: Sequence[StepResult], slo_p95_ms: float,
               capacity_rps: float | None,
               capacity_ci95: tuple[float, float] | None = None) -> bytes:
    """Achieved rate and p95 against offered rate: where the box stops keeping up. With
    `run --repeat`, the capacity's 95 % interval is a band around its line."""
    return png(rate_figure(name, steps, slo_p95_ms, capacity_rps, capacity_ci95))


def rate_figure(name: str, steps: Sequence[StepResult], slo_p95_ms: float,
                capacity_rps: float | None,
                capacity_ci95: tuple[float, float] | None = None) -> Figure:
    """rate_chart's figure (tests inspect what it draws)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.5, 3.4))
    ordered = sorted(steps, key=lambda s: s.offered_rps)
    offered = [s.offered_rps for s in ordered]
    colors = [PASS if s.passed else FAIL for s in ordered]
    top = max(offered + [s.achieved_rps for s in ordered] + [1.0]
              + ([capacity_ci95[1]] if capacity_ci95 else [])) * 1.08
    ax1.plot([0, top], [0, top], ls=":", color="#9aa5b1", lw=1, label="achieved = offered")
    ax1.plot(offered, [s.achieved_rps for s in ordered], color=INK, lw=1.2, alpha=0.6)
    ax1.scatter(offered, [s.achieved_rps for s in ordered], c=colors, s=34, zorder=3)
    ax1.set(xlim=(0, top), ylim=(0, top), xlabel="offered (requests/s)",
            ylabel="achieved (requests/s)", title=f"{name}: throughput")
    ax2.plot(offered, [s.p95_ms for s in ordered], color=INK, lw=1.2, alpha=0.6)
    ax2.scatter(offered, [s.p95_ms for s in ordered], c=colors, s=34, zorder=3)
    ax2.plot([], [], color=INK, alpha=0.6, marker="o", ms=5, label="p95")
    ax2.plot(offered, [s.p50_ms for s in ordered], color="#9aa5b1", lw=1, ls="--", label="p50")
    ax2.axhline(slo_p95_ms, color=SLO_RED, lw=1.3, ls="--", label=f"SLO p95 {slo_p95_ms:g} ms")
    ax2.set_yscale("log")
    ax2.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax2.yaxis.set_major_formatter(FuncFormatter(_ms_label))
    ax2.yaxis.set_minor_formatter(NullFormatter())
    highest = max([s.p95_ms for s in ordered] + [slo_p95_ms])
    lowest = min([s.p50_ms for s in ordered if s.p50_ms > 0] + [slo_p95_ms])
    ax2.set_ylim(lowest / 1.6, highest * 4)  # headroom above for the legend
    ax2.set(xlim=(0, top), xlabel="offered (requests/s)", ylabel="latency (ms, log scale)",
            title=f"{name}: latency")
    for ax in (ax1, ax2):
        if capacity_rps:
            ax.axvline(capacity_rps, color=ACCENT, lw=1.2, alpha=0.8)
        if capacity_ci95:
            ax.axvspan(*capacity_ci95, color=ACCENT, alpha=0.15, lw=0)
    if capacity_ci95:
        ax1.fill_between([], [], color=ACCENT, alpha=0.15,
                         label=f"capacity 95 % interval {capacity_ci95[0]:.1f}–"
                               f"{capacity_ci95[1]:.1f}")
    ax1.scatter([], [], c=PASS, s=30, label="step passed")
    ax1.scatter([], [], c=FAIL, s=30, label="step failed")
    if capacity_rps:
        ax1.text(capacity_rps, 0.03, f" capacity {capacity_rps:.1f}", color=ACCENT, fontsize=8.5,
                 transform=ax1.get_xaxis_transform())
    ax1.legend(loc="upper left")
    ax2.legend(loc="upper left", ncol=3)
    fig.tight_layout()
    return fig


def timeline_chart(name: str, signals: Sequence[SignalSample], failure_at: float | None,
                   phases: Sequence[tuple[str, float, float]] = ()) -> bytes:
    """Memory, swap, CPU (used vs limit) and credit balance per instance, failure marked."""
    instances = sorted({s.instance for s in signals})
    has_credits = any(s.credit_balance is not None for s in signals)
    rows = 4 if has_credits else 3
    fig, axes = plt.subplots(rows, 1, figsize=(10.5, 1.75 * rows + 0.6), sharex=True)
    t0 = min((s.t for s in signals), default=0.0)
    for i, inst in enumerate(instances):
        color = INSTANCE_COLORS[i % len(INSTANCE_COLORS)]
        own = sorted((s for s in signals if s.instance == inst), key=lambda s: s.t)
        x = [s.t - t0 for s in own]

        def series(attr: str, scale: float = 1.0, rows: list[Any] = own) -> list[float]:
            return [float("nan") if getattr(s, attr) is None else getattr(s, attr) / scale
                    for s in rows]

        axes[0].plot(x, series("memory_bytes", MIB), color=color, lw=1.4, label=inst)
        if i == 0:
            axes[0].plot(x, series("memory_limit_bytes", MIB), color=color, lw=1, ls="--",
                         label="limit")
        axes[1].plot(x, series("swap_bytes", MIB), color=color, lw=1.4)
        axes[2].plot(x, series("cpu_used_cores"), color=color, lw=1.4)
        axes[2].plot(x, series("cpu_limit_cores"), color=color, lw=1, ls="--")
        if has_credits:
            axes[3].plot(x, series("credit_balance"), color=color, lw=1.4)
            surplus = series("surplus_credits")
            if any(v == v for v in surplus):  # any non-NaN
                axes[3].plot(x, surplus, color=color, lw=1, ls=":")
    titles = ["memory (MiB, dashed: cgroup limit)", "swap used (MiB)",
              "CPU (cores; solid used, dashed limit)", "CPU credits (solid balance, "
              "dotted surplus spent)"]
    for ax, title in zip(axes, titles, strict=False):
        ax.set_title(title, loc="left", fontsize=9.5, fontweight="normal", color="#52606d")
        ax.set_ylim(bottom=0)
        for label, start, end in phases:
            if label == "survival":
                ax.axvspan(start - t0, end - t0, color="#fff4e6", zorder=0)
        if failure_at is not None:
            ax.axvline(failure_at - t0, color=SLO_RED, lw=1.6)
    for label, start, _end in phases:
        axes[0].text(start - t0, 0.06, f" {label}", transform=axes[0].get_xaxis_transform(),
                     fontsize=8.5, color="#9c5b00" if label == "survival" else "#52606d")
    if failure_at is not None:
        axes[0].text(failure_at - t0, 0.45, "failure ", color=SLO_RED, ha="right",
                     transform=axes[0].get_xaxis_transform(), fontsize=9, fontweight="bold",
                     bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    if not any(s.swap_bytes for s in signals):
        axes[1].set_ylim(0, 1)
        axes[1].set_yticks([0])
        axes[1].text(0.5, 0.5, "no swap", transform=axes[1].transAxes, ha="center",
                     va="center", color="#9aa5b1", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), bbox_to_anchor=(1.0, 1.01))
    axes[-1].set_xlabel("seconds since the first sample")
    fig.suptitle(f"{name}: resources per instance", x=0.01, ha="left", fontweight="bold",
                 fontsize=10.5, y=1.0)
    fig.tight_layout()
    return png(fig)


def cost_capacity_chart(rows: Sequence[dict[str, Any]], best: str | None,
                        cpu_scale: float | None = None) -> bytes:
    """Capacity against dollars per hour; lines of equal capacity-per-dollar show value.

    With a cpu_scale (local runs) a right-hand axis reads the same points as AWS-equivalent
    capacity (× 1/cpu_scale, experiments/estimate.py), so the chart needs no second set of dots.
    With `run --repeat`, each capacity has an error bar: its 95 % interval.
    """
    return png(cost_capacity_figure(rows, best, cpu_scale))


def cost_capacity_figure(rows: Sequence[dict[str, Any]], best: str | None,
                         cpu_scale: float | None = None) -> Figure:
    """cost_capacity_chart's figure (tests inspect what it draws)."""
    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    points = [r for r in rows if r.get("hourly_usd") and r.get("capacity_rps") is not None]
    xmax = max([r["hourly_usd"] for r in points] + [0.01]) * 1.3
    ymax = max([r["capacity_rps"] for r in points]
               + [r.get("capacity_ci95_high") or 0.0 for r in points] + [1.0]) * 1.3
    if best:
        b = next(r for r in points if r["variant"] == best)
        slope = b["capacity_rps"] / b["hourly_usd"]
        ax.plot([0, xmax], [0, slope * xmax], color=PASS, lw=1, ls="--", alpha=0.7)
        x_text = min(xmax * 0.97, ymax * 0.9 / slope)
        ax.text(x_text, slope * x_text, f"{slope:,.0f} req/s per $/h  ", color=PASS,
                ha="right", va="bottom", fontsize=8.5, rotation=0)
    for i, r in enumerate(points):
        is_best = r["variant"] == best
        crowded = [o for o in points if o is not r
                   and abs(o["hourly_usd"] - r["hourly_usd"]) < 0.06 * xmax
                   and abs(o["capacity_rps"] - r["capacity_rps"]) < 0.12 * ymax]
        below = any(o["capacity_rps"] > r["capacity_rps"] for o in crowded)
        low, high = r.get("capacity_ci95_low"), r.get("capacity_ci95_high")
        if low is not None and high is not None and low <= r["capacity_rps"] <= high:
            ax.errorbar(r["hourly_usd"], r["capacity_rps"], capsize=4, lw=1.2, zorder=2,
                        yerr=[[r["capacity_rps"] - low], [high - r["capacity_rps"]]],
                        color=variant_color(r["variant"], i), alpha=0.8)
        ax.scatter(r["hourly_usd"], r["capacity_rps"], s=260 if is_best else 90,
                   marker="*" if is_best else "o", color=variant_color(r["variant"], i),
                   edgecolor=INK if is_best else "white", linewidth=1.2, zorder=3)
        label = f"{r['variant']}\n{r['capacity_rps']:.1f} req/s · ${r['hourly_usd']:.4f}/h"
        ax.annotate(label, (r["hourly_usd"], r["capacity_rps"]), textcoords="offset points",
                    xytext=(10, -6 if below else 6), fontsize=8.5,
                    va="top" if below else "bottom",
                    fontweight="bold" if is_best else "normal")
    ax.set(xlim=(0, xmax), ylim=(0, ymax), xlabel="cost (USD per hour)",
           ylabel="capacity (requests/s)", title="What each dollar buys")
    if cpu_scale and cpu_scale > 0:
        scale = float(cpu_scale)

        def to_aws(y: Any) -> Any:
            return np.asarray(y, dtype=float) / scale

        def to_local(y: Any) -> Any:
            return np.asarray(y, dtype=float) * scale

        aws = ax.secondary_yaxis("right", functions=(to_aws, to_local))
        aws.set_ylabel("≈ AWS-equivalent capacity (requests/s)", color=ACCENT)
        aws.tick_params(colors=ACCENT)
    if best:
        ax.text(0.01, 0.98, f"★ most capacity per dollar: {best}", transform=ax.transAxes,
                va="top", color=PASS, fontweight="bold")
    fig.tight_layout()
    return fig

"""AWS-equivalent estimates of locally measured figures (pure functions, no I/O but /proc/cpuinfo).

A local run at cpu_scale s gives each emulated vCPU s host cores, so the emulated box is the
AWS box in slow motion by d = 1/s: a request that needs c CPU-seconds on AWS needs c/s seconds
here. Hence, for the CPU-bound part of the work,

    capacity on AWS   ≈ local capacity × 1/s       (req/s; the interval scales the same way)
    latency on AWS    ≈ local latency  × s         (ms)
    survival on AWS   ≈ local survival × s         (seconds until it failed)

Money follows capacity: the hourly price does not change, so $ per million requests shrinks by s
and req/s per $/hour grows by 1/s. What is *not* dilated makes the estimate wrong in a known
direction, so the assumptions travel with every estimate (and are printed next to it):

- a host core ≈ one vCPU of the instance's family (the host CPU model is printed: a faster host
  core than the AWS vCPU makes every estimate optimistic, a slower one pessimistic);
- loopback has no network latency: on AWS every request also pays the client↔VPC round trip,
  so AWS latencies are higher by that round trip (capacity is unaffected while CPU-bound);
- disk I/O (swap) is not dilated: a variant limited by swap is slowed less than its CPU here,
  so its estimate is optimistic;
- burstable credits: the figures are the ones measured (burst or sustained, as labelled).

The runner's store stage and the report both call `variant_estimate`, so summary.json and the
report cannot disagree.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

ESTIMATE_VERSION = 1

ASSUMPTIONS = (
    "a host core ≈ one vCPU of the instance's family (host CPU: {host_cpu})",
    "loopback has no network latency: AWS latencies add the client↔instance round trip",
    "disk I/O (swap) is not dilated: a swap-bound variant's estimate is optimistic",
)


@cache
def host_cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The host CPU's model name (first processor), or 'unknown' where /proc says nothing."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model", "Hardware") and value.strip():
            return " ".join(value.split())
    return "unknown"


def assumptions(host_cpu: str | None = None) -> list[str]:
    """The stated assumptions, with the host CPU model filled in."""
    cpu = host_cpu or host_cpu_model()
    return [a.format(host_cpu=cpu) for a in ASSUMPTIONS]


def _scaled(value: Any, factor: float, digits: int) -> float | None:
    if value is None:
        return None
    try:
        return round(float(value) * factor, digits)
    except (TypeError, ValueError):
        return None


def _interval(value: Any, factor: float) -> list[float] | None:
    """A [low, high] pair (or {"low", "high"}) scaled by factor; None if it is not such a pair."""
    if isinstance(value, dict):
        value = [value.get("low", value.get("lo")), value.get("high", value.get("hi"))]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    low, high = (_scaled(v, factor, 2) for v in value)
    return None if low is None or high is None else [low, high]


def variant_estimate(entry: dict[str, Any], cpu_scale: float | None, backend: str = "local",
                     host_cpu: str | None = None) -> dict[str, Any] | None:
    """The `aws_estimate` object of one summary entry; None when there is nothing to scale.

    On the AWS backend the figures are already AWS figures (factor 1, basis "measured on AWS").
    """
    if not entry:
        return None
    if backend == "aws":
        scale = 1.0
    elif not cpu_scale or cpu_scale <= 0:
        return None
    else:
        scale = float(cpu_scale)
    speedup = 1.0 / scale
    capacity = _scaled(entry.get("capacity_rps"), speedup, 2)
    sustained_raw = entry.get("sustained_capacity_rps", entry.get("capacity_rps"))
    sustained = _scaled(sustained_raw, speedup, 2)
    survival = entry.get("survival") or {}
    cost = entry.get("cost") or {}
    hourly = cost.get("hourly_usd")

    def per_million(rps: float | None) -> float | None:
        if not rps or not hourly:
            return None
        return round(float(hourly) / (rps * 3600) * 1e6, 6)

    def per_dollar(rps: float | None) -> float | None:
        if not rps or not hourly:
            return None
        return round(rps / float(hourly), 2)

    estimate: dict[str, Any] = {
        "version": ESTIMATE_VERSION,
        "basis": "measured on AWS" if backend == "aws" else "scaled from the local run",
        "cpu_scale": round(scale, 4),
        "time_factor": round(scale, 4),
        "capacity_factor": round(speedup, 4),
        "capacity_rps": capacity,
        "capacity_ci95": _interval(entry.get("capacity_ci95"), speedup),
        "sustained_capacity_rps": sustained,
        "sustained_measured": "sustained_capacity_rps" in entry,
        "p95_ms_at_capacity": _scaled(entry.get("p95_ms_at_capacity"), scale, 1),
        "survival_seconds": _scaled(survival.get("seconds"), scale, 1),
        "survival_held": survival.get("held"),
        "usd_per_million_requests": per_million(capacity),
        "capacity_per_usd_hour": per_dollar(capacity),
        "sustained_usd_per_million_requests": per_million(sustained),
        "sustained_capacity_per_usd_hour": per_dollar(sustained),
        "assumptions": [] if backend == "aws" else assumptions(host_cpu),
    }
    return estimate


def with_estimates(summary: dict[str, Any], host_cpu: str | None = None) -> dict[str, Any]:
    """A copy of summary.json with an `aws_estimate` object added to every variant entry.

    Measured figures keep their keys and values; only `aws_estimate` (and the run-level
    `host_cpu`) are added.
    """
    backend = str(summary.get("backend") or "local")
    cpu_scale = summary.get("cpu_scale")
    cpu = host_cpu or summary.get("host_cpu") or host_cpu_model()
    variants = []
    for entry in summary.get("variants") or []:
        if entry:
            entry = {**entry, "aws_estimate": variant_estimate(entry, cpu_scale, backend, cpu)}
        variants.append(entry)
    return {**summary, "host_cpu": cpu, "variants": variants}

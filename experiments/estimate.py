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

One thing the scaling cannot fix is a host with no CPU left: the instances, HAProxy, the load
generator and the kernel's loopback share it. When the step that bounded a capacity search ran
on a saturated host while the instances were below their quota, `host_bound` says so, the
estimate carries `host_saturated: true` and the sentence in `warnings`: a lower bound, not an
AWS figure.

The runner's store stage and the report both call `variant_estimate`, so summary.json and the
report cannot disagree.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

ESTIMATE_VERSION = 2
"""2: `host_saturated` and `warnings` (the host, not the box, bounded the capacity)."""

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


HOST_SATURATED = 0.95
"""Share of the host's CPU busy during a step's hold at which the host had no headroom left."""
BOX_AT_LIMIT = 0.9
"""Instances using at least this share of their CPU quota were limited by their own box."""


def host_bound(entry: dict[str, Any], cpu_scale: float | None) -> str | None:
    """A sentence when the step that bounded this variant's capacity search ran on a saturated
    host while the emulated box was below its own CPU quota; else None.

    Locally the emulated instances, HAProxy, the load generator and the kernel's loopback share
    one host. When the host runs out of CPU first, the step fails because the box was starved,
    not because the box was full: the capacity (and its AWS estimate) is then a lower bound
    set by the host. Measured (bench_dilation_stability, cpu_scale 0.66, 2-core host): the
    scale-up's failing steps at 180 and 190 req/s ran with the host 100 % busy while its
    instances got 1.04 of their 1.32 cores. Steps without `host_busy` (older runs, AWS) are
    not judged."""
    capacity = entry.get("capacity_rps")
    steps = [s for s in entry.get("steps") or [] if isinstance(s, dict)]
    if capacity is None or not steps:
        return None
    above = [s for s in steps if s.get("passed") is False
             and float(s.get("offered_rps") or 0) > float(capacity)]
    if not above:
        return None
    bound = min(above, key=lambda s: float(s.get("offered_rps") or 0))
    busy = bound.get("host_busy")
    if busy is None or float(busy) < HOST_SATURATED:
        return None
    quota = None
    if cpu_scale and entry.get("vcpu"):
        quota = float(entry["vcpu"]) * int(entry.get("count") or 1) * float(cpu_scale)
    duration = float(bound.get("duration_s") or 0)
    used = (float(bound["server_cpu_s"]) / duration
            if bound.get("server_cpu_s") is not None and duration > 0 else None)
    if quota and used is not None and used >= BOX_AT_LIMIT * quota:
        return None  # the box was at its own limit too: its failure is its own
    got = (f"; the instances got {used:.2f} of their {quota:.2f} cores"
           if quota and used is not None else "")
    return (f"the step that bounded the capacity ({float(bound['offered_rps']):g} req/s) ran "
            f"on a saturated host ({float(busy):.0%} of its CPU busy{got}): the capacity is the "
            "host's limit, a lower bound for the emulated box; measure with nothing else on "
            "the host or at a lower --cpu-scale")


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
    bounded_by_host = None if backend == "aws" else host_bound(entry, scale)
    estimate["host_saturated"] = bounded_by_host is not None
    estimate["warnings"] = [f"{entry.get('name', 'this variant')}: {bounded_by_host}"
                            ] if bounded_by_host else []
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

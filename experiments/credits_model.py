"""Burst vs sustained: how long a burstable instance's CPU credits last at a measured load.

AWS's rules (EC2 user guide, "Key concepts for burstable performance instances"): one CPU
credit is one vCPU at 100 % for one minute; an instance earns `credits_per_hour` and spends
credits at the rate its vCPUs are busy; the earned balance caps at `max_credits` (24 h of
earnings); T2 standard instances also start with launch credits. In standard mode an empty
balance holds the CPU at the baseline (`credits_per_hour / 60` vCPUs); in unlimited mode the
CPU is never held back and what is spent beyond the earnings is billed as surplus credits.

So at a steady use of `u` vCPUs (per instance) above the baseline `b`, a balance of `B`
credits lasts `B / (u − b)` minutes — the *runway* — after which a standard-mode instance
serves only its sustained capacity. Below the baseline the balance never runs out. All
figures here are per instance, in AWS (emulated) minutes: the local backend's credit clock
already runs on the emulated clock, so a measured vCPU fraction means the same thing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from experiments.model import SignalSample, StepResult
from stacks.catalog import InstanceType


def runway_minutes(balance: float, used_vcpus: float, credits_per_hour: float) -> float | None:
    """Minutes `balance` credits last while `used_vcpus` are busy; None = never runs out."""
    if balance < 0 or used_vcpus < 0 or credits_per_hour < 0:
        raise ValueError(f"balance, use and earn rate must be >= 0, got {balance}, "
                         f"{used_vcpus}, {credits_per_hour}")
    net_per_minute = used_vcpus - credits_per_hour / 60.0
    if net_per_minute <= 1e-12:
        return None
    return balance / net_per_minute


def surplus_credits_per_hour(used_vcpus: float, credits_per_hour: float) -> float:
    """Unlimited mode, balance spent: credits billed per hour at a steady `used_vcpus`."""
    return max(0.0, used_vcpus * 60.0 - credits_per_hour)


def estimated_sustained_rps(burst_rps: float, used_vcpus: float,
                            baseline_vcpus: float) -> float:
    """Capacity at the baseline when it cannot be measured (AWS: credits cannot be forced to
    zero): a CPU-bound service's throughput scales with the CPU it may use (utilization law),
    so burst × baseline / CPU used at the burst capacity, never more than the burst."""
    if used_vcpus <= 0:
        return burst_rps
    return burst_rps * min(1.0, baseline_vcpus / used_vcpus)


@dataclass(frozen=True)
class CreditRunway:
    """One burstable variant's credit picture at its (burst) capacity, per instance."""

    instance_type: str
    mode: str
    used_vcpus: float
    """Mean vCPUs busy per instance during the step at capacity (emulated vCPUs locally)."""
    baseline_vcpus: float
    credits_per_hour: float
    max_credits: float
    launch_credits: float
    full_minutes: float | None
    """How long a full balance (max_credits) lasts at `used_vcpus`; None = never runs out or
    not applicable (unlimited mode never throttles)."""
    launch_minutes: float | None
    """How long the launch credits alone last (T2 standard only; None otherwise)."""
    surplus_credits_per_hour: float
    """Unlimited mode: credits billed per hour per instance once the balance is spent."""
    never_runs_out: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in asdict(self).items()}

    def describe(self, burst_rps: float, sustained_rps: float | None) -> str:
        """`22.0 req/s for 31 min (launch credits; 180 min on a full balance), then 2.3 req/s`."""
        if self.mode == "unlimited":
            return (f"{burst_rps:.1f} req/s sustained (unlimited mode; "
                    f"{self.surplus_credits_per_hour:.0f} surplus credits/h per instance)")
        if self.never_runs_out or self.full_minutes is None:
            return f"{burst_rps:.1f} req/s sustained (CPU at capacity is within the baseline)"
        then = "?" if sustained_rps is None else f"{sustained_rps:.1f}"
        if self.launch_minutes:
            span = (f"{self.launch_minutes:.0f} min (launch credits; "
                    f"{self.full_minutes:.0f} min on a full balance)")
        else:
            span = f"{self.full_minutes:.0f} min (full balance)"
        return f"{burst_rps:.1f} req/s for {span}, then {then} req/s"


def credit_runway(it: InstanceType, mode: str, used_vcpus: float) -> CreditRunway | None:
    """The runway of `it` in credit `mode` at `used_vcpus` per instance; None if not burstable."""
    if not it.burstable or it.credits_per_hour is None or it.max_credits is None:
        return None
    used = max(0.0, min(float(it.vcpu), used_vcpus))
    baseline = it.baseline_per_vcpu * it.vcpu
    earn = it.credits_per_hour
    never = used <= baseline + 1e-12
    if mode == "unlimited":
        return CreditRunway(it.name, mode, used, baseline, earn, it.max_credits, 0.0,
                            None, None, surplus_credits_per_hour(used, earn), never)
    launch = it.launch_credits
    return CreditRunway(
        it.name, mode, used, baseline, earn, it.max_credits, launch,
        full_minutes=runway_minutes(it.max_credits, used, earn),
        launch_minutes=runway_minutes(launch, used, earn) if launch > 0 else None,
        surplus_credits_per_hour=0.0, never_runs_out=never)


def vcpus_used_during(step: StepResult, signals: list[SignalSample],
                      cpu_scale: float | None) -> float | None:
    """Mean vCPUs busy per instance during `step`'s hold, from the backend's samples.

    Host cores / cpu_scale = emulated vCPUs (locally); cpu_scale None = already vCPUs (AWS).
    None when no sample falls inside the hold.
    """
    lo, hi = step.started_at, step.ended_at or (step.started_at + step.duration_s)
    inside = [s.cpu_used_cores for s in signals
              if s.cpu_used_cores is not None and lo < s.t <= hi + 0.5]
    if not inside:
        return None
    per_instance = sum(inside) / len(inside)  # one sample per instance per second
    return per_instance / (cpu_scale if cpu_scale else 1.0)


@dataclass
class Sustained:
    """The capacity once the credits are gone (standard mode), and where the figure came from."""

    capacity_rps: float
    source: str
    """"measured" (a search with the balance emptied) or "estimated" (burst × baseline ÷ CPU)."""
    used_vcpus_at_burst: float | None
    steps: list[StepResult]
    verdict: str = ""
    derived_rps: float | None = None
    """The utilization law's figure (burst × baseline ÷ CPU used at capacity), kept beside a
    measured one: how far a derived sustained capacity would be from the measured."""


def burst_summary(it: InstanceType, mode: str, count: int, burst_rps: float,
                  used_vcpus: float | None, sustained: Sustained | None) -> dict[str, Any]:
    """summary.json's burst-vs-sustained keys for one variant.

    `sustained_capacity_rps` equals `capacity_rps` where credits never throttle (fixed
    performance, unlimited mode, or CPU at capacity within the baseline);
    `credit_runway_minutes` is how long a full balance lasts at the CPU measured at capacity
    (None where not applicable); `credit_runway` has the launch-credit figure and the rest.
    """
    runway = credit_runway(it, mode, used_vcpus) if used_vcpus is not None else None
    if sustained is not None and mode == "standard" and not (runway and runway.never_runs_out):
        sustained_rps, source = sustained.capacity_rps, sustained.source
    elif it.burstable and mode == "standard" and runway is None:
        sustained_rps, source = None, "unknown (no CPU samples at capacity)"
    else:
        sustained_rps = burst_rps
        source = ("no credits (fixed performance)" if not it.burstable else
                  "unlimited mode never throttles" if mode == "unlimited" else
                  "CPU at capacity within the baseline")
    out: dict[str, Any] = {
        "sustained_capacity_rps": None if sustained_rps is None else round(sustained_rps, 2),
        "sustained_source": source,
        "sustained_derived_rps": sustained.derived_rps if sustained is not None else None,
        "credit_runway_minutes": (None if runway is None or runway.full_minutes is None
                                  else round(runway.full_minutes, 1)),
        "credit_runway": None,
    }
    if runway is not None:
        out["credit_runway"] = {**runway.to_dict(), "instances": count,
                                "text": runway.describe(burst_rps, sustained_rps)}
    return out

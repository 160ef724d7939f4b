"""A burstable instance's CPU credit bucket, in emulated vCPU units.

AWS rules (EC2 user guide, burstable performance): one credit = one vCPU at 100 % for one
minute; credits are earned at a fixed hourly rate and spent at the rate the vCPUs are used;
the earned balance caps at 24 h of earnings; T2 launch credits are a separate pool spent first
and not counted against the cap. Standard mode holds the CPU at the baseline when the balance
is empty; unlimited mode never throttles and counts the credits spent beyond the balance
(surplus, billed). The bucket only does arithmetic; the sampler feeds it measured usage and
applies the quota it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from experiments.errors import UserError
from stacks.catalog import CreditMode, InstanceType

CreditStart = Literal["launch", "exhausted"]
CREDIT_STARTS: tuple[str, ...] = ("launch", "exhausted")


@dataclass
class CreditBucket:
    vcpu: int
    credits_per_hour: float
    max_credits: float
    baseline_per_vcpu: float
    mode: CreditMode
    earned: float = 0.0
    launch: float = 0.0
    surplus: float = 0.0
    throttled: bool = False
    resume_credits: float = 0.0
    """Balance needed to leave the baseline again: one emulated minute of one vCPU by default,
    so the quota does not flap every second around an empty balance."""

    @classmethod
    def for_instance(cls, it: InstanceType, mode: CreditMode, start: str) -> CreditBucket | None:
        """None for fixed-performance types (no credits: the quota never moves)."""
        if start not in CREDIT_STARTS:
            raise UserError(f"credit start {start!r} is not valid; use 'launch' or 'exhausted'.")
        if not it.burstable or it.credits_per_hour is None or it.max_credits is None:
            return None
        launch = it.launch_credits if (start == "launch" and mode == "standard") else 0.0
        return cls(vcpu=it.vcpu, credits_per_hour=it.credits_per_hour,
                   max_credits=it.max_credits, baseline_per_vcpu=it.baseline_per_vcpu,
                   mode=mode, launch=launch, resume_credits=1.0)

    @property
    def balance(self) -> float:
        return self.earned + self.launch

    def update(self, used_vcpus: float, dt_s: float) -> None:
        """Advance by `dt_s` emulated seconds during which `used_vcpus` vCPUs were busy."""
        if dt_s <= 0:
            return
        self.earned = min(self.max_credits, self.earned + self.credits_per_hour * dt_s / 3600)
        spend = max(0.0, used_vcpus) * dt_s / 60
        from_launch = min(self.launch, spend)
        self.launch -= from_launch
        spend -= from_launch
        from_earned = min(self.earned, spend)
        self.earned -= from_earned
        spend -= from_earned
        # What is left was used beyond the balance: unlimited mode bills it; in standard mode
        # it is only the slack of a one-second control loop and is forgiven.
        if spend > 1e-12 and self.mode == "unlimited":
            self.surplus += spend

    def allowed_vcpus(self) -> float:
        """vCPUs the instance may use for the next interval."""
        if self.mode == "unlimited":
            return float(self.vcpu)
        if self.balance <= 1e-9:
            self.throttled = True
        elif self.throttled and self.balance >= self.resume_credits:
            self.throttled = False
        return self.baseline_per_vcpu * self.vcpu if self.throttled else float(self.vcpu)

"""A burstable instance's CPU credit bucket, in emulated vCPU units.

AWS rules (EC2 user guide, burstable performance): one credit = one vCPU at 100 % for one
minute; credits are earned at a fixed hourly rate and spent at the rate the vCPUs are used;
the earned balance caps at 24 h of earnings; T2 launch credits are a separate pool spent first
and not counted against the cap. Standard mode holds the CPU at the baseline when the balance
is empty; unlimited mode never throttles and counts the credits spent beyond the balance
(surplus, billed). The bucket only does arithmetic; the sampler feeds it measured usage and
applies the quota it returns.

Its clock is the *emulated* one: at cpu_scale s the local box is the AWS box in slow motion
by d = 1/s, so one wall second is s emulated seconds, and credits are earned and spent per
emulated second (`emulated_seconds`). Otherwise a slowed-down box would burn its balance d
times too fast and earn it back d times too fast compared with the instance it stands for.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

from experiments.errors import UserError
from stacks.catalog import CreditMode, InstanceType

CreditStart = Literal["launch", "exhausted"]
CREDIT_STARTS: tuple[str, ...] = ("launch", "exhausted")


def emulated_seconds(wall_s: float, dilation: float = 1.0, compression: float = 1.0) -> float:
    """Emulated seconds that `wall_s` wall seconds stand for on a box dilated by `dilation`.

    `compression` (> 1: the credit clock runs faster than the emulated one, to watch a
    runway end within a test) multiplies on top; 1 for real runs.
    """
    if dilation <= 0 or compression <= 0:
        raise ValueError(f"dilation and compression must be positive, got {dilation}, "
                         f"{compression}")
    return wall_s * compression / dilation


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
    launch_credits: float = 0.0
    """What `reset("launch")` restores (0 outside standard mode or without launch credits)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """The sampler thread updates the bucket while the runner may reset it."""

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
                   mode=mode, launch=launch, resume_credits=1.0,
                   launch_credits=it.launch_credits if mode == "standard" else 0.0)

    def reset(self, start: str) -> None:
        """Switch the balance to `start` now: "exhausted" empties it (standard mode then runs
        at the baseline, as a box that burned its credits), "launch" restores launch credits.
        Surplus already counted stays counted: it was billed."""
        if start not in CREDIT_STARTS:
            raise UserError(f"credit start {start!r} is not valid; use 'launch' or 'exhausted'.")
        with self._lock:
            self.earned = 0.0
            self.launch = self.launch_credits if start == "launch" else 0.0
            self.throttled = start == "exhausted" and self.mode == "standard"

    @property
    def balance(self) -> float:
        return self.earned + self.launch

    def update(self, used_vcpus: float, dt_s: float) -> None:
        """Advance by `dt_s` emulated seconds during which `used_vcpus` vCPUs were busy."""
        if dt_s <= 0:
            return
        with self._lock:
            self._update(used_vcpus, dt_s)

    def _update(self, used_vcpus: float, dt_s: float) -> None:
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
        with self._lock:
            return self._allowed_standard()

    def _allowed_standard(self) -> float:
        if self.balance <= 1e-9:
            self.throttled = True
        elif self.throttled and self.balance >= self.resume_credits:
            self.throttled = False
        return self.baseline_per_vcpu * self.vcpu if self.throttled else float(self.vcpu)

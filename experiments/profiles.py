"""Measurement profiles: how long each step and the survival test last.

`smoke` runs every stage briefly to check the pipeline (tests, a first AWS deploy);
`quick` is for the README's demo; `standard` holds each step long enough for
percentiles to settle and runs the seed's survival test for five minutes. Both search the
same way (experiments.load.capacity): the guided search needs about five steps, so the quick
profile saves time with fewer steps, not shorter holds; each search ends with a confirmation
hold three times as long as a step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from experiments.errors import UserError


@dataclass(frozen=True)
class Profile:
    name: str
    warmup_s: float
    """Load offered before the stats are reset, so connection set-up and JIT-ish warm-up
    (Django's first requests, SQLite's page cache) do not count."""
    hold_s: float
    """How long each step is measured after the warm-up."""
    start_rps: float
    growth: float
    precision: float
    max_steps: int
    cooldown_s: float
    """Idle time between steps, so one step's backlog does not spill into the next."""
    survival_users: int
    """Closed-loop users of the seed's overload test (each sends its next request at once)."""
    survival_limit_s: float
    hazard_weight_capacity: int
    """Weight of the shop's unpaginated `?all=1` request while searching capacity (0: the
    capacity is that of the everyday shopper mix)."""
    hazard_weight_survival: int
    """Weight of `?all=1` in the survival test: the request that ran the seed's box out of
    memory. Out of roughly 100 for the other tasks."""
    confirm_hold_s: float = 0.0
    """The capacity search's final hold at the found rate (0: no confirmation)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    # esrally's test mode: every stage of the pipeline runs, briefly; its figures are a check
    # that everything works (CI, a first try, an AWS account's first deploy), not measurements.
    "smoke": Profile(name="smoke", warmup_s=0.5, hold_s=2.0, start_rps=8.0, growth=2.0,
                     precision=0.2, max_steps=4, cooldown_s=0.2, survival_users=10,
                     survival_limit_s=8.0, hazard_weight_capacity=0, hazard_weight_survival=2,
                     confirm_hold_s=3.0),
    "quick": Profile(name="quick", warmup_s=1.0, hold_s=4.0, start_rps=8.0, growth=1.5,
                     precision=0.05, max_steps=8, cooldown_s=0.5, survival_users=40,
                     survival_limit_s=33.0, hazard_weight_capacity=0, hazard_weight_survival=2,
                     confirm_hold_s=12.0),
    "standard": Profile(name="standard", warmup_s=5.0, hold_s=20.0, start_rps=5.0, growth=1.5,
                        precision=0.05, max_steps=14, cooldown_s=5.0, survival_users=60,
                        survival_limit_s=300.0, hazard_weight_capacity=0,
                        hazard_weight_survival=2, confirm_hold_s=60.0),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UserError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}.") from None

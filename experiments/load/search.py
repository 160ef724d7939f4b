"""One capacity search on a live deployment: the load session, the profile and the CPU signal.

The runner's capacity stage and benchmarks/bench_capacity_truth.py both call this, so the
benchmark measures exactly what a run reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from experiments.load.capacity import CapacityResult, find_capacity
from experiments.model import Slo, StepResult
from experiments.profiles import Profile

if TYPE_CHECKING:
    from experiments.backends.base import Deployment
    from experiments.load.driver import LoadSession


def search_capacity(
    load: LoadSession,
    deployment: Deployment,
    profile: Profile,
    slo: Slo,
    on_step: Callable[[StepResult], None] | None = None,
    on_rate: Callable[[float, str], None] | None = None,
) -> CapacityResult:
    """Guided search (when the deployment reports its CPU) plus the profile's confirmation.

    `on_rate(rps, phase)` is told each rate before it is measured (for progress display).
    """

    def step(rps: float, hold_s: float, phase: str) -> StepResult:
        if on_rate is not None:
            on_rate(rps, phase)
        result = load.step(rps, profile.warmup_s, hold_s, cpu_seconds=deployment.cpu_seconds)
        time.sleep(profile.cooldown_s)
        return result

    confirm = None
    if profile.confirm_hold_s > 0:
        def confirm(rps: float) -> StepResult:
            return step(rps, profile.confirm_hold_s, "confirm")

    return find_capacity(
        lambda rps: step(rps, profile.hold_s, "search"),
        slo,
        start_rps=profile.start_rps,
        growth=profile.growth,
        precision=profile.precision,
        max_steps=profile.max_steps,
        on_step=on_step,
        cpu_limit_cores=deployment.cpu_limit_cores(),
        confirm=confirm,
    )

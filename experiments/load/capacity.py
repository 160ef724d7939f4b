"""Capacity search: the highest offered arrival rate whose step meets the SLO (pure, no I/O).

The search (what the report calls "capacity"):

1. Grow: offer `start_rps`, then x`growth` (1.5) per step, until a step fails.
2. Bisect between the last passing and the first failing rate until
   (fail - pass) / pass <= `precision` (5 %). Capacity = the highest passing rate.
3. If the very first step fails, halve the rate until a step passes or the rate falls below
   `MIN_RPS`, then bisect as above; if nothing passes, capacity is 0.
4. A step measured while the load generator itself was saturated is *invalid*: it says nothing
   about the server. The search stops there and reports an honest bracket: capacity >= the
   last passing rate, the upper end being where the generator ran out of CPU (use more
   `--load-workers`). Likewise when `max_steps` runs out, the bracket is what was established.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from experiments.model import Slo, StepResult

MIN_RPS = 0.5
"""Below this an open-model step holds too few arrivals to say anything."""


@dataclass
class CapacityResult:
    capacity_rps: float
    """Highest passing offered rate; 0 when no step passed."""
    p95_ms_at_capacity: float | None
    steps: list[StepResult]
    """Every judged step, in the order measured."""
    bracket: tuple[float, float]
    """(highest pass, lowest fail) — or, when generator_bound, (highest pass, saturated rate)."""
    generator_bound: bool = False
    """The search stopped at a saturated generator: the true capacity may be higher."""
    verdict: str = ""
    """One sentence on how the search ended."""


def _round_rate(rate: float) -> float:
    """Offered rates with three significant digits: readable in tables, precise enough."""
    return float(f"{rate:.3g}") if rate >= 1 else round(rate, 2)


def find_capacity(
    measure: Callable[[float], StepResult],
    slo: Slo,
    start_rps: float = 5.0,
    growth: float = 1.5,
    precision: float = 0.05,
    max_steps: int = 20,
    on_step: Callable[[StepResult], None] | None = None,
) -> CapacityResult:
    """Search the capacity with `measure(offered_rps) -> StepResult` (see the module doc)."""
    if start_rps <= 0 or growth <= 1 or precision <= 0 or max_steps < 1:
        raise ValueError("start_rps > 0, growth > 1, precision > 0 and max_steps >= 1 required")
    steps: list[StepResult] = []
    best: StepResult | None = None  # highest passing step
    fail_rps: float | None = None  # lowest failing rate
    saturated_rps: float | None = None

    def run(rate: float) -> StepResult:
        nonlocal best, fail_rps, saturated_rps
        step = slo.judge(measure(rate))
        steps.append(step)
        if on_step is not None:
            on_step(step)
        if step.generator_saturated:
            saturated_rps = rate
        elif step.passed:
            if best is None or rate > best.offered_rps:
                best = step
        elif fail_rps is None or rate < fail_rps:
            fail_rps = rate
        return step

    def budget() -> bool:
        return len(steps) < max_steps and saturated_rps is None

    # 1. grow
    rate = _round_rate(start_rps)
    while budget():
        step = run(rate)
        if not step.passed:
            break
        rate = _round_rate(rate * growth)

    # 3. first step failed (not invalid): walk down
    if best is None and saturated_rps is None and fail_rps is not None:
        rate = fail_rps
        while budget() and best is None and rate / 2 >= MIN_RPS:
            rate = _round_rate(rate / 2)
            run(rate)

    # 2. bisect
    while budget() and best is not None and fail_rps is not None:
        low, high = best.offered_rps, fail_rps
        if (high - low) / low <= precision:
            break
        mid = _round_rate((low + high) / 2)
        if mid <= low or mid >= high:
            break
        run(mid)

    capacity = best.offered_rps if best else 0.0
    p95 = best.p95_ms if best else None
    if saturated_rps is not None:
        upper = saturated_rps
        verdict = (
            f"generator-bound: capacity is at least {capacity:g} rps; at {saturated_rps:g} rps "
            "the load generator ran out of CPU (add --load-workers), so the server's limit "
            "was not reached"
        )
        return CapacityResult(capacity, p95, steps, (capacity, upper), True, verdict)
    upper = fail_rps if fail_rps is not None else rate
    if best is None:
        verdict = f"no step passed, down to {upper:g} rps: capacity 0"
    elif fail_rps is None:
        verdict = (
            f"step budget ({max_steps}) ran out while still passing at {capacity:g} rps: "
            "capacity is at least that"
        )
    elif (fail_rps - capacity) / capacity > precision:
        verdict = (
            f"step budget ({max_steps}) ran out: capacity between {capacity:g} and "
            f"{fail_rps:g} rps"
        )
    else:
        verdict = (
            f"capacity {capacity:g} rps (passes), {fail_rps:g} rps fails: within "
            f"{(fail_rps - capacity) / capacity:.1%}"
        )
    return CapacityResult(capacity, p95, steps, (capacity, upper), False, verdict)

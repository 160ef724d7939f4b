"""Capacity search: the highest offered arrival rate whose step meets the SLO (pure, no I/O).

The search (what the report calls "capacity"):

1. Grow from `start_rps`. Each step that reports the deployment's CPU time (`server_cpu_s`)
   gives the *service demand* D = CPU-seconds per request. With the CPU limit C (cores) the
   utilization law bounds the throughput: X <= C / D (the *CPU bound*). Once D is known the
   search aims there instead of growing blindly: next it offers `AIM` (90 %) of the bound.
   If that passes, the bound was pessimistic (a demand measured at low load carries idle
   housekeeping and cold caches): the search grows by x`BRACKET` (1.2), or straight to 90 %
   of the bound refreshed from the last passing step if that is further, until a step fails.
   Without a CPU signal (AWS) it is plain growth (x`growth`) throughout.
2. Bisect geometrically between the highest passing and the lowest failing rate until
   (fail - pass) / pass <= `precision` (5 %): from a x1.2 bracket that is two steps. After a
   failed aim the probes step back by x`STEP_BACK` (0.85) from the failure until the bracket
   is that narrow, rather than halving back towards the low first step.
   If the highest passing step's demand says the lowest failed rate needed less than
   `CONTRADICTED` (85 %) of the CPU, that failure is measured once more: a CPU-bound box
   does not miss the SLO with its CPU idle, so either the host had a bad moment (it passes
   now, and the search goes on from there) or the box has another limit (it fails again).
   Once per search: before bisecting (a first step that failed at a fifth of the bound is
   not crept up to in 5 % steps) or, failing that, after it.
3. If the very first step fails, walk down (x`walk_down`, by default halving) until a step
   passes or the rate falls below `MIN_RPS`, then bisect as above; if nothing passes,
   capacity is 0.
4. Confirm: hold the found rate longer than a search step (`confirm`). If that fails, step
   down by `precision` (the search's own resolution), then by twice that — or, when the box
   could not keep up and that is lower, to the middle between what the failed hold served and
   what it was offered, and for the last hold to 95 % of what it served — and confirm again
   (at most `MAX_CONFIRMATIONS` holds), like Nighthawk's adaptive load controller. When the
   hold that passed lies more than `precision` below the lowest one that failed, one more
   hold at their geometric middle refines it. When the first hold passes using less than
   `LIFT_BELOW` (90 %) of the CPU (by its own demand, the search's best-measured), the short
   steps that failed above it stopped the search early: one more hold at `LIFT_AIM` (95 %)
   of that bound decides (`_lifted_rate`); if it fails, the two holds bracket the knee and
   one hold at their geometric middle refines it, as after a walk. Capacity is the highest
   confirmed rate. If every confirmation fails, capacity is the highest rate that held: the
   highest search step below the failed holds that passed (`confirmed` False says it is
   unconfirmed), never the figure they refuted.
5. A step measured while the load generator itself was saturated is *invalid*: it says nothing
   about the server. The search stops there and reports an honest bracket: capacity >= the
   last passing rate, the upper end being where the generator ran out of CPU (use more
   `--load-workers`). Likewise when `max_steps` runs out, the bracket is what was established.

The capacity is also reported as a percentage of the CPU bound, demand and bound measured in
the hold capacity names (so it is that hold's CPU utilization): near 100 % the box ran out of
CPU; far below, of something else (workers, memory, a lock, the database)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, replace
from typing import Any

from experiments.model import Slo, StepResult, step_at_capacity

MIN_RPS = 0.5
"""Below this an open-model step holds too few arrivals to say anything."""
AIM = 0.9
"""First guided probe, as a fraction of the CPU bound: queues grow without limit at 100 %."""
BRACKET = 1.2
"""After a passing aim the search grows by x1.2 until a step fails: two geometric bisections
then reach the 5 % precision (1.2 ** (1/4) = 1.047). On the shop a bound that proved
pessimistic was 2-60 % low; the old x1.15 creep took four steps to cross 1.6x."""
STEP_BACK = 0.85
"""After a failed aim at the CPU bound the next probes are 85 % of the lowest failed rate,
until the bracket is narrow enough to bisect."""
CONTRADICTED = 0.85
"""Below this share of its CPU limit a CPU-bound box meets the SLO, so two findings under it
are doubted once: a failed search step whose rate needs less (by the demand measured at the
highest pass) is measured again (`_contradicted_failure`)."""
LIFT_BELOW = 0.9
"""A first confirmation hold that passed using less than this share of the CPU is followed by
one higher hold (`_lifted_rate`). At 85 % (`CONTRADICTED`, as before), holds that passed at
86 % kept their figure: scale-up 87.4 req/s where the searches either side read 124 and 109
at 99-100 % of their bounds, micro 46.2 at 86 % where the standard search held 54.0 at 98 %."""
LIFT_AIM = 0.95
"""The higher hold's rate as a share of the bound the passed hold's demand gives: the shop's
CPU-bound boxes held their long holds at 90-100 % of it (standard searches, two sessions:
median 96.5 %). At `AIM` (90 %) a hold that used 86-90 % would be lifted by under the
search's precision, i.e. not at all; if the higher hold fails the two bracket the knee and
one hold between them decides."""
MAX_CONFIRMATIONS = 3
SERVED_MARGIN = 0.95
"""The last confirmation hold after one the box could not keep up with offers at most 95 % of
the throughput that hold served (a rate the box has shown it carries)."""
MIN_DEMAND_REQUESTS = 20
MIN_DEMAND_CPU_S = 0.02
"""A demand estimate needs this many requests and CPU-seconds in the hold (cgroup CPU time is
exact, but a handful of requests next to idle housekeeping is not a demand)."""


def service_demand_s(step: StepResult) -> float | None:
    """CPU-seconds per request during the step's hold; None when not measurable."""
    if step.server_cpu_s is None or step.requests < MIN_DEMAND_REQUESTS:
        return None
    if step.server_cpu_s < MIN_DEMAND_CPU_S:
        return None
    return step.server_cpu_s / step.requests


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
    confirmed: bool | None = None
    """True: the capacity held a confirmation hold; False: no confirmation passed; None: no
    confirmation was run (none asked for, nothing passed, or generator-bound)."""
    demand_cpu_s: float | None = None
    """Service demand: CPU-seconds per request, measured in the hold capacity names (the
    confirmation when one passed), else at the highest passing search step."""
    cpu_limit_cores: float | None = None
    cpu_bound_rps: float | None = None
    """Utilization-law bound: cpu_limit_cores / demand_cpu_s."""

    @property
    def achieved_rps(self) -> float | None:
        """Throughput served at capacity (the step `step_at_capacity` names): what the CPU
        bound, itself a throughput, is compared with. An offered rate can exceed what was
        served, so a percentage of offered could read above 100 % on a box that was full."""
        at = step_at_capacity(self.steps)
        return None if at is None else at.achieved_rps

    @property
    def pct_of_cpu_bound(self) -> float | None:
        """Achieved throughput at capacity as a percentage of the CPU bound (None without a
        CPU signal)."""
        achieved = self.achieved_rps
        if not self.cpu_bound_rps or achieved is None:
            return None
        return 100.0 * achieved / self.cpu_bound_rps

    def summary_fields(self) -> dict[str, Any]:
        """The search's extras for summary.json (VariantSummary's fields of the same names)."""
        pct = self.pct_of_cpu_bound
        return {
            "capacity_confirmed": self.confirmed,
            "demand_cpu_ms": None if self.demand_cpu_s is None else round(
                1000 * self.demand_cpu_s, 3),
            "cpu_bound_rps": None if self.cpu_bound_rps is None else round(self.cpu_bound_rps, 2),
            "capacity_pct_of_cpu_bound": None if pct is None else round(pct, 1),
        }

    def bound_sentence(self) -> str:
        """E.g. '31 req/s = 91 % of the CPU bound (served 31.2 of 34.3 req/s = 0.25 cores /
        7.3 ms CPU per request)', or '' without a CPU signal."""
        return bound_sentence(self.capacity_rps, self.pct_of_cpu_bound, self.cpu_bound_rps,
                              None if self.demand_cpu_s is None else 1000 * self.demand_cpu_s)


def bound_sentence(capacity_rps: float | None, pct_of_cpu_bound: float | None,
                   cpu_bound_rps: float | None, demand_cpu_ms: float | None) -> str:
    """The CPU-bound sentence from summary.json's own fields (console, report page alike);
    '' when any of them is unknown."""
    if (capacity_rps is None or pct_of_cpu_bound is None or not cpu_bound_rps
            or not demand_cpu_ms):
        return ""
    served = pct_of_cpu_bound * cpu_bound_rps / 100
    cores = cpu_bound_rps * demand_cpu_ms / 1000
    return (f"{capacity_rps:g} req/s = {pct_of_cpu_bound:.0f} % of the CPU bound (served "
            f"{served:.3g} of {cpu_bound_rps:.3g} req/s = {cores:.2g} cores / "
            f"{demand_cpu_ms:.2g} ms CPU per request)")


def search_trail(steps: Iterable[StepResult]) -> str:
    """A search in one line, e.g. '7.92+ 64.4- 54.7+ 54.7+c' (rate, + passed / - failed, c a
    confirmation hold): how a search ended, at a glance (benchmarks, test failures)."""
    return " ".join(f"{s.offered_rps:g}{'+' if s.passed else '-'}"
                    f"{'c' if s.phase == 'confirm' else ''}" for s in steps)


def _unconfirmed(steps: list[StepResult], verdict: str) -> tuple[float, float | None, str]:
    """Every confirmation hold failed: the search's figure did not hold, so capacity is the
    highest rate that did — a passing step below the lowest failed confirmation (a short
    search step, so still unconfirmed) — or 0 when none did."""
    failed = min(s.offered_rps for s in steps
                 if s.phase == "confirm" and not s.passed and not s.generator_saturated)
    best = step_at_capacity(steps)  # the one rule: the highest pass below the refuted holds
    capacity = best.offered_rps if best else 0.0
    verdict += (f"; NOT CONFIRMED: every confirmation hold failed, down to {failed:g} rps, so "
                "capacity is " + (f"{capacity:g} rps, the highest search step below them that "
                                   "passed (unconfirmed)" if best else
                                   "0: no step below them passed"))
    return capacity, (best.p95_verdict_ms if best else None), verdict


def _next_confirmation(failed: StepResult, rate: float, step_down: float, last: bool) -> float:
    """The rate of the next confirmation hold after `failed` (held at `rate`); `last`: no
    hold follows that one.

    Each failed hold is more evidence the knee lies lower: 5 %, then 10 % down. A hold that
    failed because the box could not keep up also measured how much it could: the throughput
    it served while overloaded. That is a floor of the knee, not its place: overload costs a
    box efficiency (a queue of threads contending for one CPU, SQLite and the GIL), so at the
    knee it served more. The knee lies between what it served and what it was offered, so the
    next hold aims at their geometric middle. The last hold aims at `SERVED_MARGIN` of what
    was served, a rate the box has shown it carries: a search whose short steps were lucky at
    100 rps, on a box that serves 80 rps for 12 s, would otherwise fail every hold and fall
    back to its first step. (Aiming every hold at 95 % of served, as before, confirmed 23-32 %
    below the search's figure in 6 of 10 quick searches, micro 59.2 -> 45.3, scale-up
    100 -> 68.1; those confirmed figures sat at 66-86 % of the CPU bound.)"""
    next_rate = rate * (1 - step_down)
    served = failed.achieved_rps * (1 - failed.error_rate)
    if 0 < served < rate:
        floor_aim = SERVED_MARGIN * served if last else (served * rate) ** 0.5
        next_rate = min(next_rate, floor_aim)
    return _round_rate(next_rate)


def _refinement(passed_rps: float, refuted_rps: float, precision: float) -> float | None:
    """After the walk passed a hold at `passed_rps` just below one that failed at
    `refuted_rps`: the rate of one more hold at their geometric middle, or None when the walk
    stepped down by no more than the search's precision.

    Why: the walk's steps grow (5 %, 10 %, then down to 95 % of what an overloaded hold
    served), so where it ends depends on which of them happened to fail, not on where the
    knee is. Measured on the shop: walks that passed 12-16 % below the lowest failed hold
    (scale-up 95.9 ✗ -> 83.8 ✓, 93 ✗ -> 75.3 ✓; scale-out 142 ✗ -> 126 ✓) were the low
    outliers of repeated searches. One hold halves that gap in log terms."""
    if refuted_rps * (1 - precision) <= passed_rps * (1 + 1e-3):
        return None
    middle = _round_rate((passed_rps * refuted_rps) ** 0.5)
    return middle if passed_rps < middle < refuted_rps else None


def _bound_at_capacity(steps: list[StepResult], cpu_limit_cores: float | None,
                       search_demand: float | None) -> dict[str, float | None]:
    """The demand and CPU bound the report states: measured in the hold that capacity names
    (`step_at_capacity`: the confirmation, the longest hold), else the search's.

    Why its own hold: the CPU per request moves within a search (micro: 7.7-8.5 ms at
    35-51 req/s, 5.6-6.2 ms a minute later at 61-73 req/s, the mix exact in every hold), and a
    share computed from another step's demand read 117 % of the bound on a box that cannot use
    more than all of its CPU. From the same hold, served x demand / limit is that hold's CPU
    utilization: the figure that says whether the box ran out of CPU."""
    at = step_at_capacity(steps)
    demand = (service_demand_s(at) if at is not None else None) or search_demand
    bound = cpu_limit_cores / demand if cpu_limit_cores and demand else None
    return {"demand_cpu_s": demand, "cpu_bound_rps": bound}


def _contradicted_failure(best: StepResult | None, fail_rps: float | None,
                          cpu_limit_cores: float | None) -> float | None:
    """The lowest failed rate, when the demand measured at the highest pass says the box had
    CPU to spare there (it needs < `CONTRADICTED` of the limit); else None.

    Why: a CPU-bound box meets a 1.5 s p95 until its CPU is nearly full, so such a failure was
    either a moment of the host (a neighbour, a stall) or a limit other than CPU. Measuring it
    once more tells them apart; before, one such moment capped the whole search: micro
    failed 28.4 req/s, passed 27.3 at 78 % of its CPU, and read 27.3 where the searches
    either side read 48.1 and 41.9 (another: 39.2 failed at 78 %, capacity 37.6 against
    49.8 and 50.6)."""
    if best is None or fail_rps is None or not cpu_limit_cores:
        return None
    demand = service_demand_s(best)
    if demand is None or fail_rps * demand / cpu_limit_cores >= CONTRADICTED:
        return None
    return fail_rps


def _utilization(hold: StepResult, cpu_limit_cores: float | None) -> float:
    """The share of the CPU limit the hold used, 0 when unknown: achieved x demand / limit,
    i.e. its CPU-seconds / (duration x limit) — the figure the report states as the share of
    the CPU bound when this hold names the capacity (failed requests used CPU too, so they
    count, as they do there)."""
    demand = service_demand_s(hold)
    if demand is None or not cpu_limit_cores:
        return 0.0
    return hold.achieved_rps * demand / cpu_limit_cores


def _lifted_rate(hold: StepResult, cpu_limit_cores: float | None, precision: float
                 ) -> float | None:
    """After the first confirmation hold passed: the rate of one more hold when that hold
    used less than `LIFT_BELOW` of the CPU — `LIFT_AIM` of the bound its own demand gives —
    else None.

    Why: the confirmation is the search's longest hold, so its demand is the best measured;
    a CPU-bound box that held a rate with 15 % of its CPU idle stopped short on a short
    step's failure (micro-swap: 45.4 and 41.4 req/s failed in 4.5 s steps, 39.6 held 12 s
    with 21 % idle, and read 39.6 where the next two searches read 52.7 and 42.8). A box
    limited by something else fails the one extra hold and keeps its figure."""
    used = _utilization(hold, cpu_limit_cores)
    if not 0 < used < LIFT_BELOW:
        return None
    lifted = _round_rate(hold.offered_rps * LIFT_AIM / used)
    return lifted if lifted > hold.offered_rps * (1 + precision) else None


def _round_rate(rate: float) -> float:
    """Offered rates with three significant digits: readable in tables, precise enough."""
    return float(f"{rate:.3g}") if rate >= 1 else round(rate, 2)


@dataclass(frozen=True)
class Probe:
    """A step a search asks for: `rps` offered for a search step or a confirmation hold."""

    rps: float
    phase: str = "search"
    """"search" (a short step) or "confirm" (the longer confirmation hold)."""


CapacitySearch = Generator[Probe, StepResult, CapacityResult]
"""A search as an object that proposes its next step and takes its result: one schedule can
advance several of them (variants measured together), and `drive` runs one alone."""


def drive(search: CapacitySearch, measure: Callable[[Probe], StepResult]) -> CapacityResult:
    """Run one search to its end, measuring each probe it proposes with `measure`."""
    try:
        probe = next(search)
        while True:
            probe = search.send(measure(probe))
    except StopIteration as done:
        return done.value


def find_capacity(
    measure: Callable[[float], StepResult],
    slo: Slo,
    start_rps: float = 5.0,
    growth: float = 1.5,
    precision: float = 0.05,
    max_steps: int = 20,
    on_step: Callable[[StepResult], None] | None = None,
    cpu_limit_cores: float | None = None,
    confirm: Callable[[float], StepResult] | None = None,
    walk_down: float = 0.5,
) -> CapacityResult:
    """Search the capacity with `measure(offered_rps) -> StepResult` (see the module doc).

    `cpu_limit_cores` (the deployment's CPU limit) turns on the guided search when steps carry
    `server_cpu_s`; `confirm(offered_rps)` runs the longer confirmation hold; `walk_down` is
    the factor each step below a failed first step applies (a first step aimed close to the
    answer walks down in smaller steps than halving).
    """
    search = capacity_search(slo, start_rps, growth, precision, max_steps, on_step,
                             cpu_limit_cores, confirm is not None, walk_down)

    def measured(probe: Probe) -> StepResult:
        if probe.phase == "confirm" and confirm is not None:
            return confirm(probe.rps)
        return measure(probe.rps)
    return drive(search, measured)


def capacity_search(
    slo: Slo,
    start_rps: float = 5.0,
    growth: float = 1.5,
    precision: float = 0.05,
    max_steps: int = 20,
    on_step: Callable[[StepResult], None] | None = None,
    cpu_limit_cores: float | None = None,
    confirm: bool = False,
    walk_down: float = 0.5,
) -> CapacitySearch:
    """The search of `find_capacity` as a generator: yields each `Probe`, is sent its
    StepResult, returns the CapacityResult. `confirm`: end with confirmation holds."""
    if (start_rps <= 0 or growth <= 1 or precision <= 0 or max_steps < 1
            or not 0 < walk_down < 1):
        raise ValueError("start_rps > 0, growth > 1, precision > 0, max_steps >= 1 and "
                         "0 < walk_down < 1 required")
    if cpu_limit_cores is not None and cpu_limit_cores <= 0:
        cpu_limit_cores = None
    steps: list[StepResult] = []
    best: StepResult | None = None  # highest passing step
    fail_rps: float | None = None  # lowest failing rate
    saturated_rps: float | None = None
    demand: float | None = None

    def record(step: StepResult) -> StepResult:
        steps.append(step)
        if on_step is not None:
            on_step(step)
        return step

    def run(rate: float) -> Generator[Probe, StepResult, StepResult]:
        nonlocal best, fail_rps, saturated_rps, demand
        step = record(slo.judge((yield Probe(rate))))
        if step.generator_saturated:
            saturated_rps = rate
        elif step.passed:
            if best is None or rate > best.offered_rps:
                best = step
                demand = service_demand_s(step) or demand
        elif fail_rps is None or rate < fail_rps:
            fail_rps = rate
        return step

    def budget() -> bool:
        return len(steps) < max_steps and saturated_rps is None

    def bound() -> float | None:
        return cpu_limit_cores / demand if cpu_limit_cores and demand else None

    def next_rate(rate: float, aimed: bool) -> float:
        """Guided growth: 90 % of the bound first; once it passed, steps of x`BRACKET` (or to
        90 % of the refreshed bound, if that is further, but never beyond x`growth`)."""
        upper = bound()
        if upper is None:
            return _round_rate(rate * growth)
        aim = AIM * upper
        if not aimed and aim >= rate * (1 + 2 * precision):
            return _round_rate(aim)
        # The aim passed: the demand measured at low load overstated the real one (idle
        # housekeeping, cold caches). Find the failing side in big steps, then bisect.
        return _round_rate(min(rate * growth, max(rate * BRACKET, aim)))

    aimed = False  # a step aimed at the CPU bound was run

    def grow(rate: float) -> Generator[Probe, StepResult, float]:
        """Step up from `rate` until a step fails (or the budget ends); returns the last rate
        run, or the next one when the budget ended while passing."""
        nonlocal aimed
        while budget():
            step = yield from run(rate)
            if not step.passed:
                break
            had_bound = bound() is not None
            rate = next_rate(rate, aimed)
            aimed = aimed or had_bound
        return rate

    def bisect() -> Generator[Probe, StepResult, None]:
        """Narrow (highest pass, lowest fail) to `precision` (geometric: the bracket is a
        ratio). A failure far above the last pass (a failed aim at the bound) is bracketed
        from above first: capacity is rarely far below the bound, so step back by
        x`STEP_BACK` rather than halving towards the first step."""
        while budget() and best is not None and fail_rps is not None:
            low, high = best.offered_rps, fail_rps
            if (high - low) / low <= precision:
                break
            wide = aimed and high / low > 1 / STEP_BACK ** 2
            mid = _round_rate(STEP_BACK * high if wide else (low * high) ** 0.5)
            if mid <= low or mid >= high:
                break
            yield from run(mid)

    rate = _round_rate(start_rps)
    again: StepResult | None = None  # the repeated step, once one was run

    def remeasure_contradicted() -> Generator[Probe, StepResult, None]:
        """2b. Measure once per search a failure the utilization law contradicts; if it
        passes (a moment of the host, not the box), search on from there."""
        nonlocal again, fail_rps, rate
        if again is not None or not budget():
            return
        remeasured = _contradicted_failure(best, fail_rps, cpu_limit_cores)
        if remeasured is None:
            return
        again = yield from run(remeasured)
        if again.passed:
            fail_rps = min((s.offered_rps for s in steps if not s.passed
                            and not s.generator_saturated and s.offered_rps > remeasured),
                           default=None)
            if fail_rps is None:
                rate = yield from grow(next_rate(remeasured, aimed))

    # 1. grow: the first step measures the demand, the second aims at 90 % of the bound
    rate = yield from grow(rate)

    # 3. first step failed (not invalid): walk down
    if best is None and saturated_rps is None and fail_rps is not None:
        rate = fail_rps
        while budget() and best is None and rate * walk_down >= MIN_RPS:
            rate = _round_rate(rate * walk_down)
            yield from run(rate)

    # 2b before bisecting: a failure far below the bound (a first step that failed at a
    # fifth of it) is repeated at once rather than crept up to by bisection
    yield from remeasure_contradicted()
    # 2. bisect, then 2b for a failure bisection found just above the highest pass
    yield from bisect()
    yield from remeasure_contradicted()
    yield from bisect()

    capacity = best.offered_rps if best else 0.0
    p95 = best.p95_verdict_ms if best else None
    cpu_bound = bound()
    extra: dict[str, Any] = {"demand_cpu_s": demand, "cpu_limit_cores": cpu_limit_cores,
             "cpu_bound_rps": cpu_bound}
    if saturated_rps is not None:
        upper = saturated_rps
        verdict = (
            f"generator-bound: capacity is at least {capacity:g} rps; at {saturated_rps:g} rps "
            "the load generator ran out of CPU (add --load-workers), so the server's limit "
            "was not reached"
        )
        return CapacityResult(capacity, p95, steps, (capacity, upper), True, verdict, **extra)
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

    if again is not None:
        verdict += (f"; {again.offered_rps:g} rps failed with CPU to spare and was measured again: "
                    + ("it passed (the failure was a moment, not the box)" if again.passed
                       else "it failed again (a limit other than CPU)"))

    # 4. confirm
    confirmed: bool | None = None
    if confirm and best is not None:
        def confirm_judged(rate: float) -> Generator[Probe, StepResult, StepResult]:
            return record(slo.judge(replace((yield Probe(rate, "confirm")), phase="confirm")))

        def refine(passed: StepResult, refuted_rps: float
                   ) -> Generator[Probe, StepResult, StepResult]:
            """One more hold between a hold that passed and a higher one that failed (when
            they lie more than `precision` apart); the higher of the two that passed."""
            nonlocal verdict
            middle = _refinement(passed.offered_rps, refuted_rps, precision)
            if middle is None:
                return passed
            check = yield from confirm_judged(middle)
            verdict += (f"; a refinement hold between them "
                        f"{'passed' if check.passed else 'failed'} at {middle:g} rps")
            return check if check.passed else passed

        rate = refuted = capacity  # refuted: the lowest failed hold, once one failed
        for attempt in range(MAX_CONFIRMATIONS):
            step = yield from confirm_judged(rate)
            if step.generator_saturated:
                break
            if step.passed:
                confirmed = True
                if rate < capacity:
                    verdict += (f"; the confirmation hold failed at {capacity:g} rps and "
                                f"passed at {rate:g} rps")
                    step = yield from refine(step, refuted)
                else:
                    verdict += f"; confirmed by a {step.duration_s:.0f} s hold"
                    lifted = _lifted_rate(step, cpu_limit_cores, precision)
                    if lifted is not None:  # the box held it with CPU to spare
                        check = yield from confirm_judged(lifted)
                        verdict += (f" that left {1 - _utilization(step, cpu_limit_cores):.0%} "
                                    f"of the CPU idle; one more hold "
                                    f"{'passed' if check.passed else 'failed'} at {lifted:g} rps")
                        # failed: the knee lies between the two holds, as in the walk down
                        step = check if check.passed else (yield from refine(step, lifted))
                capacity, p95 = step.offered_rps, step.p95_verdict_ms
                break
            confirmed = False
            refuted = rate  # the walk only goes down
            rate = _next_confirmation(step, rate, precision * 2 ** attempt,
                                      last=attempt == MAX_CONFIRMATIONS - 2)
            if rate < MIN_RPS:
                break
        if confirmed is False:
            capacity, p95, verdict = _unconfirmed(steps, verdict)
    extra.update(_bound_at_capacity(steps, cpu_limit_cores, demand))
    return CapacityResult(capacity, p95, steps, (capacity, upper), False, verdict,
                          confirmed=confirmed, **extra)



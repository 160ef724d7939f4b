"""One capacity search on a live deployment: the load session, the profile and the CPU signal.

The runner's capacity stage and benchmarks/bench_capacity_truth.py both call this, so the
benchmark measures exactly what a run reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from experiments.load.capacity import (
    CapacityResult,
    CapacitySearch,
    Probe,
    capacity_search,
    drive,
)
from experiments.model import Slo, StepResult
from experiments.profiles import Profile

if TYPE_CHECKING:
    from experiments.backends.base import Deployment
    from experiments.load.driver import LoadSession


DRAIN_IDLE_SHARE = 0.1
"""The server has worked off its backlog when its instances use less than this share of their
CPU limit (idle housekeeping is ~1 %; one request in service uses all of a small box)."""
DRAIN_POLL_S = 0.25
DRAIN_LIMIT_HOLDS = 3.0
"""Give up waiting after this many of the step's holds (a server busy on its own, e.g. cron)."""
FIRST_STEP_MAX_RAISE = 3.0
"""The first step's rate is raised at most this much over the profile's to hold a whole deck
(the shop's 100 cards in quick's 4.5 s hold: x2.8), so a small box of a heavy app is not
overrun by its first step (a failed first step walks down, one step more)."""


def first_step_rps(start_rps: float, hold_s: float, deck_arrivals: int) -> float:
    """The rate of the search's first step: the profile's, raised (at most x
    `FIRST_STEP_MAX_RAISE`) until its hold deals the locustfile's whole deck.

    Why: the first step measures the service demand the guided search aims with, and a hold
    under a deck samples the mix instead of holding it (`whole_decks_hold_s` leaves a hold of
    under half a deck as asked). Quick's first step held 36 of the shop's 100 cards, 0-3 of
    its searches (44 % of the CPU): its demand read 4.9-12.6 ms where the searches' own holds
    measured 5.8-7.1 ms, so the aim landed anywhere from half the knee to 1.4 times it (micro
    23.7 req/s against a knee of ~46, micro-swap 60.2 against ~45) and the search spent two or
    three steps finding its way back. Raised (22 req/s, one deck), over 12 searches each: the
    first demand's scatter 27.7 -> 12.8 % (what is left is the low load's: cold caches), the
    aim's ratio to the capacity found 0.51-1.39 -> 0.69-1.08. A one-task locustfile
    (`deck_arrivals` 0) is its own mix at any rate."""
    if deck_arrivals <= 0 or start_rps * hold_s >= deck_arrivals:
        return start_rps
    return min(FIRST_STEP_MAX_RAISE * start_rps, deck_arrivals / hold_s)


def wait_until_drained(deployment: Deployment, limit_s: float,
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait until the deployment's CPU falls idle, at most `limit_s`; return the seconds waited.

    Why: an overloaded step leaves a queue in the load balancer and the workers (on the shop,
    scans of ~0.6 s each at a micro's 0.33 cores). A fixed short cooldown let it spill into
    the next step, which then failed too: measured on micro, a search failed 48.5, 41.2 and
    35 req/s in a row after its aim failed, while another search passed 42.7. Without a CPU
    signal (AWS: CloudWatch is minutes late) the profile's cooldown is all there is.
    """
    cores = deployment.cpu_limit_cores()
    last = deployment.cpu_seconds()
    if not cores or last is None:
        return 0.0
    began = then = clock()
    while clock() - began < limit_s:
        sleep(DRAIN_POLL_S)
        now, used = clock(), deployment.cpu_seconds()
        if used is None:
            break
        if now > then and (used - last) / (now - then) < DRAIN_IDLE_SHARE * cores:
            break
        last, then = used, now
    return clock() - began


def capacity_prober(load: LoadSession, deployment: Deployment, profile: Profile,
                    on_rate: Callable[[float, str], None] | None = None
                    ) -> Callable[[Probe], StepResult]:
    """Measures a search's probes on `deployment`: a step (or the longer confirmation hold),
    the profile's cooldown, then (given a CPU signal) a wait until the server has worked off
    what the step left queued, so no step inherits the last one's backlog.

    `on_rate(rps, phase)` is told each rate before it is measured (for progress display)."""

    def measure(probe: Probe) -> StepResult:
        if on_rate is not None:
            on_rate(probe.rps, probe.phase)
        hold_s = profile.confirm_hold_s if probe.phase == "confirm" else profile.hold_s
        result = load.step(probe.rps, profile.warmup_s, hold_s,
                           cpu_seconds=deployment.cpu_seconds)
        time.sleep(profile.cooldown_s)
        wait_until_drained(deployment, DRAIN_LIMIT_HOLDS * hold_s)
        return result
    return measure


def new_capacity_search(load: LoadSession, deployment: Deployment, profile: Profile, slo: Slo,
                        on_step: Callable[[StepResult], None] | None = None) -> CapacitySearch:
    """The guided search (when the deployment reports its CPU) plus the profile's
    confirmation, as an object a schedule advances (`capacity_prober` measures its probes)."""
    return capacity_search(
        slo,
        start_rps=first_step_rps(profile.start_rps, profile.hold_s, load.deck_arrivals),
        growth=profile.growth,
        precision=profile.precision,
        max_steps=profile.max_steps,
        on_step=on_step,
        cpu_limit_cores=deployment.cpu_limit_cores(),
        confirm=profile.confirm_hold_s > 0,
    )


def search_capacity(
    load: LoadSession,
    deployment: Deployment,
    profile: Profile,
    slo: Slo,
    on_step: Callable[[StepResult], None] | None = None,
    on_rate: Callable[[float, str], None] | None = None,
) -> CapacityResult:
    """One search alone on one deployment (benchmarks; the runner schedules several)."""
    return drive(new_capacity_search(load, deployment, profile, slo, on_step),
                 capacity_prober(load, deployment, profile, on_rate))

"""Measure the variants together: one schedule advances every variant's search round by round.

A comparison is only as fair as its schedule: the host drifts (on a cloud VM the CPU one
request costs moves 10-40 % within minutes), so variants measured one after another differ by
the host's moment as much as by their design. Here every variant's search is a `Lane`, an
object that proposes its next step and takes its result. Each round asks every lane for its
next step, shuffles the order (RMIT: randomized multiple interleaved trials, Abedi & Brecht,
ICPE 2017) and packs the lanes into groups whose CPU limits fit the host at once; a group's
steps run at the same time (duet benchmarking, Bulej et al. 2020), groups one after another.
A slow moment of the host then hits every variant of the round alike. On AWS every variant is
separate hardware: one group holds them all.

One lane's error ends that lane only (its variant fails, the others go on); a Ctrl-C reaches
the caller at once, whose `finally` tears every deployment down.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

P = TypeVar("P")  # what a lane proposes (a Probe)
R = TypeVar("R")  # what it is sent back (a StepResult)
T = TypeVar("T")  # what it ends with (a CapacityResult)

JOIN_POLL_S = 0.2
"""How often the waiting thread wakes: a Ctrl-C is delivered between waits."""


@dataclass
class Lane(Generic[P, R, T]):
    """One variant's search on its deployment: a generator that yields what it wants measured
    and is sent the measurement, and the function that measures it."""

    name: str
    search: Generator[P, R, T]
    measure: Callable[[P], R]
    cores: float = 0.0
    """Host cores the lane's box may use while loaded (0: not on this host, e.g. AWS)."""
    proposal: P | None = field(default=None, init=False)
    result: T | None = field(default=None, init=False)
    error: Exception | None = field(default=None, init=False)
    done: bool = field(default=False, init=False)
    measured: R | None = field(default=None, init=False)

    def start(self) -> None:
        self._advance(lambda: next(self.search))

    def take(self) -> None:
        """Send the measurement of this round to the search; it proposes its next step."""
        measured, self.measured = self.measured, None
        self._advance(lambda: self.search.send(measured))  # type: ignore[arg-type]

    def fail(self, error: Exception) -> None:
        self.error, self.done, self.proposal = error, True, None
        self.search.close()

    def _advance(self, step: Callable[[], P]) -> None:
        try:
            self.proposal = step()
        except StopIteration as end:
            self.result, self.done, self.proposal = end.value, True, None
        except Exception as exc:  # noqa: BLE001 - one broken search must not stop the others
            self.fail(exc)


AnyLane = Lane[Any, Any, Any]


def pack(lanes: Sequence[AnyLane], budget_cores: float) -> list[list[AnyLane]]:
    """Consecutive lanes (in the round's shuffled order) grouped while their cores fit the
    budget; a lane larger than the budget is a group of its own."""
    groups: list[list[AnyLane]] = []
    used = 0.0
    for lane in lanes:
        if groups and used + lane.cores <= budget_cores + 1e-9:
            groups[-1].append(lane)
            used += lane.cores
        else:
            groups.append([lane])
            used = lane.cores
    return groups


@dataclass
class RoundPlan:
    """What one round ran: the lanes' names in the order and groups they were measured in."""

    number: int
    groups: list[list[str]]
    free: bool = False
    """The lanes ran side by side at their own pace (no rounds): one plan for the stage."""


def run_rounds(lanes: Sequence[AnyLane], budget_cores: float,
               rng: random.Random | None = None,
               on_round: Callable[[RoundPlan], None] | None = None,
               free: bool = True) -> list[RoundPlan]:
    """Advance every lane to its end; returns what each round ran (its order and groups).

    When every lane fits the host at once and `free`, there are no rounds: each lane runs its
    search at its own pace beside the others (one `RoundPlan` with `free` set). Rounds would
    make every lane wait, step after step, for the round's longest step (a confirmation hold,
    a sustained step at a tenth of the rate): one schedule took 4:00 where its longest search
    alone needs about half. The boxes are loaded over the same minutes either way."""
    rng = rng or random.Random()
    for lane in lanes:
        lane.start()
    plans: list[RoundPlan] = []
    active = [lane for lane in lanes if not lane.done]
    if free and len(active) > 1 and sum(x.cores for x in active) <= budget_cores + 1e-9:
        plan = RoundPlan(1, [[lane.name for lane in active]], free=True)
        if on_round is not None:
            on_round(plan)
        run_together([partial(_run_free, lane) for lane in active])
        return [plan]
    while active := [lane for lane in lanes if not lane.done]:
        rng.shuffle(active)
        groups = pack(active, budget_cores)
        plan = RoundPlan(len(plans) + 1, [[lane.name for lane in g] for g in groups])
        plans.append(plan)
        if on_round is not None:
            on_round(plan)
        for group in groups:
            run_together([partial(_measure, lane) for lane in group])
            for lane in group:
                if not lane.done:
                    lane.take()
    return plans


def _run_free(lane: AnyLane) -> None:
    while not lane.done:
        _measure(lane)
        if not lane.done:
            lane.take()


def _measure(lane: AnyLane) -> None:
    try:
        lane.measured = lane.measure(lane.proposal)
    except Exception as exc:  # noqa: BLE001 - the lane's variant fails, the round goes on
        lane.fail(exc)


def run_together(calls: Sequence[Callable[[], None]]) -> None:
    """Run the calls at the same time and wait for all.

    They run in daemon threads, so a Ctrl-C (delivered to this thread between short
    waits) is never stuck behind them: the caller's `finally` stops their load and they end.
    Each call handles its own errors (a lane records them)."""
    if len(calls) == 1:
        calls[0]()
        return
    threads = [threading.Thread(target=call, daemon=True, name=f"lane-{i}")
               for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(JOIN_POLL_S)

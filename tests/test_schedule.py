"""The schedule that measures variants together: groups, rounds, order, errors, fairness."""

from __future__ import annotations

import random
import threading
from collections.abc import Generator

import pytest

from experiments.load.capacity import CapacityResult, Probe, capacity_search, drive
from experiments.model import Slo, StepResult
from experiments.schedule import Lane, pack, run_rounds

SLO = Slo(p95_ms=500.0, max_error_rate=0.01, min_achieved_ratio=0.95)


def steps_of(n: int, seen: list[int]) -> Generator[int, str, list[str]]:
    """A lane's search that proposes n steps, 0..n-1, and returns what it was sent."""
    got: list[str] = []
    for i in range(n):
        got.append((yield i))
        seen.append(i)
    return got


def lane(name: str, n: int, cores: float = 1.0, log: list[str] | None = None
         ) -> Lane[int, str, list[str]]:
    def measure(i: int) -> str:
        if log is not None:
            log.append(name)
        return f"{name}{i}"
    return Lane(name, steps_of(n, []), measure, cores)


def test_pack_groups_lanes_that_fit_together_in_their_order() -> None:
    lanes = [lane("a", 1, 0.2), lane("b", 1, 0.6), lane("c", 1, 0.8), lane("d", 1, 2.0),
             lane("e", 1, 0.1)]
    assert [[x.name for x in g] for g in pack(lanes, 1.0)] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert [[x.name for x in g] for g in pack(lanes, float("inf"))] == [["a", "b", "c", "d", "e"]]


def test_every_round_measures_every_unfinished_lane_once_in_a_fresh_order() -> None:
    log: list[str] = []
    lanes = [lane("a", 4, log=log), lane("b", 2, log=log), lane("c", 3, log=log)]
    plans = run_rounds(lanes, budget_cores=1.0, rng=random.Random(7))
    assert len(plans) == 4
    assert [sorted(sum(p.groups, [])) for p in plans] == [["a", "b", "c"], ["a", "b", "c"],
                                                          ["a", "c"], ["a"]]
    assert all(len(g) == 1 for p in plans for g in p.groups)  # 1 core each, 1 core budget
    assert log == [name for p in plans for g in p.groups for name in g]  # measured as planned
    many = [lane("a", 8), lane("b", 8), lane("c", 8)]
    orders = {tuple(sum(p.groups, [])) for p in run_rounds(many, 1.0, random.Random(7))}
    assert len(orders) > 2  # shuffled per round, not one fixed order
    assert [x.result for x in lanes] == [["a0", "a1", "a2", "a3"], ["b0", "b1"],
                                         ["c0", "c1", "c2"]]


def test_lanes_that_fit_the_host_are_measured_at_the_same_time() -> None:
    """Each measurement waits at a barrier for the others: only a schedule that runs the
    group's steps concurrently gets through."""
    barrier = threading.Barrier(3, timeout=5)

    def together(name: str) -> Lane[int, str, list[str]]:
        def measure(i: int) -> str:
            barrier.wait()
            return f"{name}{i}"
        return Lane(name, steps_of(2, []), measure, 0.3)

    lanes = [together("a"), together("b"), together("c")]
    plans = run_rounds(lanes, budget_cores=1.0, rng=random.Random(1), free=False)
    assert [len(p.groups) for p in plans] == [1, 1]
    assert all(x.error is None and x.result == [f"{x.name}0", f"{x.name}1"] for x in lanes)
    lanes = [together("a"), together("b"), together("c")]  # free-running: side by side too
    (plan,) = run_rounds(lanes, budget_cores=1.0)
    assert plan.free and sorted(plan.groups[0]) == ["a", "b", "c"]
    assert all(x.error is None and x.result == [f"{x.name}0", f"{x.name}1"] for x in lanes)


def test_free_lanes_do_not_wait_for_each_others_steps() -> None:
    """A lane of short steps finishes while a lane of long steps is still at its first: in
    rounds it would wait for each long step."""
    finished: dict[str, float] = {}
    import time

    def timed(name: str, n: int, seconds: float) -> Lane[int, str, list[str]]:
        def measure(i: int) -> str:
            time.sleep(seconds)
            if i == n - 1:
                finished[name] = time.monotonic()
            return f"{name}{i}"
        return Lane(name, steps_of(n, []), measure, 0.1)

    began = time.monotonic()
    run_rounds([timed("short", 4, 0.05), timed("long", 2, 0.4)], budget_cores=1.0)
    assert finished["short"] - began < 0.35 < finished["long"] - began


def test_a_broken_lane_ends_alone() -> None:
    def broken(i: int) -> str:
        raise OSError("the box went away")

    bad: Lane[int, str, list[str]] = Lane("bad", steps_of(3, []), broken, 0.1)
    good = lane("good", 3, 0.1)
    run_rounds([bad, good], budget_cores=1.0)
    assert isinstance(bad.error, OSError) and bad.result is None and bad.done
    assert good.error is None and good.result == ["good0", "good1", "good2"]


# ---- the capacity search as a lane ------------------------------------------------------------

class Box:
    """A CPU-bound box on a host whose speed drifts with a shared clock: each step costs one
    tick, and its knee is `base` × the host's speed at that tick."""

    def __init__(self, base: float, clock: list[int], speed: dict[int, float]) -> None:
        self.base, self.clock, self.speed = base, clock, speed

    def __call__(self, probe: Probe) -> StepResult:
        knee = self.base * self.speed.get(self.clock[0] // 12, 1.0)
        ok = probe.rps <= knee
        return StepResult(offered_rps=probe.rps, achieved_rps=probe.rps,
                          p50_ms=50, p95_ms=100 if ok else 900, p99_ms=1000, error_rate=0.0,
                          requests=int(probe.rps * 10))


def search() -> Generator[Probe, StepResult, CapacityResult]:
    return capacity_search(SLO, start_rps=10, growth=1.5, precision=0.05, max_steps=10,
                           confirm=True)


def test_a_search_reads_the_same_alone_and_as_a_lane() -> None:
    clock: list[int] = [0]
    alone = drive(search(), Box(40, clock, {}))
    scheduled = Lane("micro", search(), Box(40, clock, {}), 1.0)
    run_rounds([scheduled], budget_cores=1.0)
    assert scheduled.result is not None
    assert scheduled.result.capacity_rps == alone.capacity_rps
    assert [s.offered_rps for s in scheduled.result.steps] == [s.offered_rps for s in alone.steps]


def test_identical_boxes_on_a_drifting_host_read_alike_only_when_measured_together() -> None:
    """The issue's A/A test in miniature: the host is 30 % faster from its 12th step on. One
    search after the other reads two identical boxes 30 % apart; in one schedule they read
    the same, whether loaded at once or interleaved one at a time."""
    speed = {1: 1.3, 2: 1.3, 3: 1.3}

    def ticking(box: Box, clock: list[int]):  # type: ignore[no-untyped-def]
        def measure(probe: Probe) -> StepResult:
            result = box(probe)
            clock[0] += 1
            return result
        return measure

    clock = [0]
    first = drive(search(), ticking(Box(40, clock, speed), clock))
    clock[0] = 12  # the second box is measured after the first, on the faster host
    second = drive(search(), ticking(Box(40, clock, speed), clock))
    assert second.capacity_rps / first.capacity_rps == pytest.approx(1.3, rel=0.06)

    for budget in (2.0, 1.0):  # together (one group) and interleaved (one lane a group)
        clock = [0]
        lanes = [Lane(n, search(), Box(40, clock, speed), 1.0) for n in ("micro", "copy")]

        def on_round(_: object, clock: list[int] = clock) -> None:
            clock[0] += 3  # the host's clock moves per round (faster from round 5 on)
        run_rounds(lanes, budget_cores=budget, rng=random.Random(3), on_round=on_round,
                   free=False)
        a, b = (x.result for x in lanes)
        assert a is not None and b is not None
        assert a.capacity_rps == b.capacity_rps, budget
        assert clock[0] > 12  # the drift happened during the searches

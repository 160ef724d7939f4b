"""The sweep: every variant deployed first, then measured together, then torn down.

    deploy all → capacity (`--repeat` searches, each variant's steps in the same rounds) →
    sustained capacity (the burstable ones together) → survival (every variant at once, one
    load) → observe and tear down → per variant: diagnose → price → store.

Why together: the host drifts, so variants measured one after another differ by the host's
moment as much as by their design (two identical boxes read 30 % apart that way). In one
schedule (schedule.py) a slow moment hits every variant of a round alike. Survival, which
kills boxes, comes after the comparable measurements.

A variant that breaks is torn down at once and recorded in its error.json; the others go on.
A Ctrl-C (or SIGTERM) tears every deployment down (each run's stack, in the `with`), keeps
what was measured on disk, and `--resume` measures the missing variants together again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any

from rich.progress import Progress

from experiments.backends.base import Backend
from experiments.errors import UserError
from experiments.load.capacity import CapacityResult
from experiments.model import Observations, SurvivalResult
from experiments.results import RunStore
from experiments.runplan import RunPlan
from experiments.schedule import AnyLane, RoundPlan, run_rounds, run_together
from experiments.variant_run import VariantRun
from stacks.variant import Variant


class Sweep:
    """The stages of a run with every variant at once; `failed` names the variants lost."""

    def __init__(self, todo: list[Variant], plan: RunPlan, store: RunStore, backend: Backend,
                 progress: Progress, rng: random.Random | None = None) -> None:
        self.plan, self.store, self.backend = plan, store, backend
        self.runs = [VariantRun(v, plan, store, progress) for v in todo]
        self.live: list[VariantRun] = []
        self.failed: list[str] = []
        self.rng = rng or random.Random()
        self.rounds: dict[str, list[dict[str, Any]]] = {}
        """Each stage's rounds as run: the order and groups the lanes were measured in."""

    def measure(self) -> list[str]:
        capacity: dict[str, CapacityResult] = {}
        survival: dict[str, SurvivalResult] = {}
        observations: dict[str, Observations] = {}
        with ExitStack() as stack:
            for run in self.runs:
                stack.enter_context(run)
            for run in self.runs:  # every variant deployed before any is measured
                if self._guarded(run, run.deploy, self.backend) is not None:
                    self.live.append(run)
            capacity = self._capacities()
            self._sustained(capacity)
            survival = self._survival(capacity)
            for run in list(self.live):
                observed = self._guarded(run, run.observe)
                if observed is not None:
                    observations[run.variant.name] = observed
        for run in list(self.live):  # after every teardown: judge, price, store
            name = run.variant.name
            self._guarded(run, run.conclude, capacity[name], survival[name], observations[name])
        return self.failed

    # ---- stages ------------------------------------------------------------------------------

    def _capacities(self) -> dict[str, CapacityResult]:
        searches: dict[str, list[CapacityResult]] = {r.variant.name: [] for r in self.runs}
        for index in range(self.plan.repeat):
            lanes: dict[VariantRun, AnyLane] = {}
            for run in list(self.live):
                lane = self._guarded(run, run.capacity_lane, index,
                                     self.backend.lane_cores(run.variant))
                if lane is not None:
                    lanes[run] = lane
            self._schedule(f"capacity-{index + 1}", lanes)
            for run, lane in lanes.items():
                if lane.error is not None or lane.result is None:
                    self._lose(run, lane.error or RuntimeError("the search ended without a "
                                                               "result"))
                else:
                    searches[run.variant.name].append(lane.result)
        found: dict[str, CapacityResult] = {}
        for run in list(self.live):
            result = self._guarded(run, run.capacity, searches[run.variant.name])
            if result is not None:
                found[run.variant.name] = result
        return found

    def _sustained(self, capacity: dict[str, CapacityResult]) -> None:
        lanes: dict[VariantRun, AnyLane] = {}
        try:
            for run in list(self.live):
                lane = self._guarded(run, run.sustained_lane, capacity[run.variant.name],
                                     self.backend.lane_cores(run.variant))
                if lane is not None:
                    lanes[run] = lane
            self._schedule("sustained", lanes)
        finally:
            for run in list(self.live):
                lane = lanes.get(run)
                found = lane.result if lane is not None and lane.error is None else None
                self._guarded(run, run.end_sustained, found)
        for run, lane in lanes.items():
            if lane.error is not None and run in self.live:
                self._lose(run, lane.error)

    def _survival(self, capacity: dict[str, CapacityResult]) -> dict[str, SurvivalResult]:
        """One load for every variant, chosen from the smallest one's search (`smallest_first`
        put it first), run on all of them at once."""
        if not self.live:
            return {}
        smallest = self.live[0]
        rate, _ = smallest.survival_rps(capacity[smallest.variant.name])
        results: dict[str, SurvivalResult] = {}
        errors: dict[VariantRun, Exception] = {}

        def survive(run: VariantRun) -> None:
            try:
                results[run.variant.name] = run.survival(rate)
            except Exception as exc:  # noqa: BLE001 - one variant's failure, not the run's
                errors[run] = exc

        run_together([partial(survive, run) for run in self.live])
        for run, exc in errors.items():
            self._lose(run, exc)
        return results

    # ---- bookkeeping ---------------------------------------------------------------------------

    def _schedule(self, stage: str, lanes: dict[VariantRun, AnyLane]) -> None:
        """Run the lanes in rounds; what each round ran goes into run.json (`schedule`)."""
        if not lanes:
            return
        rounds = self.rounds.setdefault(stage, [])

        def on_round(plan: RoundPlan) -> None:
            rounds.append({"round": plan.number, "groups": plan.groups, "free": plan.free})
            self.backend.new_round()
            for run, lane in lanes.items():  # broken in the last round: torn down now
                if lane.error is not None and run in self.live:
                    self._lose(run, lane.error)
        try:
            run_rounds(list(lanes.values()), self.backend.concurrent_cores, self.rng, on_round)
        finally:
            self.store.update_info(schedule={
                "concurrent_cores": _finite(self.backend.concurrent_cores),
                "lane_cores": {r.variant.name: self.backend.lane_cores(r.variant)
                               for r in self.runs},
                "stages": self.rounds})

    def _guarded(self, run: VariantRun, call: Callable[..., Any], *args: Any) -> Any:
        """`call(*args)` for one variant; an error loses that variant only (a bad input or a
        Ctrl-C is the whole run's)."""
        try:
            result = call(*args)
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as exc:  # noqa: BLE001 - one broken variant must not lose the others
            self._lose(run, exc)
            return None
        return result

    def _lose(self, run: VariantRun, exc: Exception) -> None:
        if run.variant.name not in self.failed:
            self.failed.append(run.variant.name)
            run.save_error(exc)
        if run in self.live:
            self.live.remove(run)
        run.stack.close()  # its teardown now, not at the end of the run


def _finite(value: float) -> float | None:
    return value if value != float("inf") else None

"""One variant's stages, which the sweep (sweep.py) runs for every variant together
(PerfKitBenchmarker's stages with a `current_run_stage`; esrally's named pipeline steps):

    deploy → wait healthy → capacity → sustained capacity (burstable, standard credits) →
    survival → observe → teardown → diagnose → price → store.

Each stage is one method that delegates its rule to where it lives: the search to
`load/search.py`, the sustained search to `load/sustained.py`, the survival rate and verdict
to `load/survival.py`, the diagnosis to `diagnose.py`, the bill to `cost.py`, the record to
`results.py`, the progress lines to `report/progress.py`. The searches are handed out as lanes
(`schedule.Lane`) so that one schedule advances every variant's search in the same rounds.

Time dilation: on the local backend at cpu_scale s the box runs d = 1/s times slower than
the AWS box; the backend stretches the server's clocks, and this module the experiment's: the
SLO's p95 (`Slo.dilated`), the profile's warm-up, holds, cooldown and survival duration
(`Profile.dilated`, which also divides the first step's rate) and the survival rule's windows.

Teardown comes first, publishing after (PerfKitBenchmarker's order): everything a variant
needs later is observed while the deployment is up, its stack removes it, and only then are
the results judged and written.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from rich.progress import Progress

from experiments.backends.base import Backend, Deployment
from experiments.credits_model import Sustained
from experiments.load.capacity import CapacityResult, Probe
from experiments.load.driver import LoadSession, LoadSettings
from experiments.load.survival import (
    HAZARD_INTERVAL_S,
    SHOP_HAZARD_PATH,
    first_worker_loss_s,
    run_survival_rate,
    with_worker_loss,
    worker_loss_watch,
)
from experiments.model import Failure, Observations, Slo, StepResult, SurvivalResult
from experiments.report.progress import VariantProgress
from experiments.results import RunStore, VariantSummary, variant_record
from experiments.runplan import RunPlan
from experiments.schedule import Lane
from stacks.variant import Variant

if TYPE_CHECKING:
    from experiments.load.sustained import SustainedSearch
    from experiments.profiles import Profile
    from experiments.stats import Spread


class Stage(StrEnum):
    """Where a variant is (PerfKitBenchmarker's `current_run_stage`): named in progress and
    in error.json, so a failure says which stage it interrupted."""

    DEPLOY = "deploying and waiting healthy"
    CAPACITY = "capacity search"
    SUSTAINED = "sustained capacity (credits exhausted)"
    SURVIVAL = "survival test"
    OBSERVE = "collecting signals, tearing down"
    DIAGNOSE = "diagnosing"
    PRICE = "pricing"
    STORE = "storing"


@dataclass(eq=False)  # identity: the sweep keys its lanes by run
class VariantRun:
    """One variant's pass through the stages; each stage is one method with one job."""

    variant: Variant
    plan: RunPlan
    store: RunStore
    progress: Progress
    stage: Stage = Stage.DEPLOY
    dilation: float = 1.0
    """The backend's time dilation (1/cpu_scale locally, 1 on AWS)."""
    cpu_scale: float | None = None
    """Host cores per emulated vCPU (local); None: CPU samples are already in vCPUs (AWS)."""
    capacity_spread: Spread | None = None
    """The repeated searches' median, interval and spread (set by the capacity stage)."""
    sustained: Sustained | None = None
    forced_credits: tuple[float, float] | None = None
    """When the credit balance was forced empty (sustained stage): not a failure to diagnose."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Host wall-clock seconds each stage took, by `Stage` name (deploy includes waiting
    healthy, observe the teardown): where a run's time goes, e.g. which stage a shorter demo
    would have to give up."""
    deployment: Deployment | None = field(init=False, default=None)
    load: LoadSession | None = field(init=False, default=None)
    """The load generator the capacity and sustained searches share."""
    stack: ExitStack = field(init=False, default_factory=ExitStack)
    """This variant's deployment and load session, closed in reverse order (the teardown)."""
    _sustained: SustainedSearch | None = field(init=False, default=None)
    _stage_since: float | None = field(init=False, default=None)
    view: VariantProgress = field(init=False)
    _on_step: Callable[[StepResult], None] = field(init=False)

    def __post_init__(self) -> None:
        self.view = VariantProgress(self.variant.name, self.progress)
        self._on_step = self._recorder("steps.json")  # every repeat's steps, in one file

    @property
    def slo(self) -> Slo:
        """The SLO in the emulated box's time: p95 × dilation."""
        return self.plan.slo.dilated(self.dilation)

    @property
    def profile(self) -> Profile:
        """The profile in the emulated box's time: clocks × dilation, first rate ÷ dilation."""
        return self.plan.profile.dilated(self.dilation)

    def __enter__(self) -> VariantRun:
        self.view.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stack.close()  # its load sessions and its deployment, in reverse order
        finally:
            self.view.__exit__(*exc_info)

    def deploy(self, backend: Backend) -> Deployment:
        """Deploy and wait healthy; the backend's teardown waits in this run's stack (closed
        when the run ends, or early when this variant fails), and so does the load session
        the capacity and sustained searches share."""
        self.dilation = float(backend.dilation or 1.0)
        self.cpu_scale = backend.cpu_scale
        self.store.set_aside_partial(self.variant.name)
        self.store.save_json(self.variant.name, "variant.json", variant_record(self.variant))
        self.enter(Stage.DEPLOY)
        self.deployment = self.stack.enter_context(backend.deployed(self.variant))
        self.load = self.stack.enter_context(
            LoadSession(self.deployment.url, self._load(self.profile.hazard_weight_capacity)))
        return self.deployment

    def capacity_lane(self, index: int, cores: float) -> Lane[Probe, StepResult, CapacityResult]:
        """Search number `index` (of `--repeat`) as a lane of the run's schedule: guided by
        the deployment's CPU signal, ending in a confirmation hold."""
        from experiments.load.search import capacity_prober, new_capacity_search

        profile, deployment, load = self.profile, self.live, self._session()
        self.enter(Stage.CAPACITY, total=profile.max_steps + (1 if profile.confirm_hold_s else 0),
                   detail=f"search {index + 1} of {self.plan.repeat}" if self.plan.repeat > 1
                   else "")

        def on_rate(rps: float, phase: str) -> None:
            self.view.describe(f"{'confirming ' if phase == 'confirm' else ''}{rps:.1f} req/s")

        return Lane(self.variant.name,
                    new_capacity_search(load, deployment, profile, self.slo, self._on_step),
                    capacity_prober(load, deployment, profile, on_rate), cores)

    def capacity(self, searches: list[CapacityResult]) -> CapacityResult:
        """`--repeat N` independent searches. The result is the median search's (its steps and
        p95, so that pricing and diagnosis read the search the capacity names) with capacity =
        the median; steps.json keeps every search's steps, `capacity_spread` every figure."""
        from experiments.stats import spread

        for capacity in searches:
            bound = capacity.bound_sentence()
            self.view.say(f"  {self.variant.name}: {capacity.verdict}"
                          + (f"; {bound}" if bound else ""))
        figures = self.capacity_spread = spread([c.capacity_rps for c in searches])
        median = min(searches, key=lambda c: abs(c.capacity_rps - figures.median))
        return replace(median, capacity_rps=figures.median)

    def sustained_lane(self, burst: CapacityResult, cores: float
                       ) -> Lane[Probe, StepResult, CapacityResult] | None:
        """Burstable, standard credits: the capacity at the baseline (load/sustained.py), as a
        lane of the run's schedule with the balance emptied now (`end_sustained` restores it);
        None when the figure needs no search (`sustained` is then set)."""
        from experiments.load.sustained import SustainedSearch

        profile = self.profile
        search = self._sustained = SustainedSearch(
            self.variant, profile, self.slo, self.plan.credits, self.cpu_scale,
            self._load(profile.hazard_weight_capacity))
        self.enter(Stage.SUSTAINED, total=search.max_steps)
        begun = search.start(self.live, burst)
        if not isinstance(begun, float):
            self.sustained = begun
            return None
        return Lane(self.variant.name,
                    search.search(begun, self._recorder("sustained-steps.json", "sustained ")),
                    search.prober(self._session(), self.live,
                                  lambda rps: self.view.describe(f"{rps:.1f} req/s")),
                    cores)

    def end_sustained(self, found: CapacityResult | None) -> None:
        """Restore the credit balance (in the caller's `finally`) and keep the figure."""
        search = self._sustained
        if search is None:
            return
        try:
            search.end(self.live)
        finally:
            self.forced_credits = search.forced_window
        if found is not None:
            self.sustained = search.result(found)

    def survival_rps(self, capacity: CapacityResult) -> tuple[float, str]:
        """The run's one survival rate, stored in run.json so later variants and --resume
        reuse it (load/survival.py says how it is chosen)."""
        rate, source = run_survival_rate(
            self.store.info.get("survival") or {},
            [s.offered_rps for s in capacity.steps if s.passed is False
             and not s.generator_saturated],
            self.variant.name, capacity.capacity_rps, self.plan.survival_rps,
            self.plan.profile.growth)
        self.store.update_info(survival={"offered_rps": rate, "source": source})
        return rate, source

    def survival(self, rate: float) -> SurvivalResult:
        """The run's one survival load for up to the profile's limit (stops at the server's
        first worker loss)."""
        deployment = self.live
        limit_s = self.profile.survival_limit_s
        hazard = SHOP_HAZARD_PATH if self.plan.shop_hazard else None
        every_s = HAZARD_INTERVAL_S * self.dilation
        self.enter(Stage.SURVIVAL, total=limit_s, detail=f"{rate:g} req/s"
                   + (f" + {SHOP_HAZARD_PATH} every {every_s:g} s" if hazard else ""))
        # The hazard comes as its own stream; the locustfile's weight would double it.
        weight = 0 if hazard else self.profile.hazard_weight_survival
        with LoadSession(deployment.url, self._load(weight)) as load:
            survival = load.survival(0, limit_s, offered_rps=rate, dilation=self.dilation,
                                     hazard_path=hazard, hazard_rps=1 / every_s,
                                     on_tick=self.view.at,
                                     server_failed=worker_loss_watch(deployment.logs_since))
        self.store.save_json(self.variant.name, "survival-clients.json", survival.to_dict())
        return survival

    def observe(self) -> Observations:
        """Signals and logs from deploy until now, then the teardown (this run's stack)."""
        self.enter(Stage.OBSERVE)
        try:
            observations = self.live.observe()
            self.store.save_observations(self.variant.name, observations)
        finally:
            self.stack.close()
        return observations

    def conclude(self, capacity: CapacityResult, survival: SurvivalResult,
                 observations: Observations) -> VariantSummary:
        """After the teardown: judge survival by the server's own worker losses, diagnose,
        price and store."""
        survival = with_worker_loss(survival, observations)
        self.store.save_json(self.variant.name, "survival.json", survival.to_dict())
        failure = self.diagnose(capacity, survival, observations)
        return self.finish(capacity, survival, observations, failure)

    def diagnose(self, capacity: CapacityResult, survival: SurvivalResult,
                 observations: Observations) -> Failure:
        """The first failure and its cause; the window when we emptied the credit balance is
        left out (it stays in signals.csv and logs.jsonl)."""
        from experiments.diagnose import diagnose

        self.switch(Stage.DIAGNOSE)
        failure = diagnose(self.variant, observations.outside(self.forced_credits),
                           capacity.steps, survival, self.slo)
        self.store.save_json(self.variant.name, "diagnosis.json", failure.to_dict())
        return failure

    def finish(self, capacity: CapacityResult, survival: SurvivalResult,
               observations: Observations, failure: Failure) -> VariantSummary:
        """Price at capacity, then build and store the variant's record."""
        from experiments.cost import price_at_capacity

        self.switch(Stage.PRICE)
        priced = price_at_capacity(self.variant, capacity.capacity_rps, capacity.steps,
                                   observations, self.sustained, self.cpu_scale)
        self.switch(Stage.STORE)  # the stages' clocks end here: storing is the record itself
        entry = VariantSummary.build(
            self.variant, capacity.capacity_rps, capacity.p95_ms_at_capacity, capacity.steps,
            survival, failure, priced.cost, self.plan.profile.name,
            first_worker_loss_s=first_worker_loss_s(survival, observations),
            burst=priced.burst, dilation=self.dilation)
        if self.capacity_spread is not None:
            entry = entry.with_spread(self.capacity_spread)
        entry = replace(entry, **capacity.summary_fields(),
                        stage_seconds={k: round(v, 1) for k, v in self.stage_seconds.items()})
        self.store.finish_variant(entry)
        self.view.done(entry, survival, failure)
        return entry

    # ---- bookkeeping ---------------------------------------------------------------------

    def enter(self, stage: Stage, total: float | None = None, detail: str = "") -> None:
        self.switch(stage)
        self.view.enter(str(stage), total, detail)

    def switch(self, stage: Stage) -> None:
        """Stop the current stage's clock (adding to `stage_seconds`; a stage entered again,
        e.g. one capacity search per repeat, adds up) and start `stage`'s."""
        now = time.monotonic()
        if self._stage_since is not None:
            key = self.stage.name.lower()
            self.stage_seconds[key] = self.stage_seconds.get(key, 0.0) + now - self._stage_since
        self.stage, self._stage_since = stage, now

    def _recorder(self, filename: str, what: str = "") -> Callable[[StepResult], None]:
        """A step callback: keep the step in `filename` (every search's, as they come), print
        it and advance the bar."""
        steps: list[StepResult] = []

        def on_step(step: StepResult) -> None:
            steps.append(step)
            self.store.save_json(self.variant.name, filename, [x.to_dict() for x in steps])
            self.view.step(step, what)
            self.view.advance()
        return on_step

    @property
    def live(self) -> Deployment:
        if self.deployment is None:
            raise RuntimeError(f"{self.variant.name} is not deployed")
        return self.deployment

    def _session(self) -> LoadSession:
        if self.load is None:
            raise RuntimeError(f"{self.variant.name} has no load session")
        return self.load

    def _load(self, hazard_weight: int) -> LoadSettings:
        return LoadSettings(locustfile=self.plan.locustfile, load_workers=self.plan.load_workers,
                            env={"SHOP_ALL_WEIGHT": str(hazard_weight)}, dilation=self.dilation)

    def save_error(self, exc: Exception) -> None:
        name = self.variant.name
        self.store.save_json(name, "error.json", {
            "stage": self.stage.name.lower(), "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()})
        self.view.say(f"[red]{name}: {type(exc).__name__} during {self.stage}: {exc} (details "
                      f"in {self.store.variant_dir(name)}/error.json); continuing.[/red]")

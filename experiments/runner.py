"""The experiment runner: every variant goes through the same stages, in this order.

    plan (runplan.py) → for each variant (smallest first): deploy → wait healthy → capacity →
    sustained capacity (burstable, standard credits) → survival → observe → teardown →
    diagnose → price → store; then the report.

Time dilation: on the local backend at cpu_scale s the box runs d = 1/s times slower than
the AWS box; the backend stretches the server's clocks, and the runner the experiment's: the
SLO's p95 (`Slo.dilated`), the survival duration and the survival rule's windows.

Teardown comes first, publishing after (PerfKitBenchmarker's order): everything a variant
needs later is observed while the deployment is up, the backend's `finally` removes it, and
only then are the results judged and written. A Ctrl-C or an error keeps every finished
variant; the run is marked incomplete and `--resume RUN_ID` measures only what is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from experiments.backends.base import Backend, Deployment
from experiments.credits_model import Sustained
from experiments.errors import UserError
from experiments.load.capacity import CapacityResult, find_capacity
from experiments.load.survival import (
    HAZARD_INTERVAL_S,
    SHOP_HAZARD_PATH,
    first_worker_loss_s,
    smallest_first,
    survival_rate,
    with_worker_loss,
)
from experiments.model import Failure, Observations, Slo, StepResult, SurvivalResult
from experiments.report.console import build_report_or_say_how, print_summary_table
from experiments.results import RunStore, VariantSummary, variant_record
from experiments.runplan import RunPlan, make_run_backend, plan_run
from experiments.stats import Spread
from stacks.variant import Variant

console = Console()
if not console.is_terminal:  # logs and CI: keep the summary table readable, not 80 columns
    console = Console(width=150)


FORCED_CREDITS_MARGIN_S = 3.0
"""After the balance is restored the sampler applies the full quota within ~1 s; keep clear."""


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


# ---- the command ---------------------------------------------------------------------------

def run_command(args: argparse.Namespace) -> int:
    """`python -m experiments run`: plan, measure what is missing, report."""
    store, plan = plan_run(args)
    backend = make_run_backend(plan)  # preflight (CLI, credentials, budget) before any folder
    if store is None:
        store = RunStore.create(plan.out, plan.run_id, plan.run_info(backend))
    todo = smallest_first([v for v in plan.variants
                           if v.name not in store.completed_variants()])
    if not todo:  # a complete run keeps its own status and finished_at
        console.print(f"Run {plan.run_id} already has every variant; rebuilding its report.")
        store.write_summary()
        build_report_or_say_how(store.dir, console)
        print_summary_table(store.summary(), store.variant_summaries(), console)
        return _thresholds_status(plan, store, 0)
    store.update_info(status="running")
    failed: list[str] = []
    try:
        with _progress() as progress:
            overall = progress.add_task("variants", total=len(plan.variants),
                                        completed=len(plan.variants) - len(todo))
            for variant in todo:
                run = VariantRun(variant, plan, store, progress)
                try:
                    run.measure(backend)
                except (KeyboardInterrupt, UserError):
                    raise
                except Exception as exc:  # one broken variant must not lose the others
                    failed.append(variant.name)
                    run.save_error(exc)
                progress.advance(overall)
    finally:
        complete = set(store.completed_variants()) >= {v.name for v in plan.variants}
        store.update_info(status="complete" if complete else "incomplete",
                          finished_at=time.time())
        store.write_summary()
        build_report_or_say_how(store.dir, console)
        if not complete:
            console.print(f"[yellow]Run {plan.run_id} is incomplete; finish it with "
                          f"`python -m experiments run --resume {plan.run_id} --out {plan.out}`."
                          "[/yellow]")
    print_summary_table(store.summary(), store.variant_summaries(), console)
    console.print(f"Results: {store.dir}")
    return _thresholds_status(plan, store, 1 if failed else 0)


def _thresholds_status(plan: RunPlan, store: RunStore, status: int) -> int:
    """Judge `--threshold`s on the written summary: one line per failure, k6's status 99
    (a failed variant's status 1 wins: the run is broken, not merely slower)."""
    from experiments.thresholds import EXIT_THRESHOLDS_FAILED, failures

    if not plan.thresholds:
        return status
    lines = failures(plan.thresholds, store.summary(), [v.name for v in plan.variants])
    for line in lines:
        print(f"scalelab: {line}", file=sys.stderr)
    if not lines:
        console.print(f"All {len(plan.thresholds)} thresholds passed.")
    return status or (EXIT_THRESHOLDS_FAILED if lines else 0)


# ---- one variant ---------------------------------------------------------------------------

@dataclass
class VariantRun:
    """One variant's pass through the stages; each stage is one method with one job."""

    variant: Variant
    plan: RunPlan
    store: RunStore
    progress: Progress
    stage: Stage = Stage.DEPLOY
    steps: list[StepResult] = field(default_factory=list)
    capacity_spread: Spread | None = None
    """The repeated searches' median, interval and spread (set by the capacity stage)."""
    dilation: float = 1.0
    """The backend's time dilation (1/cpu_scale locally, 1 on AWS)."""
    cpu_scale: float | None = None
    """Host cores per emulated vCPU (local); None: CPU samples are already in vCPUs (AWS)."""
    sustained: Sustained | None = None
    forced_credits: tuple[float, float] | None = None
    """When the credit balance was forced empty (sustained stage): not a failure to diagnose."""
    burst: dict[str, Any] = field(default_factory=dict)
    """summary.json's burst-vs-sustained keys (credits_model.burst_summary)."""
    _task: TaskID = field(init=False)

    @property
    def slo(self) -> Slo:
        """The SLO in the emulated box's time: p95 × dilation."""
        return self.plan.slo.dilated(self.dilation)

    def measure(self, backend: Backend) -> VariantSummary:
        self.dilation = float(getattr(backend, "dilation", 1.0) or 1.0)
        self.cpu_scale = getattr(backend, "cpu_scale", None)
        self._set_aside_partial()
        self.store.save_json(self.variant.name, "variant.json", variant_record(self.variant))
        self._task = self.progress.add_task(self._label(), total=None)
        try:
            capacity, survival, observations = self.deployed_stages(backend)
        finally:
            self.progress.remove_task(self._task)
        survival = with_worker_loss(survival, observations)
        self.store.save_json(self.variant.name, "survival.json", survival.to_dict())
        failure = self.diagnose(capacity, survival, observations)
        cost = self.price(capacity, observations)
        return self.finish(capacity, survival, observations, failure, cost)

    def deployed_stages(self, backend: Backend
                        ) -> tuple[CapacityResult, SurvivalResult, Observations]:
        """deploy → capacity → survival → observe; the backend tears down in its `finally`."""
        self.enter(Stage.DEPLOY)
        with backend.deployed(self.variant) as deployment:
            try:
                capacity = self.capacity(deployment)
                self.sustained = self.sustained_capacity(deployment, capacity)
                survival = self.survival(deployment, capacity)
            finally:
                observations = self.observe(deployment)
        return capacity, survival, observations

    def capacity(self, deployment: Deployment) -> CapacityResult:
        """`--repeat N` independent searches. The result is the median search's (its steps and
        p95, so that pricing and diagnosis read the search the capacity names) with capacity =
        the median; steps.json keeps every search's steps, `capacity_spread` every figure."""
        from experiments.stats import spread

        searches = []
        for i in range(self.plan.repeat):
            searches.append(self._capacity_search(deployment, i))
        figures = spread([c.capacity_rps for c in searches])
        self.capacity_spread = figures
        median = min(searches, key=lambda c: abs(c.capacity_rps - figures.median))
        return replace(median, capacity_rps=figures.median)

    def _capacity_search(self, deployment: Deployment, index: int) -> CapacityResult:
        """Guided search (the deployment's CPU signal) ending in a confirmation hold."""
        from experiments.load.driver import LoadSession
        from experiments.load.search import search_capacity

        profile = self.plan.profile
        detail = f"search {index + 1} of {self.plan.repeat}" if self.plan.repeat > 1 else ""
        self.enter(Stage.CAPACITY, total=profile.max_steps + (1 if profile.confirm_hold_s else 0),
                   detail=detail)

        def on_rate(rps: float, phase: str) -> None:
            what = "confirming " if phase == "confirm" else ""
            self.progress.update(self._task, description=self._label(f"{what}{rps:.1f} req/s"))

        with LoadSession(deployment.url, self._load_settings(profile.hazard_weight_capacity)
                         ) as load:
            capacity = search_capacity(load, deployment, profile, self.slo,
                                       on_step=self._on_step, on_rate=on_rate)
        self.progress.console.print(f"  {self.variant.name}: {capacity.verdict}"
                                    + (f"; {capacity.bound_sentence()}"
                                       if capacity.bound_sentence() else ""))
        return capacity

    def sustained_capacity(self, deployment: Deployment, burst: CapacityResult
                           ) -> Sustained | None:
        """Burstable, standard credits: the capacity at the baseline, credits exhausted.

        Measured on the same deployment when the backend can empty the balance (local), by a
        shorter search aimed at the utilization-law estimate; otherwise (AWS) estimated from
        the baseline fraction and the CPU measured at capacity, and labelled as such.
        """
        from experiments.credits_model import estimated_sustained_rps
        from experiments.load.driver import LoadSession
        from experiments.model import step_at_capacity
        from stacks.catalog import load_catalog

        it = load_catalog().instance(self.variant.instance_type)
        if not it.burstable or self.variant.credit_mode != "standard" or burst.capacity_rps <= 0:
            return None
        at = step_at_capacity(burst.steps)
        used = self._vcpus_used(deployment, at) if at else None
        baseline = it.baseline_per_vcpu * it.vcpu
        estimate = estimated_sustained_rps(burst.capacity_rps, used or float(it.vcpu), baseline)
        if self.plan.credits == "exhausted":
            return Sustained(burst.capacity_rps, "measured", used, [],
                             "the run started with credits exhausted: the capacity is sustained")
        started = time.time()
        if not deployment.set_credits("exhausted"):
            return Sustained(round(estimate, 2), "estimated", used, [],
                             "credits cannot be emptied on this backend: burst capacity × "
                             "baseline ÷ CPU used at capacity")
        profile = self.plan.profile
        steps: list[StepResult] = []
        self.enter(Stage.SUSTAINED, total=max(2, profile.max_steps // 2))
        try:
            with LoadSession(deployment.url, self._load_settings(profile.hazard_weight_capacity)
                             ) as load:
                def measure(rps: float) -> StepResult:
                    self.progress.update(self._task, description=self._label(f"{rps:.1f} req/s"))
                    result = load.step(rps, profile.warmup_s, profile.hold_s)
                    time.sleep(profile.cooldown_s)
                    return result

                def on_step(step: StepResult) -> None:
                    steps.append(step)
                    self.store.save_json(self.variant.name, "sustained-steps.json",
                                         [x.to_dict() for x in steps])
                    self._print_step(step, "sustained ")
                    self.progress.advance(self._task)

                # Aimed below the estimate, so the search grows into the answer in few steps.
                found = find_capacity(measure, self.slo, start_rps=max(0.5, 0.8 * estimate),
                                      growth=profile.growth, precision=profile.precision,
                                      max_steps=max(2, profile.max_steps // 2), on_step=on_step)
        finally:
            deployment.set_credits(self.plan.credits)  # the survival test starts as planned
            self.forced_credits = (started, time.time() + FORCED_CREDITS_MARGIN_S)
        return Sustained(found.capacity_rps, "measured", used, found.steps, found.verdict)

    def _vcpus_used(self, deployment: Deployment, step: StepResult) -> float | None:
        from experiments.credits_model import vcpus_used_during

        return vcpus_used_during(step, deployment.observe().signals, self.cpu_scale)

    def survival_rps(self, capacity: CapacityResult) -> tuple[float, str]:
        """The run's one survival rate: stored in run.json (so --resume reuses it), else
        --survival-rps, else where this variant (measured smallest first) failed."""
        stored = self.store.info.get("survival") or {}
        if stored.get("offered_rps"):
            return float(stored["offered_rps"]), str(stored.get("source", ""))
        failed = [s.offered_rps for s in capacity.steps
                  if s.passed is False and not s.generator_saturated]
        found = survival_rate(failed, self.plan.survival_rps)
        if found is not None:
            rate = found
        if self.plan.survival_rps:
            source = "--survival-rps"
        elif found is not None:
            source = f"the lowest rate {self.variant.name} failed its capacity search at"
        else:
            rate = max(1.0, capacity.capacity_rps * self.plan.profile.growth)
            source = (f"{self.variant.name}'s capacity × {self.plan.profile.growth:g} (its "
                      "search never failed)")
        self.store.update_info(survival={"offered_rps": rate, "source": source})
        return rate, source

    def survival(self, deployment: Deployment, capacity: CapacityResult) -> SurvivalResult:
        from experiments.load.driver import LoadSession

        profile = self.plan.profile
        rate, _ = self.survival_rps(capacity)
        limit_s = profile.survival_limit_s * self.dilation
        hazard = SHOP_HAZARD_PATH if self.plan.shop_hazard else None
        self.enter(Stage.SURVIVAL, total=limit_s, detail=f"{rate:g} req/s"
                   + (f" + {SHOP_HAZARD_PATH} every {HAZARD_INTERVAL_S * self.dilation:g} s"
                      if hazard else ""))
        # The hazard comes as its own stream; the locustfile's weight would double it.
        with LoadSession(deployment.url, self._load_settings(0 if hazard else
                                                             profile.hazard_weight_survival)
                         ) as load:
            survival = load.survival(
                0, limit_s, offered_rps=rate, dilation=self.dilation,
                hazard_path=hazard, hazard_rps=1 / (HAZARD_INTERVAL_S * self.dilation),
                on_tick=lambda elapsed: self.progress.update(self._task, completed=elapsed))
        self.store.save_json(self.variant.name, "survival-clients.json", survival.to_dict())
        return survival

    def observe(self, deployment: Deployment) -> Observations:
        self.enter(Stage.OBSERVE)
        observations = deployment.observe()
        self.store.save_observations(self.variant.name, observations)
        return observations

    def diagnose(self, capacity: CapacityResult, survival: SurvivalResult,
                 observations: Observations) -> Failure:
        from experiments.diagnose import diagnose

        self.stage = Stage.DIAGNOSE
        if self.forced_credits is not None:
            # The emptied balance was our doing: its baseline quota and credit lines must not
            # be named as the variant's failure (they stay in signals.csv and logs.jsonl).
            lo, hi = self.forced_credits
            observations = Observations(
                signals=[x for x in observations.signals if not lo <= x.t <= hi],
                logs=[x for x in observations.logs if not lo <= x.t <= hi])
        failure = diagnose(self.variant, observations, capacity.steps, survival, self.slo)
        self.store.save_json(self.variant.name, "diagnosis.json", failure.to_dict())
        return failure

    def price(self, capacity: CapacityResult, observations: Observations) -> dict[str, Any]:
        """The bill at capacity; unlimited-mode surplus credits at the CPU measured there (the
        price of *sustaining* it), else what the run measured; plus per-dollar figures on the
        sustained capacity too (what the ★ ranks by default)."""
        from experiments.cost import MeasuredTraffic, price_variant, surplus_credits_per_hour
        from experiments.credits_model import burst_summary, vcpus_used_during
        from experiments.model import step_at_capacity
        from stacks.catalog import load_catalog

        self.stage = Stage.PRICE
        at_capacity = step_at_capacity(capacity.steps)
        traffic = MeasuredTraffic.from_step(at_capacity) if at_capacity else None
        used = (vcpus_used_during(at_capacity, observations.signals, self.cpu_scale)
                if at_capacity else None)
        it = load_catalog().instance(self.variant.instance_type)
        self.burst = burst_summary(it, self.variant.credit_mode, self.variant.count,
                                   capacity.capacity_rps, used, self.sustained)
        surplus = surplus_credits_per_hour(observations)
        runway = self.burst.get("credit_runway") or {}
        if runway.get("mode") == "unlimited":
            surplus = runway["surplus_credits_per_hour"] * self.variant.count
        breakdown = price_variant(self.variant, traffic=traffic,
                                  surplus_credits_per_hour=surplus)
        cost = breakdown.to_summary(capacity.capacity_rps)
        sustained_rps = self.burst.get("sustained_capacity_rps")
        per_usd = breakdown.capacity_per_usd_hour(sustained_rps)
        cost["sustained_capacity_per_usd_hour"] = None if per_usd is None else round(per_usd, 2)
        return cost

    def finish(self, capacity: CapacityResult, survival: SurvivalResult,
               observations: Observations, failure: Failure, cost: dict[str, Any]
               ) -> VariantSummary:
        self.stage = Stage.STORE
        entry = VariantSummary.build(
            self.variant, capacity.capacity_rps, capacity.p95_ms_at_capacity, capacity.steps,
            survival, failure, cost, self.plan.profile.name,
            first_worker_loss_s=first_worker_loss_s(survival, observations),
            burst=self.burst, dilation=self.dilation)
        if self.capacity_spread is not None:
            spread = self.capacity_spread
            entry = replace(entry, capacity_runs=[round(r, 2) for r in spread.runs],
                            capacity_ci95=None if spread.ci95 is None else
                            [round(spread.ci95[0], 2), round(spread.ci95[1], 2)],
                            capacity_rsd=None if spread.rsd is None else round(spread.rsd, 4))
        entry = replace(entry, **capacity.summary_fields())
        self.store.finish_variant(entry)
        sustained = self.burst.get("sustained_capacity_rps")
        self.progress.console.print(
            f"[bold]{self.variant.name}[/bold]: capacity {capacity.capacity_rps:.1f} req/s"
            + (f" (sustained {sustained:.1f})" if sustained not in (None, capacity.capacity_rps)
               else "") + ", "
            f"survival {'held' if survival.held else f'{survival.seconds:.0f} s'}, "
            f"failure {failure.kind}")
        return entry

    # ---- bookkeeping ---------------------------------------------------------------------

    def enter(self, stage: Stage, total: float | None = None, detail: str = "") -> None:
        self.stage = stage
        self.progress.update(self._task, description=self._label(detail), total=total,
                             completed=0)

    def _label(self, detail: str = "") -> str:
        return f"{self.variant.name}: {self.stage}" + (f", {detail}" if detail else "")

    def _on_step(self, step: StepResult) -> None:
        self.steps.append(step)
        self.store.save_json(self.variant.name, "steps.json", [s.to_dict() for s in self.steps])
        self._print_step(step)
        self.progress.advance(self._task)

    def _print_step(self, step: StepResult, what: str = "") -> None:
        mark = "[green]pass[/green]" if step.passed else "[red]fail[/red]"
        self.progress.console.print(
            f"  {self.variant.name}: {what}{step.offered_rps:7.1f} req/s offered → "
            f"{step.achieved_rps:7.1f} achieved, p95 {step.p95_verdict_ms:7.1f} ms, "
            f"errors {step.error_rate:6.1%}  {mark} {step.verdict}")

    def _load_settings(self, hazard_weight: int) -> Any:
        from experiments.load.driver import LoadSettings

        return LoadSettings(locustfile=self.plan.locustfile, load_workers=self.plan.load_workers,
                            env={"SHOP_ALL_WEIGHT": str(hazard_weight)})

    def _set_aside_partial(self) -> None:
        """An interrupted attempt's files are kept beside, never overwritten."""
        folder = self.store.variant_dir(self.variant.name)
        if folder.exists() and not (folder / "result.json").exists():
            folder.rename(folder.with_name(f"{self.variant.name}.interrupted-{int(time.time())}"))

    def save_error(self, exc: Exception) -> None:
        name = self.variant.name
        self.store.save_json(name, "error.json", {
            "stage": self.stage.name.lower(), "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()})
        self.progress.console.print(
            f"[red]{name}: {type(exc).__name__} during {self.stage}: {exc} (details in "
            f"{self.store.variant_dir(name)}/error.json); continuing.[/red]")


# ---- output --------------------------------------------------------------------------------

@contextmanager
def _progress() -> Iterator[Progress]:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        yield progress

"""The experiment runner: plan, then every variant through the same stages together, then the
report.

    plan (runplan.py) → every variant, smallest first, together (sweep.py, variant_run.py):
    deploy → wait healthy → capacity → sustained capacity → survival → observe → teardown →
    diagnose → price → store → the report (report/) → the thresholds (thresholds.py).

A Ctrl-C or an error keeps every finished variant: the run is marked incomplete, its report is
still written, and `--resume RUN_ID` measures only what is missing. One broken variant does
not lose the others (its error.json names the stage it interrupted).
"""

from __future__ import annotations

import argparse
import time

from experiments.backends.base import Backend
from experiments.load.survival import smallest_first
from experiments.report.console import build_report_or_say_how, print_summary_table
from experiments.report.progress import console, run_progress
from experiments.results import RunStore
from experiments.runplan import RunPlan, make_run_backend, plan_run
from experiments.sweep import Sweep
from stacks.variant import Variant


def run_command(args: argparse.Namespace) -> int:
    """`python -m experiments run`: plan, measure what is missing, report."""
    from experiments.thresholds import exit_status

    store, plan = plan_run(args)
    backend = make_run_backend(plan)  # preflight (CLI, credentials, budget) before any folder
    if store is None:
        store = RunStore.create(plan.out, plan.run_id, plan.run_info(backend))
    names = [v.name for v in plan.variants]
    todo = smallest_first([v for v in plan.variants
                           if v.name not in store.completed_variants()])
    failed: list[str] = []
    if not todo:  # a complete run keeps its own status and finished_at
        console.print(f"Run {plan.run_id} already has every variant; rebuilding its report.")
        store.write_summary()
        build_report_or_say_how(store.dir, console)
    else:
        failed = measure_all(todo, plan, store, backend)
    print_summary_table(store.summary(), store.variant_summaries(), console)
    if todo:
        console.print(f"Results: {store.dir}")
    return exit_status(plan.thresholds, store.summary(), names, 1 if failed else 0,
                       console.print)


def measure_all(todo: list[Variant], plan: RunPlan, store: RunStore, backend: Backend
                ) -> list[str]:
    """Measure the variants together (sweep.py); the names of those that failed. The report
    is written (and the run marked complete or incomplete) whatever happens, Ctrl-C
    included."""
    store.update_info(status="running")
    failed: list[str] = []
    try:
        with run_progress() as progress:
            failed = Sweep(todo, plan, store, backend, progress).measure()
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
    return failed

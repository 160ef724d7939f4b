"""The experiment runner: deploy → wait healthy → capacity search → survival → collect →
tear down → diagnose → price → store, for every variant, the same way.

Teardown comes first, publishing after (PerfKitBenchmarker's order): everything a variant
needs later is observed while the deployment is up, then the backend's `finally` removes it,
then the results are written. A Ctrl-C or an error keeps every finished variant; the run is
marked incomplete and `--resume RUN_ID` measures only what is missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import subprocess
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from experiments.backends import make_backend
from experiments.backends.base import Backend
from experiments.errors import UserError
from experiments.model import Failure, Observations, Slo, StepResult, SurvivalResult
from experiments.profiles import Profile, get_profile
from experiments.results import RunStore
from stacks.variant import PROJECT_DIR, Variant, load_variants

console = Console()
if not console.is_terminal:  # logs and CI: keep the summary table readable, not 80 columns
    console = Console(width=150)


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs, resolved and validated before anything is deployed."""

    run_id: str
    backend_name: str
    variants: list[Variant]
    profile: Profile
    slo: Slo
    locustfile: Path
    load_workers: int
    out: Path
    cpu_scale: float | None
    credits: str
    max_usd: float | None
    app_overrides: dict[str, str]


# ---- the command ---------------------------------------------------------------------------

def run_command(args: argparse.Namespace) -> int:
    """`python -m experiments run`: resolve the plan, measure what is missing, report."""
    store, plan = _open_or_create(args)
    backend = _make_backend(plan)  # preflight (CLI, credentials, budget) before any folder
    if store is None:
        store = RunStore.create(plan.out, plan.run_id, _run_info(plan))
    todo = [v for v in plan.variants if v.name not in store.completed_variants()]
    if not todo:
        console.print(f"Run {plan.run_id} already has every variant; rebuilding its report.")
    store.update_info(status="running")
    failed: list[str] = []
    try:
        with _progress() as progress:
            overall = progress.add_task("variants", total=len(plan.variants),
                                        completed=len(plan.variants) - len(todo))
            for variant in todo:
                try:
                    measure_variant(variant, plan, backend, store, progress)
                except (KeyboardInterrupt, UserError):
                    raise
                except Exception as exc:  # one broken variant must not lose the others
                    failed.append(variant.name)
                    store.save_json(variant.name, "error.json", {
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()})
                    progress.console.print(f"[red]{variant.name}: {type(exc).__name__}: {exc} "
                                           f"(details in {store.variant_dir(variant.name)}/"
                                           "error.json); continuing.[/red]")
                progress.advance(overall)
    finally:
        complete = set(store.completed_variants()) >= {v.name for v in plan.variants}
        store.update_info(status="complete" if complete else "incomplete",
                          finished_at=time.time())
        store.write_summary()
        _build_report(store)
        if not complete:
            console.print(f"[yellow]Run {plan.run_id} is incomplete; finish it with "
                          f"`python -m experiments run --resume {plan.run_id} --out {plan.out}`."
                          "[/yellow]")
    print_summary_table(store.summary())
    console.print(f"Results: {store.dir}")
    return 1 if failed else 0


def _open_or_create(args: argparse.Namespace) -> tuple[RunStore | None, RunPlan]:
    """Reopen a run for --resume, or plan a new one (its folder is created by the caller)."""
    if args.resume:
        store = RunStore.open(args.out / args.resume)
        info = store.info
        config = info.get("config", {})
        names = info.get("variants") or []
        variants = [_with_app(v, config.get("app_overrides") or {})
                    for v in load_variants(names)]
        plan = RunPlan(
            run_id=store.run_id, backend_name=info["backend"], variants=variants,
            profile=get_profile(config.get("profile", "quick")),
            slo=Slo.from_dict(info.get("slo") or {}),
            locustfile=Path(config["locustfile"]), load_workers=config.get("load_workers", 0),
            out=args.out, cpu_scale=info.get("cpu_scale"),
            credits=config.get("credits", "launch"), max_usd=config.get("max_usd"),
            app_overrides=config.get("app_overrides") or {})
        return store, plan

    overrides = _app_overrides(args)
    variants = [_with_app(v, overrides) for v in load_variants(args.variants)]
    locustfile = _check_locustfile(args.locustfile or _default_locustfile(variants[0]))
    cpu_scale = args.cpu_scale
    if args.backend == "local" and cpu_scale is None:
        from experiments.backends.local import LocalBackend

        # Sized for every stack in stacks/, not just this run's: runs stay comparable.
        cpu_scale = LocalBackend.choose_cpu_scale(load_variants())
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{args.backend}"
    plan = RunPlan(run_id=run_id, backend_name=args.backend, variants=variants,
                   profile=get_profile(args.profile), slo=Slo(p95_ms=args.slo_p95_ms),
                   locustfile=locustfile, load_workers=args.load_workers, out=args.out,
                   cpu_scale=cpu_scale if args.backend == "local" else None,
                   credits=args.credits, max_usd=args.max_usd, app_overrides=overrides)
    if (args.out / run_id).exists():
        raise UserError(f"results folder {args.out / run_id} already exists; wait a second or "
                        "choose another --out.")
    return None, plan


def _app_overrides(args: argparse.Namespace) -> dict[str, str]:
    """Bring-your-own-app flags, as AppSource field values (validated by the Variant)."""
    overrides: dict[str, str] = {}
    if args.app_dir is not None:
        if not args.app_dir.is_dir():
            raise UserError(f"--app-dir {args.app_dir} is not a directory; pass the folder that "
                            "holds your WSGI app.")
        if args.wsgi is None:
            raise UserError("--app-dir needs --wsgi MODULE:CALLABLE naming your app's WSGI "
                            "callable (for example app:application).")
        overrides.update(path=str(args.app_dir.resolve()), setup="", locustfile="")
    if args.wsgi is not None:
        overrides["wsgi"] = args.wsgi
    if args.health_path is not None:
        overrides["health_path"] = args.health_path
    if args.requirements is not None:
        if not args.requirements.is_file():
            raise UserError(f"--requirements {args.requirements} is not a readable file.")
        overrides["requirements"] = str(args.requirements.resolve())
    return overrides


def _with_app(variant: Variant, overrides: dict[str, str]) -> Variant:
    if not overrides:
        return variant
    app = replace(variant.app, **overrides)
    health = replace(variant.health_check, path=app.health_path)
    return variant.with_overrides(app=app, health_check=health)


def _default_locustfile(variant: Variant) -> Path:
    if not variant.app.locustfile:
        raise UserError("your own app needs --locustfile FILE describing its traffic (the shop's "
                        "shopper profile only fits the shop).")
    return variant.app.directory / variant.app.locustfile


def _check_locustfile(path: Path) -> Path:
    path = path.resolve()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise UserError(f"locustfile {path} cannot be read; pass a readable Python file with "
                        "one Locust user class.")
    return path


def _make_backend(plan: RunPlan) -> Backend:
    if plan.backend_name == "local":
        return make_backend("local", cpu_scale=plan.cpu_scale, credits=plan.credits)
    from experiments.cost import price_variant

    expected_hours = _expected_hours(plan)

    def estimate(variant: Variant) -> float:
        return price_variant(variant).hourly_usd * max(1.0, expected_hours)

    backend = make_backend("aws", run_id=plan.run_id, max_usd=plan.max_usd,
                           estimate_usd=estimate)
    backend.preflight(plan.variants)  # type: ignore[attr-defined]
    return backend


def _expected_hours(plan: RunPlan) -> float:
    """Deploy + measure + destroy for one variant, in hours (partial hours bill as full)."""
    p = plan.profile
    measure_s = p.max_steps * (p.warmup_s + p.hold_s + p.cooldown_s) + p.survival_limit_s
    return (measure_s + 15 * 60) / 3600


def _run_info(plan: RunPlan) -> dict[str, Any]:
    return {
        "backend": plan.backend_name,
        "created_at": time.time(),
        "variants": [v.name for v in plan.variants],
        "cpu_scale": plan.cpu_scale,
        "emulated": plan.backend_name == "local",
        "slo": plan.slo.to_dict(),
        "config": {
            "profile": plan.profile.name,
            "profile_settings": plan.profile.to_dict(),
            "locustfile": str(plan.locustfile),
            "load_workers": plan.load_workers,
            "credits": plan.credits,
            "max_usd": plan.max_usd,
            "app_overrides": plan.app_overrides,
        },
        "versions": _versions(),
        "git_revision": _git_revision(),
        "host": _host(),
    }


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("scalelab", "locust", "gunicorn", "django", "pulumi", "pulumi-aws", "boto3"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        first = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, timeout=5)
        versions["haproxy"] = first.stdout.split("\n", 1)[0].split(" ")[2]
    except (OSError, IndexError, subprocess.SubprocessError):
        versions["haproxy"] = "not installed"
    return versions


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5).stdout
        return rev + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _host() -> dict[str, Any]:
    import psutil

    cgroup = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    return {"hostname": socket.gethostname(), "cores": os.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total, "kernel": platform.release(),
            "cgroup": cgroup, "platform": platform.platform()}


# ---- one variant ---------------------------------------------------------------------------

def measure_variant(variant: Variant, plan: RunPlan, backend: Backend, store: RunStore,
                    progress: Progress) -> dict[str, Any]:
    """Measure one variant; returns its summary entry (also written as result.json)."""
    from experiments.load.capacity import CapacityResult, find_capacity
    from experiments.load.driver import LoadSession

    _set_aside_partial(store, variant.name)
    store.save_json(variant.name, "variant.json", _variant_record(variant))
    profile = plan.profile
    steps: list[StepResult] = []
    capacity: CapacityResult | None = None
    survival: SurvivalResult | None = None
    observations = Observations()
    phase = progress.add_task(f"{variant.name}: deploying", total=None)
    try:
        with backend.deployed(variant) as deployment:
            try:
                progress.update(phase, description=f"{variant.name}: capacity search",
                                total=profile.max_steps, completed=0)

                def on_step(step: StepResult) -> None:
                    steps.append(step)
                    store.save_json(variant.name, "steps.json", [s.to_dict() for s in steps])
                    mark = "[green]pass[/green]" if step.passed else "[red]fail[/red]"
                    progress.console.print(
                        f"  {variant.name}: {step.offered_rps:7.1f} req/s offered → "
                        f"{step.achieved_rps:7.1f} achieved, p95 {step.p95_ms:7.1f} ms, "
                        f"errors {step.error_rate:6.1%}  {mark} {step.verdict}")
                    progress.advance(phase)

                settings = _load_settings(plan, variant, profile.hazard_weight_capacity)
                with LoadSession(deployment.url, settings) as load:
                    def measure(rps: float) -> StepResult:
                        progress.update(phase, description=f"{variant.name}: capacity, "
                                                           f"{rps:.1f} req/s")
                        result = load.step(rps, profile.warmup_s, profile.hold_s)
                        time.sleep(profile.cooldown_s)
                        return result

                    capacity = find_capacity(measure, plan.slo, start_rps=profile.start_rps,
                                             growth=profile.growth, precision=profile.precision,
                                             max_steps=profile.max_steps, on_step=on_step)
                progress.update(phase, description=f"{variant.name}: survival test "
                                                   f"({profile.survival_users} users)",
                                total=profile.survival_limit_s, completed=0)
                settings = _load_settings(plan, variant, profile.hazard_weight_survival)
                with LoadSession(deployment.url, settings) as load:
                    survival = load.survival(
                        profile.survival_users, profile.survival_limit_s,
                        on_tick=lambda elapsed: progress.update(phase, completed=elapsed))
                store.save_json(variant.name, "survival-clients.json", survival.to_dict())
            finally:
                progress.update(phase, description=f"{variant.name}: collecting signals, "
                                                   "tearing down")
                observations = deployment.observe()
                store.save_observations(variant.name, observations)
    finally:
        progress.remove_task(phase)

    assert capacity is not None and survival is not None
    survival = with_worker_loss(survival, observations)
    store.save_json(variant.name, "survival.json", survival.to_dict())
    failure = _diagnose(variant, observations, capacity.steps, survival, plan.slo)
    store.save_json(variant.name, "diagnosis.json", failure.to_dict())
    cost = _price(variant, capacity, observations)
    entry = summary_entry(variant, capacity.capacity_rps, capacity.p95_ms_at_capacity,
                          capacity.steps, survival, failure, cost, plan, observations)
    store.finish_variant(variant.name, entry)
    progress.console.print(
        f"[bold]{variant.name}[/bold]: capacity {capacity.capacity_rps:.1f} req/s, survival "
        f"{'held' if survival.held else f'{survival.seconds:.0f} s'}, failure {failure.kind}")
    return entry


def _set_aside_partial(store: RunStore, name: str) -> None:
    """An interrupted attempt's files are kept beside, never overwritten."""
    folder = store.variant_dir(name)
    if folder.exists() and not (folder / "result.json").exists():
        folder.rename(folder.with_name(f"{name}.interrupted-{int(time.time())}"))


def _variant_record(variant: Variant) -> dict[str, Any]:
    from dataclasses import asdict

    record = asdict(variant)
    record["app"]["env"] = dict(variant.app.env)
    record.update(memory_mib=variant.memory_mib, vcpu=variant.vcpu)
    return record


def _load_settings(plan: RunPlan, variant: Variant, hazard_weight: int) -> Any:
    from experiments.load.driver import LoadSettings

    env = {"SHOP_ALL_WEIGHT": str(hazard_weight)}
    return LoadSettings(locustfile=plan.locustfile, load_workers=plan.load_workers, env=env)


def _diagnose(variant: Variant, observations: Observations, steps: list[StepResult],
              survival: SurvivalResult, slo: Slo) -> Failure:
    from experiments.diagnose import diagnose

    return diagnose(variant, observations, steps, survival, slo)


def _price(variant: Variant, capacity: Any, observations: Observations) -> dict[str, Any]:
    from experiments.cost import MeasuredTraffic, price_variant

    passing = [s for s in capacity.steps if s.passed]
    at_capacity = max(passing, key=lambda s: s.offered_rps) if passing else None
    traffic = MeasuredTraffic.from_step(at_capacity) if at_capacity else None
    breakdown = price_variant(variant, traffic=traffic,
                              surplus_credits_per_hour=surplus_credits_per_hour(observations))
    return breakdown.to_summary(capacity.capacity_rps)


def surplus_credits_per_hour(observations: Observations) -> float:
    """Unlimited-mode credits spent beyond the balance, per hour of the measurement."""
    per_instance: dict[str, list[tuple[float, float]]] = {}
    for s in observations.signals:
        if s.surplus_credits is not None:
            per_instance.setdefault(s.instance, []).append((s.t, s.surplus_credits))
    total, span = 0.0, 0.0
    for samples in per_instance.values():
        samples.sort()
        total += samples[-1][1] - samples[0][1]
        span = max(span, samples[-1][0] - samples[0][0])
    return total / (span / 3600) if span > 0 else 0.0


WORKER_LOSS = re.compile(r"was sent SIGKILL|WORKER TIMEOUT|Killed process|oom_kill counter")


def first_worker_loss_s(survival: SurvivalResult, observations: Observations) -> float | None:
    """Seconds into the survival test until the server first lost a worker (kernel OOM kill or
    Gunicorn's timeout kill), or None. The client-side verdict says when users were failed;
    this says when the box itself first broke — the moment the seed's log recorded."""
    end = survival.started_at + max((p.get("t", 0.0) for p in survival.timeline),
                                    default=survival.seconds)
    losses = [line.t for line in observations.logs
              if survival.started_at <= line.t <= end and WORKER_LOSS.search(line.text)]
    return round(min(losses) - survival.started_at, 1) if losses else None


def with_worker_loss(survival: SurvivalResult, observations: Observations) -> SurvivalResult:
    """The survival verdict from both sides: clients (errors, silence) and the server itself.

    Gunicorn replaces a killed worker within a second, so clients of a box that is being
    OOM-killed may see little more than slowness; the seed's service was nonetheless broken
    the moment its worker was SIGKILLed. Whichever comes first ends the survival time.
    """
    loss_s = first_worker_loss_s(survival, observations)
    if loss_s is None or (not survival.held and survival.seconds <= loss_s):
        return survival
    end = survival.started_at + max((p.get("t", 0.0) for p in survival.timeline),
                                    default=survival.seconds)
    line = next(x for x in sorted(observations.logs, key=lambda x: x.t)
                if survival.started_at <= x.t <= end and WORKER_LOSS.search(x.text))
    clients = "clients saw it hold" if survival.held else f"clients later: {survival.reason}"
    return replace(survival, held=False, seconds=loss_s, failed_at=survival.started_at + loss_s,
                   reason=f"the server lost a worker ({line.source}: {line.text.strip()[-90:]}); "
                          f"{clients}")


def summary_entry(variant: Variant, capacity_rps: float, p95_at_capacity: float | None,
                  steps: list[StepResult], survival: SurvivalResult, failure: Failure,
                  cost: dict[str, Any], plan: RunPlan,
                  observations: Observations | None = None) -> dict[str, Any]:
    """One variant in summary.json: the design's keys first, extras after."""
    return {
        "name": variant.name,
        "instance_type": variant.instance_type,
        "count": variant.count,
        "swap_mib": variant.swap_mib,
        "load_balancer": variant.load_balancer,
        "capacity_rps": round(capacity_rps, 2),
        "p95_ms_at_capacity": None if p95_at_capacity is None else round(p95_at_capacity, 1),
        "survival": {"seconds": round(survival.seconds, 1), "held": survival.held,
                     "limit_s": survival.limit_s, "reason": survival.reason,
                     "first_worker_loss_s": first_worker_loss_s(
                         survival, observations or Observations())},
        "failure": {"kind": failure.kind, "evidence": failure.evidence,
                    "summary": failure.summary, "at": failure.at},
        "cost": cost,
        "steps": [{"offered_rps": s.offered_rps, "achieved_rps": round(s.achieved_rps, 2),
                   "p50_ms": round(s.p50_ms, 1), "p95_ms": round(s.p95_ms, 1),
                   "p99_ms": round(s.p99_ms, 1), "error_rate": round(s.error_rate, 4),
                   "passed": s.passed, "verdict": s.verdict,
                   "generator_saturated": s.generator_saturated} for s in steps],
        "region": variant.region,
        "credit_mode": variant.credit_mode,
        "vcpu": variant.vcpu,
        "memory_mib": variant.memory_mib,
        "lb_algorithm": variant.lb_algorithm if variant.load_balancer else None,
        "gunicorn": {"workers": variant.gunicorn.workers, "threads": variant.gunicorn.threads,
                     "worker_class": variant.gunicorn.worker_class,
                     "timeout_s": variant.gunicorn.timeout_s},
        "profile": plan.profile.name,
    }


# ---- output --------------------------------------------------------------------------------

@contextmanager
def _progress() -> Iterator[Progress]:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        yield progress


def _build_report(store: RunStore) -> None:
    try:
        from experiments.report import build_report

        paths = build_report(store.dir)
        html = [p for p in paths if p.suffix == ".html"]
        if html:
            console.print(f"Report: {html[0]}")
    except Exception as exc:  # the results are safe on disk; the report can be rebuilt
        console.print(f"[yellow]The report could not be built ({type(exc).__name__}: {exc}); "
                      f"rebuild it with `python -m experiments report {store.dir}`.[/yellow]")


def print_summary_table(summary: dict[str, Any], out: Console | None = None) -> None:
    table = Table(title=f"scalelab run {summary['run_id']} ({summary.get('backend')}"
                        + (f", cpu_scale {summary['cpu_scale']:.2f}, emulated"
                           if summary.get("cpu_scale") else "") + ")")
    for column in ("variant", "instances", "capacity (req/s)", "p95 at capacity",
                   "survival", "failure", "$/hour", "$ per M req"):
        table.add_column(column, justify="right" if column not in ("variant", "failure",
                                                                    "instances") else "left")
    for v in summary["variants"]:
        cost = v.get("cost") or {}
        survival = v.get("survival") or {}
        p95 = v.get("p95_ms_at_capacity")
        per_million = cost.get("usd_per_million_requests")
        table.add_row(
            v["name"],
            f"{v['count']}×{v['instance_type']}" + ("+ALB" if v.get("load_balancer") else "")
            + (f", swap {v['swap_mib'] / 1024:g} GiB" if v.get("swap_mib") else ""),
            f"{v['capacity_rps']:.1f}",
            "—" if p95 is None else f"{p95:.0f} ms",
            ("held" if survival.get("held") else f"{survival.get('seconds', 0):.0f} s")
            + ("" if survival.get("first_worker_loss_s") is None
               else f" (worker lost at {survival['first_worker_loss_s']:.0f} s)"),
            (v.get("failure") or {}).get("kind", "?"),
            f"{cost['hourly_usd']:.4f}" if "hourly_usd" in cost else "—",
            "—" if per_million is None else f"{per_million:.3f}",
        )
    (out or console).print(table)

"""The plan stage: everything a run needs, resolved and validated before anything is deployed.

`plan_run(args)` turns the command line (or a stored run, for `--resume`) into a `RunPlan`.
Anything wrong with the input is a UserError here, before a backend, a folder or a process
exists (esrally's lesson: a race is a pipeline, and its first step only checks).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from experiments import provenance
from experiments.backends import make_backend
from experiments.backends.base import Backend
from experiments.errors import UserError
from experiments.model import Slo
from experiments.profiles import Profile, get_profile
from experiments.results import RunStore
from stacks.variant import Variant, load_variants


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
    """Local backend: host cores per emulated vCPU; None = let the backend choose."""
    credits: str
    max_usd: float | None
    app_overrides: dict[str, str]
    survival_rps: float | None = None
    """--survival-rps: the survival test's rate for every variant (None = the smallest
    variant's failing rate, chosen during the run and stored in run.json)."""
    burst: bool = False
    """--burst: the report ranks per-dollar on burst capacity instead of sustained."""

    @property
    def shop_hazard(self) -> bool:
        """The survival load adds the shop's memory hazard (only the shop has it)."""
        return not self.app_overrides

    def expected_hours(self) -> float:
        """Deploy + measure + destroy for one variant, in hours (partial hours bill as full)."""
        p = self.profile
        measure_s = p.max_steps * (p.warmup_s + p.hold_s + p.cooldown_s) + p.survival_limit_s
        return (measure_s + 15 * 60) / 3600

    def run_info(self, backend: Backend) -> dict[str, Any]:
        """run.json's content: the plan, the backend's actual settings, and provenance."""
        return {
            "backend": self.backend_name,
            "created_at": time.time(),
            "variants": [v.name for v in self.variants],
            "cpu_scale": getattr(backend, "cpu_scale", None),
            "dilation": getattr(backend, "dilation", 1.0),
            "emulated": self.backend_name == "local",
            "slo": self.slo.to_dict(),
            "config": {
                "profile": self.profile.name,
                "profile_settings": self.profile.to_dict(),
                "locustfile": str(self.locustfile),
                "load_workers": self.load_workers,
                "credits": self.credits,
                "max_usd": self.max_usd,
                "app_overrides": self.app_overrides,
                "survival_rps": self.survival_rps,
                "burst": self.burst,
            },
            "versions": provenance.versions(),
            "git_revision": provenance.git_revision(),
            "host": provenance.host(),
        }


def plan_run(args: argparse.Namespace) -> tuple[RunStore | None, RunPlan]:
    """Reopen a run for --resume, or plan a new one (its folder is created by the caller)."""
    if args.resume:
        return _resumed(args)
    overrides = _app_overrides(args)
    variants = [_with_app(v, overrides) for v in load_variants(args.variants)]
    locustfile = _check_locustfile(args.locustfile or _default_locustfile(variants[0]))
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{args.backend}"
    plan = RunPlan(run_id=run_id, backend_name=args.backend, variants=variants,
                   profile=get_profile(args.profile), slo=Slo(p95_ms=args.slo_p95_ms),
                   locustfile=locustfile, load_workers=args.load_workers, out=args.out,
                   cpu_scale=args.cpu_scale if args.backend == "local" else None,
                   credits=args.credits, max_usd=args.max_usd, app_overrides=overrides,
                   survival_rps=getattr(args, "survival_rps", None),
                   burst=bool(getattr(args, "burst", False)))
    if (args.out / run_id).exists():
        raise UserError(f"results folder {args.out / run_id} already exists; wait a second or "
                        "choose another --out.")
    return None, plan


def _resumed(args: argparse.Namespace) -> tuple[RunStore, RunPlan]:
    store = RunStore.open(args.out / args.resume)
    info = store.info
    config = info.get("config", {})
    overrides = config.get("app_overrides") or {}
    variants = [_with_app(v, overrides) for v in load_variants(info.get("variants") or [])]
    plan = RunPlan(
        run_id=store.run_id, backend_name=info["backend"], variants=variants,
        profile=get_profile(config.get("profile", "quick")),
        slo=Slo.from_dict(info.get("slo") or {}),
        locustfile=Path(config["locustfile"]), load_workers=config.get("load_workers", 0),
        out=args.out, cpu_scale=info.get("cpu_scale"),
        credits=config.get("credits", "launch"), max_usd=config.get("max_usd"),
        app_overrides=overrides, survival_rps=config.get("survival_rps"),
        burst=bool(config.get("burst", False)))
    return store, plan


def make_run_backend(plan: RunPlan) -> Backend:
    """The backend for this plan, its preflight passed (CLI, credentials, budget)."""
    if plan.backend_name == "local":
        backend = make_backend("local", cpu_scale=plan.cpu_scale, credits=plan.credits)
    else:
        from experiments.cost import price_variant

        hours = max(1.0, plan.expected_hours())

        def estimate(variant: Variant) -> float:
            return price_variant(variant).hourly_usd * hours

        backend = make_backend("aws", run_id=plan.run_id, max_usd=plan.max_usd,
                               estimate_usd=estimate, evidence_dir=plan.out / plan.run_id)
    backend.preflight(plan.variants)
    return backend


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
    app = replace(variant.app, **overrides)  # type: ignore[arg-type]  # validated below
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

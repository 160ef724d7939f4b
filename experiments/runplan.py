"""The plan stage: everything a run needs, resolved and validated before anything is deployed.

`plan_run(args)` turns the command line (or a stored run, for `--resume`) into a `RunPlan`.
Anything wrong with the input is a UserError here, before a backend, a folder or a process
exists (esrally's lesson: a race is a pipeline, and its first step only checks).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from experiments import provenance
from experiments.backends import make_backend
from experiments.backends.base import Backend
from experiments.errors import UserError
from experiments.model import Slo
from experiments.profiles import Profile, get_profile
from experiments.results import RunStore
from experiments.thresholds import Threshold, check_variants, parse_threshold
from stacks.variant import PROJECT_DIR, AppSource, Variant, load_variants


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
    repeat: int = 1
    """Independent capacity searches per variant (`--repeat`)."""
    thresholds: list[Threshold] = field(default_factory=list)
    """`--threshold` criteria, judged after the report is written (not stored: per call)."""
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
        measure_s = (self.repeat * p.max_steps * (p.warmup_s + p.hold_s + p.cooldown_s)
                     + p.survival_limit_s)
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
                "locustfile_sha256": hashlib.sha256(self.locustfile.read_bytes()).hexdigest(),
                "load_workers": self.load_workers,
                "repeat": self.repeat,
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
    """Reopen a run for --resume, or plan a new one (its folder is created by the caller).

    Checks run cheapest first; importing the user's locustfile and app (child processes)
    comes last, so a typo in a number is answered at once.
    """
    thresholds = [parse_threshold(t) for t in getattr(args, "threshold", None) or []]
    _check_out(args.out)
    if args.resume is not None:
        store, plan = _resumed(args)
    else:
        plan = _new_plan(args)
        store = None
    check_variants(thresholds, [v.name for v in plan.variants])
    plan = replace(plan, thresholds=thresholds)
    _check_imports(plan)
    return store, plan


def _new_plan(args: argparse.Namespace) -> RunPlan:
    backend = args.backend or "local"
    profile = get_profile(args.profile or "quick")
    slo_ms = check_number("--slo-p95-ms", 500.0 if args.slo_p95_ms is None else args.slo_p95_ms,
                          *SLO_P95_MS, unit="ms")
    repeat = int(check_number("--repeat", DEFAULT_REPEATS[profile.name] if args.repeat is None
                              else args.repeat, *REPEATS, unit="capacity searches"))
    load_workers = check_load_workers(args.load_workers or 0)
    _check_backend_flags(backend, args)
    if args.max_usd is not None:
        check_number("--max-usd", args.max_usd, *MAX_USD, unit="USD")
    overrides = _app_overrides(args)
    variants = [_with_app(v, overrides, flags=True)
                for v in load_variants(unique_names(args.variants))]
    cpu_scale = None
    if backend == "local" and args.cpu_scale is not None:
        cpu_scale = check_cpu_scale(args.cpu_scale, variants)
    locustfile = _check_locustfile(args.locustfile or _default_locustfile(variants[0]),
                                   "--locustfile" if args.locustfile else "the app's locustfile")
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{backend}"
    if (args.out / run_id).exists():
        raise UserError(f"results folder {args.out / run_id} already exists; wait a second or "
                        "choose another --out.")
    return RunPlan(run_id=run_id, backend_name=backend, variants=variants, profile=profile,
                   slo=Slo(p95_ms=slo_ms), locustfile=locustfile, load_workers=load_workers,
                   out=args.out, cpu_scale=cpu_scale, credits=args.credits or "launch",
                   max_usd=args.max_usd, app_overrides=overrides, repeat=repeat,
                   survival_rps=_survival_rps(args),
                   burst=bool(getattr(args, "burst", False)))


def _survival_rps(args: argparse.Namespace) -> float | None:
    rate = getattr(args, "survival_rps", None)
    return None if rate is None else check_number("--survival-rps", rate, *SURVIVAL_RPS,
                                                  unit="req/s")


# ---- numbers: finite and in a stated range ------------------------------------------------

SLO_P95_MS: tuple[float, float] = (1.0, 600_000.0)
MAX_USD: tuple[float, float] = (0.01, 100_000.0)
CPU_SCALE: tuple[float, float] = (0.01, 1.0)
"""Host cores per emulated vCPU: never above 1 (an emulated vCPU is no faster than a host
core), and the largest variant must fit on this host (checked with the variants)."""
REPEATS: tuple[float, float] = (1, 20)
SURVIVAL_RPS: tuple[float, float] = (0.1, 100_000.0)
DEFAULT_REPEATS = {"smoke": 1, "quick": 1, "standard": 3}
"""Capacity searches per variant when --repeat is not given. quick: 1, because it is the
demo / CI profile and each extra search adds a whole search (about a minute per variant on two
cores); and 2 would buy no usable interval (Student's t for 1 degree of freedom is 12.7, so
the 95 % interval would span ±9 standard deviations; measured: a 2-search quick run of micro
read 27.9 and 19.1 req/s, interval 0–79.4). standard: 3, the fewest searches with a usable
interval (t = 4.3, ±2.5 standard deviations) and a Welch test in `compare`."""


def check_number(flag: str, value: float, low: float, high: float, unit: str = "") -> float:
    """`value` if finite and within [low, high]; otherwise the sentence stating the range."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not \
            low <= value <= high:
        unit_text = f" {unit}" if unit else ""
        shown = f"{value:g}" if isinstance(value, (int, float)) else repr(value)
        raise UserError(f"{flag} must be a number from {low:g} to {high:g}{unit_text}, got "
                        f"{shown}.")
    return value


def host_cores() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the machine's)."""
    return len(os.sched_getaffinity(0))


def check_load_workers(workers: int) -> int:
    """0 (one Locust process) up to one worker per host core: more only share the same cores."""
    cores = host_cores()
    if not isinstance(workers, int) or not 0 <= workers <= cores:
        raise UserError(f"--load-workers must be from 0 to {cores} (this host has {cores} "
                        f"cores, and more workers than cores only queue for them), got "
                        f"{workers!r}.")
    return workers


def check_cpu_scale(scale: float, variants: list[Variant]) -> float:
    check_number("--cpu-scale", scale, *CPU_SCALE, unit="host cores per emulated vCPU")
    cores = host_cores()
    biggest = max(variants, key=lambda v: v.total_vcpu)
    if scale * biggest.total_vcpu > cores:
        most = math.floor(cores / biggest.total_vcpu * 100) / 100
        raise UserError(f"--cpu-scale {scale:g} gives {biggest.name} ({biggest.total_vcpu} "
                        f"vCPUs) {scale * biggest.total_vcpu:g} host cores but this host has "
                        f"{cores}; use at most {most:g} (or leave it out to let the backend "
                        "choose).")
    return scale


def _check_backend_flags(backend: str, args: argparse.Namespace) -> None:
    """A flag the chosen backend ignores is refused, not silently dropped."""
    if backend == "local" and args.max_usd is not None:
        raise UserError("--max-usd applies only to --backend aws (the local backend spends "
                        "nothing); drop it.")
    if backend == "aws":
        for flag, value in (("--cpu-scale", args.cpu_scale), ("--credits", args.credits)):
            if value is not None:
                raise UserError(f"{flag} applies only to --backend local (on AWS the instance "
                                "type decides); drop it.")


def unique_names(names: list[str] | None) -> list[str] | None:
    """Variant names in order, each once; a repeated name is measured once, with a note."""
    if names is None:
        return None
    seen = list(dict.fromkeys(names))
    if len(seen) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        print(f"scalelab: note: {', '.join(twice)} listed more than once; each variant is "
              "measured once.", file=sys.stderr)
    return seen


def _check_out(out: Path) -> None:
    """--out must be (or become) a writable folder; probed without leaving anything behind."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder for the run folders.")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out {out} cannot be created because {existing} is a file; pass a "
                        "folder path.")
    try:
        probe = tempfile.mkdtemp(prefix=".scalelab-probe-", dir=existing)
        os.rmdir(probe)
    except OSError as exc:
        raise UserError(f"--out {out} is not writable ({exc.strerror} in {existing}); pass a "
                        "folder you can write to.") from None


# ---- --resume -------------------------------------------------------------------------------

RESUME_FLAGS = ("backend", "variants", "profile", "slo_p95_ms", "locustfile", "load_workers",
                "cpu_scale", "credits", "max_usd", "app_dir", "wsgi", "health_path",
                "requirements", "repeat", "survival_rps")
"""Flags a resumed run takes from its run.json; giving a different value is refused."""


def _resumed(args: argparse.Namespace) -> tuple[RunStore, RunPlan]:
    run_id = args.resume.strip()
    if not run_id:
        raise UserError(f"--resume needs the id of a run folder under {args.out} (for example "
                        f"{_example_ids(args.out)}).")
    if run_id in (".", "..") or "/" in run_id:
        raise UserError(f"--resume {args.resume!r} must be a run id (a folder name under "
                        f"--out {args.out}), not a path; for example {_example_ids(args.out)}.")
    if not (args.out / run_id).is_dir():
        raise UserError(f"--resume {run_id}: there is no run folder {args.out / run_id}; runs "
                        f"under {args.out}: {_example_ids(args.out)}.")
    store = RunStore.open(args.out / run_id)
    try:
        plan = _stored_plan(store, args.out)
    except UserError as exc:
        raise UserError(f"run {run_id} cannot be resumed: {exc}") from None
    _refuse_conflicts(args, plan)
    return store, plan


def _example_ids(out: Path) -> str:
    ids = sorted(p.parent.name for p in out.glob("*/run.json")) if out.is_dir() else []
    return ", ".join(ids[-5:]) if ids else "none yet"


def _stored_plan(store: RunStore, out: Path) -> RunPlan:
    """The run's own config from run.json, re-validated as if it were typed again."""
    info, where = store.info, store.dir / "run.json"
    config = info.get("config")
    if not isinstance(config, dict):
        raise UserError(f"{where} has no 'config' section (damaged, or written by hand).")
    backend = info.get("backend")
    if backend not in ("local", "aws"):
        raise UserError(f"{where} names backend {backend!r}; valid: local, aws.")
    names = info.get("variants")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"{where} has no list of variant names.")
    profile = get_profile(str(config.get("profile", "quick")))
    slo_raw = info.get("slo") or {}
    if not isinstance(slo_raw, dict):
        raise UserError(f"{where}: 'slo' must be a mapping.")
    slo = Slo.from_dict(slo_raw)
    check_number("the stored SLO p95", slo.p95_ms, *SLO_P95_MS, unit="ms")
    overrides = config.get("app_overrides") or {}
    if not isinstance(overrides, dict):
        raise UserError(f"{where}: 'config.app_overrides' must be a mapping.")
    variants = [_with_app(v, overrides, flags=False) for v in load_variants(names)]
    locustfile = config.get("locustfile")
    if not isinstance(locustfile, str) or not locustfile:
        raise UserError(f"{where} names no locustfile.")
    cpu_scale = info.get("cpu_scale")
    if backend == "local" and cpu_scale is not None:
        cpu_scale = check_cpu_scale(cpu_scale, variants)
    max_usd = config.get("max_usd")
    if max_usd is not None:
        check_number("the stored --max-usd", max_usd, *MAX_USD, unit="USD")
    repeat = config.get("repeat", DEFAULT_REPEATS[profile.name])
    return RunPlan(
        run_id=store.run_id, backend_name=backend, variants=variants, profile=profile, slo=slo,
        locustfile=_check_locustfile(PROJECT_DIR / locustfile, "the stored locustfile"),
        load_workers=check_load_workers(config.get("load_workers", 0)), out=out,
        cpu_scale=cpu_scale if backend == "local" else None,
        credits=str(config.get("credits", "launch")), max_usd=max_usd,
        app_overrides={str(k): str(v) for k, v in overrides.items()},
        repeat=int(check_number("the stored repeat", repeat, *REPEATS)),
        survival_rps=config.get("survival_rps"), burst=bool(config.get("burst", False)))


def _refuse_conflicts(args: argparse.Namespace, plan: RunPlan) -> None:
    """A flag given with --resume must agree with the run's own setting: half a run measured one
    way and half another would compare nothing."""
    stored: dict[str, Any] = {
        "backend": plan.backend_name, "variants": [v.name for v in plan.variants],
        "profile": plan.profile.name, "slo_p95_ms": plan.slo.p95_ms,
        "locustfile": str(plan.locustfile), "load_workers": plan.load_workers,
        "cpu_scale": plan.cpu_scale, "credits": plan.credits, "max_usd": plan.max_usd,
        "app_dir": plan.app_overrides.get("path"), "wsgi": plan.app_overrides.get("wsgi"),
        "health_path": plan.app_overrides.get("health_path"),
        "requirements": plan.app_overrides.get("requirements"), "repeat": plan.repeat,
        "survival_rps": plan.survival_rps, "burst": plan.burst}
    for name in RESUME_FLAGS:
        given: Any = getattr(args, name, None)
        if given is None:
            continue
        if isinstance(given, Path):
            given = str(given.resolve())
        if name == "variants":
            given = unique_names(given)
        if given != stored[name]:
            flag = "--" + name.replace("_", "-")
            shown = ",".join(stored[name]) if name == "variants" else stored[name]
            typed = getattr(args, name)
            typed = ",".join(typed) if isinstance(typed, list) else typed
            raise UserError(f"--resume {plan.run_id} uses the run's own {flag} "
                            f"({shown if shown is not None else 'unset'}), not {typed}; drop "
                            f"{flag} or start a new run.")


# ---- the user's code, imported in a child process ---------------------------------------

IMPORT_TIMEOUT_S = 60.0


def _check_imports(plan: RunPlan) -> None:
    """The locustfile and every distinct user app, imported as the real run will import them."""
    problem = _import_check(["locustfile", str(plan.locustfile)], os.environ.copy())
    if problem:
        raise UserError(f"{problem}; pass a Python file defining one Locust User class with "
                        "tasks.")
    seen: set[tuple[str, str]] = set()
    for variant in plan.variants:
        app = variant.app
        key = (str(app.directory), app.wsgi)
        if key in seen or app.source != "bundle" or key == _SHOP:
            continue  # the shop is tested with the project; a git app is fetched at deploy
        seen.add(key)
        flag = "--wsgi" if plan.app_overrides.get("wsgi") else \
            f"scalelab:app.wsgi in {variant.source_file}"
        missing_ok = bool(app.requirements) or plan.backend_name != "local"
        argv = ["wsgi", str(app.directory), app.wsgi] + (["--missing-deps-ok"] if missing_ok
                                                         else [])
        problem = _import_check(argv, {**os.environ, **app.env})
        if problem:
            raise UserError(f"{flag} {app.wsgi}: Gunicorn could not load it from "
                            f"{app.directory} ({problem}); name a module in that folder and "
                            "its WSGI callable, as in app:application.")


_SHOP = (str(AppSource().directory), AppSource().wsgi)


def _import_check(argv: list[str], env: dict[str, str]) -> str:
    """Run `python -m experiments.importcheck ARGV`; '' when fine, else the reason."""
    try:
        proc = subprocess.run([sys.executable, "-m", "experiments.importcheck", *argv],
                              capture_output=True, text=True, timeout=IMPORT_TIMEOUT_S, env=env,
                              cwd=PROJECT_DIR, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"importing {argv[1]} did not finish within {IMPORT_TIMEOUT_S:g} s"
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return (f"importing {argv[-1] if argv[0] == 'locustfile' else argv[2]} ended the "
                f"process (exit status {proc.returncode}: {tail[0]})")
    return str(answer.get("message") or "")


def make_run_backend(plan: RunPlan) -> Backend:
    """The backend for this plan, its preflight passed (CLI, credentials, budget)."""
    if plan.backend_name == "local":
        backend = make_backend("local", cpu_scale=plan.cpu_scale, credits=plan.credits,
                               variants=plan.variants)
    else:
        from experiments.cost import price_variant

        hours = max(1.0, plan.expected_hours())

        def estimate(variant: Variant) -> float:
            return price_variant(variant).hourly_usd * hours

        backend = make_backend("aws", run_id=plan.run_id, max_usd=plan.max_usd,
                               estimate_usd=estimate, evidence_dir=plan.out / plan.run_id)
    backend.preflight(plan.variants)
    return backend


_WSGI = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][^\s]*$")


def _app_overrides(args: argparse.Namespace) -> dict[str, str]:
    """Bring-your-own-app flags, as AppSource field values; each flag's own sentence."""
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
        if not _WSGI.match(args.wsgi):
            raise UserError(f"--wsgi {args.wsgi!r} must be MODULE:CALLABLE, a dotted module "
                            "name in --app-dir and the WSGI callable in it (for example "
                            "app:application).")
        overrides["wsgi"] = args.wsgi
    if args.health_path is not None:
        if not args.health_path.startswith("/") or any(c.isspace() for c in args.health_path):
            raise UserError(f"--health-path {args.health_path!r} must be a URL path starting "
                            "with '/' and without spaces (for example /healthz).")
        overrides["health_path"] = args.health_path
    if args.requirements is not None:
        if not args.requirements.is_file() or not os.access(args.requirements, os.R_OK):
            raise UserError(f"--requirements {args.requirements} is not a readable file; pass "
                            "a pip requirements file.")
        overrides["requirements"] = str(args.requirements.resolve())
    return overrides


def _with_app(variant: Variant, overrides: dict[str, str], flags: bool) -> Variant:
    if not overrides:
        return variant
    app = replace(variant.app, **overrides)  # type: ignore[arg-type]  # validated below
    health = replace(variant.health_check, path=app.health_path)
    try:
        return variant.with_overrides(app=app, health_check=health)
    except UserError as exc:
        if not flags:
            raise
        raise UserError(f"the bring-your-own-app flags do not fit {variant.name}: {exc}"
                        ) from None


def _default_locustfile(variant: Variant) -> Path:
    if not variant.app.locustfile:
        raise UserError("your own app needs --locustfile FILE describing its traffic (the shop's "
                        "shopper profile only fits the shop).")
    return variant.app.directory / variant.app.locustfile


def _check_locustfile(path: Path, label: str) -> Path:
    path = path.resolve()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise UserError(f"{label} {path} cannot be read; pass a readable Python file with "
                        "one Locust user class.")
    return path

"""The failure classifier on recorded (real Gunicorn / kernel / HAProxy) and labelled synthetic
fixtures; one live recording when the host allows it (root + cgroups)."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from experiments.backends.local.cgroups import detect_layout
from experiments.diagnose import MAX_EVIDENCE, PRECEDENCE, diagnose
from experiments.errors import UserError
from experiments.model import (
    FAILURE_KINDS,
    Failure,
    LogLine,
    Observations,
    SignalSample,
    Slo,
    StepResult,
    SurvivalResult,
)
from stacks.variant import GunicornSettings, Variant, load_variant

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "diagnosis"
SLO = Slo()


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def micro(timeout_s: int = 2) -> Variant:
    """The recordings ran Gunicorn with --timeout 2."""
    return load_variant("micro").with_overrides(gunicorn=GunicornSettings(timeout_s=timeout_s))


def failing_step(obs: Observations, **kw: Any) -> StepResult:
    """A failed capacity step whose hold covers the whole recording."""
    ts = [x.t for x in obs.logs] + [s.t for s in obs.signals]
    fields: dict[str, Any] = dict(
        offered_rps=20, achieved_rps=6, p50_ms=900, p95_ms=2500, p99_ms=3000, error_rate=0.2,
        started_at=min(ts), ended_at=max(ts), duration_s=max(ts) - min(ts), passed=False,
        verdict="p95 2500 ms > SLO 500 ms")
    fields.update(kw)
    return StepResult(**fields)


def run_recorded(name: str, obs: Observations | None = None, variant: Variant | None = None
                 ) -> Failure:
    obs = obs or Observations.from_dict(load(name))
    return diagnose(variant or micro(), obs, [failing_step(obs)], None, SLO)


def run_synthetic(name: str) -> tuple[Failure, dict[str, Any]]:
    d = load(f"synthetic_{name}")
    survival = SurvivalResult.from_dict(d["survival"]) if d["survival"] else None
    failure = diagnose(load_variant(d["variant"]), Observations.from_dict(d),
                       [StepResult.from_dict(s) for s in d["steps"]], survival, SLO)
    return failure, d


def check_shape(f: Failure) -> None:
    assert f.kind in FAILURE_KINDS
    assert len(f.evidence) <= MAX_EVIDENCE
    assert f.summary.endswith(".")


# ---- recorded fixtures -----------------------------------------------------------------------

def test_fixtures_are_labelled() -> None:
    for path in FIXTURES.glob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["recorded"] is (not path.name.startswith("synthetic_")), path.name
        assert doc["how"].startswith("scripts/record_diagnosis_fixtures.py")


def test_real_timeout_then_sigkill_is_worker_timeout_not_oom() -> None:
    """The seed's sequence, recorded: WORKER TIMEOUT, SIGKILL ~1 s later, counter flat."""
    f = run_recorded("worker_timeout_kill")
    check_shape(f)
    assert f.kind == "worker_timeout"
    assert "[CRITICAL] WORKER TIMEOUT (pid:" in f.evidence[0]
    assert "was sent SIGKILL! Perhaps out of memory?" in f.evidence[1]
    assert any("oom_kill counter stayed 0" in e for e in f.evidence)
    timeout = next(x for x in Observations.from_dict(load("worker_timeout_kill")).logs
                   if "WORKER TIMEOUT" in x.text)
    assert f.at == timeout.t


def test_real_timeout_then_abort_is_worker_timeout() -> None:
    f = run_recorded("worker_timeout_abort")
    assert f.kind == "worker_timeout"
    assert "Worker exiting (pid:" in f.evidence[1]
    assert "abort" in f.summary


def test_real_cgroup_oom_is_oom_kill() -> None:
    f = run_recorded("oom_kill")
    check_shape(f)
    assert f.kind == "oom_kill"
    assert "Memory cgroup out of memory: Killed process" in f.evidence[0]
    assert any("oom_kill counter 0 → 1" in e for e in f.evidence)
    assert any("was sent SIGKILL! Perhaps out of memory?" in e for e in f.evidence)


def test_sigkill_without_timeout_and_counter_rise_is_oom_even_without_kernel_log() -> None:
    obs = Observations.from_dict(load("oom_kill"))
    obs.logs = [x for x in obs.logs if not x.source.startswith("kernel:")]
    f = run_recorded("oom_kill", obs)
    assert f.kind == "oom_kill"
    assert "oom_kill counter 0 → 1" in f.evidence[0]


def test_unexplained_sigkill_is_inferred_oom_only_when_the_counter_is_not_watched() -> None:
    obs = Observations.from_dict(load("oom_kill"))
    obs.logs = [x for x in obs.logs if not x.source.startswith("kernel:")]
    blind = Observations(signals=[replace(s, oom_kills=None) for s in obs.signals], logs=obs.logs)
    f = run_recorded("oom_kill", blind)
    assert f.kind == "oom_kill" and "inferred" in f.summary
    # Counter watched and flat: somebody other than the kernel sent that SIGKILL.
    flat = Observations(signals=[replace(s, oom_kills=0) for s in obs.signals], logs=obs.logs)
    assert run_recorded("oom_kill", flat).kind != "oom_kill"


def test_timeout_for_one_pid_and_oom_for_another_names_oom_and_keeps_the_timeout() -> None:
    f = run_recorded("timeout_and_oom")
    check_shape(f)
    assert f.kind == "oom_kill"
    assert "Killed process" in f.evidence[0]
    assert any(e.startswith("also worker_timeout:") and "WORKER TIMEOUT" in e for e in f.evidence)


def test_real_haproxy_with_no_target_is_lb_no_healthy_target() -> None:
    scale_out = load_variant("scale-out")
    f = run_recorded("lb_no_healthy_target", variant=scale_out)
    check_shape(f)
    assert f.kind == "lb_no_healthy_target"
    assert "has no server available" in f.evidence[0]
    assert not any(e.startswith("[ALERT]") for e in f.evidence)  # prefixes stripped
    assert any("503 with no server" in e for e in f.evidence)


def test_evidence_outside_the_failure_window_is_ignored() -> None:
    obs = Observations.from_dict(load("oom_kill"))
    later = max(x.t for x in obs.logs) + 600
    step = failing_step(obs, started_at=later, ended_at=later + 20)
    assert diagnose(micro(), obs, [step], None, SLO).kind == "none"


# ---- synthetic fixtures (labelled) --------------------------------------------------------------

@pytest.mark.parametrize("name", ["seed_micro", "swap_thrash", "cpu_credits_exhausted",
                                  "cpu_saturated", "connection_refused", "generator_bound"])
def test_synthetic_fixture_gets_its_kind(name: str) -> None:
    f, doc = run_synthetic(name)
    check_shape(f)
    assert f.kind == doc["expect"], f.evidence
    assert f.evidence and f.at is not None


def test_seed_lines_name_worker_timeout_with_both_lines_as_evidence() -> None:
    f, _ = run_synthetic("seed_micro")
    assert f.evidence[:2] == [
        "06:51:45 gunicorn:micro-0 [CRITICAL] WORKER TIMEOUT (pid:12)",
        "06:51:46 gunicorn:micro-0 [ERROR] Worker (pid:12) was sent SIGKILL! "
        "Perhaps out of memory?",
    ]
    assert "30 s timeout" in f.summary


def test_swap_thrash_outranks_the_worker_timeout_it_caused() -> None:
    f, _ = run_synthetic("swap_thrash")
    assert f.kind == "swap_thrash"
    assert "major faults/s" in f.evidence[0]
    assert any(e.startswith("also worker_timeout:") for e in f.evidence)


def test_unlimited_credits_never_run_out() -> None:
    d = load("synthetic_cpu_credits_exhausted")
    unlimited = load_variant("micro").with_overrides(credit_mode="unlimited")
    f = diagnose(unlimited, Observations.from_dict(d),
                 [StepResult.from_dict(s) for s in d["steps"]], None, SLO)
    assert f.kind != "cpu_credits_exhausted"


def test_generator_bound_yields_to_a_real_server_failure() -> None:
    d = load("synthetic_generator_bound")
    obs = Observations.from_dict(d)
    steps = [StepResult.from_dict(s) for s in d["steps"]]
    t = steps[-1].started_at + 5
    obs.logs.append(LogLine(t, "kernel:scale-out-0",
                            "Memory cgroup out of memory: Killed process 4242 (python)"))
    assert diagnose(load_variant("scale-out"), obs, steps, None, SLO).kind == "oom_kill"


# ---- none ----------------------------------------------------------------------------------------

def test_none_when_nothing_failed() -> None:
    obs = Observations.from_dict(load("oom_kill"))  # even a kill during a passing phase
    ok = failing_step(obs, passed=True, p95_ms=100, achieved_rps=20, error_rate=0.0)
    survival = SurvivalResult(seconds=120, held=True, limit_s=120)
    f = diagnose(micro(), obs, [ok], survival, SLO)
    assert f.kind == "none" and f.evidence == [] and f.at is None
    assert "survived 120 s" in f.summary


def test_unjudged_steps_are_judged_by_the_slo() -> None:
    obs = Observations.from_dict(load("worker_timeout_kill"))
    unjudged = failing_step(obs, passed=None)
    assert diagnose(micro(), obs, [unjudged], None, SLO).kind == "worker_timeout"


def test_failure_without_a_named_cause_says_so() -> None:
    step = StepResult(offered_rps=50, achieved_rps=30, p50_ms=800, p95_ms=1900, p99_ms=2500,
                      error_rate=0.0, started_at=1795600000, ended_at=1795600020, passed=False,
                      verdict="p95 1900 ms > SLO 500 ms")
    f = diagnose(micro(), Observations(), [step], None, SLO)
    assert f.kind == "none"
    assert "no signal or log names a cause" in f.summary
    assert "p95 1900 ms > SLO 500 ms" in f.evidence[0]


def test_survival_failure_with_refused_connections() -> None:
    survival = SurvivalResult(seconds=74, held=False, limit_s=300, started_at=1795600000,
                              failed_at=1795600074, reason="server unreachable: connection refused")
    f = diagnose(micro(), Observations(), [], survival, SLO)
    assert f.kind == "connection_refused"
    assert "survival failed after 74 s" in f.evidence[0]


def test_precedence_covers_every_kind_but_none() -> None:
    assert sorted(PRECEDENCE) == sorted(k for k in FAILURE_KINDS if k != "none")


def test_gunicorn_wording_matches_the_installed_release() -> None:
    """If Gunicorn rewords its arbiter messages, the classifier must be updated with it."""
    import gunicorn.arbiter

    source = Path(gunicorn.arbiter.__file__).read_text()
    for fragment in ('"WORKER TIMEOUT (pid:%s)"', '"Worker (pid:%s) was sent %s!"',
                     '" Perhaps out of memory?"', '"Worker (pid:%s) exited with code %s."',
                     '"Worker exiting (pid: %s)"'):
        assert fragment in source, fragment


# ---- live: record the seed's sequence now and classify it -------------------------------------

def _recorder() -> Any:
    spec = importlib.util.spec_from_file_location(
        "record_diagnosis_fixtures", ROOT / "scripts" / "record_diagnosis_fixtures.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _can_record() -> bool:
    """Root (for /dev/kmsg) and a cgroup hierarchy the local backend can use (v1 or v2)."""
    try:
        detect_layout()
    except UserError:
        return False
    return os.geteuid() == 0


@pytest.mark.skipif(not _can_record(), reason="needs root and cgroups")
def test_live_worker_timeout_recording(tmp_path: Path) -> None:
    rec = _recorder()
    (tmp_path / "app.py").write_text(rec.APP)
    obs = rec.case_worker_timeout_kill(tmp_path)
    roots = detect_layout().roots()
    assert not [p for r in roots for p in r.glob(rec.cgroup_name("*"))]  # cleaned up
    f = run_recorded("live", obs)
    assert f.kind == "worker_timeout"
    assert "SIGKILL" in f.evidence[1]


# ---- the sustained stage's forced-empty credit balance ------------------------------------

T0 = 1795600000.0
FORCED = (T0 + 50.0, T0 + 113.0)
"""The sustained stage emptied the balance from T0+50 and restored it at T0+110 (+3 s margin),
as the runner records in `forced_credits`."""


def _micro_sample(t: float, balance: float, limit: float, used: float) -> SignalSample:
    return SignalSample(t=t, instance="micro-0", memory_bytes=300 * 2**20,
                        memory_limit_bytes=674 * 2**20, swap_bytes=0, major_faults=0,
                        cpu_used_cores=used, cpu_limit_cores=limit, credit_balance=balance,
                        oom_kills=0)


def _run_with_a_forced_window() -> tuple[Observations, list[StepResult], SurvivalResult]:
    """An emulated micro (0.33 cores, baseline 0.033) with launch credits throughout, except
    where the sustained stage forced the balance to 0. The burst search failed at 30 rps at its
    CPU limit; the survival test later failed the same way, credits long restored."""
    signals = [_micro_sample(T0 + k, 30.0, 0.33, 0.33 if 25 <= k <= 45 else 0.2)
               for k in range(0, 50)]
    signals += [_micro_sample(T0 + k, 0.0, 0.033, 0.033) for k in range(50, 110)]
    signals += [_micro_sample(T0 + k, 30.0 - 0.01 * (k - 110), 0.33, 0.33)
                for k in range(110, 180)]
    steps = [
        StepResult(offered_rps=20, achieved_rps=20, p50_ms=60, p95_ms=200, p99_ms=300,
                   error_rate=0.0, started_at=T0, ended_at=T0 + 20, duration_s=20, passed=True),
        StepResult(offered_rps=30, achieved_rps=24, p50_ms=900, p95_ms=2600, p99_ms=3000,
                   error_rate=0.0, started_at=T0 + 25, ended_at=T0 + 45, duration_s=20,
                   passed=False, verdict="p95 2600 ms > SLO 500 ms"),
    ]
    survival = SurvivalResult(seconds=40, held=False, limit_s=300, started_at=T0 + 120,
                              failed_at=T0 + 160, offered_rps=30,
                              reason="p95 above the SLO for 10 s",
                              timeline=[{"t": float(k), "requests": 24, "errors": 0,
                                         "p95_ms": 2600} for k in range(1, 41)])
    return Observations(signals=signals), steps, survival


def test_the_forced_empty_balance_is_not_blamed_once_left_out() -> None:
    obs, steps, survival = _run_with_a_forced_window()
    # Without the filter the forced window's zero balance and baseline quota would be named:
    # the credit detector reads every sample up to the end of the survival failure.
    assert diagnose(micro(), obs, steps, survival, SLO).kind == "cpu_credits_exhausted"
    f = diagnose(micro(), obs.outside(FORCED), steps, survival, SLO)
    assert f.kind == "cpu_saturated", f
    assert not any("credit balance" in line for line in f.evidence)
    assert "0.33/0.33 cores" in f.evidence[0]
    # ...and it only hides the window: the samples stay in the caller's observations
    assert sum(1 for s in obs.signals if s.credit_balance == 0.0) == 60


def test_a_real_credit_exhaustion_outside_the_forced_window_is_still_named() -> None:
    obs, steps, survival = _run_with_a_forced_window()
    # The balance really runs out during the survival test (after the forced window ended).
    obs.signals = [replace(s, credit_balance=0.0, cpu_limit_cores=0.033,
                           cpu_used_cores=0.033) if s.t >= T0 + 140 else s
                   for s in obs.signals]
    f = diagnose(micro(), obs.outside(FORCED), steps, survival, SLO)
    assert f.kind == "cpu_credits_exhausted"
    assert f.at is not None and f.at >= T0 + 140


def test_the_variant_run_leaves_its_forced_window_out(tmp_path: Path) -> None:
    """The diagnose stage itself drops the window it recorded in `forced_credits`."""
    from rich.progress import Progress

    from experiments.load.capacity import CapacityResult
    from experiments.profiles import get_profile
    from experiments.results import RunStore
    from experiments.runplan import RunPlan
    from experiments.variant_run import VariantRun

    variant = load_variant("micro")
    plan = RunPlan(run_id="r1", backend_name="local", variants=[variant],
                   profile=get_profile("quick"), slo=SLO, locustfile=Path("x.py"),
                   load_workers=0, out=tmp_path, cpu_scale=0.33, credits="launch",
                   max_usd=None, app_overrides={}, survival_rps=None)
    store = RunStore.create(tmp_path, "r1", {"backend": "local", "variants": ["micro"]})
    obs, steps, survival = _run_with_a_forced_window()
    capacity = CapacityResult(capacity_rps=20, p95_ms_at_capacity=200, steps=steps,
                              bracket=(20, 30))
    run = VariantRun(variant, plan, store, Progress())
    assert run.diagnose(capacity, survival, obs).kind == "cpu_credits_exhausted"
    run.forced_credits = FORCED
    assert run.diagnose(capacity, survival, obs).kind == "cpu_saturated"

"""Time dilation: at cpu_scale s the emulated box is the AWS box in slow motion by d = 1/s, so
every wall-clock rule (Gunicorn timeouts, health checks, SLO, survival windows, credit clock) is
stretched by d. Units first, then one real deployment (root: cgroups)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from experiments.backends.local import LocalBackend, dilation_for
from experiments.backends.local.haproxy import Target, haproxy_binary, render_config
from experiments.backends.local.supervisor import dilate_gunicorn_args, dilated_seconds
from experiments.errors import UserError
from experiments.load.survival import Second, SurvivalRule, rule_text, survival_rate
from experiments.model import Slo
from experiments.profiles import Profile
from stacks.variant import HealthCheck, Variant


def test_dilation_is_one_over_cpu_scale_never_below_one() -> None:
    assert dilation_for(0.33) == pytest.approx(3.0303, abs=1e-4)
    assert dilation_for(0.5) == 2.0
    assert dilation_for(1.0) == 1.0
    assert LocalBackend(cpu_scale=0.25, state_dir=Path("/nonexistent")).dilation == 4.0
    assert LocalBackend(cpu_scale=0.25, state_dir=Path("/nonexistent"), dilation=1).dilation == 1
    with pytest.raises(UserError, match="dilation"):
        LocalBackend(cpu_scale=0.25, state_dir=Path("/nonexistent"), dilation=0.5)


def test_gunicorn_timeouts_are_stretched() -> None:
    args = Variant(name="micro").gunicorn_args("127.1.2.10:8000")
    out = dilate_gunicorn_args(args, 1 / 0.33)
    assert out[out.index("--timeout") + 1] == "91"  # 30 s × 3.03, rounded up
    assert out[out.index("--graceful-timeout") + 1] == "91"
    assert out[-1] == args[-1]  # the WSGI app stays last
    assert dilate_gunicorn_args(args, 1.0) == args
    explicit = dilate_gunicorn_args(["--graceful-timeout", "10", "--timeout", "20", "app"], 2)
    assert explicit == ["--graceful-timeout", "20", "--timeout", "40", "app"]
    assert dilated_seconds(30, 1.0) == 30 and dilated_seconds(7, 1.5) == 11


def test_haproxy_health_check_and_idle_timeouts_are_stretched(tmp_path: Path) -> None:
    v = Variant(name="scale-out", count=3, load_balancer=True,
                health_check=HealthCheck(interval_s=5, timeout_s=4, healthy_threshold=2,
                                         unhealthy_threshold=2))
    targets = [Target(f"i{i}", f"127.9.9.{10 + i}", 8000) for i in range(3)]
    cfg = render_config(v, "127.9.9.1", 8080, targets, tmp_path / "s.sock", dilation=3.0)
    assert "default-server inter 15s fall 2 rise 2" in cfg  # thresholds are counts
    assert "timeout check 12s" in cfg
    assert "timeout server 180s" in cfg and "timeout client 180s" in cfg
    odd = render_config(v, "127.9.9.1", 8080, targets, tmp_path / "s.sock", dilation=1 / 0.33)
    assert "inter 15152ms" in odd and "timeout check 12121ms" in odd
    plain = render_config(v, "127.9.9.1", 8080, targets, tmp_path / "s.sock")
    assert "inter 5s" in plain and "timeout check 4s" in plain and "timeout server 60s" in plain
    # HAProxy itself accepts the dilated file.
    path = tmp_path / "haproxy.cfg"
    path.write_text(cfg)
    check = subprocess.run([haproxy_binary(), "-c", "-f", str(path)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_slo_dilated_stretches_latency_only() -> None:
    slo = Slo(p95_ms=500, max_error_rate=0.01, min_achieved_ratio=0.95)
    d = slo.dilated(3.0)
    assert d == Slo(p95_ms=1500, max_error_rate=0.01, min_achieved_ratio=0.95)
    assert slo.dilated(1.0) == slo
    with pytest.raises(ValueError):
        slo.dilated(0.5)


def _feed(rule: SurvivalRule, seconds: list[Second]):  # type: ignore[no-untyped-def]
    for s in seconds:
        verdict = rule.add(s)
        if verdict is not None:
            return verdict
    return None


def test_survival_hang_window_is_dilated() -> None:
    silent = [Second(t=float(k), requests=0, errors=0, p95_ms=0.0) for k in range(1, 100)]
    plain = _feed(SurvivalRule(), silent)
    assert plain is not None and plain.failed_at_s == 30.0
    slow = _feed(SurvivalRule(dilation=3.0), silent)
    assert slow is not None and slow.failed_at_s == 90.0
    assert "90 s" in slow.reason
    assert rule_text(3.0) == ("failed = over the last 15 s more than 50% of requests were "
                              "errors, or no request succeeded for 90 s")


def test_survival_error_window_is_dilated() -> None:
    # 60 % errors from second 1: caught after 5 s plainly, after 15 s at d = 3.
    bad = [Second(t=float(k), requests=10, errors=6, p95_ms=5.0) for k in range(1, 40)]
    assert _feed(SurvivalRule(), bad).failed_at_s == 5.0
    assert _feed(SurvivalRule(dilation=3.0), bad).failed_at_s == 15.0


def test_survival_rate_is_the_smallest_variants_failing_rate_or_the_override() -> None:
    assert survival_rate([40.0, 27.0, 60.0]) == 27.0
    assert survival_rate([], None) is None
    assert survival_rate([40.0], 12.5) == 12.5
    with pytest.raises(ValueError):
        survival_rate([40.0], 0)


# ---- one real deployment ------------------------------------------------------------------

FIXTURE = Path(__file__).parent / "fixtures" / "local_app"


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups")
def test_deployment_runs_dilated_and_switches_credits(tmp_path: Path) -> None:
    from stacks.variant import AppSource, GunicornSettings

    app = AppSource(path=str(FIXTURE), wsgi="tinyapp:application", health_path="/healthz",
                    setup='touch "$SCALELAB_DATA_DIR/seeded"')
    v = Variant(name="tiny", app=app, os_reserve_mib=1024 - 100,
                gunicorn=GunicornSettings(workers=1, timeout_s=30))
    backend = LocalBackend(cpu_scale=0.5, state_dir=tmp_path / "state")
    assert backend.dilation == 2.0
    with backend.deployed(v) as dep:
        assert dep.extra["dilation"] == 2.0 and dep.extra["gunicorn_timeout_s"] == 60
        sup = dep.instances[0].supervisor
        assert sup is not None and sup.proc is not None
        cmdline = Path(f"/proc/{sup.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"--timeout") + 1] == b"60"
        assert cmdline[cmdline.index(b"--graceful-timeout") + 1] == b"60"
        sampled = dep.instances[0].sampled
        assert sampled is not None and sampled.time_compression == pytest.approx(0.5)
        cg = dep.instances[0].cgroup
        assert cg.read_limits()["cpu_quota_us"] == 50_000  # launch credits: the full vCPU
        assert dep.set_credits("exhausted") is True
        assert cg.read_limits()["cpu_quota_us"] == 5_000  # baseline 10 % × cpu_scale 0.5
        assert dep.set_credits("launch") is True
        assert cg.read_limits()["cpu_quota_us"] == 50_000
        with pytest.raises(UserError):
            dep.set_credits("bogus")
    assert any("credit balance switched to exhausted" in line.text
               for line in dep.observe().logs)


# ---- the runner's side: the SLO and the one survival rate per run -------------------------

def _variant_run(tmp_path: Path, survival_rps: float | None = None):  # type: ignore[no-untyped-def]
    from rich.progress import Progress

    from experiments.profiles import get_profile
    from experiments.results import RunStore
    from experiments.runplan import RunPlan
    from experiments.variant_run import VariantRun

    plan = RunPlan(run_id="r1", backend_name="local", variants=[Variant(name="micro")],
                   profile=get_profile("quick"), slo=Slo(p95_ms=500), locustfile=Path("x.py"),
                   load_workers=0, out=tmp_path, cpu_scale=0.33, credits="launch",
                   max_usd=None, app_overrides={}, survival_rps=survival_rps)
    store = RunStore.create(tmp_path, "r1", {"backend": "local", "variants": ["micro"]})
    return VariantRun(Variant(name="micro"), plan, store, Progress(), dilation=3.0)


def _capacity(*offered_passed: tuple[float, bool]):  # type: ignore[no-untyped-def]
    from experiments.load.capacity import CapacityResult
    from experiments.model import StepResult

    steps = [StepResult(offered_rps=r, achieved_rps=r, p50_ms=1, p95_ms=2, p99_ms=3,
                        error_rate=0, passed=ok) for r, ok in offered_passed]
    best = max((r for r, ok in offered_passed if ok), default=0.0)
    return CapacityResult(capacity_rps=best, p95_ms_at_capacity=2.0, steps=steps,
                          bracket=(best, best))


def test_the_runner_judges_steps_with_the_dilated_slo(tmp_path: Path) -> None:
    assert _variant_run(tmp_path).slo.p95_ms == 1500.0


@pytest.mark.parametrize("name", ["smoke", "quick", "standard"])
def test_a_profile_runs_in_the_emulated_boxs_time(name: str) -> None:
    """Steps hold the same number of the box's own seconds (so of requests) at every scale:
    at 0.33 the holds are twice those at 0.66, the first rate half."""
    from experiments.profiles import get_profile

    aws = get_profile(name)
    slow, faster = aws.dilated(dilation_for(0.33)), aws.dilated(dilation_for(0.66))
    for clock in ("warmup_s", "hold_s", "cooldown_s", "confirm_hold_s", "survival_limit_s"):
        assert getattr(slow, clock) == pytest.approx(2 * getattr(faster, clock)), clock
        assert getattr(slow, clock) == pytest.approx(getattr(aws, clock) / 0.33), clock
    assert slow.start_rps == pytest.approx(faster.start_rps / 2)
    assert slow.start_rps * slow.hold_s == pytest.approx(aws.start_rps * aws.hold_s)
    # enough requests in the first step to measure the service demand, at any scale (smoke
    # too: its first step once held 17, and a four-step search spent two steps finding it)
    from experiments.load.capacity import MIN_DEMAND_REQUESTS

    assert aws.start_rps * aws.hold_s >= MIN_DEMAND_REQUESTS
    assert aws.dilated(1.0) == aws
    with pytest.raises(ValueError):
        aws.dilated(0.5)


def test_the_runners_search_runs_the_dilated_profile(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The capacity search gets holds × d and the first rate ÷ d; survival lasts limit × d."""
    from types import SimpleNamespace

    seen: list[object] = []

    def search(load: object, deployment: object, profile: object, *_: object,
               **__: object) -> object:
        seen.append(profile)
        return iter(())

    monkeypatch.setattr("experiments.load.search.new_capacity_search", search)
    run = _variant_run(tmp_path)
    run.deployment = SimpleNamespace(url="http://127.0.0.1:1")  # type: ignore[assignment]
    run.load = SimpleNamespace(deck_arrivals=0)  # type: ignore[assignment]
    run.capacity_lane(0, cores=0.33)
    quick = run.plan.profile
    (profile,) = seen
    assert isinstance(profile, Profile)
    assert profile.hold_s == pytest.approx(3.0 * quick.hold_s)
    assert profile.confirm_hold_s == pytest.approx(3.0 * quick.confirm_hold_s)
    assert profile.start_rps == pytest.approx(quick.start_rps / 3.0)
    assert run.profile.survival_limit_s == pytest.approx(3.0 * quick.survival_limit_s)


def test_the_survival_rate_is_chosen_once_and_stored_for_resume(tmp_path: Path) -> None:
    run = _variant_run(tmp_path)
    rate, source = run.survival_rps(_capacity((8, True), (12, True), (18, False), (15, False)))
    assert rate == 15 and "micro failed its capacity search" in source
    assert run.store.info["survival"] == {"offered_rps": 15, "source": source}
    # A later variant (or a --resume) reuses the stored rate, whatever its own search did.
    assert run.survival_rps(_capacity((100, True)))[0] == 15


def test_survival_rps_overrides_and_a_search_that_never_failed(tmp_path: Path) -> None:
    forced = _variant_run(tmp_path / "a", survival_rps=7.5)
    assert forced.survival_rps(_capacity((8, True), (12, False))) == (7.5, "--survival-rps")
    never = _variant_run(tmp_path / "b")
    rate, source = never.survival_rps(_capacity((8, True), (12, True)))
    assert rate == 18 and "never failed" in source  # capacity × the profile's growth (1.5)

"""`compare` and `plan` on the recorded run fixture and a perturbed copy of it."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import RUN_FIXTURE

from experiments.cli import main
from experiments.errors import UserError
from experiments.plan import make_plan, newest_run, plan_command, winner
from experiments.report.compare import compare_command, diffs
from experiments.results import load_summary

FIXTURE = RUN_FIXTURE


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """Baseline = the fixture; contender = scale-out 20 % more capacity, micro 10 % dearer."""
    a, b = tmp_path / "results" / "a", tmp_path / "results" / "b"
    shutil.copytree(FIXTURE, a)
    shutil.copytree(FIXTURE, b)
    info = json.loads((b / "run.json").read_text())
    (b / "run.json").write_text(json.dumps({**info, "run_id": "20261126-090000-local"}))
    out = json.loads((b / "scale-out" / "result.json").read_text())
    out["capacity_rps"] = round(out["capacity_rps"] * 1.2, 2)
    (b / "scale-out" / "result.json").write_text(json.dumps(out))
    micro = json.loads((b / "micro" / "result.json").read_text())
    micro["cost"]["hourly_usd"] = round(micro["cost"]["hourly_usd"] * 1.1, 6)
    (b / "micro" / "result.json").write_text(json.dumps(micro))
    return a, b


def test_diffs_absolute_and_percent(runs: tuple[Path, Path]) -> None:
    a, b = runs
    base = load_summary(a)
    by_key = {(d.variant, d.metric.key): d for d in diffs(base, load_summary(b))}
    cap = by_key[("scale-out", "capacity_rps")]
    expected = round(cap.baseline * 1.2, 2)
    assert cap.contender == expected
    assert cap.absolute == pytest.approx(expected - cap.baseline)
    assert cap.percent == pytest.approx(20.0, abs=0.05)
    assert cap.verdict == "better"
    dearer = by_key[("micro", "hourly_usd")]
    assert dearer.percent == pytest.approx(10.0, abs=0.01) and dearer.verdict == "worse"
    same = by_key[("scale-up", "capacity_rps")]
    assert same.absolute == 0 and same.verdict == ""


def test_compare_prints_and_writes_markdown(runs: tuple[Path, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    a, b = runs
    assert compare_command(a, b) == 0
    out = capsys.readouterr().out
    assert "scale-out" in out and "+20.0 %" in out
    md = (b / "compare-20261125-100000-local-vs-20261126-090000-local.md").read_text()
    row = next(line for line in md.splitlines()
               if line.startswith("| scale-out | capacity |"))
    assert "+20.0 %" in row and "better" in row
    assert "| micro | $/hour |" in md and "+10.0 %" in md


def test_compare_bad_input(runs: tuple[Path, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    a, b = runs
    with pytest.raises(UserError, match="does not exist"):
        compare_command(a, tmp_path / "nope")
    info = json.loads((b / "run.json").read_text())
    (b / "run.json").write_text(json.dumps({**info, "format_version": 0}))
    with pytest.raises(UserError, match="another scalelab version"):
        compare_command(a, b)
    assert main(["compare", str(a), str(b)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _with_cpu(run: Path, name: str, demand_ms: float, share: float) -> None:
    result = json.loads((run / name / "result.json").read_text())
    result.update(demand_cpu_ms=demand_ms, capacity_pct_of_cpu_bound=share)
    (run / name / "result.json").write_text(json.dumps(result))


def test_compare_says_when_the_host_ran_at_another_speed(runs: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """Same app and settings, CPU per request moved > 10 %: the host's speed, said per variant
    (with 'both at the CPU knee' when both were); within 10 % nothing is said."""
    a, b = runs
    _with_cpu(a, "micro", 5.9, 94.0)
    _with_cpu(b, "micro", 7.5, 100.0)  # the host ran slower: every request cost 27 % more
    _with_cpu(a, "scale-up", 7.0, 80.0)
    _with_cpu(b, "scale-up", 6.0, 97.0)  # faster, one run short of its knee
    _with_cpu(a, "scale-out", 6.0, 95.0)
    _with_cpu(b, "scale-out", 6.3, 96.0)  # +5 %: the mix's own sampling
    assert compare_command(a, b) == 0
    md = next(b.glob("compare-*.md")).read_text()
    notes = [line for line in md.splitlines() if line.startswith("> **Warning:**")]
    assert notes == [
        "> **Warning:** micro: a request cost +27 % CPU in the contender (5.9 → 7.5 ms) with "
        "the same app: the host ran slower, and a CPU-bound box's capacity moves with that; "
        "both runs ended at the box's CPU knee (94 and 100 % of the CPU bound), so their "
        "capacity difference is the CPU per request, not the system.",
        "> **Warning:** scale-up: a request cost -14 % CPU in the contender (7 → 6 ms) with "
        "the same app: the host ran faster, and a CPU-bound box's capacity moves with that."]
    row = next(line for line in md.splitlines() if line.startswith("| micro | CPU per request |"))
    assert "5.90 ms" in row and "7.50 ms" in row and "worse" in row
    assert "warning: micro: a request cost +27 % CPU" in capsys.readouterr().out
    # Two clones of the project: the same locustfile at another path is the same app
    for run, clone in ((a, "/tmp/clone-a"), (b, "/tmp/clone-b")):
        path = f"{clone}/shop/locustfile.py"
        info = json.loads((run / "run.json").read_text())
        info["config"].update(locustfile=path, locustfile_sha256="ab" * 32)
        (run / "run.json").write_text(json.dumps(info))
    assert compare_command(a, b) == 0
    md = next(b.glob("compare-*.md")).read_text()
    assert "differ in app" not in md and "micro: a request cost +27 % CPU" in md
    info = json.loads((b / "run.json").read_text())
    info["config"]["locustfile_sha256"] = "cd" * 32  # another load
    (b / "run.json").write_text(json.dumps(info))
    assert compare_command(a, b) == 0
    md = next(b.glob("compare-*.md")).read_text()
    assert ("differ in app (baseline the shop with locustfile sha256 abababababab, contender "
            "the shop with locustfile sha256 cdcdcdcdcdcd)") in md and "the host ran" not in md
    # Measured unalike (another cpu_scale), the settings are the named difference instead
    info = json.loads((b / "run.json").read_text())
    (b / "run.json").write_text(json.dumps({**info, "cpu_scale": 0.25}))
    assert compare_command(a, b) == 0
    md = next(b.glob("compare-*.md")).read_text()
    assert "differ in cpu_scale" in md and "the host ran" not in md


def _fixture_summary(run: Path) -> tuple[dict[str, dict], float]:
    summary = load_summary(run)
    return {v["name"]: v for v in summary["variants"]}, float(summary["cpu_scale"])


def test_plan_sustained_aws_equivalent_by_default(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    by_name, scale = _fixture_summary(a)
    options = {o.strategy: o for o in make_plan(a, 30)}
    assert set(options) == {"as is", "add swap", "scale up", "scale out"}
    as_is = options["as is"]
    # t2.micro in standard mode: sustained = its 10 % baseline of the AWS-equivalent capacity
    assert as_is.capacity_rps == pytest.approx(by_name["micro"]["capacity_rps"] / scale * 0.1,
                                               rel=1e-3)
    assert not as_is.reaches and "baseline 10%" in as_is.basis and "cannot grow" in as_is.note
    up = options["scale up"]
    assert up.reaches and up.capacity_rps >= 30
    assert up.basis.startswith("extrapolated") and "measure it before buying" in up.note
    best = winner(list(options.values()))
    assert best is not None and best.strategy == "scale up"
    # --burst plans on the burst figures: the same micro carries 1/baseline = 10× more
    burst = {o.strategy: o for o in make_plan(a, 30, burst=True)}
    assert burst["as is"].capacity_rps == pytest.approx(as_is.capacity_rps * 10, rel=1e-3)
    assert burst["as is"].basis == "measured"
    assert burst["scale out"].count < options["scale out"].count


def test_plan_uses_measured_sustained_capacity(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    micro = json.loads((a / "micro" / "result.json").read_text())
    micro["sustained_capacity_rps"] = 1.5
    (a / "micro" / "result.json").write_text(json.dumps(micro))
    _, scale = _fixture_summary(a)
    as_is = next(o for o in make_plan(a, 1) if o.strategy == "as is")
    assert as_is.capacity_rps == pytest.approx(1.5 / scale) and as_is.basis == "measured"
    assert as_is.reaches


def test_plan_scale_out_count_uses_measured_efficiency(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    by_name, scale = _fixture_summary(a)
    single = by_name["micro-swap"]["capacity_rps"]  # same setup as each scale-out box
    efficiency = by_name["scale-out"]["capacity_rps"] / (3 * single)
    per_box = single / scale * 0.1 * min(1.0, efficiency)  # AWS-equivalent, sustained
    out = {o.strategy: o for o in make_plan(a, 100)}["scale out"]
    assert out.count == math.ceil(100 / per_box)
    assert out.capacity_rps >= 100 and out.reaches
    # instances, roots and addresses scale; the ALB (and its 2 addresses) does not
    assert out.hourly_usd is not None
    assert out.hourly_usd > out.count * 0.0116 + 0.0225 + (out.count + 2) * 0.005


def test_plan_scale_up_charges_unlimited_surplus(runs: tuple[Path, Path]) -> None:
    """An unlimited-mode T3 kept above its baseline bills surplus credits at the target."""
    a, _ = runs
    low = {o.strategy: o for o in make_plan(a, 5)}["scale up"]
    high = {o.strategy: o for o in make_plan(a, 20)}["scale up"]
    assert low.instance_type == high.instance_type == "t3a.medium"  # same box, more load
    assert high.hourly_usd is not None and low.hourly_usd is not None
    demand = 2 / low.capacity_rps  # CPU-seconds per request (2 vCPUs at capacity)
    # 5 req/s stays under the 0.4-vCPU baseline; 20 req/s bills the rest at $0.05/vCPU-h
    assert 5 * demand < 0.4
    assert high.hourly_usd - low.hourly_usd == pytest.approx((20 * demand - 0.4) * 0.05,
                                                             rel=0.02)
    # at 60 req/s the surplus makes a fixed-performance box cheaper
    assert {o.strategy: o for o in make_plan(a, 60)}["scale up"].instance_type == "c6i.large"


def test_plan_small_target_keeps_the_small_box(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    options = make_plan(a, 2)
    as_is = next(o for o in options if o.strategy == "as is")
    assert as_is.reaches and as_is.count == 1
    best = winner(options)
    assert best is not None and best.count == 1
    assert best.monthly_usd == min(o.monthly_usd for o in options if o.reaches)


def test_plan_absurd_target_stays_bounded(runs: tuple[Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = runs
    options = {o.strategy: o for o in make_plan(a, 1e12)}
    assert not any(o.reaches for o in options.values())
    out = options["scale out"]
    assert out.configuration.startswith("over 1,000 ×") and out.monthly_usd is None
    assert "1,000 targets" in out.note
    assert "no single instance type" in options["scale up"].note
    assert options["scale up"].capacity_rps < 1e4
    assert plan_command(1e12, a) == 1
    text = capsys.readouterr().out
    assert "over 1,000" in text and "No strategy reaches the target" in text
    assert not re.search(r"\d{1,3}(,\d{3}){3,}", text)  # nothing in the billions


def test_plan_command_default_run_and_bad_input(runs: tuple[Path, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    a, b = runs
    os.utime(a / "summary.json", (1, 1))  # b is newer
    monkeypatch.chdir(tmp_path)
    assert newest_run() == Path("results") / "b"
    assert plan_command(30, None) == 0
    assert "Winner: scale up" in capsys.readouterr().out
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(UserError, match="--target-rps must be a request rate above 0"):
            plan_command(bad, a)
    assert main(["plan", "--target-rps", "-1", "--from", str(a)]) == 2
    assert capsys.readouterr().err.strip().startswith("scalelab: --target-rps")
    with pytest.raises(UserError, match="does not exist"):
        plan_command(10, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(UserError, match="no run with a summary.json"):
        plan_command(10, None)

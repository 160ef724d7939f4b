"""`compare` and `plan` on the recorded run fixture and a perturbed copy of it."""

from __future__ import annotations

import json
import math
import os
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


def test_plan_scale_up_wins_a_modest_target(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    options = {o.strategy: o for o in make_plan(a, 30)}
    assert set(options) == {"as is", "add swap", "scale up", "scale out"}
    assert not options["as is"].reaches and not options["add swap"].reaches
    up = options["scale up"]
    assert (up.instance_type, up.basis, up.reaches) == ("t3.medium", "measured", True)
    out = options["scale out"]
    assert out.count == 3 and out.reaches
    best = winner(list(options.values()))
    assert best is not None and best.strategy == "scale up"


def test_plan_scale_out_count_uses_measured_efficiency(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    summary = {v["name"]: v for v in load_summary(a)["variants"]}
    per_instance = summary["micro-swap"]["capacity_rps"]  # same setup as each scale-out box
    efficiency = summary["scale-out"]["capacity_rps"] / (3 * per_instance)
    options = {o.strategy: o for o in make_plan(a, 100)}
    out = options["scale out"]
    assert out.count == math.ceil(100 / (per_instance * min(1.0, efficiency)))
    assert out.capacity_rps >= 100
    # 10 boxes: instances, roots and addresses scale; the ALB (and its 2 addresses) does not
    assert out.hourly_usd > 10 * 0.0116 + 0.0225 + 12 * 0.005
    assert not options["scale up"].reaches  # no 2-vCPU type in the catalog reaches 100
    assert winner(list(options.values())).strategy == "scale out"


def test_plan_small_target_keeps_the_small_box(runs: tuple[Path, Path]) -> None:
    a, _ = runs
    options = make_plan(a, 5)
    as_is = next(o for o in options if o.strategy == "as is")
    assert as_is.reaches and as_is.basis == "measured" and as_is.count == 1
    best = winner(options)
    assert best is not None and best.count == 1
    assert best.monthly_usd == min(o.monthly_usd for o in options if o.reaches)
    assert best.monthly_usd <= as_is.monthly_usd


def test_plan_command_default_run_and_bad_input(runs: tuple[Path, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    a, b = runs
    os.utime(a / "summary.json", (1, 1))  # b is newer
    monkeypatch.chdir(tmp_path)
    assert newest_run() == Path("results") / "b"
    assert plan_command(30, None) == 0
    assert "Winner: scale up" in capsys.readouterr().out
    for bad in (0, -5):
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

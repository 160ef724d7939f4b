"""End to end on the local backend, for real: Gunicorn in cgroups, HAProxy, Locust, on loopback.

A quick run of micro goes from deploy to report: the README's demo for one stack, with its
out-of-memory kill and its sustained (credits emptied) search. A smoke run of micro +
scale-out, measured together, is interrupted with SIGINT while both search, then resumed:
that proves teardown of every variant on Ctrl-C, that the interrupted attempt is kept, that
`--resume` measures what is missing, and that the finished summary keeps the design's
contract.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BYO_APP as FIXTURE_APP
from conftest import needs_root

from stacks.variant import PROJECT_DIR

pytestmark = [pytest.mark.slow, needs_root]


def scalelab(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments", *args]


def check_contract(summary: dict[str, Any]) -> None:
    """The keys docs/results.md promises in summary.json, with their types."""
    assert isinstance(summary["run_id"], str) and summary["backend"] == "local"
    assert 0 < summary["cpu_scale"] <= 2
    assert summary["slo"]["p95_ms"] == 500 and summary["slo"]["max_error_rate"] == 0.01
    for v in summary["variants"]:
        assert {"name", "instance_type", "count", "swap_mib", "load_balancer", "capacity_rps",
                "p95_ms_at_capacity", "survival", "failure", "cost", "steps"} <= set(v)
        assert isinstance(v["capacity_rps"], (int, float)) and v["capacity_rps"] >= 0
        assert set(v["survival"]) >= {"seconds", "held"}
        assert isinstance(v["failure"]["kind"], str) and isinstance(v["failure"]["evidence"], list)
        assert set(v["cost"]) >= {"hourly_usd", "monthly_usd", "usd_per_million_requests"}
        assert v["steps"], "every variant has at least one measured step"
        for step in v["steps"]:
            assert set(step) >= {"offered_rps", "achieved_rps", "p50_ms", "p95_ms", "p99_ms",
                                 "error_rate", "passed"}
            assert step["p50_ms"] <= step["p95_ms"] <= step["p99_ms"]


def leftover_processes() -> list[str]:
    """Servers and load processes as the local backend and the load driver start them (not
    any command line that merely names gunicorn, such as a concurrent `pip install`)."""
    pattern = r"-m gunicorn |^haproxy |/haproxy |experiments\.load"
    result = subprocess.run(["pgrep", "-a", "-f", pattern], capture_output=True, text=True)
    return [line for line in result.stdout.splitlines() if "pgrep" not in line]


def interrupt_run(args: list[str], out: Path, reached: str, timeout_s: float, signum: int,
                  log_path: Path, after_s: float = 0.0) -> None:
    """Start `run ARGS`, wait until `out` holds `reached` (a glob), then `after_s`, then send
    `signum`: the run must exit 130 (interrupted, torn down, results kept)."""
    with log_path.open("w") as log:
        run = subprocess.Popen(scalelab("run", *args), cwd=PROJECT_DIR, stdout=log,
                               stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout_s
            while time.time() < deadline and not list(out.glob(reached)):
                assert run.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.5)
            assert list(out.glob(reached)), f"{reached} did not appear in {timeout_s:g} s"
            time.sleep(after_s)
            run.send_signal(signum)
            assert run.wait(timeout=60) == 130, log_path.read_text()[-3000:]
        finally:
            if run.poll() is None:
                run.kill()


def check_files(run_dir: Path, names: list[str]) -> None:
    for name in names:
        for filename in ("variant.json", "steps.json", "survival.json", "signals.csv",
                         "logs.jsonl", "diagnosis.json", "result.json"):
            assert (run_dir / name / filename).is_file(), f"{name}/{filename}"
    for filename in ("summary.md", "summary.csv", "report.html"):
        assert (run_dir / filename).is_file(), filename


def test_a_quick_run_of_micro_from_deploy_to_report(tmp_path: Path) -> None:
    """At cpu_scale 0.66, not the demo's 0.33 (sized for scale-out's three micros): micro alone
    fits, and every dilated clock runs half as long (6.8 minutes at 0.33)."""
    out = tmp_path / "results"
    started = time.monotonic()
    run = subprocess.run(scalelab("run", "--variants", "micro", "--profile", "quick",
                                  "--cpu-scale", "0.66", "--out", str(out)),
                         cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600)
    wall_s = time.monotonic() - started
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert leftover_processes() == []
    run_dir = next(out.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    check_contract(summary)
    assert summary["cpu_scale"] == 0.66
    # The load's identity, so that `compare` sees two clones' runs as the same app
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert config["locustfile_sha256"] == hashlib.sha256(
        Path(config["locustfile"]).read_bytes()).hexdigest()
    (micro,) = summary["variants"]
    assert micro["capacity_rps"] > 0
    micro_failure = micro["failure"]
    assert micro_failure["kind"] in ("oom_kill", "worker_timeout"), micro_failure
    # Gunicorn's "was sent SIGKILL" or the kernel's own "Killed process" record: with the
    # one-load survival test micro is OOM-killed several times, and the kernel lines come first.
    assert any("was sent SIGKILL" in line or "Killed process" in line
               for line in micro_failure["evidence"]), micro_failure
    # The sustained search (credits emptied) held the shop's whole deck in every step.
    sustained = json.loads((run_dir / "micro" / "sustained-steps.json").read_text())
    assert sustained and micro["sustained_source"] == "measured"
    assert all(step["scheduled"] >= 99 for step in sustained), \
        [(step["offered_rps"], step["scheduled"]) for step in sustained]
    check_files(run_dir, ["micro"])
    # Where the time went: the stages measured, inside the run's own wall time
    took = micro["stage_seconds"]
    assert {"deploy", "capacity", "sustained", "survival", "observe"} <= set(took), took
    assert took["capacity"] > 10 and took["survival"] > 1, took
    assert sum(took.values()) < wall_s, (took, wall_s)


def test_interrupt_then_resume_two_variants(tmp_path: Path) -> None:
    """Both variants are deployed and measured together: a Ctrl-C while their searches run
    tears both down and keeps their steps; `--resume` measures both again, together, and
    keeps the interrupted attempt beside."""
    out = tmp_path / "results"
    interrupt_run(["--variants", "micro,scale-out", "--profile", "smoke", "--out", str(out)],
                  out, "*/scale-out/steps.json", 300, signal.SIGINT, tmp_path / "first.log",
                  after_s=1)
    assert leftover_processes() == []
    run_dir = next(out.iterdir())
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "incomplete"
    assert (run_dir / "micro" / "steps.json").is_file()  # the two were measured together
    assert json.loads((run_dir / "summary.json").read_text())["variants"] == []

    second = subprocess.run(scalelab("run", "--resume", run_dir.name, "--out", str(out)),
                            cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "scale-out" in second.stdout and "capacity" in second.stdout
    assert leftover_processes() == []
    kept = sorted(p.name.split(".")[0] for p in run_dir.glob("*.interrupted-*"))
    assert kept == ["micro", "scale-out"]  # the interrupted attempt, set aside, not lost

    summary = json.loads((run_dir / "summary.json").read_text())
    check_contract(summary)
    variants = {v["name"]: v for v in summary["variants"]}
    assert list(variants) == ["micro", "scale-out"]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert variants["scale-out"]["capacity_rps"] > variants["micro"]["capacity_rps"], \
        {name: search_steps(run_dir / name) for name in variants}
    (versus,) = summary["comparisons"]
    assert versus["variant"] == "scale-out" and versus["measured_together"]
    check_files(run_dir, list(variants))


def search_steps(variant_dir: Path) -> str:
    """The variant's capacity search in one line, so a failed comparison shows how each
    search ended."""
    from experiments.load.capacity import search_trail
    from experiments.model import StepResult

    steps = json.loads((variant_dir / "steps.json").read_text())
    return search_trail(StepResult.from_dict(step) for step in steps)


@pytest.mark.skipif(not FIXTURE_APP.is_dir(), reason="bring-your-own-app fixture not present")
def test_bring_your_own_app(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = subprocess.run(
        scalelab("run", "--variants", "micro", "--profile", "smoke", "--out", str(out),
                 "--app-dir", str(FIXTURE_APP), "--wsgi", "app:application",
                 "--health-path", "/health", "--locustfile", str(FIXTURE_APP / "locustfile.py")),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    check_contract(summary)
    (micro,) = summary["variants"]
    assert micro["capacity_rps"] > 0
    assert leftover_processes() == []


def test_sigterm_tears_down_and_keeps_the_run_like_ctrl_c(tmp_path: Path) -> None:
    """`kill PID` (a CI timeout, `docker stop`) mid-measurement: exit 130, nothing left
    behind, the run marked incomplete and resumable — not a deployment left running."""
    from experiments.backends.local.cgroups import CGROUP_PREFIX, detect_layout

    def cgroups() -> set[Path]:
        return {p for root in detect_layout().roots() for p in root.glob(f"{CGROUP_PREFIX}*")}

    before = cgroups()  # another run on this host may own some; ours must all be gone
    out = tmp_path / "results"
    interrupt_run(["--variants", "micro", "--profile", "smoke", "--out", str(out)], out,
                  "*/micro/steps.json", 120, signal.SIGTERM, tmp_path / "run.log")
    assert "interrupted; deployments were torn down" in (tmp_path / "run.log").read_text()
    assert leftover_processes() == []
    assert cgroups() <= before
    run_dir = next(out.iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "incomplete"

"""Bad input answers one sentence (exit 2, no traceback) before anything is deployed; the CLI's
own surface (help, version, usage, pipes, thresholds) behaves as documented.

The full table of bad inputs across every command is tests/test_bad_inputs.py.
"""

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PROJECT_DIR, RUN_FIXTURE
from conftest import scalelab_cli as scalelab

from experiments.cli import build_parser


def assert_one_sentence(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(("args", "needles"), [
    (["run", "--variants", "micro,huge"], ["unknown variant 'huge'", "micro-swap"]),
    (["run", "--slo-p95-ms", "-5"], ["--slo-p95-ms", "from 1 to 600000 ms"]),
    (["run", "--locustfile", "/nonexistent/locustfile.py"], ["/nonexistent/locustfile.py",
                                                             "cannot be read"]),
    (["run", "--resume", "19700101-000000-local"], ["19700101-000000-local",
                                                     "there is no run folder"]),
    (["run", "--app-dir", "/nonexistent-app"], ["--app-dir", "not a directory"]),
    (["run", "--profile", "forever"], ["--profile", "quick"]),
    (["run", "--backend", "aws", "--variants", "micro"], ["Pulumi CLI"]),
    (["report", "/nonexistent/run"], ["/nonexistent/run", "does not exist"]),
])
def test_bad_input_is_one_sentence(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    result = scalelab(*args, "--out", str(tmp_path)) if args[0] == "run" else scalelab(*args)
    assert_one_sentence(result, *needles)
    if args[0] == "run":
        assert list(tmp_path.iterdir()) == [], "nothing may be created for bad input"


def test_help_explains_every_command() -> None:
    result = scalelab("--help")
    assert result.returncode == 0
    for command in ("run", "report", "compare", "cost", "plan", "leftovers"):
        assert command in result.stdout
    run_help = scalelab("run", "--help").stdout
    for flag in ("--backend", "--variants", "--profile", "--slo-p95-ms", "--out", "--resume",
                 "--max-usd", "--load-workers"):
        assert flag in run_help


def test_every_argument_has_a_help_line() -> None:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {action.dest}" for name, sub in subs.choices.items()
               for action in sub._actions if not action.help]
    assert missing == []
    assert set(subs.choices) == {"run", "report", "compare", "cost", "plan", "leftovers"}


def test_version() -> None:
    result = scalelab("--version")
    assert result.returncode == 0 and result.stdout.startswith("scalelab 0.")


@pytest.mark.parametrize("command", ["run", "report", "compare", "cost", "plan", "leftovers"])
def test_bad_flag_shows_the_subcommands_usage(command: str) -> None:
    result = scalelab(command, "--bogus")
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: scalelab {command} ")
    assert f"scalelab {command}: error: unrecognized arguments: --bogus" in result.stderr \
        or f"scalelab {command}: error: the following arguments are required" in result.stderr


def test_broken_pipe_exits_quietly(tmp_path: Path) -> None:
    """`scalelab compare A B | true`: the reader is gone before the first write (a sure
    EPIPE); the command ends quietly, no BrokenPipeError traceback."""
    run = tmp_path / "run"
    shutil.copytree(RUN_FIXTURE, run)
    for _ in range(3):
        proc = subprocess.run(["bash", "-c", f"{PROJECT_DIR}/.venv/bin/python -m experiments "
                               f"compare {RUN_FIXTURE} {run} | true"],
                              cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
        assert proc.stderr == ""


def test_repeated_variant_is_priced_once() -> None:
    result = scalelab("cost", "--variants", "micro,micro", "--json")
    assert result.returncode == 0
    assert [row["variant"] for row in json.loads(result.stdout)] == ["micro"]
    assert "micro listed more than once" in result.stderr


def test_compare_warns_about_itself_and_unlike_runs(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(RUN_FIXTURE, a)
    shutil.copytree(RUN_FIXTURE, b)
    info = json.loads((b / "run.json").read_text())
    info.update(run_id="20261126-090000-local", cpu_scale=0.25, slo={"p95_ms": 250})
    (b / "run.json").write_text(json.dumps(info))
    same = scalelab("compare", str(a), str(a))
    assert same.returncode == 0 and "compared with itself" in same.stdout
    unlike = scalelab("compare", str(a), str(b))
    assert unlike.returncode == 0
    assert "differ in SLO" in unlike.stdout and "differ in cpu_scale" in unlike.stdout
    assert "differ in profile" not in unlike.stdout
    md = next(b.glob("compare-*.md")).read_text()
    assert "**Warning:** the runs differ in SLO (baseline p95 ≤ 500 ms, contender p95 ≤ 250 ms)" \
        in md


def test_compare_tests_repeated_capacities(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(RUN_FIXTURE, a)
    shutil.copytree(RUN_FIXTURE, b)
    for run, runs in ((a, [30.0, 31.0, 29.0]), (b, [40.0, 41.5, 39.0])):
        result = json.loads((run / "micro" / "result.json").read_text())
        result.update(capacity_rps=runs[0], capacity_runs=runs, capacity_ci95=[1.0, 2.0])
        (run / "micro" / "result.json").write_text(json.dumps(result))
    out = scalelab("compare", str(a), str(b))
    assert out.returncode == 0, out.stderr
    md = next(b.glob("compare-*.md")).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| micro | capacity |"))
    assert "significant (Welch's t-test, p = 0.00" in row
    other = next(line for line in md.splitlines() if line.startswith("| scale-up | capacity |"))
    assert "not testable: 1 vs 1 searches" in other


def test_resuming_a_complete_run_judges_thresholds_and_keeps_finished_at(tmp_path: Path
                                                                          ) -> None:
    out = tmp_path / "results"
    run = out / "20261125-100000-local"
    shutil.copytree(RUN_FIXTURE, run)
    before = json.loads((run / "run.json").read_text())
    env = {"SCALELAB_LOCAL_STATE_DIR": str(tmp_path / "state")}
    micro = json.loads((run / "micro" / "result.json").read_text())["capacity_rps"]
    ok = scalelab("run", "--resume", run.name, "--out", str(out), "--threshold",
                  f"micro:capacity_rps>={micro}", env=env)
    assert ok.returncode == 0, ok.stderr
    failed = scalelab("run", "--resume", run.name, "--out", str(out),
                      "--threshold", f"micro:capacity_rps>={micro + 1}",
                      "--threshold", "*:usd_per_million_requests<=0", env=env)
    assert failed.returncode == 99, failed.stderr
    lines = [x for x in failed.stderr.splitlines() if "threshold" in x]
    assert lines[0] == (f"scalelab: threshold micro:capacity_rps>={micro + 1:g} failed: micro "
                        f"capacity_rps = {micro:g}")
    assert len(lines) == 1 + 4  # one per variant for '*'
    after = json.loads((run / "run.json").read_text())
    assert after.get("finished_at") == before.get("finished_at")
    assert after["status"] == "complete"


def test_report_of_a_damaged_run_shows_what_it_can(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(RUN_FIXTURE, run)
    (run / "micro" / "result.json").write_text("[1, 2")
    (run / "scale-up" / "signals.csv").write_text("t,instance\n1,a,b,c\n")
    result = scalelab("report", str(run))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("scalelab: warning: ") for w in warnings)
    assert "micro/result.json is damaged" in warnings[0]
    assert "scale-up/signals.csv is damaged (line 2" in warnings[1]
    summary = json.loads((run / "summary.json").read_text())
    assert [v["name"] for v in summary["variants"]] == ["micro-swap", "scale-up", "scale-out"]
    html = (run / "report.html").read_text()
    assert "scale-up" in html and "scale-out" in html


def test_a_wrongly_shaped_run_file_is_named_not_a_traceback(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(RUN_FIXTURE, run)
    (run / "scale-up" / "steps.json").write_text('[{"rate": 5}]')  # valid JSON, wrong shape
    result = scalelab("plan", "--target-rps", "50", "--from", str(run))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    sentence = result.stderr.strip().splitlines()[-1]
    assert sentence.startswith("scalelab: plan failed after reading ")
    assert "scale-up/steps.json" in sentence and "SCALELAB_DEBUG=1" in sentence

"""Bad input answers one sentence (exit 2, no traceback) before anything is deployed."""

import subprocess
from pathlib import Path

import pytest
from conftest import scalelab_cli as scalelab


def assert_one_sentence(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(("args", "needles"), [
    (["run", "--variants", "micro,huge"], ["unknown variant 'huge'", "micro-swap"]),
    (["run", "--slo-p95-ms", "-5"], ["--slo-p95-ms", "greater than 0"]),
    (["run", "--locustfile", "/nonexistent/locustfile.py"], ["/nonexistent/locustfile.py",
                                                             "cannot be read"]),
    (["run", "--resume", "19700101-000000-local"], ["19700101-000000-local", "does not exist"]),
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

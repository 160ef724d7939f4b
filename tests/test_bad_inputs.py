"""Bad input, across every command: one sentence, the right exit status, no traceback, and
nothing started — no run folder, no process, no cgroup, no swapfile.

The local backend writes every resource (process group, cgroup, swapfile, folder) into a
marker under its state directory *before* creating it, so an empty per-test state directory
(SCALELAB_LOCAL_STATE_DIR) proves that none was created; the test also looks for live
processes carrying that state directory in their environment and for swap areas under it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import BYO_APP, RUN_FIXTURE
from conftest import scalelab_cli as scalelab

RUN_ID = "20261125-100000-local"  # the recorded run in tests/fixtures/run_fixture
CORES = len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    status: int
    needles: tuple[str, ...]
    """Each must appear in the sentence (stderr's last line; for a damaged run's report,
    anywhere in its warnings)."""


def case(name: str, args: str | tuple[str, ...], status: int, *needles: str) -> Case:
    return Case(name, tuple(args.split()) if isinstance(args, str) else args, status, needles)


# {out}: the per-test --out folder (holds a copy of the recorded run); {files}: bad files;
# {run}: that copied run folder. Usage errors exit 2; a damaged run shows what it can, exit 1.
CASES = [
    # ---- run: numbers -----------------------------------------------------------------
    case("slo negative", "run --slo-p95-ms -5", 2, "--slo-p95-ms", "from 1 to 600000 ms"),
    case("slo zero", "run --slo-p95-ms 0", 2, "--slo-p95-ms", "from 1 to 600000"),
    case("slo nan", "run --slo-p95-ms nan", 2, "--slo-p95-ms", "finite number"),
    case("slo inf", "run --slo-p95-ms inf", 2, "--slo-p95-ms", "finite number"),
    case("slo text", "run --slo-p95-ms fast", 2, "--slo-p95-ms", "expected a number"),
    case("slo huge", "run --slo-p95-ms 1e9", 2, "--slo-p95-ms", "600000"),
    case("load workers beyond host", "run --load-workers 1000", 2, "--load-workers",
         f"from 0 to {CORES}"),
    case("load workers negative", "run --load-workers -1", 2, "--load-workers", "from 0"),
    case("load workers text", "run --load-workers two", 2, "--load-workers", "whole number"),
    case("cpu scale too big", "run --cpu-scale 100", 2, "--cpu-scale", "from 0.01 to 1"),
    case("cpu scale zero", "run --cpu-scale 0", 2, "--cpu-scale", "from 0.01 to 1"),
    case("cpu scale nan", "run --cpu-scale nan", 2, "--cpu-scale", "finite"),
    case("max usd nan", "run --backend aws --max-usd nan", 2, "--max-usd", "finite"),
    case("max usd on local", "run --max-usd 5", 2, "--max-usd", "only to --backend aws"),
    case("cpu scale on aws", "run --backend aws --cpu-scale 0.5", 2, "--cpu-scale",
         "only to --backend local"),
    case("repeat zero", "run --repeat 0", 2, "--repeat", "from 1 to 20"),
    case("repeat too many", "run --repeat 21", 2, "--repeat", "from 1 to 20"),
    # ---- run: names and choices -------------------------------------------------------
    case("unknown variant", "run --variants micro,huge", 2, "unknown variant 'huge'",
         "micro-swap"),
    case("empty variant list", ("run", "--variants", ","), 2, "--variants",
         "variant names separated by commas"),
    case("unknown profile", "run --profile forever", 2, "--profile", "quick"),
    case("unknown backend", "run --backend gcp", 2, "--backend", "local"),
    case("aws without pulumi", "run --backend aws --variants micro", 2, "Pulumi CLI"),
    case("bad flag shows run usage", "run --bogus", 2, "scalelab run: error",
         "unrecognized arguments: --bogus"),
    # ---- run: thresholds --------------------------------------------------------------
    case("threshold syntax", ("run", "--threshold", "fast"), 2, "--threshold 'fast'",
         "VARIANT:METRIC>=NUMBER"),
    case("threshold metric", ("run", "--threshold", "micro:speed>=1"), 2,
         "unknown metric 'speed'", "capacity_rps"),
    case("threshold variant", ("run", "--threshold", "huge:capacity_rps>=1"), 2,
         "variant 'huge'", "not measure"),
    case("threshold number", ("run", "--threshold", "micro:capacity_rps>=lots"), 2,
         "finite number"),
    case("threshold nan", ("run", "--threshold", "micro:capacity_rps>=nan"), 2,
         "finite number"),
    # ---- run: the user's files --------------------------------------------------------
    case("locustfile missing", "run --locustfile /nonexistent/locustfile.py", 2,
         "/nonexistent/locustfile.py", "cannot be read"),
    case("locustfile not python", "run --locustfile {files}/notes.txt", 2, "notes.txt",
         "not a Python module"),
    case("locustfile syntax error", "run --locustfile {files}/syntax.py", 2, "syntax.py",
         "syntax error at line 1"),
    case("locustfile without user", "run --locustfile {files}/nouser.py", 2, "nouser.py",
         "exactly one User class", "found 0"),
    case("locustfile with two users", "run --locustfile {files}/twousers.py", 2,
         "found 2 (A, B)"),
    case("locustfile exits on import", "run --locustfile {files}/exits.py", 2, "exits.py",
         "failed to import", "SystemExit"),
    case("app dir missing", "run --app-dir /nonexistent-app --wsgi app:application", 2,
         "--app-dir", "not a directory"),
    case("app dir without wsgi", f"run --app-dir {BYO_APP}", 2, "--app-dir needs --wsgi"),
    case("wsgi colon only", ("run", "--wsgi", ":"), 2, "--wsgi ':'", "MODULE:CALLABLE"),
    case("wsgi module missing", f"run --app-dir {BYO_APP} --wsgi nosuch:application "
         f"--locustfile {BYO_APP}/locustfile.py", 2, "--wsgi nosuch:application",
         "no module 'nosuch'"),
    case("wsgi callable missing", f"run --app-dir {BYO_APP} --wsgi app:nothing "
         f"--locustfile {BYO_APP}/locustfile.py", 2, "--wsgi app:nothing",
         "Failed to find attribute 'nothing'"),
    case("wsgi not callable", f"run --app-dir {BYO_APP} --wsgi app:MAX_MIB "
         f"--locustfile {BYO_APP}/locustfile.py", 2, "must be callable"),
    case("wsgi app raises", "run --app-dir {files} --wsgi broken:application "
         f"--locustfile {BYO_APP}/locustfile.py", 2, "importing broken failed",
         "RuntimeError"),
    case("byo app without locustfile", f"run --app-dir {BYO_APP} --wsgi app:application", 2,
         "needs --locustfile"),
    case("health path without slash", "run --health-path health", 2, "--health-path",
         "starting with '/'"),
    case("requirements missing", "run --requirements /nonexistent/req.txt", 2,
         "--requirements", "not a readable file"),
    case("out is a file", "run --out {files}/notes.txt", 2, "--out", "is a file"),
    case("out under a file", "run --out {files}/notes.txt/runs", 2, "--out",
         "notes.txt is a file"),
    # ---- run --resume -----------------------------------------------------------------
    case("resume empty", ("run", "--resume", "", "--out", "{out}"), 2, "--resume needs",
         RUN_ID),
    case("resume path", "run --resume ../elsewhere --out {out}", 2, "not a path"),
    case("resume unknown", "run --resume 19700101-000000-local --out {out}", 2,
         "19700101-000000-local", RUN_ID),
    case("resume conflicting profile", f"run --resume {RUN_ID} --profile standard --out {{out}}",
         2, "uses the run's own --profile (quick)", "drop --profile"),
    case("resume conflicting variants", f"run --resume {RUN_ID} --variants micro --out {{out}}",
         2, "--variants (micro,micro-swap,scale-up,scale-out)"),
    case("resume conflicting slo", f"run --resume {RUN_ID} --slo-p95-ms 200 --out {{out}}", 2,
         "--slo-p95-ms (500.0)"),
    case("resume without config", "run --resume noconfig --out {out}", 2,
         "run noconfig cannot be resumed", "no 'config'"),
    case("resume truncated run.json", "run --resume truncated --out {out}", 2,
         "truncated/run.json is damaged", "not valid JSON"),
    case("resume vanished locustfile", "run --resume gone --out {out}", 2, "cannot be resumed",
         "/nonexistent/locustfile.py", "cannot be read"),
    # ---- report / compare / plan on missing or damaged runs ---------------------------
    case("report missing", "report /nonexistent/run", 2, "/nonexistent/run", "does not exist"),
    case("report a file", "report {files}/notes.txt", 2, "notes.txt", "is a file"),
    case("report no run.json", "report {files}", 2, "not a scalelab run folder"),
    case("report truncated run.json", "report {out}/truncated", 2, "run.json is damaged"),
    case("report damaged result", "report {run}", 1, "micro/result.json is damaged",
         "restore it", "scale-up/steps.json is damaged", "without its charts"),
    case("report bad flag", "report --bogus {run}", 2, "scalelab report: error"),
    case("compare missing", "compare {run} /nonexistent/run", 2, "/nonexistent/run"),
    case("compare damaged run.json", "compare {run} {out}/truncated", 2, "run.json is damaged"),
    case("compare one run", "compare {run}", 2, "scalelab compare: error", "RUN_B"),
    case("plan nan", "plan --target-rps nan", 2, "--target-rps", "finite number"),
    case("plan inf", "plan --target-rps inf", 2, "--target-rps", "finite number"),
    case("plan negative", "plan --target-rps -1 --from {run}", 2, "--target-rps", "above 0"),
    case("plan without target", "plan", 2, "--target-rps"),
    case("plan damaged steps", "plan --target-rps 50 --from {run}", 2,
         "scale-up/steps.json is damaged"),
    case("plan from a file", "plan --target-rps 50 --from {files}/notes.txt", 2, "is a file"),
    # ---- cost / leftovers / top level -------------------------------------------------
    case("cost unknown variant", "cost --variants huge", 2, "unknown variant 'huge'"),
    case("cost unknown region", "cost --region mars-1", 2, "mars-1"),
    case("leftovers unknown backend", "leftovers --backend gcp", 2, "--backend", "local"),
    case("leftovers bad flag", "leftovers --bogus", 2, "scalelab leftovers: error"),
    case("no command", "", 2, "required: COMMAND"),
    case("unknown command", "deploy", 2, "invalid choice: 'deploy'"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad-files")
    (folder / "notes.txt").write_text("shop at noon\n")
    (folder / "syntax.py").write_text("def broken(:\n")
    (folder / "nouser.py").write_text("import os\nLIMIT = 3\n")
    (folder / "twousers.py").write_text(
        "from locust import HttpUser, task\n"
        "class A(HttpUser):\n    @task\n    def a(self): pass\n"
        "class B(HttpUser):\n    @task\n    def b(self): pass\n")
    (folder / "exits.py").write_text("raise SystemExit(3)\n")
    (folder / "broken.py").write_text("raise RuntimeError('no database configured')\n")
    return folder


def _out_folder(root: Path) -> Path:
    """A results folder holding the recorded run (one result damaged) and broken runs."""
    out = root / "results"
    run = out / RUN_ID
    shutil.copytree(RUN_FIXTURE, run)
    (run / "micro" / "result.json").write_text('{"name": "micro", "capacity_')
    (run / "scale-up" / "steps.json").write_text("[{]")
    info = json.loads((run / "run.json").read_text())
    gone = {**info["config"], "locustfile": "/nonexistent/locustfile.py"}
    for name, content in (("noconfig", {k: v for k, v in info.items() if k != "config"}),
                          ("gone", {**info, "config": gone})):
        (out / name).mkdir()
        (out / name / "run.json").write_text(json.dumps({**content, "run_id": name}))
    (out / "truncated").mkdir()
    (out / "truncated" / "run.json").write_text(json.dumps(info)[:40])
    return out


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b""
            for p in sorted(folder.rglob("*"))}


def _live_processes(state: Path) -> list[str]:
    """Processes that carry this test's state directory in their environment."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("SCALELAB_LOCAL_STATE_DIR") == str(state):
                found.append(" ".join(proc.info["cmdline"] or []))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_bad_input(bad: Case, files: Path, tmp_path: Path) -> None:
    out = _out_folder(tmp_path)
    state = tmp_path / "state"
    args = [a.format(out=out, files=files, run=out / RUN_ID) for a in bad.args]
    if args and args[0] == "run" and "--out" not in args:
        args += ["--out", str(out)]
    before = _tree(out)

    result = scalelab(*args, env={"SCALELAB_LOCAL_STATE_DIR": str(state)}, timeout=180)

    assert result.returncode == bad.status, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    assert last.startswith("scalelab"), result.stderr
    said = result.stderr if bad.status == 1 else last
    for needle in bad.needles:
        assert needle in said, said
    changed = {k for k in set(before) | set(_tree(out)) if before.get(k) != _tree(out).get(k)}
    if args[:1] == ["report"] and bad.status == 1:  # a rebuilt report is the point of `report`
        changed -= {f"{RUN_ID}/{f}" for f in ("summary.json", "summary.md", "summary.csv",
                                              "report.html")}
    assert not changed, f"bad input changed the results folder: {sorted(changed)}"
    assert not state.exists(), "the local backend was reached (its state directory exists)"
    assert _live_processes(state) == []
    assert str(state) not in Path("/proc/swaps").read_text()


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)

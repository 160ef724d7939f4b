"""The staged runner replays a recorded run and writes the same records.

`fixtures/replay_run` is the README's quick demo as the runner wrote it before it was split into
stages (git 1174345; Gunicorn's access-log lines dropped — nothing downstream reads them). Here
the stages run again on that recording: the deployment answers with the recorded signals and
logs, the load with the recorded searches and survival clients. What the stages compute from
them — the survival verdict, the diagnosis (with the emptied-credit window left out), the
runway, the bill, the summary record — must come out with the same keys and the same verdicts.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES
from rich.console import Console
from rich.progress import Progress

from experiments.backends.base import Deployment
from experiments.credits_model import Sustained
from experiments.load.capacity import CapacityResult
from experiments.load.survival import smallest_first
from experiments.load.sustained import FORCED_CREDITS_MARGIN_S, SustainedSearch
from experiments.model import Observations, Slo, StepResult, SurvivalResult
from experiments.profiles import get_profile
from experiments.results import RunStore
from experiments.runplan import RunPlan
from experiments.sweep import Sweep
from stacks.variant import Variant, load_variant

REPLAY = FIXTURES / "replay_run"
VARIANTS = ["micro", "micro-swap", "scale-out", "scale-up"]


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


class ReplayDeployment(Deployment):
    """Observes what the recording observed; its credit balance can be "emptied"."""

    recorded: Observations = Observations()

    def observe(self) -> Observations:
        return self.recorded

    def set_credits(self, start: str) -> bool:
        return True


class ReplayBackend:
    """Deploys nothing: each variant's deployment is its recording."""

    def __init__(self, recording: RunStore, info: dict[str, Any]) -> None:
        self.recording = recording
        self.dilation = float(info["dilation"])
        self.cpu_scale = float(info["cpu_scale"])

    concurrent_cores = 2.0

    def lane_cores(self, variant: Variant) -> float:
        return 0.0

    def new_round(self) -> None:
        return None

    @contextmanager
    def deployed(self, variant: Variant) -> Iterator[Deployment]:
        port = 9000 + VARIANTS.index(variant.name)  # the load finds its recording by URL
        deployment = ReplayDeployment(variant, f"http://127.0.0.1:{port}", ["i0"], 0.0)
        deployment.recorded = self.recording.load_observations(variant.name)
        yield deployment


class ReplayLoad:
    """The load session's survival test, answered with the recorded clients' view."""

    def __init__(self, url: str, *_: object) -> None:
        self.folder = REPLAY / VARIANTS[int(url.rsplit(":", 1)[1]) - 9000]

    def __enter__(self) -> ReplayLoad:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def survival(self, users: int, limit_s: float, **_: Any) -> SurvivalResult:
        return SurvivalResult.from_dict(_json(self.folder / "survival-clients.json"))


def recorded_capacity(folder: Path) -> CapacityResult:
    """The capacity search as recorded: its steps and the figures it reported."""
    result = _json(folder / "result.json")
    steps = [StepResult.from_dict(s) for s in _json(folder / "steps.json")]
    demand_ms, bound = result.get("demand_cpu_ms"), result.get("cpu_bound_rps")
    return CapacityResult(capacity_rps=result["capacity_rps"],
                          p95_ms_at_capacity=result["p95_ms_at_capacity"], steps=steps,
                          bracket=(result["capacity_rps"], result["capacity_rps"]),
                          confirmed=result.get("capacity_confirmed"),
                          demand_cpu_s=None if demand_ms is None else demand_ms / 1000,
                          cpu_bound_rps=bound, cpu_limit_cores=None if demand_ms is None
                          or bound is None else bound * demand_ms / 1000)


def recorded_search(deployment: Deployment) -> Generator[Any, Any, CapacityResult]:
    """The capacity search as a lane that proposes no step: the recording's result."""
    return recorded_capacity(REPLAY / deployment.variant.name)
    yield  # a generator: the schedule advances it like a live search


def recorded_sustained(search: SustainedSearch, folder: Path, observations: Observations
                       ) -> Sustained | None:
    """The sustained search as recorded; the forced window from when the recording's backend
    switched the balance to exhausted and back (the runner brackets those two calls)."""
    path = folder / "sustained-steps.json"
    if not path.exists():
        return None
    switched = [x.t for x in observations.logs if "credit balance switched to" in x.text]
    search.forced_window = (switched[0] - 0.05, switched[-1] + FORCED_CREDITS_MARGIN_S)
    steps = [StepResult.from_dict(s) for s in _json(path)]
    result = _json(folder / "result.json")
    return Sustained(result["sustained_capacity_rps"], "measured", None, steps, "")


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Every variant of the recording through the sweep; (recorded, replayed) run dirs."""
    root = tmp_path_factory.mktemp("replay")
    recorded = root / "recorded"
    shutil.copytree(REPLAY, recorded / "demo")
    info = _json(recorded / "demo" / "run.json")
    recording = RunStore.open(recorded / "demo")
    store = RunStore.create(root / "out", "demo", {k: v for k, v in info.items()
                                                   if k != "finished_at"})
    profile = get_profile(info["config"]["profile"])
    plan = RunPlan(run_id="demo", backend_name="local",
                   variants=[load_variant(n) for n in VARIANTS], profile=profile,
                   slo=Slo(**info["slo"]), locustfile=Path(info["config"]["locustfile"]),
                   load_workers=0, out=root / "out",
                   cpu_scale=info["cpu_scale"], credits="launch", max_usd=None,
                   app_overrides={})
    backend = ReplayBackend(recording, info)
    mp = pytest.MonkeyPatch()
    mp.setattr("experiments.variant_run.LoadSession", ReplayLoad)
    mp.setattr("experiments.load.search.new_capacity_search",
               lambda load, deployment, *a, **k: recorded_search(deployment))
    mp.setattr("experiments.load.search.capacity_prober", lambda *a, **k: None)
    mp.setattr(SustainedSearch, "start",
               lambda self, deployment, *a, **k: recorded_sustained(
                   self, recorded / "demo" / self.variant.name, deployment.observe()))
    try:
        with Progress(console=Console(file=io.StringIO())) as progress:
            todo = smallest_first(plan.variants)
            failed = Sweep(todo, plan, store, backend, progress).measure()  # type: ignore[arg-type]
    finally:
        mp.undo()
    assert failed == []
    return recorded / "demo", root / "out" / "demo"


@pytest.mark.parametrize("name", VARIANTS)
def test_the_replayed_record_has_the_same_keys_and_verdicts(replayed: tuple[Path, Path],
                                                             name: str) -> None:
    recorded, replay = replayed
    before, after = _json(recorded / name / "result.json"), _json(replay / name / "result.json")
    # stage_seconds came after the recording: the stages' own clocks, every stage in order
    assert set(after) == set(before) | {"stage_seconds", "sustained_derived_rps"}
    assert list(after["stage_seconds"]) == ["deploy", "capacity", "sustained", "survival",
                                            "observe", "diagnose", "price"]
    assert all(seconds >= 0 for seconds in after["stage_seconds"].values())
    # The figures the stages compute (the search's own figures, e.g. its % of the CPU bound,
    # are the search's business: it is replayed, not re-run).
    for key in ("capacity_rps", "p95_ms_at_capacity", "sustained_capacity_rps",
                "sustained_source", "credit_runway_minutes", "credit_runway", "cost",
                "survival", "dilation", "capacity_confirmed"):
        assert after[key] == before[key], key
    assert after["failure"]["kind"] == before["failure"]["kind"]
    assert after["failure"]["evidence"] == before["failure"]["evidence"]
    assert _json(replay / name / "survival.json") == _json(recorded / name / "survival.json")
    assert _json(replay / name / "diagnosis.json") == _json(recorded / name / "diagnosis.json")


def test_the_recording_tells_the_strategies_apart(replayed: tuple[Path, Path]) -> None:
    """Not a tautology: the verdicts compared above differ between variants."""
    _, replay = replayed
    kinds = {n: _json(replay / n / "result.json")["failure"]["kind"] for n in VARIANTS}
    held = {n: _json(replay / n / "result.json")["survival"]["held"] for n in VARIANTS}
    assert kinds["micro"] == "oom_kill" and not held["micro"]
    assert held["scale-up"] and held["scale-out"]

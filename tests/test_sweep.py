"""The sweep on a fake backend: every variant deployed before any is measured, the searches
in shared rounds, every deployment torn down on Ctrl-C (interleaved or concurrent), a broken
variant torn down alone, and a resumed run measuring what is missing."""

from __future__ import annotations

import _thread
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from experiments.backends.base import Deployment
from experiments.load.driver import LoadSettings
from experiments.load.survival import smallest_first
from experiments.model import Observations, Slo, StepResult, SurvivalResult
from experiments.profiles import get_profile
from experiments.results import RunStore
from experiments.runplan import RunPlan
from experiments.sweep import Sweep
from stacks.variant import Variant, load_variant

NAMES = ["micro", "micro-swap", "scale-up"]
KNEES = {"micro": 40.0, "micro-swap": 40.0, "scale-up": 90.0}


class FakeDeployment(Deployment):
    def observe(self) -> Observations:
        return Observations()


class FakeBackend:
    """Deploys nothing but records every deploy and teardown, in order."""

    name = "local"
    cpu_scale = 0.5
    dilation = 1.0

    def __init__(self, concurrent_cores: float) -> None:
        self.concurrent_cores = concurrent_cores
        self.events: list[str] = []
        self.lock = threading.Lock()

    def lane_cores(self, variant: Variant) -> float:
        return 0.5

    def new_round(self) -> None:
        self.events.append("round -")

    @contextmanager
    def deployed(self, variant: Variant) -> Iterator[Deployment]:
        port = 9000 + NAMES.index(variant.name)
        self.events.append(f"up {variant.name}")
        try:
            yield FakeDeployment(variant, f"http://127.0.0.1:{port}", ["i0"], time.time())
        finally:
            self.events.append(f"down {variant.name}")

    @property
    def deploys(self) -> int:
        """Deploys and teardowns so far."""
        return sum(not e.startswith("round") for e in self.events)

    @property
    def up(self) -> set[str]:
        """Variants deployed and not (yet) torn down."""
        live: set[str] = set()
        for event in self.events:
            verb, name = event.split()
            if verb == "round":
                continue
            (live.add if verb == "up" else live.discard)(name)
        return live


class FakeLoad:
    """A load session whose boxes pass below their knee; `hook(name, rps)` runs per step."""

    hook = staticmethod(lambda name, rps: None)
    steps: list[tuple[str, float, str]] = []

    def __init__(self, url: str, settings: LoadSettings) -> None:
        self.name = NAMES[int(url.rsplit(":", 1)[1]) - 9000]
        self.deck_arrivals = 0

    def __enter__(self) -> FakeLoad:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def step(self, rps: float, warmup_s: float, hold_s: float, **_: object) -> StepResult:
        FakeLoad.steps.append((self.name, rps, threading.current_thread().name))
        FakeLoad.hook(self.name, rps)
        ok = rps <= KNEES[self.name]
        return StepResult(offered_rps=rps, achieved_rps=rps, p50_ms=20, p95_ms=50 if ok else 900,
                          p99_ms=999, error_rate=0.0, requests=int(rps * hold_s) + 1,
                          duration_s=hold_s, started_at=time.time(), ended_at=time.time())

    def survival(self, users: int, limit_s: float, **_: object) -> SurvivalResult:
        return SurvivalResult(seconds=limit_s, held=True, limit_s=limit_s, started_at=time.time())


@pytest.fixture()
def fake_load(monkeypatch: pytest.MonkeyPatch) -> type[FakeLoad]:
    monkeypatch.setattr("experiments.variant_run.LoadSession", FakeLoad)
    monkeypatch.setattr(FakeLoad, "steps", [])
    monkeypatch.setattr(FakeLoad, "hook", staticmethod(lambda name, rps: None))
    return FakeLoad


def sweep(tmp_path: Path, backend: FakeBackend, store: RunStore | None = None) -> Sweep:
    variants = smallest_first([load_variant(n) for n in NAMES])
    plan = RunPlan(run_id="r1", backend_name="local", variants=variants,
                   profile=get_profile("smoke"), slo=Slo(p95_ms=500), locustfile=Path("x.py"),
                   load_workers=0, out=tmp_path, cpu_scale=0.5, credits="launch",
                   max_usd=None, app_overrides={}, survival_rps=None)
    store = store or RunStore.create(tmp_path, "r1", {"backend": "local", "variants": NAMES})
    todo = [v for v in variants if v.name not in store.completed_variants()]
    progress = Progress(console=Console(file=io.StringIO()))
    return Sweep(todo, plan, store, backend, progress)  # type: ignore[arg-type]


def test_every_variant_is_deployed_before_any_is_measured_and_measured_in_shared_rounds(
        tmp_path: Path, fake_load: type[FakeLoad]) -> None:
    backend = FakeBackend(concurrent_cores=1.0)  # two 0.5-core boxes at a time
    run = sweep(tmp_path, backend)
    assert run.measure() == []
    assert backend.events[:4] == ["up micro", "up micro-swap", "up scale-up", "round -"]
    assert backend.up == set()
    assert sorted(run.store.completed_variants()) == sorted(NAMES)
    rounds = run.store.info["schedule"]["stages"]["capacity-1"]
    assert all(len(g) <= 2 for r in rounds for g in r["groups"])
    assert any(len(g) == 2 for r in rounds for g in r["groups"])  # loaded at the same time
    first = [name for name, _, _ in fake_load.steps[:3]]
    assert sorted(first) == sorted(NAMES)  # round 1 measured every variant before round 2
    capacity = {e["name"]: e["capacity_rps"] for e in run.store.summary()["variants"]}
    assert capacity["micro"] == capacity["micro-swap"] <= 40 < capacity["scale-up"]
    verdicts = {c["variant"]: c for c in run.store.summary()["comparisons"]}
    assert verdicts["micro-swap"]["verdict"] == "within noise"
    assert verdicts["scale-up"]["verdict"] == "higher beyond noise"


def test_ctrl_c_during_an_interleaved_step_tears_down_every_variant_and_resume_finishes(
        tmp_path: Path, fake_load: type[FakeLoad]) -> None:
    backend = FakeBackend(concurrent_cores=0.5)  # one box at a time: interleaved rounds
    seen: list[str] = []

    def interrupt(name: str, rps: float) -> None:
        seen.append(name)
        if len(seen) == 5:  # in round 2, after every variant has stepped once
            raise KeyboardInterrupt

    fake_load.hook = staticmethod(interrupt)
    run = sweep(tmp_path, backend)
    with pytest.raises(KeyboardInterrupt):
        run.measure()
    assert sorted(seen[:3]) == sorted(NAMES)
    assert backend.up == set() and backend.deploys == 6  # all three up, all three down
    assert run.store.completed_variants() == []
    fake_load.hook = staticmethod(lambda name, rps: None)
    resumed = sweep(tmp_path, backend, RunStore.open(tmp_path / "r1"))
    assert resumed.measure() == []
    assert sorted(resumed.store.completed_variants()) == sorted(NAMES)
    kept = [p.name for p in (tmp_path / "r1").iterdir() if ".interrupted-" in p.name]
    assert len(kept) == 3  # the interrupted steps are kept beside, never overwritten


def test_ctrl_c_while_boxes_are_loaded_at_once_tears_down_every_variant(
        tmp_path: Path, fake_load: type[FakeLoad]) -> None:
    backend = FakeBackend(concurrent_cores=2.0)  # all three at once, in threads
    fired = threading.Event()

    def interrupt(name: str, rps: float) -> None:
        if threading.current_thread() is not threading.main_thread() and not fired.is_set():
            fired.set()
            _thread.interrupt_main()  # what a Ctrl-C does: the main thread is told
            time.sleep(0.5)

    fake_load.hook = staticmethod(interrupt)
    with pytest.raises(KeyboardInterrupt):
        sweep(tmp_path, backend).measure()
    assert fired.is_set()
    assert backend.up == set() and backend.deploys == 6


def test_a_variant_that_breaks_mid_round_is_torn_down_alone(
        tmp_path: Path, fake_load: type[FakeLoad]) -> None:
    backend = FakeBackend(concurrent_cores=1.0)
    up_when_broken: list[set[str]] = []

    def broken(name: str, rps: float) -> None:
        if name == "micro-swap" and any(n == "micro-swap" for n, _, _ in fake_load.steps[:-1]):
            raise OSError("the box went away")
        if name == "micro" and backend.events.count("down micro-swap") and not up_when_broken:
            up_when_broken.append(backend.up)

    fake_load.hook = staticmethod(broken)
    run = sweep(tmp_path, backend)
    assert run.measure() == ["micro-swap"]
    assert up_when_broken == [{"micro", "scale-up"}]  # torn down at once, the others went on
    assert (tmp_path / "r1" / "micro-swap" / "error.json").exists()
    assert sorted(run.store.completed_variants()) == ["micro", "scale-up"]
    assert backend.up == set()

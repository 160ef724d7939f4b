"""Live progress on the terminal while a run measures (rich): one line per variant's stage,
one printed line per load step. The runner says what happens; this module says it nicely."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from experiments.model import Failure, StepResult, SurvivalResult
from experiments.report.tables import stage_times
from experiments.results import VariantSummary

console = Console()
if not console.is_terminal:  # logs and CI: keep the summary table readable, not 80 columns
    console = Console(width=150)


@contextmanager
def run_progress() -> Iterator[Progress]:
    """The run's progress display; kept (not transient) so the log shows what happened."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        yield progress


class VariantProgress:
    """One variant's progress line: the stage it is in, a bar, and its printed steps."""

    def __init__(self, name: str, progress: Progress) -> None:
        self.name = name
        self.progress = progress
        self.stage = ""
        self._task: TaskID | None = None

    def __enter__(self) -> VariantProgress:
        self._task = self.progress.add_task(self.name, total=None)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self.progress.remove_task(self._task)
            self._task = None

    def enter(self, stage: str, total: float | None = None, detail: str = "") -> None:
        """A new stage: a fresh bar of `total` units (None: a spinner)."""
        self.stage = stage
        if self._task is not None:
            self.progress.update(self._task, description=self._label(detail), total=total,
                                 completed=0)

    def describe(self, detail: str) -> None:
        if self._task is not None:
            self.progress.update(self._task, description=self._label(detail))

    def advance(self) -> None:
        if self._task is not None:
            self.progress.advance(self._task)

    def at(self, completed: float) -> None:
        if self._task is not None:
            self.progress.update(self._task, completed=completed)

    def say(self, text: str) -> None:
        self.progress.console.print(text)

    def step(self, step: StepResult, what: str = "") -> None:
        """One load step as a line: offered → achieved, p95 (the verdict's), errors, verdict."""
        mark = "[green]pass[/green]" if step.passed else "[red]fail[/red]"
        self.say(f"  {self.name}: {what}{step.offered_rps:7.1f} req/s offered → "
                 f"{step.achieved_rps:7.1f} achieved, p95 {step.p95_verdict_ms:7.1f} ms, "
                 f"errors {step.error_rate:6.1%}  {mark} {step.verdict}")

    def done(self, entry: VariantSummary, survival: SurvivalResult, failure: Failure) -> None:
        """The variant's one-line result once it is stored."""
        sustained = entry.sustained_capacity_rps
        self.say(f"[bold]{self.name}[/bold]: capacity {entry.capacity_rps:.1f} req/s"
                 + (f" (sustained {sustained:.1f})" if sustained not in (None, entry.capacity_rps)
                    else "") + ", "
                 f"survival {'held' if survival.held else f'{survival.seconds:.0f} s'}, "
                 f"failure {failure.kind}"
                 + (f"; took {took}" if (took := stage_times(entry.stage_seconds)) else ""))

    def _label(self, detail: str = "") -> str:
        return f"{self.name}: {self.stage}" + (f", {detail}" if detail else "")

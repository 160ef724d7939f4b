"""The run store: plain files under `results/<run-id>/`, written atomically, never overwritten.

Layout (a contract: the report, `compare`, `plan` and users' own tools read it):

    run.json                 config, versions, git revision, host, cpu_scale, SLO, status
    summary.json             the design's contract (one entry per finished variant)
    <variant>/variant.json   the Variant as parsed from its stack file
    <variant>/steps.json     every capacity step (offered, achieved, percentiles, verdict)
    <variant>/survival.json  the survival test's verdict (clients and server together)
    <variant>/survival-clients.json  what the load generator alone saw (written first)
    <variant>/signals.csv    one row per instance per second
    <variant>/logs.jsonl     every Gunicorn / kernel / HAProxy line with its time
    <variant>/diagnosis.json the named failure and its evidence
    <variant>/result.json    the variant's summary entry; its presence marks the variant done
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.errors import UserError
from experiments.model import (
    Failure,
    LogLine,
    Observations,
    Record,
    SignalSample,
    StepResult,
    SurvivalResult,
)
from stacks.variant import Variant

if TYPE_CHECKING:
    from experiments.stats import Spread

FORMAT_VERSION = 1
SIGNAL_COLUMNS = [f.name for f in fields(SignalSample)]


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file + rename so a crash never leaves half a file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


class DamagedRunError(UserError):
    """A file of a run folder cannot be read; the message names the file."""


class DamagedRecord(ValueError):
    """A record's content does not have the shape this version writes."""


_last_read: list[Path] = []


def last_file_read() -> Path | None:
    """The run file read most recently: named when something unforeseen goes wrong after it."""
    return _last_read[-1] if _last_read else None


def read_json(path: Path) -> Any:
    """A run file's JSON; a damaged or unreadable file is a DamagedRunError naming it."""
    _last_read[:] = [path]
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        advice = ("restore it from a copy (the run cannot be reopened without it)"
                  if path.name == "run.json" else
                  "restore it, or delete its variant folder and measure it again with --resume")
        raise DamagedRunError(f"{path} is damaged (not valid JSON: {exc}); {advice}.") from None
    except OSError as exc:
        raise DamagedRunError(f"{path} cannot be read ({exc.strerror}).") from None


def signals_to_csv(samples: list[SignalSample]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SIGNAL_COLUMNS)
    writer.writeheader()
    for sample in samples:
        writer.writerow({k: ("" if v is None else v) for k, v in sample.to_dict().items()})
    return out.getvalue()


def signals_from_csv(text: str) -> list[SignalSample]:
    """Parse signals.csv; a malformed row is a DamagedRecord (ValueError) saying which."""
    samples = []
    reader = csv.DictReader(io.StringIO(text))
    try:
        for row in reader:
            samples.append(_signal_row(row))
    except (ValueError, TypeError, csv.Error) as exc:
        raise DamagedRecord(f"line {reader.line_num} is not a signal sample ({exc})") from None
    return samples


def _signal_row(row: dict[str, Any]) -> SignalSample:
    if None in row:  # more cells than columns
        raise ValueError("too many cells")
    values: dict[str, Any] = {}
    for f in fields(SignalSample):
        raw = row.get(f.name, "")
        if raw in ("", None):
            values[f.name] = None
        elif f.name == "instance":
            values[f.name] = raw
        elif f.name in ("memory_bytes", "memory_limit_bytes", "swap_bytes", "major_faults",
                        "oom_kills"):
            values[f.name] = int(float(raw))
        else:
            values[f.name] = float(raw)
    return SignalSample(**values)


# ---- the summary record (a contract: summary.json keeps these keys; new keys only add) ------

@dataclass
class SurvivalSummary(Record):
    seconds: float
    held: bool
    limit_s: float = 0.0
    reason: str = ""
    first_worker_loss_s: float | None = None
    offered_rps: float | None = None
    """The open-model rate held (the same for every variant of a run)."""


@dataclass
class VariantSummary(Record):
    """One variant in summary.json: the design's keys first, extras after."""

    name: str
    instance_type: str
    count: int
    swap_mib: int
    load_balancer: bool
    capacity_rps: float
    p95_ms_at_capacity: float | None
    survival: SurvivalSummary
    failure: Failure
    cost: dict[str, Any] = field(default_factory=dict)
    """The cost model's summary (`CostBreakdown.to_summary`): hourly_usd, monthly_usd, ..."""
    steps: list[dict[str, Any]] = field(default_factory=list)
    region: str = ""
    credit_mode: str = ""
    vcpu: int = 0
    memory_mib: int = 0
    lb_algorithm: str | None = None
    gunicorn: dict[str, Any] = field(default_factory=dict)
    profile: str = ""
    capacity_runs: list[float] = field(default_factory=list)
    """Each capacity search's figure (`run --repeat N`); capacity_rps is their median."""
    capacity_ci95: list[float] | None = None
    """[low, high]: Student's t 95 % interval of the searches' mean; None for one search."""
    capacity_rsd: float | None = None
    """Relative standard deviation of the searches; None for one search."""
    aws_estimate: dict[str, Any] | None = None
    """AWS-equivalent figures (experiments/estimate.py), added when the summary is built: the
    measured keys above keep their meaning and values."""
    sustained_capacity_rps: float | None = None
    """Capacity once CPU credits are gone (standard-mode burstable); = capacity_rps where
    credits never throttle; None when it could not be established."""
    sustained_source: str = ""
    sustained_derived_rps: float | None = None
    """Beside a measured sustained capacity: the utilization law's figure (burst × baseline ÷
    CPU used at capacity), so every run shows how far a derived one would be."""
    credit_runway_minutes: float | None = None
    """How long a full credit balance lasts at the CPU measured at capacity (None: n/a)."""
    credit_runway: dict[str, Any] | None = None
    """credits_model.CreditRunway as a dict (launch-credit runway, CPU used, text)."""
    dilation: float = 1.0
    """Time dilation of the emulation (1/cpu_scale; 1 on AWS)."""
    capacity_confirmed: bool | None = None
    """The capacity held the search's longer confirmation hold (None: none was run)."""
    demand_cpu_ms: float | None = None
    """Service demand measured by the search: CPU milliseconds per request (None: no signal)."""
    cpu_bound_rps: float | None = None
    """Utilization-law bound: the CPU limit / the demand."""
    capacity_pct_of_cpu_bound: float | None = None
    """Near 100: the box ran out of CPU; far below: of something else."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Host wall-clock seconds per stage (deploy, capacity, sustained, survival, observe —
    which includes the teardown —, diagnose, price): where the run's time went."""

    @classmethod
    def build(cls, variant: Variant, capacity_rps: float, p95_at_capacity: float | None,
              steps: list[StepResult], survival: SurvivalResult, failure: Failure,
              cost: dict[str, Any], profile: str,
              first_worker_loss_s: float | None = None, burst: dict[str, Any] | None = None,
              dilation: float = 1.0) -> VariantSummary:
        burst = burst or {}
        return cls(
            name=variant.name, instance_type=variant.instance_type, count=variant.count,
            swap_mib=variant.swap_mib, load_balancer=variant.load_balancer,
            capacity_rps=round(capacity_rps, 2),
            p95_ms_at_capacity=None if p95_at_capacity is None else round(p95_at_capacity, 1),
            survival=SurvivalSummary(seconds=round(survival.seconds, 1), held=survival.held,
                                     limit_s=survival.limit_s, reason=survival.reason,
                                     first_worker_loss_s=first_worker_loss_s,
                                     offered_rps=survival.offered_rps),
            failure=Failure(kind=str(failure.kind), evidence=failure.evidence,
                            summary=failure.summary, at=failure.at),
            cost=cost,
            steps=[_step_entry(s) for s in steps],
            region=variant.region, credit_mode=variant.credit_mode, vcpu=variant.vcpu,
            memory_mib=variant.memory_mib,
            lb_algorithm=variant.lb_algorithm if variant.load_balancer else None,
            gunicorn={"workers": variant.gunicorn.workers, "threads": variant.gunicorn.threads,
                      "worker_class": variant.gunicorn.worker_class,
                      "timeout_s": variant.gunicorn.timeout_s},
            profile=profile,
            sustained_capacity_rps=burst.get("sustained_capacity_rps", round(capacity_rps, 2)),
            sustained_source=burst.get("sustained_source", ""),
            sustained_derived_rps=burst.get("sustained_derived_rps"),
            credit_runway_minutes=burst.get("credit_runway_minutes"),
            credit_runway=burst.get("credit_runway"), dilation=dilation)

    def with_spread(self, figures: Spread) -> VariantSummary:
        """The repeated searches' figures (`--repeat N`) beside the median capacity."""
        return replace(self, capacity_runs=[round(r, 2) for r in figures.runs],
                       capacity_ci95=None if figures.ci95 is None else
                       [round(figures.ci95[0], 2), round(figures.ci95[1], 2)],
                       capacity_rsd=None if figures.rsd is None else round(figures.rsd, 4))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantSummary:
        """The typed record; DamagedRecord (a ValueError) when `data` is not one."""
        if not isinstance(data, dict):
            raise DamagedRecord(f"expected a JSON object, found {type(data).__name__}")
        for key, kinds in (("name", str), ("instance_type", str), ("count", int),
                           ("capacity_rps", (int, float))):
            if not isinstance(data.get(key), kinds) or isinstance(data.get(key), bool):
                raise DamagedRecord(f"{key!r} is missing or not a {_kind_name(kinds)}")
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        try:
            values["survival"] = SurvivalSummary.from_dict(data.get("survival") or
                                                           {"seconds": 0.0, "held": False})
            values["failure"] = Failure.from_dict(data.get("failure") or {})
            return cls(**values)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise DamagedRecord(f"{type(exc).__name__}: {exc}") from None

    @property
    def hourly_usd(self) -> float | None:
        return self.cost.get("hourly_usd")


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    return "number" if isinstance(kinds, tuple) else {"str": "string", "int": "whole number"
                                                      }[kinds.__name__]


def variant_record(variant: Variant) -> dict[str, Any]:
    """<variant>/variant.json: the Variant as parsed from its stack file, plus derived sizes."""
    record = asdict(variant)
    record["app"]["env"] = dict(variant.app.env)
    record.update(memory_mib=variant.memory_mib, vcpu=variant.vcpu)
    return record


def _step_entry(s: StepResult) -> dict[str, Any]:
    return {"offered_rps": s.offered_rps, "achieved_rps": round(s.achieved_rps, 2),
            "p50_ms": round(s.p50_ms, 1), "p95_ms": round(s.p95_ms, 1),
            "p99_ms": round(s.p99_ms, 1), "error_rate": round(s.error_rate, 4),
            "passed": s.passed, "verdict": s.verdict,
            "generator_saturated": s.generator_saturated,
            "p95_intended_ms": None if s.p95_intended_ms is None else round(s.p95_intended_ms, 1),
            "scheduled": s.scheduled, "dropped": s.dropped, "phase": s.phase,
            "server_cpu_s": None if s.server_cpu_s is None else round(s.server_cpu_s, 3),
            "duration_s": round(s.duration_s, 2), "host_busy": s.host_busy}


class RunStore:
    """One run's folder. Create it with `create`, reopen it (for --resume, report) with `open`."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.damaged: dict[str, str] = {}
        """Variant name → sentence, for finished variants whose result.json cannot be read
        (left out of the summary so that the rest can still be shown)."""

    # ---- creation / opening ----------------------------------------------------------
    @classmethod
    def create(cls, root: Path, run_id: str, run_info: dict[str, Any]) -> RunStore:
        run_dir = root / run_id
        if run_dir.exists():
            raise UserError(f"results folder {run_dir} already exists; use --resume {run_id} to "
                            "finish it or choose another --out.")
        store = cls(run_dir)
        write_json(run_dir / "run.json", {"format_version": FORMAT_VERSION, "run_id": run_id,
                                          "status": "running", **run_info})
        return store

    @classmethod
    def open(cls, run_dir: Path) -> RunStore:
        run_file = run_dir / "run.json"
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"{run_dir} is a file, not a run folder; pass a folder under "
                            "results/ that a `run` created.")
        if not run_dir.is_dir():
            raise UserError(f"run folder {run_dir} does not exist; pass a folder under results/ "
                            "that a `run` created.")
        if not run_file.is_file():
            raise UserError(f"{run_dir} is not a scalelab run folder (it has no run.json).")
        info = read_json(run_file)
        if not isinstance(info, dict):
            raise DamagedRunError(f"{run_file} is damaged (a JSON object was expected).")
        version = info.get("format_version")
        if version != FORMAT_VERSION:
            raise UserError(f"{run_dir} was written by another scalelab version (results format "
                            f"{version!r}, this one reads {FORMAT_VERSION}).")
        if not isinstance(info.get("run_id"), str) or not info["run_id"]:
            raise DamagedRunError(f"{run_file} is damaged (it has no run_id).")
        return cls(run_dir)

    @property
    def run_id(self) -> str:
        return str(self.info["run_id"])

    @property
    def info(self) -> dict[str, Any]:
        return read_json(self.dir / "run.json")

    def update_info(self, **changes: Any) -> None:
        write_json(self.dir / "run.json", {**self.info, **changes})

    # ---- per variant -------------------------------------------------------------------
    def variant_dir(self, name: str) -> Path:
        return self.dir / name

    def completed_variants(self) -> list[str]:
        planned = self.info.get("variants") or []
        done = {p.parent.name for p in self.dir.glob("*/result.json")}
        return [n for n in planned if n in done] + sorted(done - set(planned))

    def set_aside_partial(self, variant: str) -> None:
        """An interrupted attempt's files are kept beside, never overwritten."""
        import time

        folder = self.variant_dir(variant)
        if folder.exists() and not (folder / "result.json").exists():
            folder.rename(folder.with_name(f"{variant}.interrupted-{int(time.time())}"))

    def save_json(self, variant: str, filename: str, data: Any) -> None:
        write_json(self.variant_dir(variant) / filename, data)

    def save_observations(self, variant: str, observations: Observations) -> None:
        folder = self.variant_dir(variant)
        atomic_write_text(folder / "signals.csv", signals_to_csv(observations.signals))
        atomic_write_text(folder / "logs.jsonl", "".join(
            json.dumps(line.to_dict()) + "\n" for line in observations.logs))

    def load_observations(self, variant: str) -> Observations:
        folder = self.variant_dir(variant)
        signals_file, logs_file = folder / "signals.csv", folder / "logs.jsonl"
        signals, logs = [], []
        try:
            if signals_file.exists():
                _last_read[:] = [signals_file]
                signals = signals_from_csv(signals_file.read_text())
            if logs_file.exists():
                _last_read[:] = [logs_file]
                logs = [LogLine.from_dict(json.loads(line))
                        for line in logs_file.read_text().splitlines() if line.strip()]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # JSON/CSV/records
            raise DamagedRunError(f"{_last_read[0]} is damaged ({exc}).") from None
        except OSError as exc:
            raise DamagedRunError(f"{_last_read[0]} cannot be read ({exc.strerror}).") from None
        return Observations(signals=signals, logs=logs)

    def load_json(self, variant: str, filename: str, default: Any = None) -> Any:
        path = self.variant_dir(variant) / filename
        return read_json(path) if path.exists() else default

    def finish_variant(self, entry: VariantSummary) -> None:
        """Written last: a variant counts as measured only once this file exists."""
        self.save_json(entry.name, "result.json", entry.to_dict())
        self.write_summary()

    # ---- the summary --------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """summary.json: the measured entries plus an `aws_estimate` per variant, computed from
        them and the run's cpu_scale (never stored apart, so never stale)."""
        from experiments.comparison import comparisons
        from experiments.estimate import with_estimates

        info = self.info
        summary = {
            "run_id": info["run_id"],
            "backend": info.get("backend"),
            "cpu_scale": info.get("cpu_scale"),
            "dilation": info.get("dilation", 1.0),
            "slo": info.get("slo"),
            "survival": info.get("survival"),
            "status": info.get("status"),
            "format_version": FORMAT_VERSION,
            "variants": [entry for entry in (self._result(n) for n in self.completed_variants())
                         if entry is not None],
        }
        summary["comparisons"] = comparisons(summary["variants"], together=bool(
            info.get("schedule")))
        # the CPU of the host that measured (run.json), not of the one rebuilding the report
        cpu = (info.get("host") or {}).get("cpu_model") or "not recorded in run.json"
        return with_estimates(summary, host_cpu=cpu)

    def _result(self, name: str) -> dict[str, Any] | None:
        """A finished variant's result.json, checked; a damaged one is noted and left out."""
        path = self.variant_dir(name) / "result.json"
        try:
            entry = read_json(path)
            VariantSummary.from_dict(entry)
        except DamagedRunError as exc:
            self.damaged[name] = str(exc)
            return None
        except DamagedRecord as exc:
            self.damaged[name] = (f"{path} is damaged ({exc}); restore it, or delete "
                                  f"{path.parent} and measure {name} again with --resume.")
            return None
        self.damaged.pop(name, None)
        return dict(entry)

    def variant_summaries(self) -> list[VariantSummary]:
        """The finished variants as typed records (what the report and console read)."""
        return [VariantSummary.from_dict(v) for v in self.summary()["variants"] if v]

    def write_summary(self) -> dict[str, Any]:
        summary = self.summary()
        write_json(self.dir / "summary.json", summary)
        return summary


def load_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary, rebuilt from the variant folders (so it is never stale)."""
    return RunStore.open(run_dir).summary()

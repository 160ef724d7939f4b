"""The records that flow from backends and the load driver to diagnosis, cost and the report.

Plain dataclasses with `to_dict` / `from_dict`, so results are plain JSON/CSV files that any
tool (and a later `report` run) can read back without this code's objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar

T = TypeVar("T")

FailureKind = Literal[
    "oom_kill",
    "worker_timeout",
    "swap_thrash",
    "cpu_saturated",
    "cpu_credits_exhausted",
    "lb_no_healthy_target",
    "connection_refused",
    "generator_bound",
    "none",
]
FAILURE_KINDS: tuple[str, ...] = FailureKind.__args__  # type: ignore[attr-defined]


class Record:
    """Mixin: dict round trip that ignores unknown keys (extra keys are welcome in results)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


# ---- what a backend observes -------------------------------------------------------------

@dataclass
class SignalSample(Record):
    """One instance, one moment (about once a second). None = this backend cannot see it."""

    t: float
    """Unix time, seconds."""
    instance: str
    memory_bytes: int | None = None
    memory_limit_bytes: int | None = None
    swap_bytes: int | None = None
    major_faults: int | None = None
    """Cumulative major page faults of the instance's processes (swap-ins show up here)."""
    cpu_used_cores: float | None = None
    """CPU used over the last interval, in cores (0.25 = a quarter of one host core)."""
    cpu_limit_cores: float | None = None
    """What the instance may use right now, in cores (quota; follows the credit balance)."""
    throttled_s: float | None = None
    """Cumulative time the cgroup was throttled by its CPU quota."""
    credit_balance: float | None = None
    surplus_credits: float | None = None
    """Cumulative unlimited-mode credits spent beyond the balance (billed)."""
    oom_kills: int | None = None
    """Cumulative kernel OOM kills inside the instance (cgroup counter)."""


@dataclass
class LogLine(Record):
    t: float
    source: str
    """`gunicorn:<instance>`, `kernel:<instance>`, `haproxy`, `supervisor:<instance>`."""
    text: str


@dataclass
class Observations(Record):
    signals: list[SignalSample] = field(default_factory=list)
    logs: list[LogLine] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Observations:
        return cls(
            signals=[SignalSample.from_dict(s) for s in data.get("signals", [])],
            logs=[LogLine.from_dict(line) for line in data.get("logs", [])],
        )


# ---- what the load driver measures -------------------------------------------------------

@dataclass
class Slo(Record):
    """When a capacity step passes (the design's defaults)."""

    p95_ms: float = 500.0
    max_error_rate: float = 0.01
    min_achieved_ratio: float = 0.95

@dataclass
class StepResult(Record):
    """One open-model step: an offered arrival rate held for `duration_s` after a warm-up."""

    offered_rps: float
    achieved_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    error_rate: float
    requests: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    started_at: float = 0.0
    ended_at: float = 0.0
    generator_cpu: float = 0.0
    """Peak CPU of the load generator process(es), as a fraction of one core."""
    generator_saturated: bool = False
    generator_lag_ms: float = 0.0
    """90th percentile of the generator's event-loop lag (worst process): above ~20 ms the
    generator cannot send on time (CPU-starved, even below 90 % of a core on a shared host)."""
    users: int = 0
    """Concurrent simulated users (each holds one keep-alive connection)."""
    response_bytes: int = 0
    """Bytes received in responses during the hold (for the ALB's processed-bytes LCU)."""
    passed: bool | None = None
    """Set by the capacity search's verdict; None before judging."""
    verdict: str = ""
    """Why it passed or failed, e.g. 'p95 612 ms > SLO 500 ms'."""


@dataclass
class SurvivalResult(Record):
    """The seed's experiment: a fixed closed-loop overload for up to `limit_s` seconds."""

    seconds: float
    held: bool
    limit_s: float = 0.0
    users: int = 0
    started_at: float = 0.0
    failed_at: float | None = None
    reason: str = ""
    timeline: list[dict[str, float]] = field(default_factory=list)
    """Per second: t, requests, errors, p95_ms."""


@dataclass
class Failure(Record):
    kind: str = "none"
    evidence: list[str] = field(default_factory=list)
    at: float | None = None
    """Unix time of the decisive evidence, marked on the report's timelines."""
    summary: str = ""

"""The records that flow from backends and the load driver to diagnosis, cost and the report.

Plain dataclasses with `to_dict` / `from_dict`, so results are plain JSON/CSV files that any
tool (and a later `report` run) can read back without this code's objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, TypeVar

T = TypeVar("T")


class FailureKind(StrEnum):
    """The named failures, in diagnosis precedence: the first that applies is named."""

    OOM_KILL = "oom_kill"
    SWAP_THRASH = "swap_thrash"
    CPU_CREDITS_EXHAUSTED = "cpu_credits_exhausted"
    WORKER_TIMEOUT = "worker_timeout"
    GENERATOR_BOUND = "generator_bound"
    CPU_SATURATED = "cpu_saturated"
    LB_NO_HEALTHY_TARGET = "lb_no_healthy_target"
    CONNECTION_REFUSED = "connection_refused"
    NONE = "none"

    @classmethod
    def by_precedence(cls) -> tuple[FailureKind, ...]:
        """Every real failure (not `none`), most decisive first."""
        return tuple(k for k in cls if k is not cls.NONE)


FAILURE_KINDS: tuple[str, ...] = tuple(k.value for k in FailureKind)


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

    def outside(self, window: tuple[float, float] | None) -> Observations:
        """Everything except what was seen in `window` (e.g. the sustained search's emptied
        credit balance: our doing, so its baseline quota must not be named a failure)."""
        if window is None:
            return self
        lo, hi = window
        return Observations(signals=[x for x in self.signals if not lo <= x.t <= hi],
                            logs=[x for x in self.logs if not lo <= x.t <= hi])


# ---- what the load driver measures -------------------------------------------------------

@dataclass
class Slo(Record):
    """When a capacity step passes (the design's defaults). The one home of the step verdict."""

    p95_ms: float = 500.0
    max_error_rate: float = 0.01
    min_achieved_ratio: float = 0.95

    def judge(self, step: StepResult) -> StepResult:
        """Return a copy of `step` with `passed` and a one-line `verdict` explaining why.

        A step with no completed request fails, and so does a step measured while the load
        generator itself was saturated (invalid: it says nothing about the server). Latency is
        judged from each arrival's scheduled send time when the step measured it (wrk2's
        correction), and a step that dropped more than 1 - min_achieved_ratio of its arrivals
        fails too.
        """
        problems: list[str] = []
        p95 = step.p95_verdict_ms
        if step.generator_saturated:
            problems.append(
                f"generator saturated (CPU {step.generator_cpu:.0%} of a core, event-loop lag "
                f"{step.generator_lag_ms:.0f} ms): invalid step, not a server measurement")
        if step.requests == 0:
            problems.append("no request completed")
        else:
            if p95 > self.p95_ms:
                problems.append(f"p95 {p95:.0f} ms > SLO {self.p95_ms:.0f} ms")
            if step.error_rate > self.max_error_rate:
                top = ""
                if step.errors_by_kind:
                    kind, count = max(step.errors_by_kind.items(), key=lambda kv: kv[1])
                    top = f", mostly {kind} ({count})"
                problems.append(f"errors {step.error_rate:.1%} > {self.max_error_rate:.1%}{top}")
        ratio = step.achieved_rps / step.offered_rps if step.offered_rps > 0 else 0.0
        if step.requests and ratio < self.min_achieved_ratio:
            problems.append(f"achieved {ratio:.0%} of offered ({step.achieved_rps:.1f} of "
                            f"{step.offered_rps:.1f} rps)")
        if step.scheduled and step.dropped > (1 - self.min_achieved_ratio) * step.scheduled:
            problems.append(f"{step.dropped} of {step.scheduled} arrivals dropped (no user free "
                            "to send them in time)")
        if problems:
            return replace(step, passed=False, verdict="; ".join(problems))
        return replace(step, passed=True, verdict=(
            f"pass: p95 {p95:.0f} ms <= {self.p95_ms:.0f} ms, errors "
            f"{step.error_rate:.1%}, achieved {ratio:.0%} of offered"))

    def failed(self, step: StepResult) -> bool:
        """The verdict a step was given when judged, else the verdict it would get now."""
        passed = step.passed if step.passed is not None else self.judge(step).passed
        return not passed

    def dilated(self, dilation: float) -> Slo:
        """The SLO as the emulated box must meet it: latencies × `dilation` (1/cpu_scale).

        A slowed-down box answers d times later than the AWS box it stands for, so a 500 ms
        p95 there is 500·d ms here; ratios (errors, achieved/offered) are not times and stay.
        """
        if not dilation >= 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        return Slo(p95_ms=self.p95_ms * dilation, max_error_rate=self.max_error_rate,
                   min_achieved_ratio=self.min_achieved_ratio)

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
    p50_intended_ms: float | None = None
    p95_intended_ms: float | None = None
    """Latency measured from each arrival's *scheduled* send time (wrk2's correction): what a
    visitor arriving on schedule waits. The SLO verdict uses this one; None in results written
    before it existed. p50_ms/p95_ms/p99_ms stay the latency from the actual send."""
    p99_intended_ms: float | None = None
    scheduled: int = 0
    """Arrivals that fell due during the hold (offered_rps x duration_s, give or take one)."""
    dropped: int = 0
    """Scheduled arrivals the generator could not send within 1 s of their due time (k6's
    dropped iterations): nonzero means the pool ran dry or the generator fell behind."""
    server_cpu_s: float | None = None
    """CPU-seconds all of the deployment's instances used during the hold (cgroup CPU time
    locally); None when the backend cannot see it. / requests = the service demand."""
    phase: str = "search"
    """"search" for a step of the capacity search, "confirm" for its longer confirmation hold."""
    host_busy: float | None = None
    """Share of all the load host's cores busy during the hold (/proc/stat), None where it was
    not read. Locally the emulated instances, HAProxy and the load generator share that host:
    near 1 they competed for it and the step measured the host, not the emulated box."""

    @property
    def p95_verdict_ms(self) -> float:
        """The p95 the SLO verdict uses: from the scheduled send time when it was measured."""
        return self.p95_intended_ms if self.p95_intended_ms is not None else self.p95_ms


def step_at_capacity(steps: list[StepResult]) -> StepResult | None:
    """The step "capacity" names: the passing confirmation hold if there is one (the search
    may have passed a higher rate in a short step that the longer hold then failed), else the
    passing step with the highest offered rate — below every failed confirmation hold, when
    all of them failed (the rate they refuted did not hold)."""
    passing = [s for s in steps if s.passed]
    confirmed = [s for s in passing if s.phase == "confirm"]
    if confirmed:
        return max(confirmed, key=lambda s: s.offered_rps)
    refuted = [s.offered_rps for s in steps if s.phase == "confirm" and not s.passed
               and not s.generator_saturated]
    if refuted:  # every confirmation failed: no rate at or above them held
        passing = [s for s in passing if s.offered_rps < min(refuted)]
    return max(passing, key=lambda s: s.offered_rps) if passing else None


@dataclass
class SurvivalResult(Record):
    """The seed's experiment: one fixed load for up to `limit_s` seconds (open-model
    `offered_rps`, or closed-loop `users`)."""

    seconds: float
    held: bool
    limit_s: float = 0.0
    users: int = 0
    started_at: float = 0.0
    failed_at: float | None = None
    reason: str = ""
    timeline: list[dict[str, float]] = field(default_factory=list)
    """Per second: t, requests, errors, p95_ms."""
    offered_rps: float | None = None
    """The open-model rate held (the same for every variant of a run); None = closed loop."""
    dilation: float = 1.0
    """Time dilation the rule's windows (and `limit_s`) were stretched by."""

    @property
    def ended_at(self) -> float:
        """Unix time the load stopped (the last second of the timeline). A failure may be
        declared earlier than this, but what caused it happened before the load stopped."""
        ran_s = max((p.get("t", 0.0) for p in self.timeline), default=self.seconds)
        return max(self.failed_at or 0.0, self.started_at + ran_s)


@dataclass
class Failure(Record):
    kind: str = "none"
    evidence: list[str] = field(default_factory=list)
    at: float | None = None
    """Unix time of the decisive evidence, marked on the report's timelines."""
    summary: str = ""

"""The survival rule: when a service under a fixed load counts as failed.

Pure logic (no I/O), fed one bucket per second by the load child, so the rule is unit-tested
and is exactly the sentence the report prints (times shown for no dilation):

    A service FAILS the survival test at the first moment when either
    - over the last 5 seconds more than 50 % of the completed requests were errors
      (refused, reset, 5xx: the service is answering, but with failures), or
    - not a single request succeeded for 30 seconds (the service hangs or is unreachable:
      as long as Gunicorn's default worker timeout, after which it kills stalled workers).
    A slow service is not yet a dead one: stalls shorter than 30 s (a worker busy with a huge
    request on a small CPU) count as degraded, which the timeline and p95 show.
    The service is declared failed the moment the rule trips, as a load balancer's health
    check declares a target unhealthy after its threshold, not retroactively: both rules
    need the failure to last (5 s of errors, 30 s of silence) before they call it. The
    per-second timeline shows when responses slowed or stopped.
    If neither happens before the time limit, the service HELD.

Under time dilation d (the local backend at cpu_scale 1/d) both windows are stretched by d,
like the Gunicorn timeout the hang window mirrors: a box in slow motion is judged by the
same rule in its own time. The load (the same open-model rate for every variant of a run,
see `survival_rate`) is chosen by the runner.
"""

from __future__ import annotations

import re
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from experiments.model import LogLine, Observations, SurvivalResult
from stacks.variant import Variant

WINDOW_S = 5
MAX_ERROR_RATE = 0.5
HANG_S = 30



def rule_text(dilation: float = 1.0) -> str:
    """The rule as one sentence, in the (dilated) seconds the run used."""
    window, hang = windows(dilation)
    return (f"failed = over the last {window} s more than {MAX_ERROR_RATE:.0%} of requests were "
            f"errors, or no request succeeded for {hang:g} s")


def windows(dilation: float = 1.0) -> tuple[int, float]:
    """(error window in whole seconds, hang window in seconds) stretched by `dilation`."""
    if not dilation >= 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    return max(WINDOW_S, round(WINDOW_S * dilation)), HANG_S * dilation


RULE_TEXT = rule_text()


SHOP_HAZARD_PATH = "/products/?all=1"
"""The shop's memory hazard: the unpaginated list the seed's box ran out of memory on."""
HAZARD_INTERVAL_S = 5.0
"""One hazard arrival every 5 s of the AWS box's time (every 5·d s locally), as its own
open-model stream rather than a locustfile weight: at the rates that overload a t2.micro, even
weight 1 of ~100 would send ~0.7 `?all=1`/s — about 3 vCPUs of work (one costs ~4.6 vCPU-s) —
which no variant could carry, so nothing would ever hold. One per 5 s is ~0.9 vCPU: a
t2.micro drowns in it (and two in flight exceed its memory), a t3.medium or three micros
behind a balancer have the CPU and memory for it."""


def smallest_first(variants: list[Variant]) -> list[Variant]:
    """Order by memory (all instances), then swap, then vCPUs: the smallest box is measured
    first, so its failing rate is known when the others' survival test needs it."""
    return sorted(variants, key=lambda v: (v.memory_mib * v.count, v.swap_mib * v.count,
                                           v.total_vcpu))


def survival_rate(failed_rps: list[float], override_rps: float | None = None) -> float | None:
    """The one open-model rate every variant of a run survives (or not) at.

    `--survival-rps` wins; otherwise the lowest offered rate at which the smallest variant
    failed a capacity step — a load that box demonstrably cannot carry, which a box with the
    memory and CPU for it must. None when no rate is known yet.
    """
    if override_rps is not None:
        if not override_rps > 0:
            raise ValueError(f"survival rate must be positive, got {override_rps}")
        return float(override_rps)
    rates = [r for r in failed_rps if r > 0]
    return min(rates) if rates else None


def run_survival_rate(stored: dict[str, object], failed_rps: list[float], name: str,
                      capacity_rps: float, override_rps: float | None, growth: float
                      ) -> tuple[float, str]:
    """The run's one survival rate and where it came from: the rate stored in run.json (an
    earlier variant's, or a resumed run's), else `survival_rate`, else — the smallest variant
    never failed its search — its capacity × the search's growth factor."""
    if stored.get("offered_rps"):
        return float(str(stored["offered_rps"])), str(stored.get("source", ""))
    found = survival_rate(failed_rps, override_rps)
    if override_rps:
        return float(override_rps), "--survival-rps"
    if found is not None:
        return found, f"the lowest rate {name} failed its capacity search at"
    return (max(1.0, capacity_rps * growth),
            f"{name}'s capacity × {growth:g} (its search never failed)")


@dataclass(frozen=True)
class Second:
    """One second of the survival timeline (t = seconds since the start, end of the bucket)."""

    t: float
    requests: int
    errors: int
    p95_ms: float
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def successes(self) -> int:
        return self.requests - self.errors

    @property
    def bad(self) -> bool:
        return self.successes == 0 or self.errors > MAX_ERROR_RATE * self.requests


@dataclass(frozen=True)
class Verdict:
    failed_at_s: float
    """Seconds since the start at which the rule tripped."""
    reason: str


class SurvivalRule:
    """Feed seconds in order; `add` returns a Verdict the first time the rule trips."""

    def __init__(self, dilation: float = 1.0) -> None:
        self.window_s, self.hang_s = windows(dilation)
        self._window: deque[Second] = deque(maxlen=self.window_s)
        self._last_success_t = 0.0
        self._silent: Counter[str] = Counter()
        self._silent_requests = 0

    def add(self, second: Second) -> Verdict | None:
        """Judge the stretch ending with `second`: error rate over 5 s, silence over 30 s
        (both × dilation)."""
        self._window.append(second)
        if second.successes > 0:
            self._last_success_t = second.t
            self._silent.clear()
            self._silent_requests = 0
        else:
            self._silent.update(second.errors_by_kind)
            self._silent_requests += second.requests
        if second.t - self._last_success_t >= self.hang_s:
            if self._silent_requests == 0:
                reason = f"no response at all for {self.hang_s:g} s (server hung or unreachable)"
            else:
                reason = (f"no successful response for {self.hang_s:g} s "
                          f"({self._silent_requests} errors{_top(self._silent)})")
            return Verdict(failed_at_s=second.t, reason=reason)
        if len(self._window) < self.window_s:
            return None
        requests = sum(s.requests for s in self._window)
        errors = sum(s.errors for s in self._window)
        if requests == 0 or errors <= MAX_ERROR_RATE * requests:
            return None
        kinds: Counter[str] = Counter()
        for s in self._window:
            kinds.update(s.errors_by_kind)
        reason = (
            f"error rate {errors / requests:.0%} over {self.window_s} s "
            f"({errors} of {requests} requests{_top(kinds)})"
        )
        return Verdict(failed_at_s=second.t, reason=reason)


def _top(kinds: Counter[str]) -> str:
    if not kinds:
        return ""
    kind, count = max(kinds.items(), key=lambda kv: kv[1])
    return f", mostly {kind} ({count})"


# ---- the server's side of the verdict -------------------------------------------------------

WORKER_LOSS = re.compile(r"was sent SIGKILL|WORKER TIMEOUT|Killed process|oom_kill counter")


STOP_TAIL_S = 2.0
"""After the server's first worker loss the survival load goes on this long (two of the local
sampler's 1 s samples), so the signals the diagnosis reads cover the failure itself."""


def worker_loss_watch(logs_since: Callable[[float], list[LogLine] | None],
                      since: float | None = None, tail_s: float = STOP_TAIL_S,
                      clock: Callable[[], float] = time.time) -> Callable[[], LogLine | None]:
    """A check for the survival test's early stop: the first worker-loss line at or after
    `since` (default: now, when the watch is made) once it is `tail_s` old, else None.
    `logs_since` is the deployment's cheap log feed (`Deployment.logs_since`); without one
    (None) the test runs to its limit, as before.

    The verdict does not change: `with_worker_loss` judges the same line the same way; only
    the load that followed a failure already decided (68 s of micro's 100 s) is saved."""

    start = clock() if since is None else since

    def check() -> LogLine | None:
        lines = logs_since(start) or []
        first = next((x for x in lines if x.t >= start and WORKER_LOSS.search(x.text)), None)
        return first if first is not None and clock() - first.t >= tail_s else None

    return check


def first_worker_loss_s(survival: SurvivalResult, observations: Observations) -> float | None:
    """Seconds into the survival test until the server first lost a worker (kernel OOM kill or
    Gunicorn's timeout kill), or None. The client-side verdict says when users were failed;
    this says when the box itself first broke — the moment the seed's log recorded."""
    losses = [line.t for line in observations.logs
              if survival.started_at <= line.t <= survival.ended_at
              and WORKER_LOSS.search(line.text)]
    return round(min(losses) - survival.started_at, 1) if losses else None


def with_worker_loss(survival: SurvivalResult, observations: Observations) -> SurvivalResult:
    """The survival verdict from both sides: clients (errors, silence) and the server itself.

    Gunicorn replaces a killed worker within a second, so clients of a box that is being
    OOM-killed may see little more than slowness; the seed's service was nonetheless broken
    the moment its worker was SIGKILLed. Whichever comes first ends the survival time.
    """
    loss_s = first_worker_loss_s(survival, observations)
    if loss_s is None or (not survival.held and survival.seconds <= loss_s):
        return survival
    line = next(x for x in sorted(observations.logs, key=lambda x: x.t)
                if survival.started_at <= x.t <= survival.ended_at
                and WORKER_LOSS.search(x.text))
    clients = "clients saw it hold" if survival.held else f"clients later: {survival.reason}"
    return replace(survival, held=False, seconds=loss_s, failed_at=survival.started_at + loss_s,
                   reason=f"the server lost a worker ({line.source}: {line.text.strip()[-90:]}); "
                          f"{clients}")

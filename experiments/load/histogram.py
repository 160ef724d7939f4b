"""Exact-enough latency accounting for one measurement window.

Locust's own stats round response times to about two significant digits (a true 497 ms can
read 500 ms, 1234 ms reads 1200 ms): too coarse for an SLO verdict. A `Window` keeps an
HdrHistogram with 3 significant digits (relative error <= 0.1 %) fed from Locust's `request`
event, plus the counters a step needs. It keeps two latencies per request: from the actual
send (what Locust measures) and from the arrival's scheduled send time (wrk2's correction for
coordinated omission: time spent waiting inside the generator counts against the server's
SLO too, as it would for a real visitor). Windows travel between processes as plain dicts (the
histogram HdrHistogram-encoded), so distributed workers ship theirs to the master, which merges.

No locust or gevent import here: the parent and the unit tests use this module too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 600_000_000
"""Ten minutes: longer than any client timeout, so no recorded value is ever clamped."""
SIGNIFICANT_DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


@dataclass
class Window:
    """Everything that completed between two swaps, in one process (or merged over several)."""

    requests: int = 0
    errors: int = 0
    response_bytes: int = 0
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    histogram: HdrHistogram = field(default_factory=new_histogram)
    """Latency from the actual send."""
    intended: HdrHistogram = field(default_factory=new_histogram)
    """Latency from the scheduled send time (equal to the above in closed-loop mode)."""
    scheduled: int = 0
    """Open-model arrivals that fell due in this window."""
    dropped: int = 0
    """...of which no user could send within pacing.DROP_AFTER_S of their due time."""
    in_flight: int = 0
    """Requests still awaiting an answer when the window was closed (all processes)."""
    cpu_peak: float = 0.0
    """Highest CPU sample of any generator process in this window, fractions of one core."""
    cpu_warning: bool = False
    """Locust's own `cpu_warning` fired in some generator process during the window."""
    loop_lag_ms: float = 0.0
    """p90 event-loop lag of the worst generator process in this window."""
    started: float = 0.0
    """time.monotonic() of the swap that opened the window (per process; informational)."""

    def record(self, response_time_ms: float, error_kind: str | None, response_bytes: int,
               intended_ms: float | None = None) -> None:
        """One completed request (success or failure); called from the `request` event.

        `intended_ms` is the time since the arrival was due (None: no schedule, closed loop).
        """
        self.requests += 1
        self.response_bytes += response_bytes
        if error_kind is not None:
            self.errors += 1
            self.errors_by_kind[error_kind] += 1
        value = _clamp_us(response_time_ms)
        self.histogram.record_value(value)
        corrected = value if intended_ms is None else max(value, _clamp_us(intended_ms))
        self.intended.record_value(corrected)

    def record_task_error(self, kind: str) -> None:
        """A task raised before its request completed (a locustfile bug): an error, no latency."""
        self.requests += 1
        self.errors += 1
        self.errors_by_kind[kind] += 1

    @property
    def successes(self) -> int:
        return self.requests - self.errors

    def percentile_ms(self, percentile: float) -> float:
        """Latency from the actual send at `percentile` (0-100) in ms; 0.0 when none completed."""
        if self.histogram.get_total_count() == 0:
            return 0.0
        return self.histogram.get_value_at_percentile(percentile) / 1000.0

    def intended_percentile_ms(self, percentile: float) -> float:
        """Latency from the scheduled send time at `percentile` in ms; 0.0 when none completed."""
        if self.intended.get_total_count() == 0:
            return 0.0
        return self.intended.get_value_at_percentile(percentile) / 1000.0

    def merge(self, other: Window) -> None:
        """Add another process's window into this one (the master's job in distributed mode)."""
        self.requests += other.requests
        self.errors += other.errors
        self.response_bytes += other.response_bytes
        self.errors_by_kind.update(other.errors_by_kind)
        if other.histogram.get_total_count():
            self.histogram.add(other.histogram)
        if other.intended.get_total_count():
            self.intended.add(other.intended)
        self.scheduled += other.scheduled
        self.dropped += other.dropped
        self.in_flight += other.in_flight
        self.cpu_peak = max(self.cpu_peak, other.cpu_peak)
        self.cpu_warning = self.cpu_warning or other.cpu_warning
        self.loop_lag_ms = max(self.loop_lag_ms, other.loop_lag_ms)

    def to_wire(self) -> dict[str, Any]:
        """A msgpack/JSON-safe dict (the histogram as its compressed base64 encoding)."""
        count = self.histogram.get_total_count()
        return {
            "requests": self.requests,
            "errors": self.errors,
            "response_bytes": self.response_bytes,
            "errors_by_kind": dict(self.errors_by_kind),
            "histogram": self.histogram.encode().decode("ascii") if count else "",
            "intended": (self.intended.encode().decode("ascii")
                         if self.intended.get_total_count() else ""),
            "scheduled": self.scheduled,
            "dropped": self.dropped,
            "in_flight": self.in_flight,
            "cpu_peak": self.cpu_peak,
            "cpu_warning": self.cpu_warning,
            "loop_lag_ms": self.loop_lag_ms,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Window:
        return cls(
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            response_bytes=int(data.get("response_bytes", 0)),
            errors_by_kind=Counter({str(k): int(v) for k, v in data["errors_by_kind"].items()}),
            histogram=_decode(data.get("histogram") or ""),
            intended=_decode(data.get("intended") or ""),
            scheduled=int(data.get("scheduled", 0)),
            dropped=int(data.get("dropped", 0)),
            in_flight=int(data.get("in_flight", 0)),
            cpu_peak=float(data.get("cpu_peak", 0.0)),
            cpu_warning=bool(data.get("cpu_warning", False)),
            loop_lag_ms=float(data.get("loop_lag_ms", 0.0)),
        )


def _clamp_us(ms: float) -> int:
    return min(max(int(round(ms * 1000.0)), LOWEST_US), HIGHEST_US)


def _decode(encoded: str) -> HdrHistogram:
    return HdrHistogram.decode(encoded.encode("ascii")) if encoded else new_histogram()

"""The survival rule: when a service under a fixed closed-loop overload counts as failed.

Pure logic (no I/O), fed one bucket per second by the load child, so the rule is unit-tested
and is exactly the sentence the report prints:

    A service FAILS the survival test at the first moment when, over the last 5 seconds,
    either more than 50 % of the completed requests were errors, or not a single request
    succeeded (this includes "nothing completed at all": the server hangs or is unreachable).
    The time of failure is the start of the first bad second inside that 5-second window
    (a second with more than 50 % errors, or without any success), not the moment the
    rule tripped: the service died when its errors began, not five seconds later.
    If neither happens before the time limit, the service HELD.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

WINDOW_S = 5
MAX_ERROR_RATE = 0.5

RULE_TEXT = (
    f"failed = over the last {WINDOW_S} s more than {MAX_ERROR_RATE:.0%} of requests were "
    f"errors, or no request succeeded for {WINDOW_S} s"
)


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
    """Seconds since the start: the beginning of the first bad second of the tripping window."""
    reason: str


class SurvivalRule:
    """Feed seconds in order; `add` returns a Verdict the first time the rule trips."""

    def __init__(self) -> None:
        self._window: deque[Second] = deque(maxlen=WINDOW_S)
        self._starts: deque[float] = deque(maxlen=WINDOW_S)
        self._previous_t = 0.0

    def add(self, second: Second) -> Verdict | None:
        """Judge the window of the last five seconds, ending with `second`."""
        self._starts.append(self._previous_t)
        self._previous_t = second.t
        self._window.append(second)
        if len(self._window) < WINDOW_S:
            return None
        requests = sum(s.requests for s in self._window)
        errors = sum(s.errors for s in self._window)
        successes = requests - errors
        if successes > 0 and errors <= MAX_ERROR_RATE * requests:
            return None
        first_bad = next(
            start for start, s in zip(self._starts, self._window, strict=True) if s.bad
        )
        kinds: Counter[str] = Counter()
        for s in self._window:
            kinds.update(s.errors_by_kind)
        top = ""
        if kinds:
            kind, count = max(kinds.items(), key=lambda kv: kv[1])
            top = f", mostly {kind} ({count})"
        if requests == 0:
            reason = f"no response at all for {WINDOW_S} s (server hung or unreachable)"
        elif successes == 0:
            reason = f"no successful response for {WINDOW_S} s ({errors} errors{top})"
        else:
            reason = (
                f"error rate {errors / requests:.0%} over {WINDOW_S} s "
                f"({errors} of {requests} requests{top})"
            )
        return Verdict(failed_at_s=first_bad, reason=reason)

"""`run --threshold 'scale-out:capacity_rps>=60'`: pass/fail criteria for CI, like k6's.

Parsed in the plan stage (bad syntax is one sentence before anything is deployed), judged
after the report is written against the run's summary. A threshold on a variant the run did
not finish, or on a figure the variant has none of, fails: CI must not pass on missing data.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from experiments.errors import UserError

EXIT_THRESHOLDS_FAILED = 99
"""k6's exit status for crossed thresholds, so CI scripts written for k6 read it alike."""

METRICS: dict[str, str] = {
    "capacity_rps": "req/s",
    "p95_ms_at_capacity": "ms",
    "capacity_rsd": "",
    "capacity_ci95_low": "req/s",
    "capacity_ci95_high": "req/s",
    "survival_s": "s",
    "hourly_usd": "$",
    "monthly_usd": "$",
    "usd_per_million_requests": "$",
    "capacity_per_usd_hour": "req/s per $/h",
}
"""What a threshold can name: figures every finished variant has in summary.json."""

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
_SYNTAX = re.compile(r"^\s*(?P<variant>[^:\s]+)\s*:\s*(?P<metric>[a-z0-9_]+)\s*"
                     r"(?P<op>>=|<=|>|<)\s*(?P<value>[^\s<>=]+)\s*$")
_FORM = "VARIANT:METRIC>=NUMBER (or <=, >, <), for example 'scale-out:capacity_rps>=60'"


@dataclass(frozen=True)
class Threshold:
    variant: str
    """A variant name, or '*' for every variant of the run."""
    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.variant}:{self.metric}{self.op}{self.value:g}"


def parse_threshold(text: str) -> Threshold:
    """One `--threshold` value; a UserError sentence saying what is valid otherwise."""
    match = _SYNTAX.match(text)
    if not match:
        raise UserError(f"--threshold {text!r} is not of the form {_FORM}.")
    metric = match["metric"]
    if metric not in METRICS:
        raise UserError(f"--threshold {text!r} names unknown metric {metric!r}; valid: "
                        f"{', '.join(METRICS)}.")
    try:
        value = float(match["value"])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"--threshold {text!r} must end in a finite number, got "
                        f"{match['value']!r}.")
    return Threshold(match["variant"], metric, match["op"], value)


def check_variants(thresholds: Iterable[Threshold], planned: list[str]) -> None:
    """Every named variant must be one the run measures (a typo would fail only at the end)."""
    for t in thresholds:
        if t.variant != "*" and t.variant not in planned:
            raise UserError(f"--threshold {t} names variant {t.variant!r}, which this run does "
                            f"not measure; valid: {', '.join(planned)} or '*'.")


def _figures(entry: dict[str, Any]) -> dict[str, float | None]:
    cost = entry.get("cost") or {}
    ci = entry.get("capacity_ci95") or [None, None]
    survival = entry.get("survival") or {}
    return {
        "capacity_rps": entry.get("capacity_rps"),
        "p95_ms_at_capacity": entry.get("p95_ms_at_capacity"),
        "capacity_rsd": entry.get("capacity_rsd"),
        "capacity_ci95_low": ci[0], "capacity_ci95_high": ci[1],
        "survival_s": survival.get("seconds"),
        "hourly_usd": cost.get("hourly_usd"), "monthly_usd": cost.get("monthly_usd"),
        "usd_per_million_requests": cost.get("usd_per_million_requests"),
        "capacity_per_usd_hour": cost.get("capacity_per_usd_hour"),
    }


def failures(thresholds: Iterable[Threshold], summary: dict[str, Any],
             planned: list[str]) -> list[str]:
    """One line per failed threshold (empty when all pass), judged on summary.json's content."""
    entries = {v["name"]: v for v in summary.get("variants") or [] if v}
    lines = []
    for t in thresholds:
        for name in (planned if t.variant == "*" else [t.variant]):
            entry = entries.get(name)
            if entry is None:
                lines.append(f"threshold {t} failed: {name} was not measured")
                continue
            actual = _figures(entry).get(t.metric)
            if not isinstance(actual, (int, float)):
                lines.append(f"threshold {t} failed: {name} has no {t.metric}")
            elif not OPERATORS[t.op](float(actual), t.value):
                lines.append(f"threshold {t} failed: {name} {t.metric} = {actual:g}")
    return lines


def exit_status(thresholds: list[Threshold], summary: dict[str, Any], planned: list[str],
                status: int, say: Callable[[str], None]) -> int:
    """The run's exit status once its thresholds are judged: one stderr line per failure and
    k6's 99; a failed variant's `status` wins (the run is broken, not merely slower)."""
    import sys

    if not thresholds:
        return status
    lines = failures(thresholds, summary, planned)
    for line in lines:
        print(f"scalelab: {line}", file=sys.stderr)
    if not lines:
        say(f"All {len(thresholds)} thresholds passed.")
    return status or (EXIT_THRESHOLDS_FAILED if lines else 0)

"""Wait until a fresh stack really serves: the app answers its health path with 200 AND every
load-balancer target is healthy. Measuring earlier would blame the app for cloud-init."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from experiments.errors import UserError


def probe(url: str, timeout_s: float) -> str:
    """'200' or what went wrong instead (status code or error), for progress and the error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(reason).__name__}: {reason}"


def target_health(elbv2: Any, target_group_arn: str) -> tuple[int, int, list[str]]:
    """(healthy, total, states) of a target group's targets."""
    described = elbv2.describe_target_health(TargetGroupArn=target_group_arn)
    states = [d["TargetHealth"]["State"] for d in described["TargetHealthDescriptions"]]
    return sum(s == "healthy" for s in states), len(states), states


def wait_healthy(url: str, elbv2: Any | None, target_group_arn: str, timeout_s: float,
                 poll_s: float = 5.0, emit: Callable[[str], None] = lambda _line: None,
                 expected_targets: int = 0) -> float:
    """Poll until healthy; returns seconds waited. Raises UserError when time runs out."""
    start = time.monotonic()
    deadline = start + timeout_s
    last_http, last_targets, shown = "not tried", "", ""
    while True:
        remaining = deadline - time.monotonic()
        last_http = probe(url, timeout_s=max(0.5, min(10.0, remaining)))
        targets_ok = True
        if target_group_arn and elbv2 is not None:
            try:
                healthy, total, states = target_health(elbv2, target_group_arn)
                targets_ok = total > 0 and healthy == total and total >= expected_targets
                last_targets = f", targets {healthy}/{max(total, expected_targets)} healthy"
                if not targets_ok and states:
                    last_targets += f" ({', '.join(sorted(set(states)))})"
            except Exception as exc:  # a throttled or not-yet-ready API is just "not yet"
                targets_ok, last_targets = False, f", target health unknown ({exc})"
        status = f"{url}: {last_http}{last_targets}"
        if status != shown:
            emit(f"waiting for health: {status}")
            shown = status
        if last_http == "200" and targets_ok:
            return time.monotonic() - start
        if time.monotonic() + poll_s > deadline:
            raise UserError(f"the stack did not become healthy within {timeout_s:g} s ({status}); "
                            "check the instances' cloud-init log (/var/log/cloud-init-output.log).")
        time.sleep(poll_s)

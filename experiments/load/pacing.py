"""How an offered arrival rate becomes a Locust user pool (pure arithmetic, no locust import).

Locust is closed-loop: a user waits for its response before it sends the next request. To
approximate an open model (arrivals that do not slow down when the server does), each step
uses a generous pool of users, each paced at `offered / users` requests/s. As long
as a response takes less than `users / offered` seconds (the latency budget), the pool keeps
offering the full rate; beyond that users fall behind and *achieved* drops below *offered*,
which the capacity verdict treats as a failure — so coordinated omission cannot hide saturation.

The pacing is Locust's `constant_throughput` with one fix: each user's schedule starts at its
own phase. With plain `constant_throughput` every user's arrivals stay locked to the moment
it was spawned, so a pool spawned in a burst keeps arriving in bursts, and a hold window that
is not a whole number of pacing intervals counts the wrong number of arrivals (measured: 125
instead of 150 requests in a 3 s hold at 50 rps). Phases follow the golden-ratio sequence
rather than random draws: random phases are uniform only on average (a 4 s hold at 27 rps
then reads 93 % or 107 % of offered by chance, enough to flip a 95 % verdict), while the
golden-ratio sequence spreads any number of users evenly over the interval.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

LATENCY_BUDGET_S = 2.5
"""Pool size in seconds of arrivals: 5x the default 500 ms SLO before the pool runs dry."""
MIN_USERS = 5
MAX_USERS_PER_PROCESS = 2000
"""Beyond this a single gevent process spends more time scheduling than sending."""
GOLDEN_RATIO = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class Pool:
    users: int
    per_user_rps: float
    spawn_rate: float
    """Users started per second."""
    spawn_s: float


def pool_for(offered_rps: float, warmup_s: float, generator_processes: int = 1) -> Pool:
    """Users, per-user pace and spawn rate that offer `offered_rps` arrivals per second.

    Users are spawned at about the offered rate (their first requests are then arrivals at the
    right rate too), but within 80 % of the warm-up, so the hold starts with the whole pool.
    """
    if offered_rps <= 0:
        raise ValueError(f"offered rate must be positive, got {offered_rps}")
    cap = MAX_USERS_PER_PROCESS * max(1, generator_processes)
    users = min(cap, max(MIN_USERS, math.ceil(offered_rps * LATENCY_BUDGET_S)))
    spawn_s = max(0.2, min(users / offered_rps, 0.8 * warmup_s))
    return Pool(
        users=users,
        per_user_rps=offered_rps / users,
        spawn_rate=users / spawn_s,
        spawn_s=spawn_s,
    )


def paced(per_user_rps: float) -> Callable[[Any], float]:
    """A Locust `wait_time`: one task start every 1/per_user_rps s per user, evenly phased.

    Like `constant_throughput`, a user that falls behind (slow responses) does not catch up
    with a burst: it starts its next task at once and its schedule moves on from there.
    """
    if per_user_rps <= 0:
        raise ValueError(f"per-user rate must be positive, got {per_user_rps}")
    interval = 1.0 / per_user_rps
    phases = itertools.count(1)

    def wait_time(user: Any) -> float:
        now = perf_counter()
        slot = getattr(user, "_scalelab_next_slot", None)
        if slot is None:
            slot = now + (next(phases) * GOLDEN_RATIO % 1.0) * interval
        else:
            slot = max(slot + interval, now)
        user._scalelab_next_slot = slot
        return slot - now

    return wait_time

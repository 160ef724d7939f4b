"""When each request of an open-model step leaves (pure arithmetic, no locust or gevent import).

Locust is closed-loop: a user sends its next request only after the previous answer. An open
model needs arrivals that do not slow down when the server does. The child therefore keeps a
pool of idle users and a *schedule*: arrival k of a step is due at `t0 + (k + phase) / rate`.
A dispatcher hands each due arrival to whichever user is free; a user never sends on its own
(its first request included: Locust would otherwise run every new user's first task at once,
and a pool spawned in 0.8 s fired ~3x the offered rate at each step's start — measured: 50
requests in the first 250 ms of a 20 req/s step).

An arrival that no user could pick up within `DROP_AFTER_S` of its due time is *dropped* and
counted (k6's dropped iterations): a generator that falls behind shows it. Arrivals sent late
but within that bound are sent, and their latency is also measured from the due time (wrk2's
correction for coordinated omission), so waiting inside the generator is never hidden.

The pool holds `LATENCY_BUDGET_S` seconds of arrivals: users run out only when responses take
longer than that, far beyond any sensible SLO. It grows when a step needs more users and is
never torn down between steps, so nothing is spawned while a step is measured.

*What* each arrival does is dealt from a `Deck` of the locustfile's weighted tasks rather than
drawn at random for each request (Locust's `random.choice`): every deck of `sum(weights)`
consecutive arrivals holds the mix exactly, in a fresh random order. A random draw samples the
mix anew in every step, and a heavy-tailed mix turns that sampling into noise in the very
thing a step measures: the shop's search is 3 % of requests but 44 % of their CPU, so a
180-request step held 5.4 +- 2.3 searches and its CPU demand varied +-19 % by chance alone.
A step's hold goes further: it starts with a fresh deck and lasts whole decks
(`whole_decks_hold_s`), so it holds the mix exactly, not just within a partial deck at each end.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

LATENCY_BUDGET_S = 2.5
"""Pool size in seconds of arrivals: 5x the default 500 ms SLO before the pool runs dry."""
MIN_USERS = 5
MAX_USERS_PER_PROCESS = 2000
"""Beyond this a single gevent process spends more time scheduling than sending."""
DROP_AFTER_S = 1.0
"""An arrival not sent within this long after its due time is dropped (twice the default SLO:
a request that late has failed the SLO before it even left)."""


def pool_users(offered_rps: float, generator_processes: int = 1) -> int:
    """Users needed to offer `offered_rps` while responses take up to LATENCY_BUDGET_S."""
    if offered_rps <= 0:
        raise ValueError(f"offered rate must be positive, got {offered_rps}")
    processes = max(1, generator_processes)
    per_process = max(MIN_USERS, math.ceil(offered_rps * LATENCY_BUDGET_S / processes))
    return min(MAX_USERS_PER_PROCESS, per_process) * processes


class Schedule:
    """Due times of one process's arrivals: `t0 + (k + phase) / rate` for k = 0, 1, 2, ..."""

    def __init__(self, rate: float, t0: float, phase: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError(f"arrival rate must be positive, got {rate}")
        if not 0 <= phase < 1:
            raise ValueError(f"phase must be in [0, 1), got {phase}")
        self.rate = rate
        self.t0 = t0
        self.phase = phase
        self.issued = 0

    def at(self, k: int) -> float:
        return self.t0 + (k + self.phase) / self.rate

    def next_due(self) -> float:
        return self.at(self.issued)

    def take_due(self, now: float) -> list[float]:
        """Every arrival due at or before `now` not handed out yet, oldest first."""
        due: list[float] = []
        while self.at(self.issued) <= now:
            due.append(self.at(self.issued))
            self.issued += 1
        return due


def too_late(due: float, now: float) -> bool:
    """The arrival can no longer be sent: it counts as dropped."""
    return now - due > DROP_AFTER_S


class Deck(Generic[T]):
    """Deals `cards` (a task list that holds each task `weight` times, as Locust expands it)
    one by one from shuffled decks: each full deck holds every card exactly once."""

    def __init__(self, cards: Sequence[T], rng: random.Random | None = None) -> None:
        if not cards:
            raise ValueError("a deck needs at least one card")
        self._cards = list(cards)
        self._rng = rng or random.Random()
        self._left: list[T] = []

    def __len__(self) -> int:
        return len(self._cards)

    def deal(self) -> T:
        if not self._left:
            self._left = self._rng.sample(self._cards, len(self._cards))
        return self._left.pop()

    def fresh(self) -> None:
        """Drop what is left of the current deck: the next card starts a new shuffle."""
        self._left = []


def whole_decks_hold_s(hold_s: float, rate: float, deck: int) -> float:
    """`hold_s` stretched or shrunk to the nearest whole number of decks of arrivals at
    `rate` (per generator process); a hold of under half a deck stays as asked.

    Why: a hold that starts with a fresh deck and ends on a deck's last card holds the mix
    exactly. One that cuts a deck holds a random part of it: on the shop (3 searches in 100
    cards, 44 % of the CPU) a 200-arrival hold starting mid-deck varies its CPU per request by
    7 % (relative standard deviation, simulated from the weights) by that alone; two whole
    decks dealt fresh hold the mix exactly. A shorter hold would be stretched too far."""
    if hold_s <= 0 or rate <= 0 or deck < 1:
        raise ValueError(f"hold, rate and deck must be positive, got {hold_s}, {rate}, {deck}")
    decks = round(rate * hold_s / deck)
    return decks * deck / rate if decks >= 1 else hold_s

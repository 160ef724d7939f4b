"""The load child: Locust as a library, driven by JSON lines from the parent.

Run as `python -m experiments.load.child --role local|master|worker ...` by
`experiments.load.driver.LoadSession` only. Importing locust monkey-patches this whole process
with gevent; that is why this is a separate process and the parent never imports it.

Protocol (one JSON object per line). Parent -> child on stdin:
    {"cmd": "step", "offered_rps": 40, "warmup_s": 5, "hold_s": 15}
    {"cmd": "offer", "offered_rps": 40, "seconds": 60, "judge": true}
    {"cmd": "survival", "users": 100, "limit_s": 120}   (closed loop) or
    {"cmd": "survival", "offered_rps": 40, "limit_s": 120, "dilation": 3.0,
     "hazard_path": "/products/?all=1", "hazard_rps": 0.07}   (open model + a hazard stream)
    {"cmd": "stop"}   (ends a running survival test now: the server already failed)
    {"cmd": "quit"}
Child -> parent on the original stdout (fd 1 is redirected to stderr, so a print() in a
locustfile cannot corrupt the protocol):
    {"type": "ready", "deck": 100} | {"type": "step", "result": {...}}
    {"type": "error", "kind": "usage" | "internal", "message": "..."}
        usage: the user's input is at fault (the locustfile): one sentence for the user;
        internal: the generator itself failed.
    {"type": "tick", "t": 3.0, "requests": .., "errors": .., "p95_ms": ..}
    {"type": "mark", "what": "hold_start" | "hold_end"}  (so the parent can read the
    backend's CPU counter exactly around a step's hold)
    {"type": "survival", "result": {...}} | {"type": "offer", "result": {...}}
Workers (distributed mode) take no commands: they are driven by the master through Locust's
own messages plus three custom ones (scalelab_pace, scalelab_swap -> scalelab_window), and
exit when their stdin closes (the parent is gone).

Open-model arrivals (see experiments.load.pacing): every process has an `ArrivalGate`. Users
never send on their own: before each task (the first one too) a user waits at the gate for
the next scheduled arrival. The pool stays alive across steps; a step only changes the gate's
rate. In closed-loop mode (survival) the gate lets every user through at once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import select
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import gevent
import gevent.monkey
import psutil
from gevent.fileobject import FileObjectPosix
from gevent.hub import Waiter
from gevent.queue import Queue
from geventhttpclient.connectionpool import ConnectionPool
from locust import User, events
from locust.env import Environment
from locust.runners import STATE_SPAWNING, STATE_STOPPED, MasterRunner, Runner

from experiments.load.histogram import Window
from experiments.load.pacing import Deck, Schedule, pool_users, too_late
from experiments.load.survival import Second, SurvivalRule
from experiments.model import StepResult, SurvivalResult

SATURATED_CPU = 0.9
"""A generator process above 90 % of a core (Locust's own warning threshold) is saturated."""
SATURATED_LAG_MS = 20.0
"""...and so is one whose event loop wakes up late: p90 lag of a 50 ms sleep >= 20 ms. Measured
here: < 2 ms up to 2,000 paced req/s; 39 ms when CPU-starved at 82 % of a core on a busy host,
with p95 latency inflated from 5 ms to 900 ms by the generator itself."""
LAG_PROBE_S = 0.05
CPU_SAMPLE_S = 1.0
WORKER_CONNECT_TIMEOUT_S = 60.0
WINDOW_REPLY_TIMEOUT_S = 5.0
SPAWN_S = 0.5
"""New users are started within this long; they wait at the gate, so no burst follows."""
SPAWN_TIMEOUT_S = 30.0
DISPATCH_TICK_S = 0.001
"""The dispatcher sleeps at least this long: arrivals leave at most 1 ms late (and that 1 ms
counts in the latency from the scheduled send)."""
DRAIN_TIMEOUT_S = 30.0
"""A step ends when its last request is answered (at most this long after its hold): an
overloaded step's backlog must not spill into the next step's measurement."""


class LocustfileError(Exception):
    """The locustfile cannot be used; the message is the one sentence the user sees."""


def load_user_class(path: str) -> type[User]:
    """Import `path` and return its single runnable User class (with tasks)."""
    file = Path(path)
    if not file.is_file():
        raise LocustfileError(f"locustfile {path} does not exist or is not a file")
    if not os.access(file, os.R_OK):
        raise LocustfileError(f"locustfile {path} is not readable")
    sys.path.insert(0, str(file.parent.resolve()))
    try:
        spec = importlib.util.spec_from_file_location("scalelab_locustfile", file)
        if spec is None or spec.loader is None:
            raise LocustfileError(f"locustfile {path} is not a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    except LocustfileError:
        raise
    except SyntaxError as exc:
        raise LocustfileError(
            f"locustfile {path} has a syntax error at line {exc.lineno}: {exc.msg}"
        ) from None
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything, even SystemExit
        raise LocustfileError(
            f"locustfile {path} failed to import: {type(exc).__name__}: {exc}".rstrip(": ")
        ) from None
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, User) and not value.abstract
        and value.tasks
    ]
    if len(classes) != 1:
        names = ", ".join(sorted(c.__name__ for c in classes)) or "none"
        raise LocustfileError(
            f"locustfile {path} must define exactly one User class with tasks, found "
            f"{len(classes)} ({names})"
        )
    return classes[0]


CLIENT_TIMEOUT_ATTRS = ("network_timeout", "connection_timeout")
"""FastHttpUser's client timeouts (60 s by default), read when each user creates its client."""


def dilate_client_timeouts(user_class: type[User], dilation: float) -> dict[str, float]:
    """Stretch the user class's client timeouts by `dilation` (the emulated box's clock): at
    cpu_scale s a request that would time out after 60 s on AWS may take 60/s s here.

    Set on the class before any user exists, in every process that runs users (the local
    runner, or each distributed worker), because each user reads them once, when it creates its
    client. Returns the timeouts set (none for a User class without them, e.g. HttpUser)."""
    if not dilation >= 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    applied: dict[str, float] = {}
    for attr in CLIENT_TIMEOUT_ATTRS:
        base = getattr(user_class, attr, None)
        if isinstance(base, (int, float)) and base > 0:
            applied[attr] = float(base) * dilation
            setattr(user_class, attr, applied[attr])
    return applied


_real_poll = gevent.monkey.get_original("select", "poll")
"""The poll(2) system call itself: gevent's patched select module would add a trip through the
event loop, and the real select(2) cannot take a descriptor >= 1024."""


def _idle_connection_usable(pool: ConnectionPool, sock: Any) -> bool:
    """Whether a pooled keep-alive connection may carry the next request: it is open and has
    nothing to read (an idle connection that is readable was closed by the server, or holds
    stray bytes). Same rule as geventhttpclient's own check, asked with one non-blocking
    poll(2) instead of gevent's select().

    Why: geventhttpclient asks with `select.select([sock], [], [], 0)`, which gevent makes
    yield to the event loop once per request (a greenlet switch out and back: ~6 % of the
    generator's CPU plus the hub's share). And select() raises for a descriptor >= 1024, which
    the check reads as a dead connection: with more than ~1,000 users per process, every
    request of a user holding such a descriptor closed its connection and opened a new one."""
    try:
        fd = sock.fileno()
        if fd < 0:
            return False
        poller = _real_poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)  # HUP/ERR/NVAL are always reported
        return not poller.poll(0)
    except (OSError, ValueError, AttributeError):  # AttributeError: no socket at all
        return False


def install_idle_connection_check() -> None:
    """Use `_idle_connection_usable` for every FastHttpUser connection of this process (the
    generator's own processes only: importing this module already patched them for gevent)."""
    if not callable(getattr(ConnectionPool, "_is_socket_alive", None)):
        raise RuntimeError("geventhttpclient's ConnectionPool has no _is_socket_alive check to "
                           "replace; this geventhttpclient version is not supported")
    ConnectionPool._is_socket_alive = _idle_connection_usable  # type: ignore[method-assign,assignment]


class Recorder:
    """This process's current Window: fed by the `request` event, swapped at boundaries."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.window = Window(started=time.monotonic())
        self.due: dict[Any, float] = {}
        """User greenlet -> due time of the arrival it is sending (set by the gate)."""
        self.in_flight: Callable[[], int] = lambda: 0
        self._sampler: gevent.Greenlet | None = None
        self._lagger: gevent.Greenlet | None = None
        self._start_sampling()

    def _cpu_now(self) -> tuple[float, float]:
        times = self._process.cpu_times()
        return times.user + times.system, time.monotonic()

    def _start_sampling(self) -> None:
        """Sample CPU every second from the swap on, so each sample lies inside the window."""
        if self._sampler is not None:
            self._sampler.kill(block=False)
        if self._lagger is not None:
            self._lagger.kill(block=False)
        self._window_cpu_start = self._cpu_now()
        self._sampler = gevent.spawn(self._sample, self.window)
        self._lags: list[float] = []
        self._lagger = gevent.spawn(self._lag, self._lags)

    def _lag(self, lags: list[float]) -> None:
        """How late a 50 ms sleep wakes up: what every greenlet waits before it may send."""
        while True:
            t = time.monotonic()
            gevent.sleep(LAG_PROBE_S)
            lags.append(time.monotonic() - t - LAG_PROBE_S)

    def _sample(self, window: Window) -> None:
        last_cpu, last_t = self._cpu_now()
        while True:
            gevent.sleep(CPU_SAMPLE_S)
            cpu, now = self._cpu_now()
            if now - last_t > 0.05:
                window.cpu_peak = max(window.cpu_peak, (cpu - last_cpu) / (now - last_t))
            last_cpu, last_t = cpu, now

    def on_request(
        self,
        response_time: float | None = None,
        response_length: int | None = None,
        response: Any = None,
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        kind = None
        if exception is not None:
            status = getattr(response, "status_code", 0) or 0
            kind = f"HTTP {status}" if status >= 400 else type(exception).__name__
        # The event fires in the greenlet of the user that sent the request.
        due = self.due.pop(gevent.getcurrent(), None)
        intended_ms = None if due is None else 1000.0 * (time.monotonic() - due)
        self.window.record(response_time or 0.0, kind, response_length or 0, intended_ms)

    def on_user_error(self, exception: BaseException | None = None, **_: Any) -> None:
        """An exception escaped a task: count it, or a broken locustfile would look idle."""
        self.window.record_task_error(f"task error {type(exception).__name__}")

    def on_cpu_warning(self, **_: Any) -> None:
        self.window.cpu_warning = True

    def swap(self) -> Window:
        """Close the current window (with its mean CPU as a floor for the peak); open a new one."""
        old = self.window
        cpu, now = self._cpu_now()
        start_cpu, start_t = self._window_cpu_start
        if now - start_t > 0.2:
            old.cpu_peak = max(old.cpu_peak, (cpu - start_cpu) / (now - start_t))
        if self._lags:
            lags = sorted(self._lags)
            old.loop_lag_ms = 1000.0 * lags[min(len(lags) - 1, int(0.9 * len(lags)))]
        old.in_flight = self.in_flight()
        self.window = Window(started=now)
        self._start_sampling()
        return old


class ArrivalGate:
    """Hands each scheduled arrival to a free user; a user never sends without one.

    `pace(rate)` arms a timer in gevent's hub. Each time it fires (at the next due time, at
    most every DISPATCH_TICK_S) it appends the arrivals now due to a backlog, drops and counts
    any that are DROP_AFTER_S late, and hands the oldest ones to idle users. The hand-over is
    a direct switch from the hub into the user's greenlet (gevent's Waiter), which sends its
    request at once and switches back when it blocks on the socket: no queue and no extra
    trip through the event loop per arrival.

    Idle users form a stack, most recently freed on top. The few users needed to carry the
    rate are reused over and over (their connections and greenlets stay hot in the CPU's
    caches) while the rest of the pool waits as a reserve for slow responses. A FIFO hand-out
    rotated every request through all of the pool's users and connections (up to 2,000 per
    process): measured 3,500 req/s of one core instead of 7,000 closed loop.
    """

    def __init__(self, recorder: Recorder, runner: Runner) -> None:
        self.recorder = recorder
        self.closed_loop = False
        self._idle: list[Waiter] = []
        """Users waiting at the gate (a stack: the last one freed is handed the next arrival)."""
        self._backlog: deque[float] = deque()
        """Due arrivals no user has taken yet, oldest first."""
        recorder.in_flight = lambda: 0 if self.closed_loop else max(
            0, runner.user_count - len(self._idle))
        self._hub = gevent.get_hub()
        self._schedule: Schedule | None = None
        self._timer: Any = None
        self.deck: Deck[Any] | None = None
        """The tasks' deck (`install`), None for a one-task locustfile."""

    def fresh_deck(self) -> None:
        """Deal the next task from a new shuffle (a step's hold starts with a whole deck)."""
        if self.deck is not None:
            self.deck.fresh()

    @property
    def waiting(self) -> int:
        """Users waiting at the gate; the others are sending (or starting up)."""
        return len(self._idle)

    def install(self, user_class: type[User]) -> None:
        """Gate every task of `user_class`, its first one included (Locust runs that at once),
        and deal the tasks from one `Deck` shared by the process's users (pacing.py: why)."""
        original_on_start = user_class.on_start
        gate = self
        # One distinct task needs no deck (it would reshuffle a one-card deck per request).
        deck = self.deck = Deck(user_class.tasks) if len(set(user_class.tasks)) > 1 else None

        def on_start(user: User) -> None:
            taskset = user._taskset_instance
            assert taskset is not None  # Locust sets it before on_start
            # Locust sleeps wait_time() (our 0.0) after each task: the user has just waited at
            # the gate, so that zero sleep would only add a trip through the event loop.
            taskset._sleep = gate.pause  # type: ignore[method-assign]
            if deck is not None:
                taskset.get_next_task = deck.deal  # type: ignore[method-assign]
            original_on_start(user)
            gate.wait_for_arrival()

        def wait_time(user: User) -> float:
            gate.wait_for_arrival()
            return 0.0

        user_class.on_start = on_start  # type: ignore[method-assign,assignment]
        user_class.wait_time = wait_time

    def pause(self, seconds: float) -> None:
        """Locust's sleep between two tasks of a user, after `wait_time` (the gate) returned.

        Open model: no sleep at all. The user yielded while it waited for its arrival (or takes
        one that is already overdue), and every request yields on its socket; Locust's
        gevent.sleep(0) only cost a greenlet switch out and back per request. Closed loop keeps
        it: there nobody waits at the gate, and a task that fails before any I/O (a locustfile
        bug) would otherwise never let the rest of the process run."""
        if seconds > 0 or self.closed_loop:
            gevent.sleep(seconds)

    def pace(self, rate: float | None, phase: float = 0.0) -> None:
        """rate > 0: open model at `rate` arrivals/s; 0: idle (nobody sends); None: closed loop."""
        self._disarm()
        self._backlog.clear()  # the last step's unsent arrivals belong to no one
        self.recorder.due.clear()
        self.closed_loop = rate is None
        if self.closed_loop:  # release every waiting user: from now on nobody waits
            idle, self._idle = self._idle, []
            for waiter in idle:
                self._hub.loop.run_callback(waiter.switch, None)
        elif rate:
            self._schedule = Schedule(rate, time.monotonic(), phase)
            self._arm(self._schedule.next_due() - time.monotonic())

    def _arm(self, delay: float) -> None:
        self._timer = self._hub.loop.timer(max(DISPATCH_TICK_S, delay))
        self._timer.start(self._tick)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None
        self._schedule = None

    def _tick(self) -> None:
        """In the hub: queue the arrivals now due, drop the hopeless, hand out the rest."""
        schedule = self._schedule
        if schedule is None:
            return
        try:
            now = time.monotonic()
            window = self.recorder.window
            backlog = self._backlog
            for due in schedule.take_due(now):
                window.scheduled += 1
                backlog.append(due)
            while backlog and too_late(backlog[0], now):
                backlog.popleft()
                window.dropped += 1
            idle = self._idle
            while backlog and idle and self._schedule is schedule:
                # Runs the user until it blocks on its socket, then comes back here.
                idle.pop().switch(backlog.popleft())
        finally:
            if self._schedule is schedule:
                # At most one wake-up per DISPATCH_TICK_S: at thousands of arrivals a
                # second, handing out a few per wake-up costs far less than one wake-up each.
                self._arm(schedule.next_due() - time.monotonic())

    def wait_for_arrival(self) -> None:
        """Block the calling user until an arrival is due (closed loop: return at once)."""
        backlog = self._backlog
        while not self.closed_loop:
            due: float
            if backlog:
                due = backlog.popleft()
            else:
                waiter: Waiter = Waiter(self._hub)
                self._idle.append(waiter)
                try:
                    handed: float | None = waiter.get()
                except BaseException:  # killed while idle (the pool is stopping)
                    with contextlib.suppress(ValueError):
                        self._idle.remove(waiter)
                    raise
                if handed is None:  # released: closed loop from now on
                    return
                due = handed
            if too_late(due, time.monotonic()):
                self.recorder.window.dropped += 1
                continue
            self.recorder.due[gevent.getcurrent()] = due
            return


class Collector:
    """Windows of the whole generator: this process, plus every worker in distributed mode."""

    def __init__(self, runner: Runner, recorder: Recorder, gate: ArrivalGate,
                 workers: int) -> None:
        self.runner = runner
        self.recorder = recorder
        self.gate = gate
        self.workers = workers
        self._seq = 0
        self._replies: dict[int, list[Window]] = {}
        self.missing = 0
        if workers:
            runner.register_message("scalelab_window", self._on_window)

    def _on_window(self, environment: Environment, msg: Any, **_: Any) -> None:
        replies = self._replies.get(int(msg.data["seq"]))
        if replies is not None:
            replies.append(Window.from_wire(msg.data["window"]))

    def pace(self, rate: float | None) -> None:
        """Total arrival rate of the generator (0 idle, None closed loop), split over workers."""
        if not self.workers:
            self.gate.pace(rate)
            return
        per_worker = None if rate is None else rate / self.workers
        self.runner.send_message("scalelab_pace", {"rate": per_worker, "workers": self.workers})

    def swap(self, fresh_deck: bool = False) -> Window:
        """Close every process's window; `fresh_deck`: deal the next window's tasks from a
        new shuffle (a step's hold starts with a whole deck)."""
        if not self.workers:
            if fresh_deck:
                self.gate.fresh_deck()
            return self.recorder.swap()
        self._seq += 1
        seq = self._seq
        self._replies[seq] = []
        self.runner.send_message("scalelab_swap", {"seq": seq, "fresh_deck": fresh_deck})
        merged = self.recorder.swap()  # the master's own CPU
        deadline = time.monotonic() + WINDOW_REPLY_TIMEOUT_S
        while len(self._replies[seq]) < self.workers and time.monotonic() < deadline:
            gevent.sleep(0.005)
        replies = self._replies.pop(seq)
        self.missing = self.workers - len(replies)
        for window in replies:
            merged.merge(window)
        return merged


class Child:
    """Runs steps and survival tests on one Locust runner (local or master)."""

    def __init__(self, args: argparse.Namespace, out: IO[str]) -> None:
        self.out = out
        self.user_class = load_user_class(args.locustfile)
        self.user_class.host = args.url
        self.client_timeouts = dilate_client_timeouts(self.user_class, args.dilation)
        self.env = Environment(user_classes=[self.user_class], events=events, host=args.url)
        self.workers = args.workers
        if self.workers:
            self.runner: Runner = self.env.create_master_runner("127.0.0.1", args.master_port)
        else:
            self.runner = self.env.create_local_runner()
        self.recorder = Recorder()
        events.request.add_listener(self.recorder.on_request)
        events.cpu_warning.add_listener(self.recorder.on_cpu_warning)
        events.user_error.add_listener(self.recorder.on_user_error)
        self.gate = ArrivalGate(self.recorder, self.runner)
        self.gate.install(self.user_class)
        if self.workers:  # the master runs no users; the workers report their own in-flight
            self.recorder.in_flight = lambda: 0
        self.collector = Collector(self.runner, self.recorder, self.gate, self.workers)
        self.pool = 0
        """Users alive now (open-model steps only ever grow it)."""
        self.stop_requested = False
        """Set by the reader on `{"cmd": "stop"}`: the running survival test ends now."""

    def send(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()

    def wait_for_workers(self) -> None:
        assert isinstance(self.runner, MasterRunner)
        deadline = time.monotonic() + WORKER_CONNECT_TIMEOUT_S
        while len(self.runner.clients.ready) < self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(self.runner.clients.ready)} of {self.workers} load workers "
                    f"connected within {WORKER_CONNECT_TIMEOUT_S:.0f} s"
                )
            gevent.sleep(0.05)

    def _stop(self) -> None:
        self.runner.stop()
        self.pool = 0
        if self.workers:
            self.wait_for_workers()  # workers re-announce themselves ready after a stop

    def _start(self, users: int, spawn_rate: float) -> None:
        self._stop()
        self.runner.start(users, spawn_rate=spawn_rate)
        self.pool = users

    def _grow_pool(self, users: int) -> None:
        """At least `users` users, all waiting at the gate (no request leaves without an
        arrival, so spawning them is silent)."""
        if users <= self.pool:
            return
        new = users - self.pool
        self.runner.start(users, spawn_rate=max(1.0, new / SPAWN_S))
        self.pool = users
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        gevent.sleep(0.01)
        while self.runner.state in (STATE_SPAWNING, STATE_STOPPED) and \
                time.monotonic() < deadline:
            gevent.sleep(0.02)

    def _drain(self) -> None:
        """Wait (up to DRAIN_TIMEOUT_S) until every request sent has been answered."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.collector.swap().in_flight and time.monotonic() < deadline:
            gevent.sleep(0.05)

    def _saturated(self, window: Window) -> bool:
        return (window.cpu_peak >= SATURATED_CPU or window.cpu_warning
                or window.loop_lag_ms >= SATURATED_LAG_MS)

    def step(self, offered_rps: float, warmup_s: float, hold_s: float) -> dict[str, Any]:
        """Open-model step: offer the rate, discard the warm-up, measure the hold, go idle.

        The hold deals its tasks from fresh decks; the parent asks for a whole number of them
        (`LoadSession.hold_s`), so it holds the locustfile's mix exactly."""
        users = pool_users(offered_rps, max(1, self.workers))
        self._grow_pool(users)
        self.collector.pace(offered_rps)
        try:
            gevent.sleep(warmup_s)
            self.collector.swap(fresh_deck=True)  # discard the warm-up
            started_at, t0 = time.time(), time.monotonic()
            self.send({"type": "mark", "what": "hold_start"})
            gevent.sleep(hold_s)
            window = self.collector.swap()
            duration = time.monotonic() - t0
            self.send({"type": "mark", "what": "hold_end"})
        finally:
            self.collector.pace(0)
            self._drain()
        saturated = self._saturated(window)
        result = StepResult(
            offered_rps=offered_rps,
            achieved_rps=window.requests / duration,
            p50_ms=window.percentile_ms(50),
            p95_ms=window.percentile_ms(95),
            p99_ms=window.percentile_ms(99),
            error_rate=window.errors / window.requests if window.requests else 0.0,
            requests=window.requests,
            errors=window.errors,
            errors_by_kind=dict(window.errors_by_kind),
            duration_s=duration,
            started_at=started_at,
            ended_at=started_at + duration,
            generator_cpu=window.cpu_peak,
            generator_saturated=saturated,
            generator_lag_ms=window.loop_lag_ms,
            users=self.pool,
            response_bytes=window.response_bytes,
            p50_intended_ms=window.intended_percentile_ms(50),
            p95_intended_ms=window.intended_percentile_ms(95),
            p99_intended_ms=window.intended_percentile_ms(99),
            scheduled=window.scheduled,
            dropped=window.dropped,
        )
        return result.to_dict()

    def _hazards(self, path: str, per_s: float, t0: float, timeout_s: float,
                 inflight: list[gevent.Greenlet]) -> None:
        """Open-model arrivals of one `path` (the app's memory hazard), one greenlet each, on
        a fresh connection each (independent visitors); counted like every other request."""
        from locust.contrib.fasthttp import FastHttpSession

        def one() -> None:
            session = FastHttpSession(self.env.host, request_event=events.request, user=None,
                                      network_timeout=timeout_s, connection_timeout=timeout_s)
            session.get(path, name=path)

        k = 0
        while True:
            gevent.sleep(max(0.0, t0 + (k + 0.5) / per_s - time.monotonic()))
            inflight.append(gevent.spawn(one))
            k += 1

    def offer(self, offered_rps: float, seconds: float, judge: bool) -> dict[str, Any]:
        """Open model at `offered_rps` for up to `seconds`, one tick per second; with `judge`,
        stop at the first second the survival rule calls a failure."""
        users = pool_users(offered_rps, max(1, self.workers))
        self._grow_pool(users)
        self.collector.swap()
        self.collector.pace(offered_rps)
        started_at, t0 = time.time(), time.monotonic()
        rule = SurvivalRule()
        timeline: list[dict[str, float]] = []
        verdict = None
        try:
            for k in range(1, max(1, math.ceil(seconds)) + 1):
                gevent.sleep(max(0.0, t0 + k - time.monotonic()))
                window = self.collector.swap()
                point = {
                    "t": round(time.monotonic() - t0, 3), "requests": window.requests,
                    "errors": window.errors, "p95_ms": window.percentile_ms(95),
                    "p95_intended_ms": window.intended_percentile_ms(95),
                    "scheduled": window.scheduled, "dropped": window.dropped,
                    "generator_saturated": self._saturated(window),
                }
                timeline.append(point)
                self.send({"type": "tick", **point})
                if judge:
                    verdict = rule.add(Second(
                        t=point["t"], requests=window.requests, errors=window.errors,
                        p95_ms=point["p95_intended_ms"],
                        errors_by_kind=dict(window.errors_by_kind)))
                    if verdict is not None:
                        break
        finally:
            self.collector.pace(0)
            self._drain()
        return {
            "offered_rps": offered_rps, "seconds": timeline[-1]["t"] if timeline else 0.0,
            "started_at": started_at, "users": self.pool, "timeline": timeline,
            "failed_at_s": None if verdict is None else verdict.failed_at_s,
            "reason": "" if verdict is None else verdict.reason,
        }

    def survival(self, users: int, limit_s: float, offered_rps: float | None = None,
                 dilation: float = 1.0, hazard_path: str | None = None,
                 hazard_rps: float = 0.0) -> dict[str, Any]:
        """A fixed load judged each second: `offered_rps` arrivals/s (true open model through
        the arrival gate, like a step) or, without it, a closed-loop overload of `users`
        back-to-back users; plus `hazard_rps` arrivals/s of `hazard_path` when given. The
        rule's windows are stretched by `dilation`; the client timeouts were stretched by the
        session's dilation when this process started (`--dilation`, every process alike)."""
        timeout_s = self.client_timeouts.get("network_timeout", 60.0 * dilation)
        if offered_rps:
            self._grow_pool(pool_users(offered_rps, max(1, self.workers)))
            users = self.pool
        else:
            self._stop()
            self.collector.pace(None)
        self.collector.swap()
        started_at, t0 = time.time(), time.monotonic()
        if offered_rps:
            self.collector.pace(offered_rps)
        else:
            self._start(users, spawn_rate=float(max(users, 1)))  # the whole pool within ~1 s
        inflight: list[gevent.Greenlet] = []
        hazards = (gevent.spawn(self._hazards, hazard_path, hazard_rps, t0, timeout_s, inflight)
                   if hazard_path and hazard_rps > 0 else None)
        rule = SurvivalRule(dilation)
        timeline: list[dict[str, float]] = []
        verdict = None
        self.stop_requested = False  # a stop that arrived after the last test is stale
        for k in range(1, max(1, math.ceil(limit_s)) + 1):
            gevent.sleep(max(0.0, t0 + k - time.monotonic()))
            window = self.collector.swap()
            t = round(time.monotonic() - t0, 3)
            second = Second(
                t=t,
                requests=window.requests,
                errors=window.errors,
                # open model: latency from the scheduled send (a backlog cannot hide)
                p95_ms=(window.intended_percentile_ms(95) if offered_rps
                        else window.percentile_ms(95)),
                errors_by_kind=dict(window.errors_by_kind),
            )
            point = {"t": t, "requests": second.requests, "errors": second.errors,
                     "p95_ms": second.p95_ms}
            timeline.append(point)
            self.send({"type": "tick", **point})
            verdict = rule.add(second)
            if verdict is not None or self.stop_requested:
                break
        if hazards is not None:
            hazards.kill(block=True)
            gevent.killall(inflight, block=True, timeout=5)
        if offered_rps:
            self.collector.pace(0)
        self._stop()
        if verdict is None:
            seconds = min(float(limit_s), timeline[-1]["t"] if timeline else 0.0)
            result = SurvivalResult(seconds=seconds, held=True, limit_s=limit_s, users=users,
                                    started_at=started_at, timeline=timeline,
                                    offered_rps=offered_rps, dilation=dilation)
        else:
            result = SurvivalResult(
                seconds=verdict.failed_at_s, held=False, limit_s=limit_s, users=users,
                started_at=started_at, failed_at=started_at + verdict.failed_at_s,
                reason=verdict.reason, timeline=timeline, offered_rps=offered_rps,
                dilation=dilation,
            )
        return result.to_dict()

    def _read(self, commands: IO[bytes], queue: Queue[bytes | None]) -> None:
        """Reader greenlet: `stop` acts at once (the main greenlet is busy in a survival
        test); every other line waits its turn in `queue` (None: end of input)."""
        while True:
            line = commands.readline()
            if not line:
                queue.put(None)
                return
            try:
                command = json.loads(line)
            except ValueError:
                command = None
            if isinstance(command, dict) and command.get("cmd") == "stop":
                self.stop_requested = True
                continue
            queue.put(line)

    def serve(self, commands: IO[bytes]) -> None:
        """Answer commands until `quit` or end of input."""
        queue: Queue[bytes | None] = Queue()
        reader = gevent.spawn(self._read, commands, queue)
        try:
            self._serve(queue)
        finally:
            reader.kill(block=False)

    def _serve(self, queue: Queue[bytes | None]) -> None:
        while True:
            line = queue.get()
            if not line:
                return
            try:
                command = json.loads(line)
                name = command.get("cmd")
                if name == "quit":
                    return
                if name == "step":
                    result = self.step(float(command["offered_rps"]), float(command["warmup_s"]),
                                       float(command["hold_s"]))
                    self.send({"type": "step", "result": result})
                elif name == "offer":
                    result = self.offer(float(command["offered_rps"]), float(command["seconds"]),
                                        bool(command.get("judge", False)))
                    self.send({"type": "offer", "result": result})
                elif name == "survival":
                    result = self.survival(int(command.get("users", 0)),
                                           float(command["limit_s"]),
                                           command.get("offered_rps"),
                                           float(command.get("dilation", 1.0)),
                                           command.get("hazard_path"),
                                           float(command.get("hazard_rps", 0.0)))
                    self.send({"type": "survival", "result": result})
                else:
                    self.send({"type": "error", "kind": "internal",
                               "message": f"unknown command {name!r}"})
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                self.send({"type": "error", "kind": "internal",
                           "message": f"{type(exc).__name__}: {exc}"})


def run_worker(args: argparse.Namespace) -> None:
    """A distributed worker: runs users, ships its windows to the master on request."""
    user_class = load_user_class(args.locustfile)
    user_class.host = args.url
    dilate_client_timeouts(user_class, args.dilation)
    env = Environment(user_classes=[user_class], events=events, host=args.url)
    runner = env.create_worker_runner("127.0.0.1", args.master_port)
    recorder = Recorder()
    events.request.add_listener(recorder.on_request)
    events.cpu_warning.add_listener(recorder.on_cpu_warning)
    events.user_error.add_listener(recorder.on_user_error)
    gate = ArrivalGate(recorder, runner)
    gate.install(user_class)

    def on_pace(environment: Environment, msg: Any, **_: Any) -> None:
        # Worker i of n starts its schedule i/n of an interval late: the workers' arrivals
        # interleave evenly instead of coinciding.
        workers = max(1, int(msg.data.get("workers", 1)))
        phase = (getattr(runner, "worker_index", 0) % workers) / workers
        gate.pace(msg.data["rate"], phase)

    def on_swap(environment: Environment, msg: Any, **_: Any) -> None:
        if msg.data.get("fresh_deck"):
            gate.fresh_deck()
        window = recorder.swap()
        runner.send_message("scalelab_window", {"seq": msg.data["seq"], "window": window.to_wire()})

    runner.register_message("scalelab_pace", on_pace)
    runner.register_message("scalelab_swap", on_swap)

    def exit_when_orphaned() -> None:
        stdin = FileObjectPosix(os.dup(0), "rb")
        while stdin.readline():
            pass
        os._exit(0)

    gevent.spawn(exit_when_orphaned)
    runner.greenlet.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.load.child")
    parser.add_argument("--role", choices=["local", "master", "worker"], default="local")
    parser.add_argument("--locustfile", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--master-port", type=int, default=0)
    parser.add_argument("--dilation", type=float, default=1.0,
                        help="stretch the User class's client timeouts by this (>= 1)")
    args = parser.parse_args(argv)

    # Keep the protocol channel private: anything printed goes to stderr instead.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    install_idle_connection_check()

    if args.role == "worker":
        try:
            run_worker(args)
        except LocustfileError as exc:
            print(exc, file=sys.stderr)
            return 2
        return 0

    def fail(kind: str, message: str) -> int:
        out.write(json.dumps({"type": "error", "kind": kind, "message": message}) + "\n")
        out.flush()
        return 2

    try:
        child = Child(args, out)
        if args.workers:
            child.wait_for_workers()
    except LocustfileError as exc:
        return fail("usage", str(exc))
    except Exception as exc:  # noqa: BLE001 - one line to the parent instead of a traceback
        return fail("internal", f"load generator failed to start: {type(exc).__name__}: {exc}")
    # The deck's size per generator process: the parent asks for holds of whole decks.
    deck = child.gate.deck
    child.send({"type": "ready", "deck": len(deck) if deck is not None else 0})
    try:
        child.serve(FileObjectPosix(os.dup(0), "rb"))
    finally:
        child.runner.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())

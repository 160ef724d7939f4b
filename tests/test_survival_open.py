"""The open-model survival load against a real HAProxy on loopback: a fixed arrival rate plus a
separate hazard stream, judged per second with the (dilated) survival rule."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.errors import UserError
from experiments.load.driver import LoadSession, LoadSettings
from experiments.load.reference import start_static_haproxy
from experiments.procs import stop_group

PING = Path(__file__).parent / "fixtures" / "load" / "ping_locustfile.py"

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    proc, address = start_static_haproxy(tmp_path)
    try:
        yield address
    finally:
        stop_group(proc, grace_s=0)


def test_open_model_survival_offers_the_rate_plus_the_hazard_stream(url: str) -> None:
    with LoadSession(url, LoadSettings(PING)) as session:
        plain = session.survival(users=0, limit_s=4, offered_rps=40, dilation=2.0)
        mixed = session.survival(users=0, limit_s=4, offered_rps=40, dilation=2.0,
                                 hazard_path="/products/?all=1", hazard_rps=10)
    for result in (plain, mixed):
        assert result.held and result.offered_rps == 40 and result.dilation == 2.0
        assert result.users >= 5  # the paced pool, not the closed-loop users argument
    # Seconds 2..4 (the first holds the pool's spawn): 40/s paced, plus 10/s of the hazard.
    steady = [p["requests"] for p in plain.timeline[1:]]
    assert all(36 <= n <= 44 for n in steady), steady
    with_hazard = [p["requests"] for p in mixed.timeline[1:]]
    assert all(45 <= n <= 55 for n in with_hazard), with_hazard


def test_survival_rejects_bad_open_model_input(url: str) -> None:
    with LoadSession(url, LoadSettings(PING)) as session:
        with pytest.raises(UserError, match="positive offered rate"):
            session.survival(users=0, limit_s=2, offered_rps=0)
        with pytest.raises(UserError, match="must start with '/'"):
            session.survival(users=0, limit_s=2, offered_rps=5, hazard_path="x", hazard_rps=1)


def test_survival_stops_at_the_servers_first_worker_loss(url: str) -> None:
    """A worker loss the server logged ends the load a tail later (not at the limit), judged
    by that line; the next survival test on the same session is not cut short by the stop."""
    import time

    from experiments.load.survival import worker_loss_watch
    from experiments.model import LogLine

    logs: list[LogLine] = []
    start = time.time()

    def feed(since: float) -> list[LogLine]:
        if not logs and time.time() - start > 2.0:  # the kernel kills a worker 2 s in
            logs.append(LogLine(time.time(), "kernel:i0", "memory cgroup out of memory: "
                                "oom_kill counter 0 -> 1 in i0"))
        return [x for x in logs if x.t >= since]

    with LoadSession(url, LoadSettings(PING)) as session:
        took = time.monotonic()
        stopped = session.survival(users=0, limit_s=30, offered_rps=20,
                                   server_failed=worker_loss_watch(feed, start, tail_s=1.0))
        took = time.monotonic() - took
        after = session.survival(users=0, limit_s=3, offered_rps=20)
    assert took < 10, f"the survival test ran {took:.0f} s after the worker loss"
    assert not stopped.held and "the server lost a worker (kernel:i0: memory cgroup" in \
        stopped.reason and "clients saw it hold" in stopped.reason
    assert 1.5 <= stopped.seconds <= 3.5 and stopped.failed_at == pytest.approx(logs[0].t,
                                                                                abs=0.1)
    assert len(stopped.timeline) >= 3  # the load ran past the loss: signals cover it
    assert after.held and after.seconds == 3


def test_worker_loss_watch_waits_for_the_tail_and_ignores_older_losses() -> None:
    from experiments.load.survival import worker_loss_watch
    from experiments.model import LogLine

    now = [100.0]
    lines = [LogLine(90.0, "gunicorn:i0", "[CRITICAL] WORKER TIMEOUT (pid:7)"),  # before
             LogLine(101.0, "gunicorn:i0", "Booting worker with pid: 8"),
             LogLine(102.0, "kernel:i0", "Killed process 8 (gunicorn)")]
    watch = worker_loss_watch(lambda t: [x for x in lines if x.t >= t and x.t <= now[0]], 95.0,
                              tail_s=2.0, clock=lambda: now[0])
    assert watch() is None
    now[0] = 103.0
    assert watch() is None  # lost 1 s ago: the signals after it are still coming
    now[0] = 104.0
    line = watch()
    assert line is not None and line.t == 102.0
    assert worker_loss_watch(lambda t: None, 0.0)() is None  # no cheap log feed (AWS)

"""The load driver against real servers on loopback: real Locust, real HAProxy, real Gunicorn."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from experiments.errors import UserError
from experiments.load.driver import LoadSession, LoadSettings, check_loopback
from experiments.load.reference import start_static_haproxy, wait_for_port
from experiments.model import Slo
from experiments.procs import free_port, stop_group

FIXTURES = Path(__file__).parent / "fixtures" / "load"
PING = FIXTURES / "ping_locustfile.py"

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")


def start_haproxy(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A static `http-request return` endpoint: the fastest server we can offer load to."""
    return start_static_haproxy(tmp_path)


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, url = start_haproxy(tmp_path)
    try:
        yield proc, url
    finally:
        stop_group(proc, grace_s=0)


@pytest.fixture
def slow_server() -> Iterator[str]:
    """Gunicorn, one sync worker, 200 ms per request: at most 5 requests/s."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "1", "--backlog", "2048",
         "--bind", f"127.0.0.1:{port}", "--chdir", str(FIXTURES), "slow_app:app"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc, grace_s=0)


class ArrivalLog:
    """A loopback HTTP server that notes when each request arrives (the server's view)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.times: list[float] = []
        self.paths: list[str] = []
        self.peers: list[tuple[str, int]] = []
        """The client address of each request: one per connection the generator used."""
        log = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                log.times.append(time.time())
                log.paths.append(self.path)
                log.peers.append(self.client_address[:2])
                time.sleep(delay_s)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def per_bin(self, since: float, bin_s: float, bins: int) -> list[int]:
        counts = [0] * bins
        for t in self.times:
            i = int((t - since) / bin_s)
            if 0 <= i < bins:
                counts[i] += 1
        return counts


@pytest.fixture
def arrival_log() -> Iterator[ArrivalLog]:
    log = ArrivalLog()
    try:
        yield log
    finally:
        log.server.shutdown()
        log.server.server_close()


@pytest.fixture
def one_second_server() -> Iterator[ArrivalLog]:
    """Answers every request after 1 s: longer than the 0.5 s client timeout of
    short_timeout_locustfile.py, shorter than that timeout × 4."""
    log = ArrivalLog(delay_s=1.0)
    try:
        yield log
    finally:
        log.server.shutdown()
        log.server.server_close()


def assert_gone(pids: list[int]) -> None:
    for pid in pids:
        assert not psutil.pid_exists(pid), f"generator process {pid} outlived its session"


def test_step_offers_the_rate_and_survival_holds(haproxy: tuple[object, str]) -> None:
    _, url = haproxy
    with LoadSession(url, LoadSettings(PING)) as session:
        pids = session.pids
        assert len(pids) == 1
        step = session.step(50, warmup_s=2, hold_s=4)
        ticks: list[float] = []
        survival = session.survival(users=10, limit_s=3, on_tick=ticks.append)
    assert_gone(pids)

    assert step.achieved_rps == pytest.approx(50, rel=0.10)
    assert step.requests == pytest.approx(200, rel=0.10)
    assert step.errors == 0 and step.error_rate == 0.0 and step.errors_by_kind == {}
    assert 0 < step.p50_ms <= step.p95_ms <= step.p99_ms < 200
    assert step.users >= 50 and step.response_bytes == 2 * step.requests  # body "ok"
    assert 0 < step.generator_cpu < 1.5
    assert step.passed is None and step.duration_s == pytest.approx(4, abs=0.3)
    assert Slo().judge(step).passed is True

    assert survival.held and survival.failed_at is None and survival.users == 10
    assert len(survival.timeline) == 3 and len(ticks) == 3
    assert all(point["requests"] > 100 and point["errors"] == 0 for point in survival.timeline)


def test_no_burst_at_a_step_start_and_the_pool_survives_steps(arrival_log: ArrivalLog) -> None:
    """Before the arrival gate, the first 250 ms of a 20 req/s step received 50 requests (the
    whole freshly spawned pool at once): 10x the rate. Now every request waits for its slot."""
    with LoadSession(arrival_log.url, LoadSettings(PING)) as session:
        for rate in (20.0, 40.0, 40.0):
            arrival_log.times.clear()
            step = session.step(rate, warmup_s=1, hold_s=3)
            first = min(arrival_log.times)
            bins = arrival_log.per_bin(first, 0.25, 16)
            expected = rate * 0.25
            assert max(bins) <= expected + 2, (rate, bins)
            assert min(bins) >= expected - 2, (rate, bins)
            assert step.achieved_rps == pytest.approx(rate, rel=0.03)
            assert step.scheduled == pytest.approx(rate * 3, abs=2) and step.dropped == 0
            assert step.p95_intended_ms is not None
            assert step.p95_ms <= step.p95_intended_ms < step.p95_ms + 20
        assert step.users == 100  # grown to 2.5 s of 40 req/s, never torn down


def test_idle_users_are_reused_most_recent_first(arrival_log: ArrivalLog) -> None:
    """A fast server at 40 req/s needs one or two users of the pool of 100 at a time: the gate
    hands each arrival to the user freed last, so the same few connections carry the step. (A
    FIFO hand-out rotated through all 100 users and connections; at 2,000 per process that
    rotation held the generator to ~3,500 req/s of one core.)"""
    with LoadSession(arrival_log.url, LoadSettings(PING)) as session:
        step = session.step(40, warmup_s=1, hold_s=3)
    assert step.users == 100 and step.dropped == 0
    assert step.achieved_rps == pytest.approx(40, rel=0.03)
    assert len(arrival_log.peers) >= 150
    assert len(set(arrival_log.peers)) <= 10, len(set(arrival_log.peers))


def test_tasks_are_dealt_from_a_deck_that_holds_the_mix_exactly(arrival_log: ArrivalLog
                                                                   ) -> None:
    """Every 20 consecutive arrivals of a 1:19 mix hold one rare request (in a random place):
    its count is n/20 within the two partial decks at the ends, and two rare requests are at
    most 39 apart (plus a little reordering between concurrent users). Locust's random draw
    fails this: 700 draws hold 35 +- 5.8 rare ones with gaps beyond 45 (P > 0.9)."""
    with LoadSession(arrival_log.url, LoadSettings(FIXTURES / "weighted_locustfile.py")) as load:
        step = load.step(200, warmup_s=0.5, hold_s=3)
    assert step.errors == 0 and step.dropped == 0
    paths = arrival_log.paths
    assert len(paths) >= 600 and set(paths) == {"/rare", "/common"}
    rare = [i for i, path in enumerate(paths) if path == "/rare"]
    assert len(paths) / 20 - 2 <= len(rare) <= len(paths) / 20 + 2, (len(rare), len(paths))
    gaps = [b - a for a, b in zip(rare, rare[1:], strict=False)]
    assert max(gaps) <= 45, gaps


def test_a_hold_deals_whole_fresh_decks(arrival_log: ArrivalLog) -> None:
    """A step's hold starts with a fresh deck and lasts the nearest whole number of decks, so
    it holds the mix exactly: asked for 4.4 s at 10 req/s of a 20-card deck (44 arrivals), it
    holds 40, two of them rare, every time. The old child held 4.4 s from mid-deck: 1-4 rare.
    (The warm-up of 0.55 s keeps the hold's start 50 ms from any arrival.)"""
    with LoadSession(arrival_log.url, LoadSettings(FIXTURES / "weighted_locustfile.py")) as load:
        assert load.deck_arrivals == 20  # the child tells its deck's size
        assert load.hold_s(10, 4.4) == pytest.approx(4.0)  # the parent rounds the hold
        steps = [load.step(10, warmup_s=0.55, hold_s=4.4) for _ in range(3)]
    for step in steps:
        assert step.duration_s == pytest.approx(4.0, abs=0.1) and step.errors == 0
        assert step.scheduled == pytest.approx(40, abs=1)
        held = [path for t, path in zip(arrival_log.times, arrival_log.paths, strict=True)
                if t >= step.started_at][:40]
        assert len(held) == 40 and held.count("/rare") == 2, held


def test_offer_ticks_each_second(arrival_log: ArrivalLog) -> None:
    ticks: list[dict[str, object]] = []
    with LoadSession(arrival_log.url, LoadSettings(PING)) as session:
        assert session.deck_arrivals == 0 and session.hold_s(30, 3.3) == 3.3  # one task
        result = session.offer(30, seconds=3, judge=True, on_tick=ticks.append)
    assert len(ticks) == 3 and result["timeline"] == [
        {k: v for k, v in t.items() if k != "type"} for t in ticks]
    assert result["failed_at_s"] is None and result["reason"] == ""
    assert all(t["scheduled"] == pytest.approx(30, abs=1) and t["dropped"] == 0 for t in ticks)
    assert sum(int(t["requests"]) for t in ticks) == pytest.approx(90, abs=3)


def test_slow_server_falls_behind_and_fails(slow_server: str) -> None:
    with LoadSession(slow_server, LoadSettings(PING)) as session:
        step = session.step(20, warmup_s=2, hold_s=4)
    assert step.achieved_rps < 0.8 * step.offered_rps  # about 5 rps can be served
    assert step.host_busy is not None and 0.0 <= step.host_busy <= 1.0
    assert 2.0 < step.achieved_rps < 8.0
    assert step.p50_ms >= 200  # every request takes at least the 200 ms sleep
    # the pool (50 users) runs dry: arrivals wait, then are dropped (and counted)
    assert step.dropped > 0 and step.scheduled == pytest.approx(80, abs=2)
    assert step.p95_intended_ms is not None and step.p95_intended_ms >= step.p95_ms
    verdict = Slo(p95_ms=500).judge(step)
    assert verdict.passed is False and "achieved" in verdict.verdict


def test_survival_reports_a_killed_server(tmp_path: Path) -> None:
    proc, url = start_haproxy(tmp_path)
    killed_at: list[float] = []

    def kill_after_two_seconds(t: float) -> None:
        if t >= 2 and not killed_at:
            stop_group(proc, grace_s=0)
            killed_at.append(t)

    try:
        with LoadSession(url, LoadSettings(PING)) as session:
            result = session.survival(users=10, limit_s=30, on_tick=kill_after_two_seconds)
    finally:
        stop_group(proc, grace_s=0)
    assert not result.held
    assert result.failed_at is not None
    # declared failed when the 5 s error-rate rule trips: within a few seconds of the kill
    assert killed_at[0] <= result.seconds <= killed_at[0] + 5
    assert result.failed_at == pytest.approx(result.started_at + result.seconds)
    assert "ConnectionRefusedError" in result.reason or "no response" in result.reason
    assert len(result.timeline) < 15  # stopped early, well before the 30 s limit
    assert result.timeline[0]["errors"] == 0


def test_distributed_two_workers(haproxy: tuple[object, str]) -> None:
    _, url = haproxy
    with LoadSession(url, LoadSettings(PING, load_workers=2)) as session:
        pids = session.pids
        assert len(pids) == 3
        step = session.step(60, warmup_s=2, hold_s=4)
        survival = session.survival(users=10, limit_s=2)
    assert_gone(pids)
    assert step.achieved_rps == pytest.approx(60, rel=0.10)
    assert step.errors == 0 and 0 < step.p95_ms < 200
    assert step.response_bytes == 2 * step.requests  # merged from both workers
    assert survival.held and all(p["requests"] > 50 for p in survival.timeline)


SHORT_TIMEOUT = FIXTURES / "short_timeout_locustfile.py"


@pytest.mark.parametrize("workers", [0, 1], ids=["local", "distributed"])
def test_dilation_stretches_the_client_timeouts_of_the_users(one_second_server: ArrivalLog,
                                                             workers: int) -> None:
    """The locustfile's 0.5 s timeout gives up on a 1 s answer; dilated × 4 (2 s) it waits.
    Both in one local runner and in a distributed worker (the process that runs the users)."""
    url = one_second_server.url
    for dilation, expect_errors in ((1.0, True), (4.0, False)):
        settings = LoadSettings(SHORT_TIMEOUT, load_workers=workers, dilation=dilation)
        with LoadSession(url, settings) as session:
            step = session.step(2, warmup_s=1, hold_s=3)
        assert step.requests >= 4, (dilation, step)
        if expect_errors:
            assert step.errors == step.requests, f"undilated 0.5 s timeout kept waiting: {step}"
        else:
            assert step.errors == 0, f"dilated 2 s timeout gave up on a 1 s answer: {step}"
            assert step.p50_ms >= 1000


def test_a_dilation_below_one_is_refused() -> None:
    with pytest.raises(UserError, match="dilation"):
        LoadSession("http://127.0.0.1:9", LoadSettings(PING, dilation=0.5))


def test_bad_locustfiles_give_one_sentence(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("from locust import FastHttpUser\nclass Broken(FastHttpUser)\n    pass\n")
    cases = {
        tmp_path / "missing.py": "does not exist",
        broken: "syntax error at line 2",
        FIXTURES / "two_users_locustfile.py": "exactly one User class with tasks, found 2",
    }
    for path, expected in cases.items():
        session = LoadSession("http://127.0.0.1:9", LoadSettings(path))
        with pytest.raises(UserError) as info, session:
            pass
        message = str(info.value)
        assert str(path) in message and expected in message
        assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:80", "http://example.com", "http://[::1]:80", "ftp://127.0.0.1"]
)
def test_the_local_policy_allows_only_loopback_targets(url: str) -> None:
    with pytest.raises(UserError, match="loopback|http"):
        check_loopback(url)


def test_the_driver_takes_any_http_target_its_backend_chose() -> None:
    """Which hosts are allowed is the backend's policy; the driver only checks the URL's shape
    (nothing is sent: the session is never entered)."""
    LoadSession("http://scale-out-lb-alb-1a2b3c4.us-east-1.elb.amazonaws.com", LoadSettings(PING))
    with pytest.raises(UserError, match="http"):
        LoadSession("ftp://127.0.0.1", LoadSettings(PING))


def test_processes_gone_after_interrupt_inside_the_block(haproxy: tuple[object, str]) -> None:
    _, url = haproxy
    pids: list[int] = []
    with pytest.raises(KeyboardInterrupt), LoadSession(url, LoadSettings(PING)) as session:
        pids.extend(session.pids)
        assert all(psutil.pid_exists(pid) for pid in pids)
        raise KeyboardInterrupt
    assert pids
    assert_gone(pids)


def test_parent_never_imports_locust_or_gevent() -> None:
    code = (
        "import sys\n"
        "import experiments.load.driver, experiments.load.capacity\n"
        "bad = [m for m in ('locust', 'gevent') if m in sys.modules]\n"
        "sys.exit(1 if bad else 0)\n"
    )
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_task_exceptions_count_as_errors(haproxy: tuple[object, str]) -> None:
    _, url = haproxy
    with LoadSession(url + "/", LoadSettings(FIXTURES / "raising_locustfile.py")) as session:
        step = session.step(20, warmup_s=1, hold_s=2)
    assert step.requests > 0 and step.error_rate == 1.0
    assert step.errors_by_kind == {"task error KeyError": step.errors}
    verdict = Slo().judge(step)
    assert verdict.passed is False and "task error KeyError" in verdict.verdict


# ---- a real emulated box -----------------------------------------------------------------

BYO_APP = Path(__file__).parent / "fixtures" / "byo_app"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the local backend needs root for cgroups")
def test_half_saturation_step_is_true_on_an_emulated_micro(tmp_path: Path) -> None:
    """Issue 10: at half the measured saturation a quick step (1 s warm-up, 4 s hold) read
    105-125 % of offered and p95 up to 1,290 ms where httperf saw 19 ms. Now it must read
    the offered rate within 3 % and a p95 close to the low-load one."""
    from experiments.backends.local import LocalBackend
    from stacks.variant import load_variant, load_variants

    micro = load_variant("micro")
    app = replace(micro.app, path=str(BYO_APP), setup="", locustfile="", wsgi="app:application",
                  health_path="/health", requirements="")
    micro = micro.with_overrides(app=app, health_check=replace(micro.health_check,
                                                               path="/health"))
    backend = LocalBackend(cpu_scale=LocalBackend.choose_cpu_scale(load_variants()),
                           state_dir=tmp_path / "state")
    with backend.deployed(micro) as deployment, \
            LoadSession(deployment.url, LoadSettings(BYO_APP / "burn_locustfile.py")) as load:
        closed = load.survival(users=8, limit_s=6)
        busy = closed.timeline[2:]  # past spawning and warm-up
        saturation = sum(p["requests"] for p in busy) / (busy[-1]["t"] - closed.timeline[1]["t"])
        low = load.step(4.0, warmup_s=1, hold_s=4, cpu_seconds=deployment.cpu_seconds)
        half = load.step(round(saturation / 2, 1), warmup_s=1, hold_s=4,
                         cpu_seconds=deployment.cpu_seconds)
    assert saturation > 10, f"saturation {saturation:.1f} req/s: the box did not serve"
    assert half.achieved_rps == pytest.approx(half.offered_rps, rel=0.03), half
    assert half.dropped == 0 and half.errors == 0
    assert low.p95_intended_ms is not None and half.p95_intended_ms is not None
    assert half.p95_intended_ms <= 4 * low.p95_intended_ms + 20, (low, half)
    # the CPU signal: ~7 ms of CPU per request (plus Gunicorn's own share)
    assert half.server_cpu_s is not None
    assert 0.006 <= half.server_cpu_s / half.requests <= 0.015


def test_host_busy_share_from_proc_stat(tmp_path: Path) -> None:
    """Busy = all but idle and iowait; the share is of the whole host between two readings."""
    from experiments.load.driver import host_busy_share, host_cpu_times

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    first = host_cpu_times(stat)
    assert first == (150.0, 1000.0)
    # 200 more jiffies: 150 busy (user 120, steal 30), 50 idle
    stat.write_text("cpu  220 0 50 850 50 0 0 30 0 0\n")
    assert host_busy_share(first, host_cpu_times(stat)) == pytest.approx(0.75)
    assert host_busy_share(first, None) is None
    assert host_cpu_times(tmp_path / "missing") is None

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
